"""The install: ``constraints.txt`` against ``pyproject.toml`` and the README's first command.

Slow (``pytest -m slow tests/test_install.py``, a few minutes, needs PyPI): a Python 3.12 venv
built from ``constraints.txt`` in a copy of the checkout runs some tests.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
# the quick tests the 3.12 venv runs
TESTS_312 = ["tests/test_configs.py", "tests/test_losses.py"]


def _pins(path: Path = ROOT / "constraints.txt") -> dict[str, Version]:
    """``constraints.txt`` as {canonical name: pinned version}."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", line
            pins[canonicalize_name(req.name)] = Version(spec.version)
    return pins


def _requirements() -> list[Requirement]:
    """The project's dependencies and every optional extra's."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        lines += extra
    return [Requirement(line) for line in lines]


def _readme_commands() -> list[str]:
    """The first ```bash block of README.md, without comments and blank lines (as .ci/run)."""
    block = re.search(r"^```bash\n(.*?)^```$", (ROOT / "README.md").read_text(), re.M | re.S)
    assert block, "README.md has no ```bash block"
    return [line for line in block.group(1).splitlines() if line.strip() and line[0] != "#"]


def test_constraints_pin_every_requirement_within_its_bounds() -> None:
    pins = _pins()
    for req in _requirements():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not pinned in constraints.txt"
        assert req.specifier.contains(pins[name]), f"{req.name}=={pins[name]} outside {req}"


def test_readme_first_command_installs_with_constraints() -> None:
    install = _readme_commands()[0].split(" && .venv/bin/pcmelgan-jax ")[0]
    assert "-c constraints.txt" in install
    for torch in re.findall(r"torch==[^\s\"']+", install):  # a pin there must agree
        assert Requirement(torch).specifier.contains(_pins()["torch"]), torch


def _python312() -> str | None:
    """A working Python 3.12: $PCMELGAN_PYTHON312, python3.12 on PATH, or pyenv's."""
    pyenv = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    candidates = [os.environ.get("PCMELGAN_PYTHON312"), shutil.which("python3.12")]
    candidates += sorted(glob.glob(os.path.join(pyenv, "versions", "3.12*", "bin", "python3.12")))
    for python in filter(None, candidates):
        probe = subprocess.run([python, "-c", "import sys; print(sys.version_info[:2])"],
                               capture_output=True, text=True)
        if probe.returncode == 0 and probe.stdout.strip() == "(3, 12)":
            return python
    return None


def _copy_checkout(dest: Path) -> None:
    """The checkout's tracked and untracked, not ignored, files (no .venv, runs, caches)."""
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-co", "--exclude-standard", "-z"],
        capture_output=True, text=True, check=True).stdout
    for rel in filter(None, listed.split("\0")):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def _run(cmd: list[str], cwd: Path, timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """``cmd`` in ``cwd``; fails the test with its output's tail when it fails."""
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                            **kwargs)
    assert result.returncode == 0, f"{cmd}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.mark.slow
def test_python312_venv_from_constraints(tmp_path: Path) -> None:
    python = _python312()
    if python is None:
        pytest.skip("no Python 3.12 found (set PCMELGAN_PYTHON312 to its interpreter)")
    if shutil.which("git") is None:
        pytest.skip("git is needed to list the checkout's files")
    checkout = tmp_path / "checkout"
    _copy_checkout(checkout)
    venv = tmp_path / "venv"
    _run([python, "-m", "venv", str(venv)], tmp_path, 120)
    # without torch: for 3.12 pip would fetch the multi-GB CUDA build from PyPI
    _run([str(venv / "bin" / "pip"), "install", "-q", "-c", "constraints.txt", "-e", ".[dev]"],
         checkout, 1800)

    # every installed package is pinned, at its pin
    pins = _pins(checkout / "constraints.txt")
    freeze = _run([str(venv / "bin" / "pip"), "freeze", "--exclude-editable"], checkout, 120)
    for line in freeze.stdout.splitlines():
        name, version = line.split("==")
        assert pins.get(canonicalize_name(name)) == Version(version), f"{line} is not pinned"

    _run([str(venv / "bin" / "pcmelgan-jax"), "--help"], checkout, 300)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    _run([str(venv / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider",
          *TESTS_312], checkout, 1200, env=env)
