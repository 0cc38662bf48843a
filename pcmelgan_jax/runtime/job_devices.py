"""Device kinds and per-job device subsets: this machine split between parallel jobs.

``job_slots(N)`` gives each of N child processes a ``Slot`` of its own: GPUs through
``CUDA_VISIBLE_DEVICES`` (more jobs than GPUs share them, each with
``XLA_PYTHON_CLIENT_MEM_FRACTION`` of the memory), TPU chips through ``TPU_VISIBLE_CHIPS``
with the process bounds and a mesh-controller port of its own, CPU cores through the child's
affinity mask (``Slot.cpus``, set by ``pcmelgan_jax.jobs``). The device kind is read from
``JAX_PLATFORMS``, the installed JAX plugins and the device files, without starting a JAX
backend here: a backend in this process would hold the accelerators (a TPU chip opens in one
process only; a GPU backend takes most of its memory) that the jobs need.
"""

from __future__ import annotations

import dataclasses
import glob
import importlib.util
import os
import socket
from collections.abc import Mapping, Sequence


class DeviceSplitError(ValueError):
    """No device of the kind to split, or a platform that is not split here."""


@dataclasses.dataclass(frozen=True)
class Slot:
    """Where one parallel job runs: environment settings (None unsets a variable) and, on
    CPU, the cores of its affinity mask."""

    label: str  # e.g. "CUDA_VISIBLE_DEVICES=0,1", "cpus 0-3"
    env: dict[str, str | None] = dataclasses.field(default_factory=dict)
    cpus: tuple[int, ...] = ()


GPU_MEMORY_SHARED = 0.9  # of a GPU's memory, split between the jobs that share it
TPU_CHIP_BOUNDS = {1: "1,1,1", 2: "1,2,1", 4: "2,2,1", 8: "2,4,1"}  # chips -> process bounds
# a job's TPU settings replace any multi-process ones this process was started with
TPU_PROCESS_VARIABLES = ("TPU_PROCESS_ADDRESSES", "TPU_PROCESS_PORT", "CLOUD_TPU_TASK_ID",
                         "TPU_HOST_BOUNDS", "TPU_CHIPS_PER_HOST_BOUNDS")


def _listed(value: str) -> list[str]:
    """A comma-separated device list; CUDA stops at the first negative entry."""
    out = []
    for item in (v.strip() for v in value.split(",")):
        if not item or item.startswith("-"):
            break
        out.append(item)
    return out


def visible_gpus(environ: Mapping[str, str]) -> list[str]:
    """The CUDA devices a process started here sees: ``CUDA_VISIBLE_DEVICES`` when set, else
    one per ``/dev/nvidia<N>`` device file (CUDA numbers them 0 ..)."""
    if "CUDA_VISIBLE_DEVICES" in environ:
        return _listed(environ["CUDA_VISIBLE_DEVICES"])
    return [str(i) for i in range(len(glob.glob("/dev/nvidia[0-9]*")))]


def visible_tpu_chips(environ: Mapping[str, str]) -> list[str]:
    """The TPU chips here: ``TPU_VISIBLE_CHIPS`` (or the older ``TPU_VISIBLE_DEVICES``) when
    set, else ``/dev/accel<N>`` (chip N), else the numbered ``/dev/vfio`` groups (newer VMs)."""
    for name in ("TPU_VISIBLE_CHIPS", "TPU_VISIBLE_DEVICES"):
        if environ.get(name):
            return _listed(environ[name])
    accel = sorted(int(p[len("/dev/accel"):]) for p in glob.glob("/dev/accel[0-9]*"))
    if accel:
        return [str(i) for i in accel]
    try:
        groups = [e for e in os.listdir("/dev/vfio") if e.isdigit()]
    except OSError:
        groups = []
    return [str(i) for i in range(len(groups))]


def cpu_cores() -> list[int]:
    """The cores this process may run on (its affinity mask)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def device_kind(environ: Mapping[str, str] | None = None) -> str:
    """``"gpu"``, ``"tpu"`` or ``"cpu"``: the backend a training process started here picks.

    Read from ``JAX_PLATFORMS`` (its first entry), else the installed plugins
    (``host_memory.ACCELERATOR_PLUGINS``) whose devices exist; no JAX backend starts here (it
    would hold the devices the jobs need). Raises ``DeviceSplitError`` for another platform
    (ROCm).
    """
    from pcmelgan_jax.runtime.host_memory import ACCELERATOR_PLUGINS, runs_on_cpu

    environ = os.environ if environ is None else environ
    if runs_on_cpu(environ):
        return "cpu"
    platform = environ.get("JAX_PLATFORMS", "").split(",")[0].strip().lower()
    if platform in ("cuda", "gpu"):
        return "gpu"
    if platform == "tpu":
        return "tpu"
    if platform:
        raise DeviceSplitError(f"JAX_PLATFORMS={platform}: only cpu, cuda and tpu jobs are "
                               "split here; use --print with a scheduler")
    if importlib.util.find_spec("libtpu") is not None and visible_tpu_chips(environ):
        return "tpu"
    installed = [m for m in ACCELERATOR_PLUGINS if importlib.util.find_spec(m) is not None]
    if any("cuda" in m for m in installed) and visible_gpus(environ):
        return "gpu"
    if any("rocm" in m for m in installed):
        raise DeviceSplitError("a ROCm plugin is installed; only cpu, cuda and tpu jobs are split "
                               "here (set JAX_PLATFORMS=cpu, or use --print with a scheduler)")
    return "cpu"  # JAX falls back to its CPU backend when a plugin finds no device


def _power_of_two_at_most(n: int) -> int:
    return 1 << (max(n, 1).bit_length() - 1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _span(cores: Sequence[int]) -> str:
    return f"{cores[0]}-{cores[-1]}" if len(cores) > 1 else str(cores[0])


def _gpu_slots(jobs: int, gpus: list[str], environ: Mapping[str, str]) -> list[Slot]:
    """Equal power-of-two groups (batches split over them evenly) or, with more jobs than
    GPUs, GPUs shared round-robin with a share of their memory each."""
    if jobs <= len(gpus):
        size = _power_of_two_at_most(len(gpus) // jobs)
        groups = [gpus[i * size:(i + 1) * size] for i in range(jobs)]
        return [Slot(f"CUDA_VISIBLE_DEVICES={','.join(g)}", {"CUDA_VISIBLE_DEVICES": ",".join(g)})
                for g in groups]
    sharing = -(-jobs // len(gpus))
    fraction = environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION") or (
        f"{GPU_MEMORY_SHARED / sharing:.2f}")
    return [Slot(f"CUDA_VISIBLE_DEVICES={gpus[i % len(gpus)]} (memory {fraction})",
                 {"CUDA_VISIBLE_DEVICES": gpus[i % len(gpus)],
                  "XLA_PYTHON_CLIENT_MEM_FRACTION": fraction})
            for i in range(jobs)]


def _tpu_slots(jobs: int, chips: list[str]) -> list[Slot]:
    """Equal power-of-two groups of chips (a TPU chip opens in one process only), each with
    its process bounds and a mesh controller port of its own."""
    size = min(_power_of_two_at_most(len(chips) // jobs), max(TPU_CHIP_BOUNDS))
    slots = []
    for i in range(jobs):
        group = ",".join(chips[i * size:(i + 1) * size])
        port = str(_free_port())
        env: dict[str, str | None] = dict.fromkeys(TPU_PROCESS_VARIABLES)
        env.update({
            "TPU_VISIBLE_CHIPS": group, "TPU_VISIBLE_DEVICES": group,  # both spellings
            "TPU_PROCESS_BOUNDS": "1,1,1", "TPU_CHIPS_PER_PROCESS_BOUNDS": TPU_CHIP_BOUNDS[size],
            "TPU_MESH_CONTROLLER_ADDRESS": f"localhost:{port}", "TPU_MESH_CONTROLLER_PORT": port,
        })
        slots.append(Slot(f"TPU_VISIBLE_CHIPS={group}", env))
    return slots


def job_slots(jobs: int, kind: str | None = None,
              environ: Mapping[str, str] | None = None) -> tuple[str, list[Slot]]:
    """(device kind, one ``Slot`` per parallel job): disjoint GPUs, TPU chips or CPU cores
    (see the module docstring). Fewer slots than ``jobs`` where there are fewer TPU chips or
    cores than jobs. ``kind``: as ``device_kind`` (None: detected). Raises
    ``DeviceSplitError`` where there is nothing to split."""
    environ = os.environ if environ is None else environ
    kind = kind or device_kind(environ)
    if kind == "gpu":
        gpus = visible_gpus(environ)
        if not gpus:
            raise DeviceSplitError("no GPU found (CUDA_VISIBLE_DEVICES, /dev/nvidia*)")
        return kind, _gpu_slots(jobs, gpus, environ)
    if kind == "tpu":
        chips = visible_tpu_chips(environ)
        if not chips:
            raise DeviceSplitError("no TPU chip found (TPU_VISIBLE_CHIPS, /dev/accel*)")
        return kind, _tpu_slots(min(jobs, len(chips)), chips)
    cores = cpu_cores()
    jobs = min(jobs, len(cores))
    bounds = [round(i * len(cores) / jobs) for i in range(jobs + 1)]
    groups = [tuple(cores[bounds[i]:bounds[i + 1]]) for i in range(jobs)]
    return "cpu", [Slot(f"cpus {_span(g)}", {}, g) for g in groups]
