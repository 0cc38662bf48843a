"""compilation: the XLA:CPU kernel choice of the project's jitted programs."""

from __future__ import annotations

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pcmelgan_jax import compilation


@pytest.fixture
def fresh_probe():
    compilation._ynn_option_supported.cache_clear()
    yield
    compilation._ynn_option_supported.cache_clear()


def _conv(x, k):
    return jax.lax.conv_general_dilated(
        x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def _ynn_convolutions(hlo: str) -> int:
    """How many YNNPACK fusions of a compiled module's text compute a convolution."""
    bodies, name = {}, None
    for line in hlo.splitlines():
        if line.startswith("%") and line.rstrip().endswith("{"):
            name = line.split()[0].lstrip("%")
            bodies[name] = []
        elif name is not None:
            bodies[name].append(line)
    called = re.findall(r"calls=%([\w.\-]+).*__ynn_fusion", hlo)
    return sum(any("convolution(" in line for line in bodies.get(c, [])) for c in called)


needs_option = pytest.mark.skipif(
    not compilation.compiler_options(), reason="this jaxlib has no YNNPACK option"
)


@needs_option
def test_option_keeps_ynnpack_for_reductions_only():
    assert compilation.compiler_options() == {
        compilation.YNN_FUSION_OPTION: "LIBRARY_FUSION_TYPE_REDUCE"
    }


@needs_option
@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's kernel choice")
def test_convolution_leaves_ynnpack_and_keeps_its_values():
    x = jax.random.normal(jax.random.key(0), (2, 20, 8, 32))
    k = jax.random.normal(jax.random.key(1), (3, 3, 32, 32)) / 17
    assert _ynn_convolutions(jax.jit(_conv).lower(x, k).compile().as_text()) > 0  # default
    compiled = jax.jit(_conv, compiler_options=compilation.compiler_options())
    hlo = compiled.lower(x, k).compile().as_text()
    assert "convolution(" in hlo
    assert _ynn_convolutions(hlo) == 0
    chex.assert_trees_all_close(compiled(x, k), jax.jit(_conv)(x, k), rtol=1e-5, atol=1e-5)


def test_unet_forward_keeps_its_values():
    """The generator's evaluation-mode forward through ``compilation.jit`` equals jaxlib's
    default build to float32 rounding."""
    from pcmelgan_jax.models.registry import build_model, init_variables

    model = build_model("unet_generator")
    variables = init_variables("unet_generator", jax.random.key(0))
    x = jax.random.uniform(jax.random.key(1), (4, 80, 32, 1), minval=-1.0, maxval=1.0)
    z = jax.random.normal(jax.random.key(2), (4, 10))
    cond = jnp.array([0, 1, 0, 1])

    def forward(v, x, z, cond):
        return model.apply(v, x, z, cond, train=False)

    want = jax.jit(forward)(variables, x, z, cond)
    got = compilation.jit(forward)(variables, x, z, cond)
    chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-6)


def test_user_xla_flags_win(monkeypatch, fresh_probe):
    monkeypatch.setenv("XLA_FLAGS", f"--{compilation.YNN_FUSION_OPTION}=")
    assert compilation.compiler_options() == {}


def test_unknown_option_falls_back_to_defaults(monkeypatch, fresh_probe):
    monkeypatch.setattr(compilation, "YNN_FUSION_OPTION", "xla_cpu_no_such_option")
    assert compilation.compiler_options() == {}
    f = compilation.jit(lambda x: x * 2)
    np.testing.assert_array_equal(f(jnp.arange(3)), [0, 2, 4])


def test_jit_is_built_at_first_call_and_passes_jit_arguments(monkeypatch):
    options = compilation.compiler_options()  # probes first, unrecorded
    built = []
    real_jit = jax.jit

    def recording_jit(fun, **kwargs):
        built.append(kwargs)
        return real_jit(fun, **kwargs)

    monkeypatch.setattr(compilation.jax, "jit", recording_jit)
    f = compilation.jit(lambda n, x: x * n, static_argnums=0)
    assert built == []
    np.testing.assert_array_equal(f(3, jnp.ones(2)), [3.0, 3.0])
    np.testing.assert_array_equal(f(2, jnp.ones(2)), [2.0, 2.0])
    assert built == [{"compiler_options": options, "static_argnums": 0}]
