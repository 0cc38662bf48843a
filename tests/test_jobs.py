"""``pcmelgan_jax.jobs`` through ``pcmelgan-jax sweep --jobs``: runs as parallel child
processes on their own cores, with logs, failures and Ctrl-C / SIGTERM.

A fake interpreter (``--python FAKE``) stands in for training.
"""

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_sweep import write_tiny

from pcmelgan_jax import cli, sweep
from pcmelgan_jax.runtime import job_devices


@pytest.fixture
def tiny(tmp_path):
    return write_tiny(tmp_path)


# A stand-in for the interpreter of --jobs' child processes (``--python FAKE``): it records
# what it was given and how many jobs run, waits until two jobs have started (so the first
# two ran at once), then finishes its run (writes final_metrics.json), fails (FAKE_FAIL names
# the run) or sleeps (FAKE_SLEEP seconds).
FAKE_PYTHON = """\
import json, os, sys, time
workdir = sys.argv[sys.argv.index("--workdir") + 1]
name, sweep_dir = os.path.basename(workdir), os.path.dirname(workdir)
def count(prefix):
    return len([f for f in os.listdir(sweep_dir) if f.startswith(prefix)])
running = os.path.join(sweep_dir, "running_" + name)
open(running, "w").close()
open(os.path.join(sweep_dir, "started_" + name), "w").close()
record = {"pid": os.getpid(), "cpus": sorted(os.sched_getaffinity(0)), "argv": sys.argv,
          "running": count("running_")}
with open(os.path.join(workdir, "child.json"), "w") as f:
    json.dump(record, f)
try:
    deadline = time.time() + 60
    while count("started_") < 2:
        if time.time() > deadline:
            sys.exit("no second job ran at the same time")
        time.sleep(0.05)
    time.sleep(float(os.environ.get("FAKE_SLEEP", "0")))
except KeyboardInterrupt:
    open(os.path.join(workdir, "interrupted"), "w").close()
    raise
finally:
    os.remove(running)
if name == os.environ.get("FAKE_FAIL"):
    print("training went wrong", file=sys.stderr)
    sys.exit(3)
with open(os.path.join(workdir, "final_metrics.json"), "w") as f:
    json.dump({"step": 2}, f)
print("trained", name)
"""


@pytest.fixture
def fake_python(tmp_path) -> str:
    path = tmp_path / "fake_python"
    path.write_text(f"#!{sys.executable}\n{FAKE_PYTHON}")
    path.chmod(0o755)
    return str(path)


def test_jobs_run_in_parallel_on_their_own_cores(tiny, tmp_path, fake_python, capsys,
                                                 monkeypatch):
    """--jobs 2: the runs' commands (as --print shows them) run two at a time in child
    processes, each on its own core, output in RUN/train.log; a failure does not stop the
    others; sweep.json (written by the parent only) records each job; a rerun skips the
    finished runs."""
    work = tmp_path / "sw"
    cores = sorted(os.sched_getaffinity(0))
    monkeypatch.setattr(job_devices, "cpu_cores", lambda: (cores * 2)[:2])
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("FAKE_FAIL", "eps0.1_seeds0-1")
    argv = ["sweep", tiny, "--workdir", str(work), "--jobs", "2", "--seeds-per-run", "2",
            "--python", fake_python]
    assert cli.main(argv) == 1
    out = capsys.readouterr().out
    assert "FAILED eps0.1_seeds0-1: exit code 3: training went wrong" in out
    assert f"--config.runs={work}" in out

    doc = json.loads((work / "sweep.json").read_text())
    assert doc["jobs"] == 2 and doc["seeds_per_run"] == 2
    assert doc["job_slots"] == [f"cpus {c}" for c in (cores * 2)[:2]]
    assert doc["counts"] == {"done": 3, "failed": 1}
    runs = sweep.expand_sweep(tiny, work, seeds_per_run=2)
    slots = {f"cpus {c}": (c,) for c in (cores * 2)[:2]}
    for run, entry in zip(runs, doc["runs"], strict=True):
        child = json.loads(Path(run.workdir, "child.json").read_text())
        assert child["argv"] == run.argv(fake_python)  # what --print --python shows
        assert entry["pid"] == child["pid"]
        assert child["running"] <= 2
        assert tuple(child["cpus"]) == slots[entry["devices"]]
        log = Path(entry["log"])
        assert log == Path(run.workdir, "train.log")
        assert log.read_text().startswith("# ") and shlex.join(child["argv"]) in log.read_text()
        assert entry["seeds"] == [0, 1] and entry["seed_runs"] == run.seed_runs()
    first, second = (json.loads(Path(r.workdir, "child.json").read_text()) for r in runs[:2])
    if len(cores) > 1:  # the first two jobs ran at once, on different cores
        assert first["cpus"] != second["cpus"]
    assert doc["runs"][0]["exit_code"] == 3 and doc["runs"][1]["exit_code"] == 0
    assert not list(work.glob(".*.tmp"))

    monkeypatch.delenv("FAKE_FAIL")
    for name in os.listdir(work):
        if name.startswith("started_"):
            os.remove(work / name)
    (work / "started_partner").touch()  # the rerun has one job: let it pass the barrier
    assert cli.main(argv) == 0
    doc = json.loads((work / "sweep.json").read_text())
    assert doc["counts"] == {"done": 1, "skipped": 3}
    assert Path(doc["runs"][0]["log"]).read_text().count("\n# ") == 1  # appended


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupting_the_sweep_stops_its_jobs(tiny, tmp_path, fake_python, sig):
    """Ctrl-C (or SIGTERM) to the sweep: the running jobs get SIGINT (they can clean up),
    are marked interrupted, and the sweep exits; nothing keeps running."""
    work = tmp_path / "sw"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "FAKE_SLEEP": "120"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pcmelgan_jax.cli", "sweep", tiny, "--workdir", str(work),
         "--jobs", "2", "--python", fake_python], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        # as from a terminal: a runner that started the tests in the background (`&`)
        # leaves SIGINT ignored, and an ignored signal is inherited
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 120
        while len(list(work.glob("*/child.json"))) < 2:
            assert proc.poll() is None and time.time() < deadline, proc.communicate()[0]
            time.sleep(0.1)
        time.sleep(0.5)
        proc.send_signal(sig)
        output = proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and "stopping 2 job(s)" in output
    assert "run the same command again to continue" in output
    doc = json.loads((work / "sweep.json").read_text())
    status = [e["status"] for e in doc["runs"]]
    assert status == ["interrupted", "interrupted"] + ["pending"] * 6
    for entry in doc["runs"][:2]:
        assert Path(entry["workdir"], "interrupted").exists()  # SIGINT reached the job
        with pytest.raises(ProcessLookupError):
            os.kill(entry["pid"], 0)
