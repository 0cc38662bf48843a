"""configs/: the values of every variant, loading through config flags, the installed package."""

import json
import os
import subprocess
import sys
from pathlib import Path

import ml_collections
import pytest
from absl import flags
from ml_collections import config_flags

from pcmelgan_jax.configs import common

ROOT = Path(__file__).resolve().parents[1]
# Every variant's fields as the configs held them before they moved to configs/ (flattened).
VALUES = json.loads((ROOT / "tests" / "data" / "config_values.json").read_text())


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = list(value) if isinstance(value, tuple) else value
    return out


@pytest.mark.parametrize("spec", sorted(VALUES))
def test_variant_values_through_config_flags(spec):
    """``--config PATH:VARIANTS`` gives the recorded values, with their types (1 vs 1.0)."""
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, flag_values=fv, lock_config=True)
    fv(["prog", f"--config={ROOT / spec}"])
    got = json.dumps(_flat(fv.config.to_dict()), sort_keys=True)
    assert got == json.dumps(VALUES[spec], sort_keys=True)


def test_variants_compose_and_placeholders_keep_types():
    from pcmelgan_jax.configs import pcmelgan

    assert pcmelgan.get_config("filter_only,small").to_dict() == pcmelgan.get_config(
        "small,filter_only").to_dict()
    assert pcmelgan.get_config().distributed.get_type("num_processes") is int


def test_parse_arg():
    arg = common.parse_arg("small, width=0.5,steps=3", small=False, width=1.0, steps=1, name="a")
    assert (arg.small, arg.width, arg.steps, arg.name) == (True, 0.5, 3, "a")
    assert common.parse_arg(None, small=False).small is False
    assert common.parse_arg("small=false", small=True).small is False
    with pytest.raises(ValueError, match="unknown config variant 'tiny'"):
        common.parse_arg("tiny", small=False)
    with pytest.raises(ValueError, match="steps='x': expected a int"):
        common.parse_arg("steps=x", steps=1)
    with pytest.raises(ValueError, match="expected true or false"):
        common.parse_arg("small=yes", small=False)


def test_quickstart_config_holds_the_small_stages():
    from pcmelgan_jax.configs import classifiers, pcmelgan, quickstart, vocoder
    from pcmelgan_jax.configs import eval as evaluation

    c = quickstart.get_config()
    assert isinstance(c.pcmelgan, ml_collections.ConfigDict)
    for name, module in (("classifiers", classifiers), ("vocoder", vocoder),
                         ("pcmelgan", pcmelgan), ("eval", evaluation)):
        small = module.get_config("small").to_dict()
        if name == "eval":  # the quickstart's one change: fewer attackers on comparisons
            assert c.eval.comparison_attackers == ("fixed",)
            small["comparison_attackers"] = c.eval.comparison_attackers
        assert c[name].to_dict() == small


def test_package_configs_import_from_another_directory(tmp_path):
    """The configs are the package ``pcmelgan_jax.configs`` (pyproject maps configs/ there),
    and a ``configs/...`` path that is absent from the current folder names the package's."""
    code = ("import os, pcmelgan_jax.configs.pcmelgan as p, pcmelgan_jax.configs.sweeps\n"
            "from pcmelgan_jax.config_files import load_config\n"
            "print(p.get_config('small').batch_size, os.path.realpath(p.__file__))\n"
            "print(load_config('configs/pcmelgan.py:small,filter_only').filter_only)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, check=True,
                         capture_output=True, text=True).stdout.split()
    assert out == ["32", str(ROOT / "configs" / "pcmelgan.py"), "True"]
