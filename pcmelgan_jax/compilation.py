"""XLA compiler options of the project's jitted programs: which CPU kernels run what.

jaxlib's XLA:CPU hands convolutions, matmuls and reductions to YNNPACK fusions by default
(``xla_cpu_experimental_ynn_fusion_type``). For this project's networks, YNNPACK's
convolutions are the slow choice. Measured on 2 EPYC cores with jaxlib 0.10.2, batch 16,
default options and these ones interleaved in one process:

- train steps, with YNNPACK for reductions and matmuls only: U-Net F 67 -> 58 ms, U-Net G
  72 -> 64 ms, AlexNet 409 -> 390 ms; AudioNet and the MelGAN generator within 2 %. Whole
  stages (``bench.bench_train``'s steps): PCMelGAN +9 %, classifier +9 to 11 %, vocoder -1 %.
- forward passes, with YNNPACK for reductions only: the anonymiser's U-Nets (batch 8) 14.4
  -> 12.3 ms, a vocoder chunk 63.7 -> 60.7 ms. YNNPACK's matmuls were slower there.

``compiler_options(kind)`` is the dict for ``jax.jit(..., compiler_options=...)``; ``jit``
builds such a program lazily. The dict is empty when the running jaxlib does not know the
option, or when ``XLA_FLAGS`` sets it (the user's choice wins). Only XLA:CPU reads it.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.numpy as jnp

YNN_FUSION_OPTION = "xla_cpu_experimental_ynn_fusion_type"

_YNN_FUSIONS = {
    "train": ("REDUCE", "DOT", "INDIVIDUAL_DOT"),
    "inference": ("REDUCE",),
}

Kind = Literal["train", "inference"]


def _ynn_value(kind: Kind) -> str:
    return ",".join(f"LIBRARY_FUSION_TYPE_{t}" for t in _YNN_FUSIONS[kind])


@functools.cache
def _ynn_option_supported() -> bool:
    """Whether this jaxlib accepts the option (one tiny compile, once per process)."""
    if YNN_FUSION_OPTION in os.environ.get("XLA_FLAGS", ""):
        return False
    try:
        jax.jit(jnp.negative).lower(jnp.zeros(2)).compile(
            compiler_options={YNN_FUSION_OPTION: _ynn_value("inference")}
        )
    except Exception:  # an unknown option or enum value: keep jaxlib's defaults
        return False
    return True


def compiler_options(kind: Kind) -> dict[str, str]:
    """Compiler options for a ``kind`` program ("train": train steps; "inference":
    forward passes), {} where the option is unsupported or set in ``XLA_FLAGS``."""
    if kind not in _YNN_FUSIONS:
        raise ValueError(f"kind must be one of {sorted(_YNN_FUSIONS)}, not {kind!r}")
    if not _ynn_option_supported():
        return {}
    return {YNN_FUSION_OPTION: _ynn_value(kind)}


def jit(fun: Callable, kind: Kind, **jit_kwargs: Any) -> Callable:
    """``jax.jit(fun, compiler_options=compiler_options(kind), **jit_kwargs)``, built at the
    first call: a module-level ``@functools.partial(jit, kind=...)`` does not start the
    backend at import (device settings such as ``jax_num_cpu_devices`` come first)."""
    if kind not in _YNN_FUSIONS:
        raise ValueError(f"kind must be one of {sorted(_YNN_FUSIONS)}, not {kind!r}")
    jitted: list[Callable] = []

    @functools.wraps(fun)
    def call(*args: Any, **kwargs: Any) -> Any:
        if not jitted:
            jitted.append(jax.jit(fun, compiler_options=compiler_options(kind), **jit_kwargs))
        return jitted[0](*args, **kwargs)

    return call
