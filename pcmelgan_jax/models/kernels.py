"""The fast forms of the layers' computations, each the same function as its plain XLA form.

``layers`` computes every convolution, transposed convolution and BatchNorm normalisation
through one call here (``conv``, ``conv_transpose1d``, ``batch_norm``); those dispatchers pick
the form. Most forms are chosen on CPU only (``jax.lax.platform_dependent``), where XLA:CPU's
own kernels for these shapes are slow; other platforms run XLA's convolution. Timings of each
form against XLA's are in docs/measurements.md ("Layer kernels").

- ``pointwise_conv``: a 1x1 convolution with matmul gradients (always);
- ``conv_nd``: XLA's convolution, or batched patch matmuls when vmapped over per-seed kernels;
- ``conv_patches_matmul`` (form "patches_matmul"): one matmul of the input's patches;
- ``conv_taps_forward`` (form "taps_forward"): a forward of one product per kernel tap;
- ``grouped_conv1d`` (form "grouped_matmul"): a grouped 1-d convolution as batched matmuls;
- ``upsampled_conv3x3``: a 3x3 convolution of a nearest-upsampled input at the low resolution;
- ``conv_transpose1d``: MelGAN's transposed convolution as stride-1 polyphase convolutions;
- ``batch_norm_relu``: training-mode BatchNorm + ReLU with a hand-written gradient;
- ``max_pool``: max pooling whose backward scatters by a stored argmax index.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from functools import cache, partial, reduce
from typing import Literal

import jax
import jax.numpy as jnp

from pcmelgan_jax.models.kernels_1d import (
    grouped_conv1d,
    polyphase_kernel,
    transposed_padding,
    two_tap_phases,
)

Array = jax.Array
Ints = tuple[int, ...]  # one value per spatial axis

# Which fast form computes an ungrouped (or, "grouped_matmul", a grouped 1-d) convolution.
ConvForm = Literal["xla", "grouped_matmul", "patches_matmul", "taps_forward"]


def conv(
    x: Array, kernel: Array, strides: Ints, padding: Ints, dilation: Ints, groups: int = 1,
    form: ConvForm = "xla", upsampled: Array | None = None,
) -> Array:
    """The convolution of ``layers.Conv``: x (B, *spatial, C_in), kernel (*window,
    C_in / groups, C_out) -> (B, *spatial', C_out), symmetric zero padding.

    An ungrouped, unstrided, unpadded 1x1 convolution is always ``pointwise_conv``. ``form``
    asks for a fast form where it applies (the function is the same): "grouped_matmul" for
    a grouped, undilated 1-d convolution, "taps_forward" for an ungrouped convolution with
    unit strides and dilation, "patches_matmul" for an ungrouped one. Otherwise ungrouped
    is ``conv_nd``, grouped XLA's grouped convolution. With ``upsampled`` (B, H/2, W/2, C_up)
    the input is ``concat([x, upsample_nearest2d(upsampled)], -1)`` (3x3, padding 1 only),
    computed by ``upsampled_conv3x3`` without forming the upsampled tensor.
    """
    nd = len(strides)
    unit = strides == (1,) * nd and dilation == (1,) * nd
    if upsampled is not None:
        skip = x.shape[-1]
        y = conv_nd(x, kernel[..., :skip, :], strides, padding, dilation)
        return y + upsampled_conv3x3(upsampled, kernel[..., skip:, :])
    if groups == 1 and unit and not any(padding) and all(k == 1 for k in kernel.shape[:-2]):
        return pointwise_conv(x, kernel.reshape(kernel.shape[-2:]))
    if form == "grouped_matmul" and groups > 1 and dilation == (1,):
        return grouped_conv1d(x, kernel, strides[0], padding[0], groups)
    if groups > 1:
        return _xla_conv_nd(x, kernel, strides, padding, dilation, groups)
    if form == "taps_forward" and unit:
        return conv_taps_forward(x, kernel, padding)
    if form == "patches_matmul":
        return conv_patches_matmul(x, kernel, strides, padding, dilation)
    return conv_nd(x, kernel, strides, padding, dilation)


def conv_transpose1d(
    x: Array, kernel: Array, stride: int,
    implementation: Literal["polyphase", "direct"] = "polyphase",
) -> Array:
    """The transposed convolution of ``layers.ConvTranspose1d`` (kernel 2r, stride r,
    padding ``transposed_padding(r)``): x (B, L, C_in), kernel (2r, C_in, C_out) ->
    (B, rL, C_out), without bias.

    "polyphase": a stride-1, 3-tap convolution with ``polyphase_kernel`` and a reshape (XLA:CPU
    computes the kernel gradient of a real transposed convolution much slower than its
    forward); on CPU, for strides above 2, ``two_tap_phases``. "direct": XLA's transposed
    convolution (an input-dilated convolution with the flipped kernel).
    """
    r = stride
    batch, length, _ = x.shape
    if implementation == "direct":
        p, op = transposed_padding(r)
        return jax.lax.conv_general_dilated(
            x, jnp.flip(kernel, axis=0), window_strides=(1,),
            padding=[(2 * r - 1 - p, 2 * r - 1 - p + op)], lhs_dilation=(r,),
            dimension_numbers=("NWC", "WIO", "NWC"),
        )
    if implementation != "polyphase":
        raise ValueError(f"unknown implementation {implementation!r}")

    def three_taps(x, kernel):
        y = jax.lax.conv_general_dilated(
            x, polyphase_kernel(kernel, r), window_strides=(1,), padding=[(1, 1)],
            dimension_numbers=("NWC", "WIO", "NWC"),
        )
        return y.reshape(batch, length * r, kernel.shape[-1])

    if r > 2:  # at stride 2 each of two_tap_phases' groups is one phase: no zero taps saved
        return jax.lax.platform_dependent(
            x, kernel, cpu=partial(two_tap_phases, stride=r), default=three_taps
        )
    return three_taps(x, kernel)


def batch_norm(
    x: Array, scale: Array, bias: Array, epsilon: float, dtype, relu: bool,
    stats: tuple[Array, Array] | None = None,
) -> tuple[Array, Array, Array]:
    """The normalisation of ``layers.BatchNorm`` over every axis but the last (channels):
    x (..., C), scale and bias (C,) -> (y (..., C) ``dtype``, mean (C,), biased variance (C,)),
    statistics in float32. ``stats`` (mean, var): normalise with these (evaluation mode);
    None: with the batch's. ``relu``: y = relu(BatchNorm(x)), with the batch's statistics by
    ``batch_norm_relu`` (a hand-written gradient).
    """
    if stats is None and relu:
        return batch_norm_relu(x, scale, bias, epsilon, jnp.dtype(dtype))
    if stats is None:
        axes = tuple(range(x.ndim - 1))
        xf = x.astype(jnp.float32)
        mean = xf.mean(axes)
        var = jnp.square(xf - mean).mean(axes)
    else:
        mean, var = stats
    inv = jax.lax.rsqrt(var + epsilon) * scale
    y = ((x.astype(jnp.float32) - mean) * inv + bias).astype(dtype)
    return (jax.nn.relu(y) if relu else y), mean, var


# --------------------------------------------------------------------------- N-d convolutions


@jax.custom_vjp
def pointwise_conv(x: Array, kernel: Array) -> Array:
    """A 1x1 convolution: x (B, *spatial, C_in) @ kernel (C_in, C_out) -> (B, *spatial, C_out).

    The forward is XLA's convolution; the gradients are matmuls of x and dy flattened to
    (rows, channels): dx = dy kernel^T, dkernel = x^T dy. XLA:CPU's kernel gradient of the
    convolution (and autodiff of ``jnp.dot``) first transposes x and dy.
    """
    nd = x.ndim - 2
    return conv_nd(x, kernel.reshape((1,) * nd + kernel.shape), (1,) * nd, (0,) * nd, (1,) * nd)


def _pointwise_conv_fwd(x, kernel):
    return pointwise_conv(x, kernel), (x, kernel)


def _pointwise_conv_bwd(residuals, dy):
    x, kernel = residuals
    rows = dy.reshape(-1, dy.shape[-1])
    dx = (rows @ kernel.T).reshape(x.shape)
    dkernel = x.reshape(-1, x.shape[-1]).T @ rows
    return dx.astype(x.dtype), dkernel.astype(kernel.dtype)


pointwise_conv.defvjp(_pointwise_conv_fwd, _pointwise_conv_bwd)


def conv_nd(x: Array, kernel: Array, strides: Ints, padding: Ints, dilation: Ints) -> Array:
    """Ungrouped channels-last convolution with symmetric zero padding.

    x (B, *spatial, C_in), kernel (*window, C_in, C_out) -> (B, *spatial', C_out); one
    stride, padding and kernel dilation per spatial axis (1 to 3 axes). XLA's convolution
    and its gradients, except under ``jax.vmap`` with a batched kernel (one kernel per seed:
    ``num_seeds`` training): there the forward and both gradients are batched matmuls of the
    input's patches (``_seed_batched_rules``). XLA's own batching of such a convolution is
    one grouped convolution with a group per kernel, which cuDNN runs slowly; on CPU the two
    are as fast.
    """
    return _conv_nd_program(tuple(strides), tuple(padding), tuple(dilation))(x, kernel)


def _xla_conv_nd(x: Array, kernel: Array, strides, padding, dilation, groups: int = 1) -> Array:
    spatial = "DHW"[3 - len(strides) :]
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        strides,
        [(p, p) for p in padding],
        rhs_dilation=dilation,
        dimension_numbers=(f"N{spatial}C", f"{spatial}IO", f"N{spatial}C"),
        feature_group_count=groups,
    )


def conv_patches(x: Array, window: Ints, strides: Ints, padding: Ints, dilation: Ints) -> Array:
    """The input patches of ``conv_nd``: x (B, *spatial, C) -> (B, *spatial', prod(window) C),
    taps in row-major window order, channels minor, so that ``conv_nd(x, kernel, ...)`` is
    ``conv_patches(x, ...) @ kernel.reshape(-1, C_out)``. Slices only (its transpose: pads
    and adds)."""
    x = jnp.pad(x, [(0, 0), *((p, p) for p in padding), (0, 0)])
    sizes = [
        (n - d * (k - 1) - 1) // s + 1
        for n, k, s, d in zip(x.shape[1:-1], window, strides, dilation, strict=True)
    ]
    taps = []
    for tap in itertools.product(*(range(k) for k in window)):
        index = tuple(
            slice(t * d, t * d + (n - 1) * s + 1, s)
            for t, n, s, d in zip(tap, sizes, strides, dilation, strict=True)
        )
        taps.append(x[(slice(None), *index, slice(None))])
    return jnp.concatenate(taps, axis=-1)


def conv_patches_matmul(
    x: Array, kernel: Array, strides: Ints, padding: Ints, dilation: Ints
) -> Array:
    """``conv_nd`` (same shapes, same function) as one matmul of the input's patches on CPU:
    ``conv_patches(x) @ kernel.reshape(-1, C_out)``, whose gradients autodiff makes matmuls
    too. Elsewhere XLA's convolution.

    The faster form on XLA:CPU for few output positions and wide kernels (the MelGAN
    discriminator's kernel-5, 1024 -> 1024 layer), where the input gradient of XLA's
    convolution first writes a transposed, reversed copy of the whole kernel.
    """
    def patches_matmul(x, kernel):
        rows = conv_patches(x, kernel.shape[:-2], strides, padding, dilation)
        y = jnp.dot(rows, kernel.reshape(-1, kernel.shape[-1]),
                    preferred_element_type=jnp.float32)
        return y.astype(jnp.result_type(x, kernel))

    def xla(x, kernel):
        return conv_nd(x, kernel, strides, padding, dilation)

    return jax.lax.platform_dependent(x, kernel, cpu=patches_matmul, default=xla)


def _seed_batched_rules(strides, padding, dilation) -> Callable:
    """``conv_nd`` for one (strides, padding, dilation): a custom_vjp whose forward and
    backward are custom_vmap functions. Unbatched they are XLA's convolution and its vjp.
    Vmapped over N with a batched kernel (N, *window, C_in, C_out), with patches P = (N, B,
    *spatial', taps C_in) of the (broadcast) input and K = kernel (N, taps C_in, C_out):
    y = P K, dkernel = P^T dy, dx = the transpose of the patch extraction applied to dy K^T.
    A forward with one shared kernel folds the seed axis into the batch (XLA's convolution).
    """
    conv = partial(_xla_conv_nd, strides=strides, padding=padding, dilation=dilation)

    def patches(x, window):
        return jax.vmap(lambda x: conv_patches(x, window, strides, padding, dilation))(x)

    def seeds(a, batched, n):
        return a if batched else jnp.broadcast_to(a, (n, *a.shape))

    @jax.custom_batching.custom_vmap
    def forward(x, kernel):
        return conv(x, kernel)

    @forward.def_vmap
    def _forward_rule(n, batched, x, kernel):
        x_batched, kernel_batched = batched
        if not kernel_batched:  # one kernel for every seed: fold the seeds into the batch
            y = conv(x.reshape(-1, *x.shape[2:]), kernel)
            return y.reshape(n, -1, *y.shape[1:]), True
        window = kernel.shape[1:-2]
        k = kernel.reshape(n, -1, kernel.shape[-1])
        return jnp.einsum("nb...k,nko->nb...o", patches(seeds(x, x_batched, n), window), k), True

    @jax.custom_batching.custom_vmap
    def backward(x, kernel, dy):
        return jax.vjp(conv, x, kernel)[1](dy)

    @backward.def_vmap
    def _backward_rule(n, batched, x, kernel, dy):
        x, kernel, dy = (seeds(a, b, n) for a, b in zip((x, kernel, dy), batched, strict=True))
        window = kernel.shape[1:-2]
        p, patches_vjp = jax.vjp(lambda x: patches(x, window), x)
        k = kernel.reshape(n, -1, kernel.shape[-1])
        dkernel = jnp.einsum("nb...k,nb...o->nko", p, dy).reshape(kernel.shape)
        (dx,) = patches_vjp(jnp.einsum("nb...o,nko->nb...k", dy, k))
        return (dx, dkernel.astype(kernel.dtype)), (True, True)

    @jax.custom_vjp
    def conv_nd_program(x, kernel):
        return forward(x, kernel)

    def fwd(x, kernel):
        return forward(x, kernel), (x, kernel)

    def bwd(residuals, dy):
        return backward(*residuals, dy)

    conv_nd_program.defvjp(fwd, bwd)
    return conv_nd_program


_conv_nd_program = cache(_seed_batched_rules)


def _conv_taps(x: Array, kernel: Array, padding: Ints) -> Array:
    """``conv_nd`` with unit strides and dilation as a sum over kernel taps a of
    x_p[shifted by a] @ kernel[a] (x_p: x zero-padded), accumulated in float32."""
    window, nd = kernel.shape[:-2], len(padding)
    x = jnp.pad(x, [(0, 0), *((p, p) for p in padding), (0, 0)])
    out = [n - k + 1 for n, k in zip(x.shape[1:-1], window, strict=True)]
    contract = (((nd + 1,), (0,)), ((), ()))
    y = None
    for tap in itertools.product(*(range(k) for k in window)):
        ends = (t + n for t, n in zip(tap, out, strict=True))
        rows = jax.lax.slice(x, (0, *tap, 0), (x.shape[0], *ends, x.shape[-1]))
        term = jax.lax.dot_general(rows, kernel[tap], contract, preferred_element_type=jnp.float32)
        y = term if y is None else y + term
    return y.astype(jnp.result_type(x, kernel))


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv_taps_forward(x: Array, kernel: Array, padding: Ints) -> Array:
    """``conv_nd`` with unit strides and dilation (same shapes, same function) whose forward
    on CPU is one product per kernel tap (``_conv_taps``): for few input channels (the U-Net's
    first convolution has one) XLA:CPU's convolution is several times slower than these
    fused products. The gradients are XLA's, as is the forward on other platforms.
    """
    ones = (1,) * len(padding)
    return jax.lax.platform_dependent(
        x,
        kernel,
        cpu=partial(_conv_taps, padding=padding),
        default=partial(conv_nd, strides=ones, padding=padding, dilation=ones),
    )


def _conv_taps_forward_fwd(x, kernel, padding):
    return conv_taps_forward(x, kernel, padding), (x, kernel)


def _conv_taps_forward_bwd(padding, residuals, dy):
    ones = (1,) * len(padding)
    conv = partial(conv_nd, strides=ones, padding=padding, dilation=ones)
    return jax.vjp(conv, *residuals)[1](dy)


conv_taps_forward.defvjp(_conv_taps_forward_fwd, _conv_taps_forward_bwd)


# --------------------------------------------------------------------------- batch norm


def _batch_norm_relu(x, scale, bias, epsilon):
    """Training-mode BatchNorm + ReLU: (y float32, x - mean, mean, var, rsqrt(var + eps))."""
    axes = tuple(range(x.ndim - 1))
    xf = x.astype(jnp.float32)
    mean = xf.mean(axes)
    centred = xf - mean
    var = jnp.square(centred).mean(axes)
    rstd = jax.lax.rsqrt(var + epsilon)
    y = jax.nn.relu(centred * (rstd * scale) + bias)
    return y, centred, mean, var, rstd


@partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def batch_norm_relu(x: Array, scale: Array, bias: Array, epsilon: float, dtype) -> tuple:
    """relu(BatchNorm(x)) with batch statistics over every axis but the last (channels).

    x (..., C), scale and bias (C,) float32 -> (y (..., C) ``dtype``, mean (C,), biased
    variance (C,)), the statistics in float32 (as ``BatchNorm``). The same function as XLA's
    composition of ``BatchNorm`` and ``relu``, with a hand-written gradient: two passes over
    the activations (the two channel sums, then dx), keeping only x (recentred in the
    backward) and y as large residuals, where XLA's autodiff keeps more intermediates.
    """
    y, _, mean, var, _ = _batch_norm_relu(x, scale, bias, epsilon)
    return y.astype(dtype), mean, var


def _batch_norm_relu_fwd(x, scale, bias, epsilon, dtype):
    y, _, mean, var, rstd = _batch_norm_relu(x, scale, bias, epsilon)
    y = y.astype(dtype)
    return (y, mean, var), (x, y, scale, mean, rstd)


def _batch_norm_relu_bwd(epsilon, dtype, residuals, cotangents):
    """With xhat = (x - mean) rstd and g = dy where y > 0: dbias = sum g, dscale =
    sum g xhat, dx = scale rstd (g - dbias / n - xhat dscale / n) + dmean / n
    + 2 dvar (x - mean) / n (sums over all but the channel axis, n terms each)."""
    del epsilon, dtype
    x, y, scale, mean, rstd = residuals
    dy, dmean, dvar = cotangents
    axes = tuple(range(x.ndim - 1))
    n = x.size // x.shape[-1]
    centred = x.astype(jnp.float32) - mean
    g = jnp.where(y > 0, dy.astype(jnp.float32), 0.0)
    dbias = g.sum(axes)
    dscale = (g * centred).sum(axes) * rstd
    inv = rstd * scale
    dx = inv * (g - dbias / n - centred * (rstd * dscale / n))
    dx = dx + dmean / n + centred * (2 * dvar / n)
    return dx.astype(x.dtype), dscale.astype(scale.dtype), dbias.astype(scale.dtype)


batch_norm_relu.defvjp(_batch_norm_relu_fwd, _batch_norm_relu_bwd)


# --------------------------------------------------------------------------- max pooling


def max_pool(x: Array, window: Sequence[int], strides: Sequence[int]) -> Array:
    """Max pooling without padding (PyTorch floor mode). x: (B, *spatial, C) -> (B, *spatial', C).

    A running maximum over the window's strided slices that also records which tap holds
    each window's first maximum (row-major), where the gradient goes, as with XLA's
    select-and-scatter and PyTorch. The backward (``_max_pool_bwd``) scatters dy by that
    index: faster than XLA:CPU's select-and-scatter, and it never compares recomputed
    inputs with the output (XLA may round a fused recomputation differently).
    """
    return _max_pool(x, tuple(window), tuple(strides), x.shape)


def _pool_taps(x: Array, window: Ints, strides: Ints):
    """(offset, x[:, o_1 :: s_1][:out_1], ..., :]) for every window offset o, row-major."""
    out = [(n - w) // s + 1 for n, w, s in zip(x.shape[1:-1], window, strides, strict=True)]
    for offset in itertools.product(*(range(w) for w in window)):
        ends = [o + s * (n - 1) + 1 for o, s, n in zip(offset, strides, out, strict=True)]
        start, limit = (0, *offset, 0), (x.shape[0], *ends, x.shape[-1])
        yield offset, jax.lax.slice(x, start, limit, (1, *strides, 1))


def _max_pool_with_index(x: Array, window, strides) -> tuple[Array, Array]:
    """(max pool of x, row-major tap index (int8 up to 127 taps) of each window's first
    maximum); a NaN window's maximum is NaN."""
    taps = _pool_taps(x, window, strides)
    y = next(taps)[1]
    index = jnp.zeros(y.shape, jnp.int8 if math.prod(window) <= 127 else jnp.int32)
    for t, (_, tap) in enumerate(taps, start=1):
        better = (tap > y) | (jnp.isnan(tap) & ~jnp.isnan(y))
        y, index = jnp.where(better, tap, y), jnp.where(better, t, index)
    return y, index


@partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(x: Array, window, strides, x_shape) -> Array:
    taps = [tap for _, tap in _pool_taps(x, window, strides)]
    return reduce(jnp.maximum, taps)  # without the index when not differentiated


def _max_pool_fwd(x, window, strides, x_shape):
    y, index = _max_pool_with_index(x, window, strides)
    return y, _stored(index)


def _stored(index: Array) -> Array:
    """``index`` unchanged, as the result of a reduction (a bitwise or with zeros).

    The backward reads the index once per window tap. Left elementwise, XLA:CPU fuses the
    whole comparison chain that computes it into each of those reads, so it computes it
    up to 9 times per element; a reduction is not fused into its consumers, so the index
    is computed once and stored.
    """
    both = jnp.stack([index, jnp.zeros_like(index)])
    return jax.lax.reduce(both, jnp.zeros((), index.dtype), jax.lax.bitwise_or, (0,))


def _max_pool_bwd(window, strides, x_shape, index, dy):
    """dy (B, *spatial', C) -> dx (B, *spatial, C) = ``x_shape``: tap t's share
    where(index == t, dy, 0) put back in place by an interior-padded ``lax.pad``."""
    zero, dx = jnp.zeros((), dy.dtype), jnp.zeros(x_shape, dy.dtype)
    taps = itertools.product(*(range(w) for w in window))
    for t, offset in enumerate(taps):
        config = [
            (o, n - o - s * (m - 1) - 1, s - 1)
            for o, n, s, m in zip(offset, x_shape[1:-1], strides, dy.shape[1:-1], strict=True)
        ]
        share = jnp.where(index == t, dy, zero)
        dx = dx + jax.lax.pad(share, zero, [(0, 0, 0), *config, (0, 0, 0)])
    return (dx,)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


# --------------------------------------------------------------------------- upsampled 3x3


def upsample_nearest2d(x: Array, factor: int = 2) -> Array:
    """Nearest-neighbour upsampling. (B, H, W, C) -> (B, H*f, W*f, C)."""
    return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)


# Nearest-neighbour 2x upsampling then a 3x3 convolution (padding 1), per axis: output 2i + a
# reads the low-resolution samples i - 1 + a + s, s in {0, 1}, with the 3x3 kernel's taps
# _PHASE_TAPS[a][s] summed (a: output phase, s: low-resolution offset).
_PHASE_TAPS = (((0,), (1, 2)), ((0, 1), (2,)))
# the (phase, offset) pairs that each 3x3 tap contributes to
_TAP_PHASES = tuple(tuple((a, s) for a in range(2) for s in range(2) if y in _PHASE_TAPS[a][s])
                    for y in range(3))


def phase_kernel(kernel: Array) -> Array:
    """3x3 kernel (3, 3, C_in, C_out) -> the four output phases' 2x2 kernels as one matrix
    (2 * 2 * C_in, 2 * 2 * C_out) for ``upsampled_conv_from_phases``: rows (s, t, i),
    columns (a, b, o); taps summed in float32, returned in the kernel's dtype."""
    c_in, c_out = kernel.shape[2:]
    k = kernel.astype(jnp.float32)
    rows = [[sum(k[y] for y in _PHASE_TAPS[a][s]) for s in range(2)] for a in range(2)]
    parts = jnp.stack([
        jnp.stack([
            jnp.stack([jnp.stack([sum(rows[a][s][x] for x in _PHASE_TAPS[b][t])
                                  for b in range(2)]) for a in range(2)])
            for t in range(2)])
        for s in range(2)])  # (s, t, a, b, C_in, C_out)
    return parts.transpose(0, 1, 4, 2, 3, 5).reshape(4 * c_in, 4 * c_out).astype(kernel.dtype)


def _phase_kernel_transpose(dk: Array) -> Array:
    """The transpose of ``phase_kernel``'s linear map: (4 C_in, 4 C_out) -> (3, 3, C_in,
    C_out) (the kernel gradient from the phase kernel's)."""
    c_in, c_out = dk.shape[0] // 4, dk.shape[1] // 4
    dk = dk.reshape(2, 2, c_in, 2, 2, c_out)
    return jnp.stack([
        jnp.stack([sum(dk[s, t, :, a, b] for a, s in _TAP_PHASES[y] for b, t in _TAP_PHASES[x])
                   for x in range(3)])
        for y in range(3)])


def _low_res_patches(x: Array) -> Array:
    """(B, H, W, C) -> the 2x2 patches of x zero-padded by 1, (B (H+1) (W+1), 4 C), (s, t, c)."""
    b, h, w, c = x.shape
    xp = jnp.pad(x, [(0, 0), (1, 1), (1, 1), (0, 0)])
    taps = [xp[:, s : s + h + 1, t : t + w + 1] for s in range(2) for t in range(2)]
    return jnp.concatenate(taps, axis=-1).reshape(-1, 4 * c)


def _upsampled_conv_reference(x: Array, kernel: Array) -> Array:
    return conv_nd(upsample_nearest2d(x), kernel, (1, 1), (1, 1), (1, 1))


def upsampled_conv_from_phases(x: Array, phases: Array) -> Array:
    """``upsampled_conv3x3(x, kernel)``'s CPU form from ``phases = phase_kernel(kernel)``
    (inference computes it once): x (B, H, W, C_in) -> (B, 2H, 2W, C_out)."""
    b, h, w, _ = x.shape
    c_out = phases.shape[1] // 4
    y = jnp.matmul(_low_res_patches(x), phases,
                   preferred_element_type=jnp.float32).astype(jnp.result_type(x, phases))
    y = y.reshape(b, h + 1, w + 1, 2, 2, c_out)
    # output (2i + a, 2j + b) is phase (a, b) at low-resolution position (i + a, j + b)
    rows = [jnp.stack([y[:, a : a + h, c : c + w, a, c] for c in range(2)], axis=3)
            for a in range(2)]
    return jnp.stack(rows, axis=2).reshape(b, 2 * h, 2 * w, c_out)


def _upsampled_conv_phases(x: Array, kernel: Array) -> Array:
    return upsampled_conv_from_phases(x, phase_kernel(kernel))


@jax.custom_vjp
def upsampled_conv3x3(x: Array, kernel: Array) -> Array:
    """``conv_nd(upsample_nearest2d(x), kernel)`` with padding 1 (same function), computed
    at x's resolution. x (B, H, W, C_in), kernel (3, 3, C_in, C_out) -> (B, 2H, 2W, C_out).

    Each of the four output phases (a, b) of a 3x3 convolution of a nearest-upsampled input
    is a 2x2 convolution of x with summed taps, so on CPU all four are one matmul of x's
    2x2 patches with a (4 C_in, 4 C_out) phase kernel: 16 instead of 36 multiply-adds per
    input sample and channel pair. The gradients are matmuls of the same shapes (the input
    gradient sums four shifted slices; the kernel gradient maps back by the tap sums).
    Other platforms run XLA's convolution of the upsampled input and its gradients.
    """
    return jax.lax.platform_dependent(
        x, kernel, cpu=_upsampled_conv_phases, default=_upsampled_conv_reference
    )


def _upsampled_conv3x3_fwd(x, kernel):
    return upsampled_conv3x3(x, kernel), (x, kernel)


def _upsampled_conv_phases_grads(x, kernel, dy):
    b, h, w, c_in = x.shape
    c_out = kernel.shape[-1]
    d = dy.reshape(b, h, 2, w, 2, c_out)
    # each phase's output gradient at the low-resolution positions that produced it
    dy4 = jnp.stack(
        [jnp.stack([jnp.pad(d[:, :, a, :, c], [(0, 0), (a, 1 - a), (c, 1 - c), (0, 0)])
                    for c in range(2)], axis=3) for a in range(2)],
        axis=3,
    ).reshape(-1, 4 * c_out)
    dk = jax.lax.dot_general(_low_res_patches(x), dy4, (((0,), (0,)), ((), ())),
                             preferred_element_type=jnp.float32)
    dkernel = _phase_kernel_transpose(dk)
    z = jnp.matmul(dy4, phase_kernel(kernel).T, preferred_element_type=jnp.float32)
    z = z.reshape(b, h + 1, w + 1, 2, 2, c_in)
    dx = sum(z[:, 1 - s : 1 - s + h, 1 - t : 1 - t + w, s, t] for s in range(2) for t in range(2))
    return dx.astype(x.dtype), dkernel.astype(kernel.dtype)


def _upsampled_conv3x3_bwd(residuals, dy):
    x, kernel = residuals

    def xla_grads(x, kernel, dy):
        return jax.vjp(_upsampled_conv_reference, x, kernel)[1](dy)

    return jax.lax.platform_dependent(
        x, kernel, dy, cpu=_upsampled_conv_phases_grads, default=xla_grads
    )


upsampled_conv3x3.defvjp(_upsampled_conv3x3_fwd, _upsampled_conv3x3_bwd)

