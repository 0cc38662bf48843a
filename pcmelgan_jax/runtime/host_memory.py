"""Transparent huge pages for glibc malloc, set by re-executing an entry point once.

XLA:CPU takes every step's large buffers (the train step's temporaries, its outputs) from
glibc malloc, which hands large freed blocks back to the kernel (unmapped or trimmed), with
its default settings and also with mmap disabled and the trim threshold raised (tried). The
next step page-faults all of that memory in again, 4 KiB at a time: on 2 Xeon cores the
MelGAN discriminator's train step at batch 16 faulted 508 MiB per step (0.3 s of system
time), the generator's 908 MiB (0.6 s). glibc's ``glibc.malloc.hugetlb=1`` tunable
(glibc >= 2.35) marks that memory for transparent huge pages, so a fault maps 2 MiB: faults
per step dropped 25-177x and the train steps took 0.84x (AlexNet, MelGAN generator), 0.92x
(discriminator) and 0.99x (AudioNet) the time (``bench/bench_host_memory.py``). PyTorch has
its own opt-in for its allocations (``THP_MEM_ALLOC_ENABLE=1``).

glibc reads tunables only when a process starts, so the entry points (``pcmelgan-jax``,
``train.py``, ``eval.py``, the benchmarks) call ``reexec_with_hugepages()`` first thing: when
the setting applies and is missing, the process re-executes itself (same interpreter and
arguments, same PID) with ``GLIBC_TUNABLES`` extended. Nothing happens where it cannot help:
not Linux with glibc >= 2.35, transparent huge pages set to ``never``, a ``glibc.malloc.hugetlb``
already in ``GLIBC_TUNABLES`` (the user's choice wins), or ``PCMELGAN_HUGEPAGES=0``.
Child processes inherit the environment. Importing the package changes nothing.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

TUNABLE = "glibc.malloc.hugetlb"
SETTING = f"{TUNABLE}=1"
OPT_OUT = "PCMELGAN_HUGEPAGES"
THP_MODE_FILE = Path("/sys/kernel/mm/transparent_hugepage/enabled")
MIN_GLIBC = (2, 35)


def glibc_version() -> tuple[int, ...] | None:
    """The running glibc's (major, minor), or None for another C library or platform.

    ``os.confstr("CS_GNU_LIBC_VERSION")`` ("glibc 2.36") names the loaded library;
    ``platform.libc_ver()`` reads the newest glibc symbol version the interpreter binary
    references, which is older for interpreters built for old glibc (manylinux-style).
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


def hugepage_environment(
    environ: Mapping[str, str],
    glibc: tuple[int, ...] | None,
    thp: str | None,
) -> dict[str, str] | None:
    """The environment to re-execute with, or None when nothing should change.

    ``environ``: the current environment; ``glibc``: ``glibc_version()``; ``thp``:
    ``thp_mode()``. Appends ``glibc.malloc.hugetlb=1`` to ``GLIBC_TUNABLES``.
    """
    if environ.get(OPT_OUT, "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    if glibc is None or glibc < MIN_GLIBC or thp not in ("always", "madvise"):
        return None
    tunables = environ.get("GLIBC_TUNABLES", "")
    if any(item.split("=", 1)[0] == TUNABLE for item in tunables.split(":")):
        return None
    env = dict(environ)
    env["GLIBC_TUNABLES"] = f"{tunables}:{SETTING}" if tunables else SETTING
    return env


def reexec_with_hugepages() -> None:
    """Re-executes this process with ``glibc.malloc.hugetlb=1`` when it applies (see the
    module docstring); returns when it does not. Call it before anything else runs: the new
    process starts from the beginning, with the same ``sys.orig_argv``."""
    env = hugepage_environment(os.environ, glibc_version(), thp_mode())
    if env is None or not sys.executable or not getattr(sys, "orig_argv", None):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
