"""Transparent huge pages for glibc malloc on the CPU backend, set by re-executing once.

XLA:CPU takes every step's large buffers from glibc malloc, which hands large freed blocks
back to the kernel; the next step page-faults them in again, 4 KiB at a time. glibc's
``glibc.malloc.hugetlb=1`` tunable (glibc >= 2.35) marks that memory for transparent huge
pages, so one fault maps 2 MiB and CPU train steps get faster (docs/measurements.md,
``bench/bench_host_memory.py``).

glibc reads tunables only when a process starts, so the entry points (``pcmelgan-jax``,
``train.py``, ``eval.py``, the benchmarks) call ``reexec_with_hugepages()`` first thing: the
process re-executes itself (same interpreter, arguments and PID) with ``GLIBC_TUNABLES``
extended, and the new image takes the setting out of ``os.environ`` again, so programs it
starts do not inherit it (``inherited_by_children`` passes it on where wanted). Nothing
happens where it cannot help: another backend than CPU (``JAX_PLATFORMS``, or an accelerator
plugin installed), a help flag, not glibc >= 2.35, transparent huge pages set to ``never``, a
``glibc.malloc.hugetlb`` already in ``GLIBC_TUNABLES`` (the user's choice wins), or
``PCMELGAN_HUGEPAGES=0``. Importing the module changes nothing.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from collections.abc import Callable, Iterator, Mapping, MutableMapping, Sequence
from pathlib import Path

TUNABLE = "glibc.malloc.hugetlb"
SETTING = f"{TUNABLE}=1"
OPT_OUT = "PCMELGAN_HUGEPAGES"
# Set for the re-executed image only: GLIBC_TUNABLES as it was before ("" when unset).
TUNABLES_BEFORE = "PCMELGAN_GLIBC_TUNABLES_BEFORE"
THP_MODE_FILE = Path("/sys/kernel/mm/transparent_hugepage/enabled")
MIN_GLIBC = (2, 35)
HELP_FLAGS = frozenset({"-h", "--help", "--helpfull", "--helpshort"})
# Installed, these make JAX pick a GPU or TPU by default (looked up, never imported).
ACCELERATOR_PLUGINS = (
    "jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin", "jax_rocm7_plugin", "libtpu",
)


def glibc_version() -> tuple[int, ...] | None:
    """The running glibc's (major, minor), or None for another C library or platform.

    ``os.confstr("CS_GNU_LIBC_VERSION")`` ("glibc 2.36") names the loaded library;
    ``platform.libc_ver()`` would read the interpreter binary's symbol versions instead.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        lib, version = os.confstr("CS_GNU_LIBC_VERSION").split()
        major_minor = tuple(int(part) for part in version.split(".")[:2])
    except (AttributeError, OSError, ValueError):  # not glibc, or an unexpected answer
        return None
    return major_minor if lib == "glibc" else None


def thp_mode(path: Path = THP_MODE_FILE) -> str | None:
    """The kernel's transparent huge page mode ("always", "madvise", "never"), or None."""
    try:
        text = path.read_text()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1 : end] if 0 <= start < end else None


def wants_help(args: Sequence[str]) -> bool:
    """Whether the command line (without the program name) asks for help only."""
    return any(arg in HELP_FLAGS for arg in args)


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def runs_on_cpu(
    environ: Mapping[str, str], installed: Callable[[str], bool] = _installed
) -> bool:
    """Whether JAX will run on its CPU backend: the first of ``JAX_PLATFORMS`` when set,
    else no accelerator plugin (``ACCELERATOR_PLUGINS``) is installed."""
    platforms = environ.get("JAX_PLATFORMS", "").strip()
    if platforms:
        return platforms.split(",")[0].strip().lower() == "cpu"
    return not any(installed(name) for name in ACCELERATOR_PLUGINS)


def _has_tunable(tunables: str) -> bool:
    return any(item.split("=", 1)[0] == TUNABLE for item in tunables.split(":"))


def hugepage_environment(
    environ: Mapping[str, str],
    glibc: tuple[int, ...] | None,
    thp: str | None,
) -> dict[str, str] | None:
    """The environment to re-execute with, or None when nothing should change.

    ``environ``: the current environment; ``glibc``: ``glibc_version()``; ``thp``:
    ``thp_mode()``. Appends ``glibc.malloc.hugetlb=1`` to ``GLIBC_TUNABLES`` and keeps
    the previous value in ``TUNABLES_BEFORE``.
    """
    if environ.get(OPT_OUT, "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    if glibc is None or glibc < MIN_GLIBC or thp not in ("always", "madvise"):
        return None
    tunables = environ.get("GLIBC_TUNABLES", "")
    if _has_tunable(tunables):
        return None
    env = dict(environ)
    env["GLIBC_TUNABLES"] = f"{tunables}:{SETTING}" if tunables else SETTING
    env[TUNABLES_BEFORE] = tunables
    return env


def restore_environment(environ: MutableMapping[str, str]) -> bool:
    """In a re-executed image: puts ``GLIBC_TUNABLES`` back as it was before the re-exec
    (glibc has read it already) and returns True; elsewhere returns False."""
    before = environ.pop(TUNABLES_BEFORE, None)
    if before is None:
        return False
    if before:
        environ["GLIBC_TUNABLES"] = before
    else:
        environ.pop("GLIBC_TUNABLES", None)
    return True


def startup_tunables(environ_file: Path = Path("/proc/self/environ")) -> str:
    """``GLIBC_TUNABLES`` as this process started (what glibc read); "" when unset.
    Reads the kernel's copy of the start-up environment, which later changes to
    ``os.environ`` leave alone; falls back to ``os.environ`` where it is missing."""
    try:
        entries = environ_file.read_bytes().split(b"\0")
    except OSError:
        return os.environ.get("GLIBC_TUNABLES", "")
    prefix = b"GLIBC_TUNABLES="
    found = [entry[len(prefix):] for entry in entries if entry.startswith(prefix)]
    return found[-1].decode(errors="replace") if found else ""


@contextlib.contextmanager
def inherited_by_children() -> Iterator[None]:
    """Within the block, processes started get the ``GLIBC_TUNABLES`` this process started
    with: for spawned workers that compute as this process does (a benchmark's sides)."""
    saved, tunables = os.environ.get("GLIBC_TUNABLES"), startup_tunables()
    if tunables:
        os.environ["GLIBC_TUNABLES"] = tunables
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("GLIBC_TUNABLES", None)
        else:
            os.environ["GLIBC_TUNABLES"] = saved


def reexec_with_hugepages() -> None:
    """Re-executes this process with ``glibc.malloc.hugetlb=1`` when it applies (see the
    module docstring); returns when it does not. Call it before anything else runs: the new
    process starts from the beginning, with the same ``sys.orig_argv``."""
    if restore_environment(os.environ) or _has_tunable(startup_tunables()):
        return  # the setting is in effect already (a second call in one process included)
    if wants_help(sys.argv[1:]) or not runs_on_cpu(os.environ):
        return
    env = hugepage_environment(os.environ, glibc_version(), thp_mode())
    if env is None or not sys.executable or not getattr(sys, "orig_argv", None):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
