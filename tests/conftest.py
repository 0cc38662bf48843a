"""Shared pytest setup: puts the repository root on sys.path (for ``import bench``)."""

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

# The training tests compare a step on 1 and on 4 CPU devices; the device count must be set
# before the JAX backend initialises, so for the whole test session.
import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 4)
