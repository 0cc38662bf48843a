"""The 1-d forms of ``models.kernels_1d``: grouped convolutions and the transposed
convolution's phases, against XLA's forms of the same functions."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pcmelgan_jax.models import kernels_1d


def test_two_tap_phases_rejects_other_kernels():
    x = jnp.zeros((1, 4, 2))
    with pytest.raises(ValueError, match="kernel 2\\*stride"):
        kernels_1d.two_tap_phases(x, jnp.zeros((6, 2, 3)), 2)
    with pytest.raises(ValueError, match="stride >= 2"):
        kernels_1d.two_tap_phases(x, jnp.zeros((2, 2, 3)), 1)


GROUPED_CONV_CASES = [  # (groups, c_in, c_out, kernel, stride, padding, length)
    (4, 16, 64, 41, 4, 20, 66),  # the discriminator's layers
    (8, 32, 16, 41, 4, 20, 67),
    (2, 4, 6, 5, 3, 1, 25),
    (3, 6, 9, 4, 4, 0, 7),  # the last 3 samples reach no window
    (2, 4, 4, 3, 1, 2, 9),
    (16, 64, 32, 41, 4, 20, 50),  # many groups, output not a multiple of q = 4
    (3, 6, 6, 7, 1, 3, 11),  # stride 1: q = 3 outputs per block
    (16, 64, 64, 41, 4, 20, 40),  # the 1024 -> 1024 layer's shape, narrower
]


def test_grouped_conv1d_blocks_chooses_the_smaller_matmul_form():
    """The discriminator's grouped layers at every scale (input lengths 8192, 4096, 2048):
    input patches where the output has 4x the channels, shifted outputs for 1024 -> 1024;
    and ``GROUPED_CONV_CASES`` test both forms."""
    _grouped_blocks_form = kernels_1d._grouped_blocks_form
    for length in (8192, 4096, 2048):
        forms = [
            _grouped_blocks_form(length // 4**n, c_in, c_out, 41, 4, 20)
            for n, (c_in, c_out) in enumerate([(16, 64), (64, 256), (256, 1024), (1024, 1024)])
        ]
        assert forms == ["patches", "patches", "patches", "shifted"]
    cases = {_grouped_blocks_form(t, i, o, k, s, p) for _, i, o, k, s, p, t in GROUPED_CONV_CASES}
    assert cases == {"patches", "shifted"}


@pytest.mark.parametrize(
    "groups, c_in, c_out, kernel, stride, padding, length", GROUPED_CONV_CASES
)
@pytest.mark.parametrize("impl", ["grouped_conv1d_blocks", "grouped_conv1d_polyphase"])
def test_grouped_conv1d_equals_xla_grouped_conv(
    impl, groups, c_in, c_out, kernel, stride, padding, length
):
    """Value, input and kernel gradients of both forms of ``grouped_conv1d`` (batched
    matmuls, CPU; polyphase, elsewhere) vs XLA's grouped conv."""
    grouped_conv1d = getattr(kernels_1d, impl)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, length, c_in), np.float32)
    w = rng.standard_normal((kernel, c_in // groups, c_out), np.float32)

    def xla(x, w):
        return jax.lax.conv_general_dilated(
            x,
            w,
            (stride,),
            [(padding, padding)],
            dimension_numbers=("NWC", "WIO", "NWC"),
            feature_group_count=groups,
        )

    def ours(x, w):
        return grouped_conv1d(x, w, stride, padding, groups)

    dy = rng.standard_normal(jax.eval_shape(xla, x, w).shape, np.float32)

    @jax.jit  # one compilation: op-by-op dispatch compiles every op
    def value_and_grads(x, w, dy):
        (y, vjp), (y_ref, vjp_ref) = jax.vjp(ours, x, w), jax.vjp(xla, x, w)
        return (y, *vjp(dy)), (y_ref, *vjp_ref(dy))

    for a, b in zip(*value_and_grads(x, w, dy), strict=True):
        chex.assert_trees_all_close(a, b, rtol=1e-5, atol=1e-5 * float(jnp.abs(b).max()))


def test_grouped_conv1d_runs_batched_matmuls_on_cpu():
    """On CPU the compiled grouped conv has no convolution left: XLA:CPU would run one small
    convolution per group (see ``kernels_1d.grouped_conv1d_blocks``)."""
    grouped_conv1d = kernels_1d.grouped_conv1d

    x = jnp.zeros((2, 64, 16))
    w = jnp.zeros((41, 4, 32))

    def hlo(fun):
        return jax.jit(fun).lower(x, w).compile().as_text()

    assert "convolution" not in hlo(lambda x, w: grouped_conv1d(x, w, 4, 20, 4))
    assert "convolution" not in hlo(
        jax.grad(lambda x, w: jnp.sum(grouped_conv1d(x, w, 4, 20, 4) ** 2), (0, 1))
    )
    assert "convolution" in hlo(  # the check sees XLA's grouped conv
        lambda x, w: jax.lax.conv_general_dilated(
            x, w, (4,), [(20, 20)], dimension_numbers=("NWC", "WIO", "NWC"),
            feature_group_count=4)
    )
