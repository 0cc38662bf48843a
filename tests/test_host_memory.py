"""The entry points' re-execution with glibc malloc's transparent huge pages."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pcmelgan_jax.runtime import host_memory
from pcmelgan_jax.runtime.host_memory import (
    SETTING,
    TUNABLES_BEFORE,
    hugepage_environment,
    restore_environment,
    runs_on_cpu,
    wants_help,
)

ROOT = Path(__file__).resolve().parents[1]


def test_adds_the_tunable_and_keeps_the_rest():
    env = hugepage_environment({"PATH": "/bin"}, (2, 36), "madvise")
    assert env == {"PATH": "/bin", "GLIBC_TUNABLES": SETTING, TUNABLES_BEFORE: ""}
    env = hugepage_environment({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, (2, 35), "always")
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    assert env[TUNABLES_BEFORE] == "glibc.malloc.arena_max=2"


def test_restore_puts_the_tunables_back():
    """The re-executed image leaves the environment as it was before, for its children."""
    env = hugepage_environment({"PATH": "/bin"}, (2, 36), "madvise")
    assert restore_environment(env) and env == {"PATH": "/bin"}
    env = hugepage_environment({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, (2, 36), "always")
    assert restore_environment(env) and env == {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}
    user = {"GLIBC_TUNABLES": SETTING}  # set by the user, not by a re-exec: kept
    assert not restore_environment(user) and user == {"GLIBC_TUNABLES": SETTING}


def test_help_flags():
    for args in (["-h"], ["--help"], ["--helpfull"], ["train", "--help"]):
        assert wants_help(args)
    assert not wants_help(["--config", "configs/vocoder.py", "--workdir", "help"])


@pytest.mark.parametrize(
    "platforms, plugin, cpu",
    [
        ("", None, True),
        ("", "jax_cuda12_plugin", False),
        ("", "jax_cuda13_plugin", False),
        ("", "libtpu", False),
        ("cpu", "jax_cuda12_plugin", True),  # the user's JAX_PLATFORMS wins
        ("cuda,cpu", None, False),
        ("tpu", None, False),
    ],
)
def test_runs_on_cpu(platforms, plugin, cpu):
    environ = {"JAX_PLATFORMS": platforms} if platforms else {}
    assert runs_on_cpu(environ, installed=lambda name: name == plugin) == cpu


@pytest.mark.parametrize(
    "environ, glibc, thp",
    [
        ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, (2, 36), "madvise"),  # the user's choice
        ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=1:glibc.malloc.hugetlb=2"}, (2, 36), "always"),
        ({"PCMELGAN_HUGEPAGES": "0"}, (2, 36), "madvise"),
        ({"PCMELGAN_HUGEPAGES": "off"}, (2, 36), "madvise"),
        ({}, (2, 34), "madvise"),  # glibc without the tunable
        ({}, None, "madvise"),  # another C library or platform
        ({}, (2, 36), "never"),
        ({}, (2, 36), None),  # no transparent huge pages in this kernel
    ],
)
def test_changes_nothing_where_it_does_not_apply(environ, glibc, thp):
    assert hugepage_environment(environ, glibc, thp) is None


def test_glibc_version_of_the_loaded_library(monkeypatch):
    monkeypatch.setattr(host_memory.sys, "platform", "linux")
    monkeypatch.setattr(host_memory.os, "confstr", lambda name: "glibc 2.36")
    assert host_memory.glibc_version() == (2, 36)
    monkeypatch.setattr(host_memory.os, "confstr", lambda name: "glibc 2.39.9000")
    assert host_memory.glibc_version() == (2, 39)

    def unknown(name):
        raise ValueError("unrecognized configuration name")

    monkeypatch.setattr(host_memory.os, "confstr", unknown)  # e.g. musl
    assert host_memory.glibc_version() is None
    monkeypatch.setattr(host_memory.os, "confstr", lambda name: None)
    assert host_memory.glibc_version() is None
    monkeypatch.setattr(host_memory.os, "confstr", lambda name: "uclibc 1.0")
    assert host_memory.glibc_version() is None
    monkeypatch.setattr(host_memory.sys, "platform", "darwin")
    assert host_memory.glibc_version() is None


def test_thp_mode_reads_the_bracketed_mode(tmp_path):
    path = tmp_path / "enabled"
    path.write_text("always [madvise] never\n")
    assert host_memory.thp_mode(path) == "madvise"
    path.write_text("[always] madvise never\n")
    assert host_memory.thp_mode(path) == "always"
    path.write_text("garbled\n")
    assert host_memory.thp_mode(path) is None
    assert host_memory.thp_mode(tmp_path / "missing") is None


def _clean_env(**extra: str) -> dict[str, str]:
    """This environment without the huge-page settings, plus ``extra``."""
    drop = ("GLIBC_TUNABLES", "PCMELGAN_HUGEPAGES", "JAX_PLATFORMS", TUNABLES_BEFORE)
    env = {k: v for k, v in os.environ.items() if k not in drop}
    return {**env, **extra}


def _run(code: str, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_clean_env(**extra),
                          capture_output=True, text=True, timeout=120, check=True)


REEXEC = """
import os, subprocess, sys
from pcmelgan_jax.runtime.host_memory import (
    inherited_by_children, reexec_with_hugepages, startup_tunables)
print("started", flush=True)
reexec_with_hugepages()
reexec_with_hugepages()  # a second call changes nothing
def child():
    code = "import os; print(os.environ.get('GLIBC_TUNABLES'))"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip()
with inherited_by_children():
    worker = child()
print(os.getpid(), startup_tunables() or None, os.environ.get("GLIBC_TUNABLES"), child(), worker)
"""

needs_hugepages = pytest.mark.skipif(
    hugepage_environment({}, host_memory.glibc_version(), host_memory.thp_mode()) is None,
    reason="glibc >= 2.35 with transparent huge pages is needed",
)


@needs_hugepages
def test_reexecutes_once_in_the_same_process_and_children_do_not_inherit():
    proc = subprocess.Popen([sys.executable, "-c", REEXEC], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, env=_clean_env(JAX_PLATFORMS="cpu"))
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0
    # started twice (once per program image), the rest once, same PID; the setting is in
    # effect in this process, gone from its environment and its child's, except for a
    # worker started within inherited_by_children()
    assert out.splitlines() == [
        "started", "started", f"{proc.pid} {SETTING} None None {SETTING}"]


@needs_hugepages
@pytest.mark.parametrize(
    "args, extra",
    [
        ([], {"PCMELGAN_HUGEPAGES": "0"}),  # the opt-out
        (["--help"], {}),
        ([], {"JAX_PLATFORMS": "cuda"}),  # another backend
        ([], {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}),  # the user's choice, inherited
    ],
)
def test_no_reexec(args, extra):
    out = subprocess.run([sys.executable, "-c", REEXEC, *args], cwd=ROOT, text=True,
                         capture_output=True, check=True, timeout=120,
                         env=_clean_env(**{"JAX_PLATFORMS": "cpu", **extra})).stdout
    tunables = extra.get("GLIBC_TUNABLES", "None")
    assert out.splitlines()[0] == "started"
    assert out.splitlines()[1].split(" ", 1)[1] == " ".join([tunables] * 4)


FAULTS = """
import resource
from pcmelgan_jax.runtime.host_memory import reexec_with_hugepages
reexec_with_hugepages()
import jax, jax.numpy as jnp
x = jnp.ones((64, 1024, 256), jnp.float32)  # 64 MiB: above glibc's largest mmap threshold
f = jax.jit(lambda x: x * 2.0 + 1.0)
f(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    f(x).block_until_ready()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 4)
"""


@needs_hugepages
def test_huge_pages_cut_the_page_faults_of_fresh_buffers():
    """Each call's 64 MiB output is fresh memory from the kernel: 16384 faults of 4 KiB
    each without the tunable, a few dozen of 2 MiB with it."""
    plain = float(_run(FAULTS, PCMELGAN_HUGEPAGES="0", JAX_PLATFORMS="cpu").stdout.split()[-1])
    huge = float(_run(FAULTS, JAX_PLATFORMS="cpu").stdout.split()[-1])
    assert plain > 16384 * 0.9, f"{plain} faults per call without huge pages"
    assert huge < plain / 8, (
        f"{huge} faults per call with glibc.malloc.hugetlb=1 ({plain} without): the kernel "
        "did not back malloc's memory with transparent huge pages")
