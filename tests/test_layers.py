"""PyTorch-equivalent layers (``models.layers``): parameters, weight norm, BatchNorm and
pooling semantics, and every fast form of a layer keeping its parameters and function."""

from functools import partial

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pcmelgan_jax.models.layers import (
    BatchNorm,
    Conv,
    ConvTranspose1d,
    adaptive_pool_matrix,
    avg_pool1d_exclude_pad,
    upsample_nearest2d,
)


@pytest.mark.parametrize("stride", [2, 3, 5, 8])  # 3-tap polyphase (2), two_tap_phases


def test_polyphase_upsampling_equals_transposed_convolution(stride):
    x = jax.random.normal(jax.random.key(0), (2, 7, 6))
    poly = ConvTranspose1d(5, stride, implementation="polyphase")
    direct = ConvTranspose1d(5, stride, implementation="direct")
    variables = poly.init(jax.random.key(1), x)
    y_poly = poly.apply(variables, x)
    y_direct = direct.apply(variables, x)
    chex.assert_shape(y_poly, (2, 7 * stride, 5))
    np.testing.assert_allclose(y_poly, y_direct, atol=1e-5)

    def loss(module, v, x):
        return jnp.sum(jnp.sin(module.apply(v, x)))

    g_poly = jax.grad(partial(loss, poly), (0, 1))(variables, x)
    g_direct = jax.grad(partial(loss, direct), (0, 1))(variables, x)
    chex.assert_trees_all_close(g_poly, g_direct, atol=1e-4)


def test_transposed_weight_norm_gain_is_per_input_channel():
    x = jax.random.normal(jax.random.key(0), (1, 4, 6))
    layer = ConvTranspose1d(3, 2)
    variables = layer.init(jax.random.key(1), x)
    chex.assert_shape(variables["params"]["scale"], (6,))  # input channels
    chex.assert_shape(variables["params"]["kernel"], (4, 6, 3))
    # Initialised so that the effective weight equals v (PyTorch's weight_norm init).
    v = variables["params"]["kernel"]
    np.testing.assert_allclose(
        variables["params"]["scale"], np.sqrt((np.asarray(v) ** 2).sum(axis=(0, 2))), rtol=1e-6
    )
    # Doubling input channel 0's gain doubles exactly its contribution.
    x0 = x.at[..., 1:].set(0.0)
    bias_out = layer.apply(variables, jnp.zeros_like(x))
    base = layer.apply(variables, x0) - bias_out
    doubled = jax.tree.map(lambda a: a, variables)
    doubled["params"]["scale"] = variables["params"]["scale"].at[0].multiply(2.0)
    np.testing.assert_allclose(layer.apply(doubled, x0) - bias_out, 2 * base, atol=1e-5)


def test_batchnorm_matches_pytorch_semantics():
    x = jax.random.normal(jax.random.key(0), (4, 3, 5, 2)) * 3 + 1
    bn = BatchNorm()
    variables = bn.init(jax.random.key(1), x, train=True)
    np.testing.assert_array_equal(variables["batch_stats"]["mean"], 0.0)  # init does not update
    y, updates = bn.apply(variables, x, train=True, mutable=["batch_stats"])
    xn = np.asarray(x).reshape(-1, 2)
    mean, var_biased, var_unbiased = xn.mean(0), xn.var(0), xn.var(0, ddof=1)
    np.testing.assert_allclose(
        np.asarray(y).reshape(-1, 2), (xn - mean) / np.sqrt(var_biased + 1e-5), atol=1e-5
    )
    np.testing.assert_allclose(updates["batch_stats"]["mean"], 0.1 * mean, rtol=1e-5)
    np.testing.assert_allclose(updates["batch_stats"]["var"], 0.9 + 0.1 * var_unbiased, rtol=1e-5)
    y_eval = bn.apply({**variables, **updates}, x, train=False)
    stats = updates["batch_stats"]
    np.testing.assert_allclose(
        y_eval, (x - stats["mean"]) / np.sqrt(stats["var"] + 1e-5), atol=1e-5
    )


def test_adaptive_pool_bins_follow_pytorch():
    m = adaptive_pool_matrix(9, 6)  # overlapping bins [0,2) [1,3) [3,5) [4,6) [6,8) [7,9)
    starts = [int(np.argmax(row > 0)) for row in m]
    widths = [int((row > 0).sum()) for row in m]
    assert starts == [0, 1, 3, 4, 6, 7] and widths == [2] * 6
    np.testing.assert_array_equal(adaptive_pool_matrix(3, 6), np.repeat(np.eye(3), 2, axis=0))


def test_avg_pool_excludes_padding():
    x = jnp.arange(1.0, 9.0).reshape(1, 8, 1)
    y = avg_pool1d_exclude_pad(x)[0, :, 0]
    np.testing.assert_allclose(
        y, [(1 + 2 + 3) / 3, (2 + 3 + 4 + 5) / 4, (4 + 5 + 6 + 7) / 4, (6 + 7 + 8) / 3]
    )


def test_grouped_conv_as_matmul_equals_xla_grouped_conv():
    x = jax.random.normal(jax.random.key(0), (2, 64, 16))
    as_matmul = Conv(32, (41,), strides=4, padding=20, groups=4, form="grouped_matmul")
    xla = Conv(32, (41,), strides=4, padding=20, groups=4)
    variables = xla.init(jax.random.key(1), x)
    np.testing.assert_allclose(as_matmul.apply(variables, x), xla.apply(variables, x), atol=1e-5)
    grads = [
        jax.grad(lambda v, m=m: jnp.sum(jnp.sin(m.apply(v, x))))(variables)
        for m in (as_matmul, xla)
    ]
    chex.assert_trees_all_close(grads[0], grads[1], atol=1e-4)


def test_grouped_conv_as_matmul_computes_in_bfloat16():
    x = jax.random.normal(jax.random.key(0), (2, 64, 16))
    conv = Conv(32, (41,), strides=4, padding=20, groups=4, form="grouped_matmul")
    variables = conv.init(jax.random.key(1), x)
    bf16 = conv.clone(dtype=jnp.bfloat16)
    y = bf16.apply(variables, x)
    chex.assert_type(y, jnp.bfloat16)
    chex.assert_trees_all_close(y.astype(jnp.float32), conv.apply(variables, x), atol=0.1)
    grads = jax.grad(lambda v: jnp.sum(bf16.apply(v, x).astype(jnp.float32) ** 2))(variables)
    chex.assert_tree_all_finite(grads)


def test_conv_with_a_1x1_kernel_is_pointwise_conv(monkeypatch):
    """Conv with a 1x1 kernel computes by ``kernels.pointwise_conv``: same parameters and
    outputs as XLA's convolution of the weight-normed kernel, also in bfloat16, 1-d and 2-d."""
    from pcmelgan_jax.models import kernels

    pointwise_conv = kernels.pointwise_conv
    used = []
    monkeypatch.setattr(kernels, "pointwise_conv",
                        lambda *a: used.append(1) or pointwise_conv(*a))
    for x_shape in [(2, 13, 6), (2, 5, 4, 3)]:
        x = np.random.default_rng(1).standard_normal(x_shape, np.float32)
        nd = len(x_shape) - 2
        module = Conv(5, (1,) * nd)
        variables = module.init(jax.random.key(0), x)
        assert used
        kernel = variables["params"]["kernel"]
        chex.assert_shape(kernel, (*(1,) * nd, x_shape[-1], 5))
        gain = variables["params"]["scale"] / jnp.sqrt(jnp.sum(kernel**2, axis=range(nd + 1)))
        want = kernels.conv_nd(x, kernel * gain, (1,) * nd, (0,) * nd, (1,) * nd)
        want = want + variables["params"]["bias"]
        chex.assert_trees_all_close(module.apply(variables, x), want, rtol=1e-5, atol=1e-5)
        y16 = Conv(5, (1,) * nd, dtype=jnp.bfloat16).apply(variables, x)
        assert y16.dtype == jnp.bfloat16
        chex.assert_trees_all_close(y16.astype(jnp.float32), want, rtol=0.05, atol=0.05)


def test_batchnorm_relu_option_matches_relu_of_batchnorm():
    """BatchNorm(relu=True): same outputs, running statistics and parameter gradients as
    relu(BatchNorm()) in both modes, float32 and bfloat16."""
    x = jax.random.normal(jax.random.key(0), (4, 3, 5, 2)) * 3 + 1
    for dtype in (jnp.float32, jnp.bfloat16):
        fused, plain = BatchNorm(relu=True, dtype=dtype), BatchNorm(dtype=dtype)
        variables = plain.init(jax.random.key(1), x, train=True)
        variables["params"]["scale"] = jnp.array([0.7, 1.3])
        variables["params"]["bias"] = jnp.array([0.2, -0.1])

        def run(bn, relu, variables=variables):
            def loss(params):
                y, upd = bn.apply(
                    {**variables, "params": params}, x, train=True, mutable=["batch_stats"]
                )
                y = jax.nn.relu(y) if relu else y
                return jnp.sum(jnp.sin(y.astype(jnp.float32))), (y, upd)

            (_, (y, upd)), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(
                variables["params"]
            )
            y_eval = bn.apply({**variables, **upd}, x, train=False)
            return y, upd, grads, jax.nn.relu(y_eval) if relu else y_eval

        got, want = run(fused, False), run(plain, True)
        chex.assert_type(got[0], dtype)
        tol = 1e-5 if dtype == jnp.float32 else 1e-2
        chex.assert_trees_all_close(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("form, c_in", [("taps_forward", 1), ("patches_matmul", 3)])
def test_conv_form_keeps_parameters_and_bfloat16(form, c_in):
    """``Conv(form="taps_forward")`` and ``Conv(form="patches_matmul")``: the same parameters
    and gradients as the plain ``Conv``, in float32 and bfloat16."""
    x = jax.random.normal(jax.random.key(0), (2, 9, 7, c_in))
    ours = Conv(4, (3, 3), padding=1, form=form)
    xla = Conv(4, (3, 3), padding=1)
    variables = jax.jit(xla.init)(jax.random.key(1), x)
    chex.assert_trees_all_equal_structs(jax.eval_shape(ours.init, jax.random.key(1), x), variables)

    def grads(conv):
        loss = lambda v: jnp.sum(jnp.sin(conv.apply(v, x).astype(jnp.float32)))  # noqa: E731
        return jax.jit(jax.grad(loss))(variables)

    chex.assert_trees_all_close(grads(ours), grads(xla), rtol=1e-5, atol=1e-6)
    bf16 = ours.clone(dtype=jnp.bfloat16)
    chex.assert_type(jax.eval_shape(bf16.apply, variables, x), jnp.bfloat16)
    chex.assert_trees_all_close(grads(bf16), grads(xla.clone(dtype=jnp.bfloat16)), atol=0.05)


def test_conv_upsampled_input_keeps_parameters_gradients_and_bfloat16():
    """``Conv(x, upsampled=u)`` is ``Conv(concat([x, upsample(u)]))``: same parameters (the
    kernel's input channels: x's first), outputs and gradients, float32 and bfloat16."""
    kx, ku = jax.random.split(jax.random.key(4))
    x, u = jax.random.normal(kx, (2, 10, 4, 3)), jax.random.normal(ku, (2, 5, 2, 6))
    conv = Conv(4, (3, 3), padding=1)
    concat = lambda x, u: jnp.concatenate([x, upsample_nearest2d(u)], -1)  # noqa: E731
    variables = jax.jit(conv.init)(jax.random.key(1), concat(x, u))
    chex.assert_trees_all_equal_structs(
        jax.eval_shape(conv.init, jax.random.key(1), x, u), variables)

    def grads(conv, split):
        def loss(v, x, u):
            y = conv.apply(v, x, u) if split else conv.apply(v, concat(x, u))
            return jnp.sum(jnp.sin(y.astype(jnp.float32)))
        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(variables, x, u)

    chex.assert_trees_all_close(grads(conv, True), grads(conv, False), rtol=1e-5, atol=1e-5)
    bf16 = conv.clone(dtype=jnp.bfloat16)
    chex.assert_type(jax.eval_shape(bf16.apply, variables, x, u), jnp.bfloat16)
    chex.assert_trees_all_close(grads(bf16, True), grads(bf16, False), rtol=0.02, atol=0.1)
    with pytest.raises(ValueError, match="half of x"):
        conv.apply(variables, x, u[:, :4])
    with pytest.raises(ValueError, match="3x3, padding 1"):
        Conv(4, (3, 3), padding=0).init(jax.random.key(1), x, u)
