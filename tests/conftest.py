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


import pytest  # noqa: E402


@pytest.fixture
def conv_groups():
    """``conv_groups(fun, *args)``: (feature_group_count, batch_group_count) of every
    convolution in ``jax.make_jaxpr(fun)(*args)``, nested jaxprs (jit, custom rules) included."""

    def groups(fun, *args):
        found = []

        def walk(jaxpr):
            for eqn in jaxpr.eqns:
                if eqn.primitive.name == "conv_general_dilated":
                    found.append(
                        (eqn.params["feature_group_count"], eqn.params["batch_group_count"])
                    )
                for sub in jax.core.jaxprs_in_params(eqn.params):
                    walk(sub)

        walk(jax.make_jaxpr(fun)(*args).jaxpr)
        return found

    return groups
