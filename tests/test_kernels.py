"""The fast forms of ``models.kernels``: each equals XLA's form of the same function in
value and gradients (also vmapped over per-seed kernels), and ``kernels.conv`` picks one."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pcmelgan_jax.models import kernels
from pcmelgan_jax.models.kernels import conv_nd, max_pool, upsample_nearest2d


@pytest.mark.parametrize(
    "window, strides, padding, groups, form, chosen",
    [
        ((1, 1), (1, 1), (0, 0), 1, "xla", "pointwise_conv"),
        ((1,), (1,), (0,), 1, "patches_matmul", "pointwise_conv"),  # 1x1 whatever the form
        ((3, 3), (1, 1), (1, 1), 1, "xla", "conv_nd"),
        ((3, 3), (1, 1), (1, 1), 1, "taps_forward", "conv_taps_forward"),
        ((3, 3), (2, 2), (1, 1), 1, "taps_forward", "conv_nd"),  # strided: no per-tap form
        ((5,), (1,), (2,), 1, "patches_matmul", "conv_patches_matmul"),
        ((1,), (1,), (1,), 1, "xla", "conv_nd"),  # padded 1x1
        ((41,), (4,), (20,), 4, "grouped_matmul", "grouped_conv1d"),
        ((41,), (4,), (20,), 4, "xla", "_xla_conv_nd"),
        ((3, 3), (1, 1), (1, 1), 2, "grouped_matmul", "_xla_conv_nd"),  # 2-d grouped
    ],
)
def test_conv_dispatch_chooses_the_form(window, strides, padding, groups, form, chosen,
                                        monkeypatch):
    """``kernels.conv`` computes each convolution by exactly one form: the 1x1 one always,
    a requested fast form where it applies, XLA's otherwise."""
    calls = []
    for name in ("pointwise_conv", "conv_nd", "conv_taps_forward", "conv_patches_matmul",
                 "grouped_conv1d", "_xla_conv_nd"):
        monkeypatch.setattr(kernels, name, lambda *a, name=name, **k: calls.append(name))
    x = jnp.zeros((1, *(8,) * len(window), 4))
    kernel = jnp.zeros((*window, 4 // groups, 4))
    ones = (1,) * len(window)
    kernels.conv(x, kernel, strides, padding, ones, groups, form)
    assert calls == [chosen]


def _assert_same_values_and_grads(ours, ref, x, seed_kernels, rng):
    """``ours(x, w)`` equals ``ref(x, w)`` in value, VJP (input and kernel) and, vmapped over
    ``seed_kernels`` (as when training many seeds), value and gradients; one jit compilation.
    Each array's tolerance: 1e-5 of its reference's largest magnitude."""
    dy = rng.standard_normal(jax.eval_shape(ref, x, seed_kernels[0]).shape, np.float32)

    @jax.jit  # one compilation: op-by-op dispatch compiles every op
    def value_and_grads(x, w, dy):
        (y, vjp), (y_ref, vjp_ref) = jax.vjp(ours, x, w[0]), jax.vjp(ref, x, w[0])
        batched = [
            jax.vmap(
                jax.value_and_grad(lambda x, w, f=f: jnp.sum(jnp.sin(f(x, w))), (0, 1)), (None, 0)
            )(x, w)
            for f in (ours, ref)
        ]
        return (y, *vjp(dy), batched[0]), (y_ref, *vjp_ref(dy), batched[1])

    got, want = value_and_grads(x, seed_kernels, dy)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        chex.assert_trees_all_close(a, b, rtol=1e-5, atol=1e-5 * float(jnp.abs(b).max()))


@pytest.mark.parametrize(
    "x_shape, window, strides, padding, dilation",
    [
        ((2, 9, 7, 3), (3, 3), (1, 1), (1, 1), (1, 1)),  # the U-Net / AlexNet 3x3 form
        ((2, 11, 8, 4), (5, 5), (1, 1), (2, 2), (1, 1)),  # AlexNet's 5x5
        ((3, 11, 8, 2), (5, 3), (2, 3), (2, 0), (1, 1)),  # strides, odd sizes, unequal padding
        ((2, 12, 11, 3), (3, 2), (3, 2), (0, 2), (2, 3)),  # dilation
        ((2, 13, 5), (3,), (2,), (1,), (1,)),  # 1-d
        ((2, 6, 8), (5,), (1,), (2,), (1,)),  # the MelGAN discriminator's kernel-5 layer
    ],
)
def test_conv_patches_matmul_equals_xla_conv(x_shape, window, strides, padding, dilation):
    """Value, input and kernel gradients of the patch-matmul conv vs XLA's autodiff, also
    under vmap over the kernel (as when training many seeds)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(x_shape, np.float32)
    w = rng.standard_normal((2, *window, x_shape[-1], 5), np.float32)  # two kernels to vmap

    def xla(x, w):
        spatial = "DHW"[3 - len(window) :]
        return jax.lax.conv_general_dilated(
            x,
            w,
            strides,
            [(p, p) for p in padding],
            rhs_dilation=dilation,
            dimension_numbers=(f"N{spatial}C", f"{spatial}IO", f"N{spatial}C"),
        )

    def ours(x, w):
        return kernels.conv_patches_matmul(x, w, strides, padding, dilation)

    _assert_same_values_and_grads(ours, xla, x, w, rng)


@pytest.mark.parametrize(
    "x_shape, window, strides, padding, dilation",
    [
        ((2, 9, 7, 3), (3, 3), (1, 1), (1, 1), (1, 1)),  # the U-Net / AlexNet 3x3 form
        ((3, 11, 8, 2), (5, 3), (2, 3), (2, 0), (1, 1)),  # strides, odd sizes, unequal padding
        ((2, 12, 11, 3), (3, 2), (3, 2), (0, 2), (2, 3)),  # dilation
        ((2, 13, 5), (3,), (2,), (1,), (1,)),  # 1-d
        ((2, 6, 5, 4), (1, 1), (1, 1), (0, 0), (1, 1)),  # 1x1 (pointwise_conv's forward)
    ],
)
@pytest.mark.parametrize("x_axis, kernel_axis", [(0, 0), (None, 0), (0, None)])
def test_conv_nd_vmapped_over_kernels_is_patch_matmuls(
    x_shape, window, strides, padding, dilation, x_axis, kernel_axis, conv_groups
):
    """Under vmap (3 seeds) ``conv_nd`` equals XLA's convolution and its autodiff in value,
    input and kernel gradients, whichever of input and kernel is batched; with batched
    kernels the program has no convolution left (patches and batched matmuls), with one
    shared kernel the forward is one ungrouped convolution over the folded batch."""
    rng = np.random.default_rng(3)
    n = 3
    x = rng.standard_normal((n, *x_shape), np.float32)
    w = rng.standard_normal((n, *window, x_shape[-1], 4), np.float32)
    x_in = x if x_axis == 0 else x[0]
    w_in = w if kernel_axis == 0 else w[0]
    spatial = "DHW"[3 - len(window) :]

    def xla(x, w):
        return jax.lax.conv_general_dilated(
            x, w, strides, [(p, p) for p in padding], rhs_dilation=dilation,
            dimension_numbers=(f"N{spatial}C", f"{spatial}IO", f"N{spatial}C"),
        )

    def ours(x, w):
        return conv_nd(x, w, strides, padding, dilation)

    y_shape = jax.eval_shape(jax.vmap(xla, (x_axis, kernel_axis)), x_in, w_in).shape
    dy = rng.standard_normal(y_shape, np.float32)

    def value_and_vjp(f):
        def one(x, w, dy):
            y, vjp = jax.vjp(f, x, w)
            return y, *vjp(dy)

        return jax.jit(jax.vmap(one, (x_axis, kernel_axis, 0)))

    got, want = value_and_vjp(ours)(x_in, w_in, dy), value_and_vjp(xla)(x_in, w_in, dy)
    for name, a, b in zip(("y", "dx", "dkernel"), got, want, strict=True):
        assert a.shape == b.shape, name
        chex.assert_trees_all_close(a, b, rtol=1e-5, atol=1e-5 * float(jnp.abs(b).max()))

    convs = conv_groups(value_and_vjp(ours), x_in, w_in, dy)
    if kernel_axis == 0:
        assert convs == []
    else:
        assert convs and all(g == (1, 1) for g in convs)


@pytest.mark.parametrize(
    "x_shape, window, padding",
    [
        ((2, 9, 7, 1), (3, 3), (1, 1)),  # the U-Net's first convolution
        ((2, 9, 7, 3), (3, 3), (1, 1)),
        ((3, 11, 8, 2), (5, 3), (2, 0)),  # unequal window and padding
        ((2, 13, 1), (3,), (1,)),  # 1-d
    ],
)
def test_conv_taps_forward_equals_xla_conv(x_shape, window, padding):
    """Value and gradients of the per-tap forward conv vs XLA's convolution and its autodiff,
    under jit and under vmap over the kernel (as when training many seeds)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(x_shape, np.float32)
    w = rng.standard_normal((2, *window, x_shape[-1], 5), np.float32)  # two kernels to vmap
    ones = (1,) * len(window)

    def xla(x, w):
        return conv_nd(x, w, ones, padding, ones)

    def ours(x, w):
        return kernels.conv_taps_forward(x, w, padding)

    _assert_same_values_and_grads(ours, xla, x, w, rng)


@pytest.mark.parametrize("x_shape", [(2, 13, 6), (2, 5, 4, 3), (1, 1, 8)])
def test_pointwise_conv_equals_xla_conv(x_shape):
    """Value and matmul gradients of the 1x1 convolution vs XLA's convolution and its
    autodiff, under jit and under vmap over the kernel, 1-d and 2-d."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal(x_shape, np.float32)
    w = rng.standard_normal((2, x_shape[-1], 5), np.float32)
    nd = len(x_shape) - 2

    def xla(x, w):
        return conv_nd(x, w.reshape((1,) * nd + w.shape), (1,) * nd, (0,) * nd, (1,) * nd)

    _assert_same_values_and_grads(kernels.pointwise_conv, xla, x, w, rng)


def _batch_norm_relu_reference(x, scale, bias, epsilon=1e-5):
    """relu(BatchNorm(x)) in training mode as plain jnp (differentiated by XLA's autodiff)."""
    axes = tuple(range(x.ndim - 1))
    xf = x.astype(jnp.float32)
    mean = xf.mean(axes)
    var = jnp.square(xf - mean).mean(axes)
    y = jax.nn.relu((xf - mean) * (jax.lax.rsqrt(var + epsilon) * scale) + bias)
    return y.astype(x.dtype), mean, var


def test_batch_norm_relu_equals_autodiff():
    """Values and the hand-written gradient (also of the statistics outputs) vs autodiff of the
    plain composition, under jit and under vmap (per-seed parameters and activations)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 6, 5, 3), np.float32) * 2 + 0.5  # 2 seeds
    scale = rng.uniform(0.5, 1.5, (2, 3)).astype(np.float32)
    bias = rng.uniform(-0.5, 0.5, (2, 3)).astype(np.float32)
    cot = (
        rng.standard_normal(x.shape[1:], np.float32),
        rng.standard_normal(3).astype(np.float32),
        rng.standard_normal(3).astype(np.float32),
    )
    ours = lambda x, s, b: kernels.batch_norm_relu(x, s, b, 1e-5, jnp.dtype(jnp.float32))  # noqa: E731

    @jax.jit
    def run(x, scale, bias):
        (out, vjp), (out_ref, vjp_ref) = (
            jax.vjp(f, x[0], scale[0], bias[0]) for f in (ours, _batch_norm_relu_reference)
        )
        batched = [
            jax.vmap(
                jax.value_and_grad(lambda x, s, b, f=f: jnp.sum(jnp.sin(f(x, s, b)[0])), (0, 1, 2))
            )(x, scale, bias)
            for f in (ours, _batch_norm_relu_reference)
        ]
        return (out, vjp(cot), batched[0]), (out_ref, vjp_ref(cot), batched[1])

    got, want = run(x, scale, bias)
    chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("h, w, c_in, c_out", [(5, 2, 9, 4), (4, 3, 3, 5), (1, 1, 2, 2)])
def test_upsampled_conv3x3_equals_conv_of_upsampled_input(h, w, c_in, c_out):
    """Values and full VJP of the low-resolution form against XLA's convolution of the
    nearest-upsampled input and its autodiff, under jit and vmap (odd sizes, one pixel)."""
    kx, kk, kd = jax.random.split(jax.random.key(3), 3)
    x = jax.random.normal(kx, (3, h, w, c_in))
    kernel = jax.random.normal(kk, (3, 3, c_in, c_out))
    dy = jax.random.normal(kd, (3, 2 * h, 2 * w, c_out))

    def reference(x, kernel):
        return conv_nd(upsample_nearest2d(x), kernel, (1, 1), (1, 1), (1, 1))

    def value_and_vjp(f):
        def run(x, kernel, dy):
            y, vjp = jax.vjp(f, x, kernel)
            return (y, *vjp(dy))
        return jax.jit(run)

    want = value_and_vjp(reference)(x, kernel, dy)
    got = value_and_vjp(kernels.upsampled_conv3x3)(x, kernel, dy)
    chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-5)
    # per-example kernels (the vmapped seeds' case)
    per_example = jnp.stack([kernel, 2 * kernel, -kernel])
    want = jax.vmap(value_and_vjp(reference))(x[:, None], per_example, dy[:, None])
    got = jax.vmap(value_and_vjp(kernels.upsampled_conv3x3))(x[:, None], per_example,
                                                             dy[:, None])
    chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "x_shape, window, strides",
    [
        ((2, 11, 9, 3), (3, 3), (2, 2)),  # AlexNet's overlapping pools
        ((2, 8, 6, 3), (2, 2), (2, 2)),  # the U-Net's
        ((2, 12, 4), (2,), (2,)),  # AudioNet's
        ((1, 7, 8, 2), (3, 2), (1, 3)),  # odd sizes, unequal strides
    ],
)
def test_max_pool_gradient_equals_xla_select_and_scatter(x_shape, window, strides):
    """Integer inputs make ties: the gradient goes to the first maximum, as XLA's does."""
    import flax.linen as nn

    rng = np.random.default_rng(0)
    x = rng.integers(0, 3, (2, *x_shape)).astype(np.float32)

    def xla(x):
        return nn.max_pool(x, window, strides, padding="VALID")

    def ours(x):
        return max_pool(x, window, strides)

    dy = rng.standard_normal(jax.eval_shape(xla, x[0]).shape, np.float32)

    @jax.jit
    def value_and_grads(x, dy):
        (y, vjp), (y_ref, vjp_ref) = jax.vjp(ours, x[0]), jax.vjp(xla, x[0])
        batched = [
            jax.vmap(jax.grad(lambda x, f=f: jnp.sum(jnp.sin(f(x)))))(x) for f in (ours, xla)
        ]
        return (y, *vjp(dy), batched[0]), (y_ref, *vjp_ref(dy), batched[1])

    for a, b in zip(*value_and_grads(x, dy), strict=True):
        chex.assert_trees_all_close(a, b, atol=1e-6)


@pytest.mark.parametrize("window", [(3, 3), (2, 2)])
def test_max_pool_backward_reads_a_stored_index(window):
    """XLA:CPU computes the tap index once and the backward reads it from memory: the
    compiled gradient has a fused computation that takes the int8 index as a parameter.
    Left elementwise, XLA fused the comparison chain into every per-tap read instead."""
    import re

    x = np.random.default_rng(0).standard_normal((4, 11, 9, 8)).astype(np.float32)

    def loss(x, w):
        return jnp.sum(jnp.sin(max_pool(jax.nn.relu(x * w), window, (2, 2))))

    pooled = jax.eval_shape(lambda x: max_pool(x, window, (2, 2)), x).shape
    with jax.default_device(jax.devices("cpu")[0]):  # XLA:CPU's program, whatever the backend
        hlo = jax.jit(jax.grad(loss)).lower(x, 2.0).compile().as_text()
    shape = ",".join(map(str, pooled))
    assert re.search(rf"= s8\[{shape}\]\{{[0-9,]*\}} parameter\(", hlo), hlo[:2000]
