"""XLA compiler options of the project's forward (inference) programs on CPU.

jaxlib's XLA:CPU hands convolutions, matmuls and reductions to YNNPACK fusions by default
(``xla_cpu_experimental_ynn_fusion_type``). In forward passes of this project's networks
YNNPACK's convolutions and matmuls are the slow choice. Measured on 2 EPYC cores, jaxlib
0.10.2, default and these options interleaved in one process: the anonymiser's U-Nets F + G
(batch 8) 14.4 -> 12.3 ms, a vocoder chunk (136 frames) 63.7 -> 60.7 ms; the outputs agree
to float32 rounding (U-Net G against float64: 2.3e-7 relative either way).

Train steps keep jaxlib's defaults. Without YNNPACK convolutions they ran ~9 % faster, but
their gradients lost accuracy: the U-Net generator's bottleneck gradients were ~1e-2 off a
float64 reference instead of ~1e-5 (each convolution alone was exact; the cause is open).

``compiler_options()`` is the dict for ``jax.jit(..., compiler_options=...)``; ``jit`` builds
such a program at its first call. The dict is empty when the running jaxlib does not know the
option, or when ``XLA_FLAGS`` sets it (the user's choice wins). Only XLA:CPU reads it.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

YNN_FUSION_OPTION = "xla_cpu_experimental_ynn_fusion_type"
INFERENCE_YNN_FUSIONS = ("LIBRARY_FUSION_TYPE_REDUCE",)  # YNNPACK for reductions only


def _requested_options() -> dict[str, str]:
    return {YNN_FUSION_OPTION: ",".join(INFERENCE_YNN_FUSIONS)}


@functools.cache
def _ynn_option_supported() -> bool:
    """Whether this jaxlib accepts the option (one tiny compile, once per process)."""
    if YNN_FUSION_OPTION in os.environ.get("XLA_FLAGS", ""):
        return False
    try:
        jax.jit(jnp.negative).lower(jnp.zeros(2)).compile(compiler_options=_requested_options())
    except Exception:  # an unknown option or enum value: keep jaxlib's defaults
        return False
    return True


def compiler_options() -> dict[str, str]:
    """Compiler options of a forward program; {} where the option is unsupported or set
    in ``XLA_FLAGS``."""
    return _requested_options() if _ynn_option_supported() else {}


def jit(fun: Callable, **jit_kwargs: Any) -> Callable:
    """``jax.jit(fun, compiler_options=compiler_options(), **jit_kwargs)``, built at the first
    call: a module-level ``@functools.partial(jit, ...)`` does not start the backend at import
    (device settings such as ``jax_num_cpu_devices`` come first)."""
    jitted: list[Callable] = []

    @functools.wraps(fun)
    def call(*args: Any, **kwargs: Any) -> Any:
        if not jitted:
            jitted.append(jax.jit(fun, compiler_options=compiler_options(), **jit_kwargs))
        return jitted[0](*args, **kwargs)

    return call
