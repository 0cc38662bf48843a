"""Parallel jobs: commands run as child processes, at most one per device slot at a time.

``run_jobs`` starts each ``JobSpec`` on a free ``Slot`` (``runtime.job_devices``): the slot's
environment, its CPU cores as the child's affinity mask, output appended to the job's log, a
session of its own (stopping it reaches its subprocesses) and SIGTERM when this process dies
(Linux), so no job outlives it. A failed job (an exit code, or exit 0 without its done file)
frees its slot for the next; Ctrl-C or SIGTERM stops every job (SIGINT, so that it can close
its files, then SIGKILL after ``STOP_GRACE_S``) and marks them interrupted. Each job's record (a
dict: status, started, devices, log, pid, error, exit_code, finished, seconds) is updated in
place, and ``save`` called after every change.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from pcmelgan_jax.runtime.job_devices import Slot

# A job's status in its record.
RUNNING, DONE, FAILED, INTERRUPTED = "running", "done", "failed", "interrupted"
STOP_GRACE_S = 20.0  # after Ctrl-C, how long jobs may clean up before they are killed


# Runs a job's command after setting what only the process itself can set (no preexec_fn:
# a fork of a multithreaded parent can deadlock): argv[1] the CPU cores ("" = unchanged),
# then SIGTERM when the parent process dies (Linux PR_SET_PDEATHSIG), so no job outlives it.
_LAUNCHER = """\
import ctypes, os, signal, sys
if sys.argv[1]:
    os.sched_setaffinity(0, [int(c) for c in sys.argv[1].split(",")])
try:
    ctypes.CDLL(None).prctl(1, int(signal.SIGTERM))
except (AttributeError, OSError):
    pass
signal.signal(signal.SIGINT, signal.SIG_DFL)  # a sweep started with & ignores it: jobs must not
os.execvp(sys.argv[2], sys.argv[2:])
"""


def timestamp() -> str:
    """The local time to the second, ISO 8601 with the UTC offset."""
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


@dataclasses.dataclass(frozen=True)
class JobSpec:
    """A command to run as a child process."""

    name: str  # in messages
    argv: list[str]  # the program (looked up on PATH) and its arguments
    log: str  # its stdout and stderr, appended (the folder is made)
    record: dict[str, Any]  # its status ..., updated in place
    done_file: str | None = None  # exit 0 without this file is a failure


def job_argv(argv: Sequence[str], slot: Slot) -> list[str]:
    """The child process that runs ``argv`` on ``slot``: this interpreter running
    ``_LAUNCHER``, which sets the slot's cores and becomes ``argv``."""
    cpus = ",".join(str(c) for c in slot.cpus)
    return [sys.executable, "-S", "-c", _LAUNCHER, cpus, *argv]


def _start_job(spec: JobSpec, slot: Slot, tag: str) -> subprocess.Popen:
    """Starts ``spec``'s command in a child process (a session of its own, so that stopping
    it reaches its subprocesses) on ``slot``, output appended to ``spec.log``."""
    env = dict(os.environ)
    for key, value in slot.env.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    env["PYTHONUNBUFFERED"] = "1"
    os.makedirs(os.path.dirname(spec.log) or ".", exist_ok=True)
    with open(spec.log, "a", encoding="utf-8") as log:
        log.write(f"# {timestamp()} pcmelgan-jax {tag}, {slot.label}: {shlex.join(spec.argv)}\n")
        log.flush()
        return subprocess.Popen(
            job_argv(spec.argv, slot), stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _log_tail(path: str, size: int = 4096) -> str:
    """The last non-empty line of a log file ("" when there is none)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - size))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return ""
    return next((line.strip() for line in reversed(lines) if line.strip()), "")


def _job_outcome(spec: JobSpec, code: int) -> str | None:
    """None when the job finished its work, else what went wrong."""
    if code == 0:
        if spec.done_file is None or os.path.isfile(spec.done_file):
            return None
        what = f"exited 0 without {os.path.basename(spec.done_file)}"
    elif code < 0:
        try:
            what = f"killed by {signal.Signals(-code).name}"
        except ValueError:
            what = f"killed by signal {-code}"
    else:
        what = f"exit code {code}"
    tail = _log_tail(spec.log)
    return f"{what}: {tail}" if tail else what


def _stop_jobs(procs: Sequence[subprocess.Popen], grace: float = STOP_GRACE_S) -> None:
    """SIGINT to each running job's process group (a KeyboardInterrupt in its training,
    which closes its files), SIGKILL to those still running after ``grace`` seconds."""
    for sig, wait in ((signal.SIGINT, grace), (signal.SIGKILL, 5.0)):
        alive = [p for p in procs if p.poll() is None]
        for p in alive:
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while any(p.poll() is None for p in alive) and time.monotonic() < deadline:
            time.sleep(0.1)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@dataclasses.dataclass
class _Job:
    spec: JobSpec
    proc: subprocess.Popen
    slot: int  # index into the slots
    t0: float


class _JobPool:
    """The queued jobs as child processes, at most one per slot at a time; each outcome goes
    to its record (``save`` after every change)."""

    def __init__(self, jobs: Sequence[JobSpec], slots: Sequence[Slot],
                 save: Callable[[], None], out: TextIO, tag: str):
        self.queue, self.slots = list(enumerate(jobs)), slots
        self.save, self.out, self.tag = save, out, tag
        self.free = list(range(len(slots)))
        self.running: dict[int, _Job] = {}  # index in jobs -> job

    def say(self, text: str) -> None:
        print(f"[{self.tag}] {text}", file=self.out, flush=True)

    def start(self) -> None:
        """Starts queued jobs on the free slots."""
        while self.queue and self.free:
            (i, spec), k = self.queue.pop(0), self.free.pop(0)
            record, slot = spec.record, self.slots[k]
            record.update(status=RUNNING, started=timestamp(), devices=slot.label, log=spec.log)
            try:
                proc = _start_job(spec, slot, self.tag)
            except OSError as e:  # e.g. a program that does not exist
                record.update(status=FAILED, error=f"cannot start: {e}", finished=timestamp())
                self.say(f"{spec.name} FAILED: {record['error']}")
                self.free.append(k)
            else:
                record["pid"] = proc.pid
                self.running[i] = _Job(spec, proc, k, time.perf_counter())
                self.say(f"started {spec.name} on {slot.label} (pid {proc.pid}, log {spec.log})")
            self.save()

    def end(self, job: _Job, **outcome: Any) -> None:
        """Records how ``job`` ended (``status``, ``error`` ...) with its exit code and time."""
        job.spec.record.update(**outcome, exit_code=job.proc.poll(), finished=timestamp(),
                               seconds=round(time.perf_counter() - job.t0, 1))

    def reap(self) -> bool:
        """Records the jobs that ended and frees their slots; False when none had."""
        ended = [i for i, job in self.running.items() if job.proc.poll() is not None]
        for i in ended:
            job = self.running.pop(i)
            self.free.append(job.slot)
            error = _job_outcome(job.spec, job.proc.returncode)
            self.end(job, status=FAILED if error else DONE, error=error)
            state = f"FAILED: {error}" if error else f"done in {job.spec.record['seconds']} s"
            self.say(f"{job.spec.name} {state} ({len(self.queue) + len(self.running)} to go)")
        if ended:
            self.save()
        return bool(ended)

    def stop(self) -> None:
        """Stops the running jobs and marks them interrupted."""
        self.say(f"interrupted: stopping {len(self.running)} job(s)")
        _stop_jobs([job.proc for job in self.running.values()])
        for job in self.running.values():
            self.end(job, status=INTERRUPTED, error="interrupted")
        self.save()


def run_jobs(jobs: Sequence[JobSpec], slots: Sequence[Slot], save: Callable[[], None],
             out: TextIO, tag: str = "sweep", poll_s: float = 0.2) -> None:
    """Runs ``jobs`` as child processes, at most one per slot at a time, in order; a failure
    frees its slot for the next job; Ctrl-C or SIGTERM stops every job, marks them
    interrupted and re-raises (KeyboardInterrupt). ``tag`` names the caller in messages
    (``[tag] ...``) and log headers."""
    pool = _JobPool(jobs, slots, save, out, tag)
    main_thread = threading.current_thread() is threading.main_thread()  # signals: main only
    previous = signal.signal(signal.SIGTERM, _interrupt) if main_thread else None
    try:
        while pool.queue or pool.running:
            pool.start()
            if not pool.reap():
                time.sleep(poll_s)
    except BaseException:
        pool.stop()
        raise
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
