"""XLA compiler options of the project's jitted programs on CPU: which kernels run what.

jaxlib's XLA:CPU hands convolutions, matmuls and reductions to YNNPACK fusions by default
(``xla_cpu_experimental_ynn_fusion_type``). For this project's networks YNNPACK's
convolutions are the slower choice, and in forward passes its matmuls too, so:

- ``"train"`` (train steps): YNNPACK for reductions and matmuls, XLA's own convolutions;
- ``"inference"`` (forward passes): YNNPACK for reductions only.

Accuracy is that of the defaults: forward outputs and gradients agree with float64 as
closely either way (training-mode gradients move only where float32 rounding flips a ReLU,
as often with either choice); ``tests/test_compilation.py`` checks both. The timings and
error statistics behind the choice are in docs/measurements.md.

``compiler_options(kind)`` is the dict for ``jax.jit(..., compiler_options=...)``; ``jit``
is ``jax.jit`` with it. The dict is empty for a jaxlib older than
``MIN_JAXLIB`` (the first with the option and all three fusion types), or when ``XLA_FLAGS``
sets the option (the user's choice wins). Only XLA:CPU reads it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Literal

import jax
import jaxlib

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


MIN_JAXLIB = (0, 8, 1)  # the first jaxlib whose XLA knows the option and these fusion types


def jaxlib_version(text: str = jaxlib.__version__) -> tuple[int, ...]:
    """The leading numbers of a jaxlib version string ("0.9.0.1" -> (0, 9, 0, 1);
    "0.10.3.dev20260101" -> (0, 10, 3))."""
    numbers = []
    for part in text.split("."):
        if not part.isdigit():
            break
        numbers.append(int(part))
    return tuple(numbers)


def compiler_options(kind: Kind) -> dict[str, str]:
    """Compiler options of a ``kind`` program ("train": train steps; "inference": forward
    passes); {} for a jaxlib older than ``MIN_JAXLIB`` or where ``XLA_FLAGS`` sets the
    option."""
    requested = _requested_options(kind)
    if jaxlib_version() < MIN_JAXLIB or YNN_FUSION_OPTION in os.environ.get("XLA_FLAGS", ""):
        return {}
    return requested


def jit(fun: Callable, kind: Kind, **jit_kwargs: Any) -> Callable:
    """``jax.jit(fun, compiler_options=compiler_options(kind), **jit_kwargs)``; usable as a
    module-level decorator (``functools.partial(jit, kind=...)``): it starts no backend."""
    return jax.jit(fun, compiler_options=compiler_options(kind), **jit_kwargs)
