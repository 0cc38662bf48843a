"""config_files: PATH[:VARIANTS] resolution, --config.FIELD=VALUE overrides, one-line errors."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pcmelgan_jax import config_files
from pcmelgan_jax.config_files import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_resolve_prefers_the_current_folder_then_the_package(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    packaged = os.path.join(config_files.package_configs_dir(), "pcmelgan.py")
    assert config_files.resolve_config_file("configs/pcmelgan.py") == packaged
    assert config_files.resolve_config_file("pcmelgan.py") == packaged
    assert config_files.resolve_config_file("configs/sweeps/eps.py").endswith(
        os.path.join("sweeps", "eps.py"))
    local = tmp_path / "configs" / "pcmelgan.py"
    local.parent.mkdir()
    local.write_text("def get_config():\n    return {'local': True}\n")
    assert config_files.resolve_config_file("configs/pcmelgan.py") == str(local)
    assert config_files.load_config("configs/pcmelgan.py") == {"local": True}
    with pytest.raises(ConfigError, match="'configs/nope.py' not found"):
        config_files.load_config("configs/nope.py")


def test_overrides_are_typed_and_errors_name_field_and_file():
    config = config_files.load_config("configs/pcmelgan.py:small")
    config_files.apply_overrides(config, [
        "--config.eps=0.1", "--config.filter_only=true", "--config.num_epochs=3",
        "--config.distributed.num_processes=2", "--config.data_dir=a=b"], "pcm")
    assert (config.eps, config.filter_only, config.num_epochs) == (0.1, True, 3)
    assert isinstance(config.num_epochs, int) and config.distributed.num_processes == 2
    assert config.data_dir == "a=b"
    evaluation = config_files.load_config("configs/eval.py")
    config_files.apply_overrides(evaluation, ["--config.attackers=('fixed','linear')"], "ev")
    assert evaluation.attackers == ("fixed", "linear")
    with pytest.raises(ConfigError, match=r"^--config.bogus: 'bogus' is not a field of pcm$"):
        config_files.apply_overrides(config, ["--config.bogus=1"], "pcm")
    with pytest.raises(ConfigError, match=r"^--config.lamb: lamb='x': .*float.* \(pcm\)$"):
        config_files.apply_overrides(config, ["--config.lamb=x"], "pcm")
    with pytest.raises(ConfigError, match="expected --config.FIELD=VALUE"):
        config_files.apply_overrides(config, ["--set", "eps=1"], "pcm")
    with pytest.raises(ConfigError, match="unknown config variant 'big'"):
        config_files.load_config("configs/vocoder.py:big")


@pytest.mark.parametrize("args, message", [
    (["--config=configs/pcmelgan.py:small", "--config.bogus=1"],
     "--config.bogus: 'bogus' is not a field of "),
    (["--config", "configs/pcmelgan.py", "--config.eps=abc"], "--config.eps: eps='abc'"),
    (["--config=configs/pcmelgan.py:tiny"], "unknown config variant 'tiny'"),
    (["--config=configs/nope.py"], "'configs/nope.py' not found"),
])
def test_train_py_errors_are_one_line(tmp_path, args, message):
    """train.py (absl + config flags): a bad field, value, variant or file is one line on
    stderr and exit code 2, also run from another folder (the package's configs)."""
    env = {**os.environ, "PCMELGAN_HUGEPAGES": "0", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "--workdir", str(tmp_path / "w"), *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("train.py: error: ") and message in lines[0]
    assert not (tmp_path / "w").exists()
