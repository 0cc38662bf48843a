"""bench/gpu_suite.sh's control flow, with a fake Python that records its commands."""

import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash, timeout")

FAKE_PYTHON = """#!/usr/bin/env bash
echo "$*" >> "$FAKE_LOG"
case "$*" in
  *bench_seeds*) sleep "${FAKE_SEEDS_SLEEP:-0}" ;;
  *bench_train*) exit 3 ;;
esac
exit 0
"""


def run_suite(tmp_path: Path, **env: str) -> tuple[str, list[str], Path]:
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    log = tmp_path / "commands.log"
    out = tmp_path / "out"
    environ = {**os.environ, "PYTHON": str(fake), "FAKE_LOG": str(log),
               "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "cache"), **env}
    proc = subprocess.run(["bash", "bench/gpu_suite.sh", str(out)], cwd=ROOT, env=environ,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    commands = log.read_text().splitlines() if log.exists() else []
    return proc.stdout, [c for c in commands if not c.startswith(("-c", "jax.", "numpy.",
                                                                    "librosa."))], out


def test_steps_run_one_at_a_time_in_the_order_given(tmp_path):
    stdout, commands, out = run_suite(
        tmp_path, STEPS="seeds_32 vocoder_parts train loop tests bogus",
        PACK=str(tmp_path / "suite.tgz"))
    assert [c.split()[1] for c in commands] == [
        "bench.bench_seeds", "bench.bench_vocoder_parts", "bench.bench_train",
        "bench.bench_loop", "pytest"]
    assert "--stage classifiers --stage vocoder" in commands[3]
    assert "--batch-size 32 --strategies vmap,unroll" in commands[0]
    assert f"--profile {out}/profile" in commands[1] and "--batch-size 128" in commands[1]
    assert "failed train (rc 3" in stdout  # the fake bench_train exits 3; the suite goes on
    assert "unknown step bogus" in stdout and "done" in stdout
    assert (out / "suite.log").read_text().count("(limit ") == 5
    with tarfile.open(tmp_path / "suite.tgz") as tar:
        assert "./suite.log" in tar.getnames() and "./tests.log" in tar.getnames()


def test_a_step_is_cut_at_its_limit_and_later_ones_skipped_at_the_deadline(tmp_path):
    stdout, commands, _ = run_suite(
        tmp_path, STEPS="seeds_16 seeds_32 anonymize", FAKE_SEEDS_SLEEP="30",
        LIMIT_STEP="2", DEADLINE="23")
    assert "failed seeds_16 (rc 124; 124: over its 2s)" in stdout
    # 23 s deadline: the second seeds step still gets its 2 s, ... until < 20 s are left
    assert [c.split()[1] for c in commands][:2] == ["bench.bench_seeds", "bench.bench_seeds"]
    assert "skipped anonymize:" in stdout
