"""The run folder's layout and the one way outputs are written (atomically).

A run folder (a stage's ``--workdir``, or one seed of a multi-seed run) holds::

    config.json           the resolved config (written first; marks the folder as a run)
    checkpoints/          Orbax checkpoints of the training state (resume)
    models/<network>/     exported networks (``checkpointing.save_model``; model.json marks one)
    samples/              spectrogram panels and wavs written during training
    metrics.jsonl         training and evaluation scalars (also in tensorboard/)
    final_metrics.json    written last: its presence marks the run as complete
    seed_<S>/             with ``num_seeds`` > 1: seed S as a run folder of its own
    .lock                 held (``fcntl.flock``) by the process training in the folder

Every file another program may read while this one runs (markers, configs, reports, wavs)
goes through ``atomic_path``: it is written under a temporary name next to its destination
and renamed into place, so a reader sees the old file or the new one, never a partial one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import socket
import time
from collections.abc import Iterable, Iterator
from typing import Any

CONFIG_JSON = "config.json"
FINAL_METRICS_JSON = "final_metrics.json"
CHECKPOINTS = "checkpoints"
MODELS = "models"
SAMPLES = "samples"
METRICS_JSONL = "metrics.jsonl"
MODEL_JSON = "model.json"  # inside an exported network's folder: what the network is
LOCK = ".lock"
_held: set[str] = set()  # run folders this process holds the lock of


class WorkdirBusyError(RuntimeError):
    """Another process holds the run folder's lock."""


def models_dir(run: str | os.PathLike) -> str:
    """``RUN/models``: the exported networks."""
    return os.path.join(os.fspath(run), MODELS)


def model_dir(run: str | os.PathLike, network: str) -> str:
    """``RUN/models/<network>``."""
    return os.path.join(models_dir(run), network)


def has_model(run: str | os.PathLike, network: str) -> bool:
    """Whether ``RUN/models/<network>`` holds an exported network."""
    return os.path.isfile(os.path.join(model_dir(run, network), MODEL_JSON))


def seed_dir(workdir: str | os.PathLike, seed: int) -> str:
    """``WORKDIR/seed_<S>``: seed ``S`` of a multi-seed run, a run folder of its own."""
    return os.path.join(os.fspath(workdir), f"seed_{seed}")


def config_path(run: str | os.PathLike) -> str:
    return os.path.join(os.fspath(run), CONFIG_JSON)


def final_metrics_path(run: str | os.PathLike) -> str:
    return os.path.join(os.fspath(run), FINAL_METRICS_JSON)


def is_complete(run: str | os.PathLike) -> bool:
    """Whether the run finished (its ``final_metrics.json`` exists)."""
    return os.path.isfile(final_metrics_path(run))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yields a temporary file name next to ``path``; on success it replaces ``path``.

    The caller creates the file under that name (so it gets the usual permissions, not a
    private temporary file's). On an error the temporary file is removed and ``path`` is left
    as it was. The parent folder is created. The temporary name starts with a dot and ends in
    ``.tmp``.
    """
    path = os.path.abspath(os.fspath(path))
    folder, name = os.path.split(path)
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{name}.{secrets.token_hex(8)}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Writes ``text`` (UTF-8) to ``path`` atomically, flushed to disk before the rename."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int = 2) -> None:
    """Writes ``obj`` as JSON (sorted keys; ``repr`` for what JSON cannot hold) atomically."""
    write_text_atomic(path, json.dumps(obj, indent=indent, sort_keys=True, default=repr) + "\n")


def existing_path(candidates: Iterable[str | os.PathLike | None], base: str) -> str | None:
    """The first candidate that exists, as an absolute path (a relative one is tried as
    given, then below ``base``); empty candidates are skipped."""
    for candidate in candidates:
        if not candidate:
            continue
        candidate = os.path.expanduser(os.fspath(candidate))
        for path in (candidate, os.path.join(base, candidate)):
            if os.path.exists(path):
                return os.path.abspath(path)
    return None


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON file as a dict ({} when it does not exist); a broken one is a one-line error."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None


@contextlib.contextmanager
def exclusive(run: str | os.PathLike) -> Iterator[None]:
    """Holds ``RUN/.lock`` while the block runs; raises WorkdirBusyError (one line, naming the
    holder) when another process holds it. Re-entrant within one process.

    The lock is an ``fcntl.flock`` on an open file: the kernel releases it when its process
    exits, however it exits (SIGKILL too), so a killed run never leaves it stuck. The file
    itself stays; it only records the last holder for the message.
    """
    run = os.path.abspath(os.fspath(run))
    if run in _held:
        yield
        return
    os.makedirs(run, exist_ok=True)
    with open(os.path.join(run, LOCK), "a+", encoding="utf-8") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise WorkdirBusyError(
                f"{run}: already in use by {holder}; wait for it to finish or use another "
                "--workdir"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()} since "
                f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        f.flush()
        _held.add(run)
        try:
            yield
        finally:
            _held.discard(run)
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
