"""Helpers shared by the benchmarks: the timer, the environment block, PyTorch's device."""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax

NETWORK_LABELS = {
    "unet_filter": "UNet filter F",
    "unet_generator": "UNet generator G",
    "alexnet": "AlexNet K=2",
    "audionet": "AudioNet K=10",
    "melgan_generator": "MelGAN generator",
    "melgan_discriminator": "MelGAN discriminator (3 scales)",
}


def timed(call: Callable[[], Any], repeats: int,
          wait: Callable[[Any], Any] = jax.block_until_ready) -> dict[str, Any]:
    """First call (compilation / warm-up) and the median of ``repeats`` further calls (s).

    ``wait`` blocks until ``call``'s result is computed (device work is asynchronous).
    """
    t0 = time.perf_counter()
    wait(call())
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        wait(call())
        times.append(time.perf_counter() - t0)
    return {"first_s": round(first, 3), "median_s": round(statistics.median(times), 5),
            "all_s": [round(t, 5) for t in times]}


def time_interleaved(
    calls: dict[str, Callable[[], Any]], repeats: int, warmup: int
) -> dict[str, dict[str, Any]]:
    """Times several calls (each must wait for its result) in interleaved rounds.

    Each call first runs ``warmup`` times untimed (the first run, which compiles, is timed
    separately as ``first_ms``); then ``repeats`` rounds call every entry once in turn, so
    that the compared implementations see the same background load. Returns per key
    {'first_ms', 'median_ms', 'min_ms', 'all_ms', 'last'} ('last': the last return value).
    """
    first, last = {}, {}
    for key, call in calls.items():
        t0 = time.perf_counter()
        last[key] = call()
        first[key] = time.perf_counter() - t0
        for _ in range(max(warmup - 1, 0)):
            last[key] = call()
    times: dict[str, list[float]] = {key: [] for key in calls}
    for _ in range(repeats):
        for key, call in calls.items():
            t0 = time.perf_counter()
            last[key] = call()
            times[key].append(1e3 * (time.perf_counter() - t0))
    return {
        key: {
            "first_ms": 1e3 * first[key],
            "median_ms": statistics.median(times[key]),
            "min_ms": min(times[key]),
            "all_ms": [round(t, 3) for t in times[key]],
            "last": last[key],
        }
        for key in calls
    }


def parse_subset(parser: argparse.ArgumentParser, text: str, choices: tuple[str, ...]
                 ) -> tuple[str, ...]:
    """An ``--only`` value: comma-separated names from ``choices`` (empty: all of them);
    an unknown name is a usage error naming it."""
    names = tuple(s.strip() for s in text.split(",") if s.strip()) or choices
    unknown = set(names) - set(choices)
    if unknown:
        parser.error(f"unknown names {sorted(unknown)}; choose from {', '.join(choices)}")
    return names


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo where readable)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict[str, Any]:
    """Machine, devices and versions, for the header of a benchmark's JSON."""
    import flax
    import numpy as np
    import optax

    from pcmelgan_jax.runtime.compilation import compiler_options
    from pcmelgan_jax.runtime.host_memory import startup_tunables

    device = jax.devices()[0]
    env: dict[str, Any] = {
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "numpy": np.__version__,
        "jax_backend": jax.default_backend(),
        "jax_device": f"{device.device_kind} ({device.platform})",
        "jax_device_count": jax.device_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "glibc_tunables": startup_tunables(),  # what glibc read (see host_memory)
        "compiler_options": {k: compiler_options(k) for k in ("train", "inference")},
        "load_average_start": list(os.getloadavg()),
    }
    try:
        import torch
    except ImportError:
        return env
    env["torch"] = torch.__version__
    env["torch_threads"] = torch.get_num_threads()
    if torch.cuda.is_available():
        env["torch_cuda_device"] = torch.cuda.get_device_name(0)
    return env


def torch_device(name: str = "auto") -> str:
    """PyTorch's device for the reference columns: "cpu", "cuda", or "auto" (CUDA when JAX
    runs on a GPU and PyTorch sees one, else CPU: both frameworks on the same hardware)."""
    import torch

    if name == "auto":
        name = "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--torch-device cuda: this PyTorch build sees no CUDA device")
    return name


def configure_torch(device: str) -> None:
    """Every CPU core on CPU; on CUDA, cuDNN autotuning and TF32 matmuls and convolutions,
    which is what XLA does by default for float32 on a GPU (a like-for-like comparison)."""
    import torch

    if device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
        return
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cuda.matmul.allow_tf32 = True


def torch_wait(device: str) -> Callable[[Any], Any]:
    """A ``wait`` (for ``timed`` or a timed call) that synchronises PyTorch's device."""
    import torch

    def wait(result: Any) -> Any:
        if device != "cpu":
            torch.cuda.synchronize()
        return result

    return wait
