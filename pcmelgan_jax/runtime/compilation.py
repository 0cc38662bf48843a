"""XLA compiler options of the project's jitted programs on CPU: which kernels run what.

jaxlib's XLA:CPU hands convolutions, matmuls and reductions to YNNPACK fusions by default
(``xla_cpu_experimental_ynn_fusion_type``). For this project's networks YNNPACK's
convolutions are the slow choice, and in forward passes its matmuls too. Measured on 2 EPYC
cores with jaxlib 0.10.2, default options and these ones interleaved in one process:

- ``"train"`` (YNNPACK for reductions and matmuls), train steps at batch 16: U-Net F 67 ->
  58 ms, U-Net G 72 -> 64 ms, AlexNet 409 -> 390 ms; AudioNet and the MelGAN generator
  within 2 %. Whole stages: PCMelGAN +9 %, classifier +9 to 11 %, vocoder +-1 %. With
  these kernels the models use XLA's gradients for AlexNet's convolutions (363 ms instead of
  395 with per-tap matmuls) and XLA's forward for the U-Net's one-channel convolution in
  training (-5 to -7 % per U-Net step), forms that were slower with YNNPACK's.
- ``"inference"`` (YNNPACK for reductions), forward passes: the anonymiser's U-Nets F + G
  (batch 8) 14.4 -> 12.3 ms, a vocoder chunk (136 frames) 63.7 -> 60.7 ms.

Accuracy is that of the defaults. Forward outputs agree with float64 as closely either way
(U-Net G in evaluation mode 2.3e-7 relative; in training mode ~1.3e-5, median over 24
initialisations, as the BatchNorm statistics of the 5 x 2 bottleneck amplify float32
rounding). Training-mode gradients against float64 are ~1e-5 relative unless rounding flips
a ReLU whose input is within ~1e-5 of zero: that element's gradient then changes by its whole
value and kernel gradients move by 1e-3 to 1e-1. Such flips are as frequent with either kernel
choice: U-Net G at batch 8 had none in 8 of 24 initialisations with the defaults, 9 of 24 with
``"train"`` (13 and 10 of 24 on 2 Xeon cores; at batch 2, 20 and 21, median unflipped error
8.4e-6 either way). The slow test in ``tests/test_compilation.py`` repeats the comparison at
batch 2.

``compiler_options(kind)`` is the dict for ``jax.jit(..., compiler_options=...)``; ``jit``
builds such a program at its first call. The dict is empty when the running jaxlib does not
know the option, or when ``XLA_FLAGS`` sets it (the user's choice wins). Only XLA:CPU reads it.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.numpy as jnp

YNN_FUSION_OPTION = "xla_cpu_experimental_ynn_fusion_type"

Kind = Literal["train", "inference"]

_YNN_FUSIONS: dict[str, tuple[str, ...]] = {
    "train": ("REDUCE", "DOT", "INDIVIDUAL_DOT"),  # XLA's own convolutions
    "inference": ("REDUCE",),  # XLA's own convolutions and matmuls
}


def _requested_options(kind: Kind) -> dict[str, str]:
    if kind not in _YNN_FUSIONS:
        raise ValueError(f"kind must be one of {sorted(_YNN_FUSIONS)}, not {kind!r}")
    return {YNN_FUSION_OPTION: ",".join(f"LIBRARY_FUSION_TYPE_{t}" for t in _YNN_FUSIONS[kind])}


@functools.cache
def _ynn_option_supported() -> bool:
    """Whether this jaxlib accepts the option (one tiny compile, once per process)."""
    if YNN_FUSION_OPTION in os.environ.get("XLA_FLAGS", ""):
        return False
    try:
        jax.jit(jnp.negative).lower(jnp.zeros(2)).compile(
            compiler_options=_requested_options("train")
        )
    except Exception:  # an unknown option or enum value: keep jaxlib's defaults
        return False
    return True


def compiler_options(kind: Kind) -> dict[str, str]:
    """Compiler options of a ``kind`` program ("train": train steps; "inference": forward
    passes); {} where the option is unsupported or set in ``XLA_FLAGS``."""
    requested = _requested_options(kind)
    return requested if _ynn_option_supported() else {}


def jit(fun: Callable, kind: Kind, **jit_kwargs: Any) -> Callable:
    """``jax.jit(fun, compiler_options=compiler_options(kind), **jit_kwargs)``, built at the
    first call: a module-level ``@functools.partial(jit, kind=...)`` does not start the
    backend at import (device settings such as ``jax_num_cpu_devices`` come first)."""
    _requested_options(kind)  # an unknown kind fails here, not at the first call
    jitted: list[Callable] = []

    @functools.wraps(fun)
    def call(*args: Any, **kwargs: Any) -> Any:
        if not jitted:
            jitted.append(jax.jit(fun, compiler_options=compiler_options(kind), **jit_kwargs))
        return jitted[0](*args, **kwargs)

    return call
