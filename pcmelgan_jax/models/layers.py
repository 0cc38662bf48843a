"""Building blocks with PyTorch semantics, channels-last.

- ``Conv``: N-d convolution with optional PyTorch ``weight_norm(dim=0)`` (one gain per output
  channel) and PyTorch's default initialisation.
- ``ConvTranspose1d``: PyTorch ``ConvTranspose1d(kernel=2r, stride=r, padding=r//2 + r%2,
  output_padding=r%2)`` with weight norm whose gain is per INPUT channel, computed either as a
  polyphase stride-1 convolution followed by a reshape (default; XLA:CPU computes the kernel
  gradient of a real transposed convolution about 25x slower than its forward) or directly.
- ``BatchNorm``: PyTorch BatchNorm (unbiased running variance, momentum 0.1, eps 1e-5).
- pooling helpers: max pooling, ``AvgPool1d(count_include_pad=False)``, PyTorch's
  ``AdaptiveAvgPool2d`` bin semantics, nearest-neighbour upsampling and reflection padding.

Parameter layouts (what the PyTorch importer writes): ``kernel`` is (*window, in/groups, out)
for ``Conv`` and (k, in, out) for ``ConvTranspose1d``; ``scale`` is the weight-norm gain.

Mixed precision: every layer's ``dtype`` is its computation dtype (``None``: the input's).
Parameters are always created and kept in float32; weight norm is computed in float32 and
the resulting kernel cast to ``dtype``; BatchNorm statistics are float32 (see ``BatchNorm``).
The pooling helpers keep their input's dtype.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from functools import cache, partial, reduce
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def torch_uniform(fan_in: int) -> Callable:
    """PyTorch's default weight/bias init for conv and linear layers: U(-1/sqrt(fan_in), +)."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _weight_norm(v: Array, gain: Array, gain_axis: int) -> Array:
    """``gain * v / ||v||`` with the norm over every axis of ``v`` but ``gain_axis``."""
    axes = tuple(a for a in range(v.ndim) if a != gain_axis % v.ndim)
    norm = jnp.sqrt(jnp.sum(jnp.square(v), axis=axes, keepdims=True))
    shape = [1] * v.ndim
    shape[gain_axis] = -1
    return v * (gain.reshape(shape) / norm)


def folded_weight_norm(p: dict, gain_axis: int) -> np.ndarray:
    """``_weight_norm`` of a ``Conv``'s params {'kernel': v, 'scale': gain} in float64 NumPy:
    ``gain * v / ||v||`` (norm over all axes but gain_axis), for folding weights once in the
    inference paths (``melgan.prepare_generator``, ``unet_inference.prepare_unet``)."""
    v = np.asarray(p["kernel"], np.float64)
    axes = tuple(a for a in range(v.ndim) if a != gain_axis % v.ndim)
    shape = [1] * v.ndim
    shape[gain_axis] = -1
    return v * (np.asarray(p["scale"], np.float64).reshape(shape)
                / np.sqrt(np.sum(v * v, axis=axes, keepdims=True)))


def _norm_init(v: Array, gain_axis: int) -> Callable:
    """Initialises a weight-norm gain to ||v|| so that the initial weight equals v (PyTorch)."""
    axes = tuple(a for a in range(v.ndim) if a != gain_axis % v.ndim)

    def init(key, shape, dtype=jnp.float32):
        del key
        return jnp.sqrt(jnp.sum(jnp.square(v), axis=axes)).astype(dtype).reshape(shape)

    return init


class Conv(nn.Module):
    """Channels-last convolution, PyTorch init, optional weight norm (gain per output channel).

    x: (B, *spatial, C_in) -> (B, *spatial', features). ``padding`` is PyTorch's symmetric
    zero padding per spatial axis (an int applies to every axis). ``dtype``: computation
    dtype (None = x's); the float32 kernel is weight-normed in float32, then cast. An
    ungrouped convolution is ``conv_nd`` (vmapped over per-seed kernels: batched matmuls).
    ``grouped_as_matmul``: compute a grouped, undilated 1-d convolution with
    ``grouped_conv1d`` (batched matmuls on CPU, a polyphase stride-1 convolution elsewhere)
    instead of XLA's strided grouped convolution.
    ``grads_as_matmul``: compute an ungrouped convolution with ``conv_matmul_grads`` (the
    same function; on CPU its input and kernel gradients are one matmul per kernel tap:
    faster than YNNPACK's convolution gradients, slower than XLA's own kernels that the
    train steps use, see ``pcmelgan_jax.runtime.compilation``).
    ``patches_matmul``: compute an ungrouped convolution with ``conv_patches_matmul`` (the
    same function; on CPU one matmul of the input's patches: for few output positions and
    many channels).
    ``taps_forward``: compute an ungrouped, unstrided, undilated convolution with
    ``conv_taps_forward`` (the same function; on CPU its forward is one product per kernel
    tap, e.g. ~5x faster than XLA's convolution for a single input channel). An ungrouped,
    unstrided, unpadded 1x1 convolution is always ``pointwise_conv`` (matmul gradients).

    ``__call__(x, upsampled=None)``: with ``upsampled`` (B, H/2, W/2, C_up) the input is
    ``concat([x, upsample_nearest2d(upsampled)], -1)`` (the kernel's input channels: x's
    first), computed as x's convolution plus ``upsampled_conv3x3`` of ``upsampled`` without
    forming the upsampled tensor (2-d, 3x3, padding 1, unit stride and dilation only).
    """

    features: int
    kernel_size: Sequence[int]
    strides: int | Sequence[int] = 1
    padding: int | Sequence[int] = 0
    dilation: int | Sequence[int] = 1
    groups: int = 1
    use_bias: bool = True
    weight_norm: bool = True
    grouped_as_matmul: bool = False
    grads_as_matmul: bool = False
    taps_forward: bool = False
    patches_matmul: bool = False
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x: Array, upsampled: Array | None = None) -> Array:
        nd = len(self.kernel_size)
        as_tuple = lambda v: (v,) * nd if isinstance(v, int) else tuple(v)
        in_features = x.shape[-1] + (0 if upsampled is None else upsampled.shape[-1])
        if in_features % self.groups:
            raise ValueError(f"{in_features} input channels are not divisible by {self.groups}")
        shape = (*self.kernel_size, in_features // self.groups, self.features)
        fan_in = int(np.prod(shape[:-1]))
        kernel = self.param("kernel", torch_uniform(fan_in), shape)
        if self.weight_norm:
            gain = self.param("scale", _norm_init(kernel, -1), (self.features,))
            kernel = _weight_norm(kernel, gain, -1)
        dtype = self.dtype or x.dtype
        x, kernel = x.astype(dtype), kernel.astype(dtype)
        spatial = "".join("DHW"[3 - nd :])
        unit = lambda v: all(u == 1 for u in as_tuple(v))  # noqa: E731
        if upsampled is not None:
            if not (tuple(self.kernel_size) == (3, 3) and as_tuple(self.padding) == (1, 1)
                    and unit(self.strides) and unit(self.dilation) and self.groups == 1):
                raise ValueError("Conv(upsampled=...) needs a 3x3, padding 1, unit-stride, "
                                 "undilated, ungrouped 2-d convolution")
            if (2 * upsampled.shape[1], 2 * upsampled.shape[2]) != x.shape[1:3]:
                raise ValueError(f"upsampled {upsampled.shape} is not half of x {x.shape}")
            skip = x.shape[-1]
            y = conv_nd(x, kernel[:, :, :skip], (1, 1), (1, 1), (1, 1))
            y = y + upsampled_conv3x3(upsampled.astype(dtype), kernel[:, :, skip:])
        elif (all(k == 1 for k in self.kernel_size) and unit(self.strides)
              and not any(as_tuple(self.padding)) and self.groups == 1):
            y = pointwise_conv(x, kernel.reshape(kernel.shape[-2:]))
        elif self.grouped_as_matmul and self.groups > 1 and nd == 1 and self.dilation == 1:
            y = grouped_conv1d(
                x, kernel, as_tuple(self.strides)[0], as_tuple(self.padding)[0], self.groups
            )
        elif self.taps_forward and self.groups == 1 and unit(self.strides) and unit(self.dilation):
            y = conv_taps_forward(x, kernel, as_tuple(self.padding))
        elif self.patches_matmul and self.groups == 1:
            y = conv_patches_matmul(
                x, kernel, as_tuple(self.strides), as_tuple(self.padding), as_tuple(self.dilation)
            )
        elif self.grads_as_matmul and self.groups == 1:
            y = conv_matmul_grads(
                x, kernel, as_tuple(self.strides), as_tuple(self.padding), as_tuple(self.dilation)
            )
        elif self.groups == 1:
            y = conv_nd(x, kernel, as_tuple(self.strides), as_tuple(self.padding),
                        as_tuple(self.dilation))
        else:
            y = jax.lax.conv_general_dilated(
                x,
                kernel,
                window_strides=as_tuple(self.strides),
                padding=[(p, p) for p in as_tuple(self.padding)],
                rhs_dilation=as_tuple(self.dilation),
                dimension_numbers=(f"N{spatial}C", f"{spatial}IO", f"N{spatial}C"),
                feature_group_count=self.groups,
            )
        if self.use_bias:
            bias = self.param("bias", torch_uniform(fan_in), (self.features,))
            y = y + bias.astype(dtype)
        return y


@jax.custom_vjp
def pointwise_conv(x: Array, kernel: Array) -> Array:
    """A 1x1 convolution: x (B, *spatial, C_in) @ kernel (C_in, C_out) -> (B, *spatial, C_out).

    The forward is XLA's convolution; the gradients are matmuls of x and dy flattened to
    (rows, channels): dx = dy kernel^T, dkernel = x^T dy. XLA:CPU's kernel gradient of the
    convolution (and autodiff of ``jnp.dot``) first transposes x and dy; without that the
    MelGAN generator's train step is 3-6 % and the U-Net's ~7 % faster (1x1 output conv).
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


def conv_nd(
    x: Array,
    kernel: Array,
    strides: tuple[int, ...],
    padding: tuple[int, ...],
    dilation: tuple[int, ...],
) -> Array:
    """Ungrouped channels-last convolution with symmetric zero padding.

    x (B, *spatial, C_in), kernel (*window, C_in, C_out) -> (B, *spatial', C_out); one
    stride, padding and kernel dilation per spatial axis (1 to 3 axes). XLA's convolution
    and its gradients, except under ``jax.vmap`` with a batched kernel (one kernel per seed:
    ``num_seeds`` training): there the forward and both gradients are batched matmuls of the
    input's patches (``_seed_batched_rules``). XLA's own batching of such a convolution is
    one grouped convolution with a group per kernel, which cuDNN runs slowly: on one H100
    the 4-seed PCMelGAN step at batch 16 took 33.7 ms that way and 26.0 ms with a prototype
    of these rules (``bench/measured/nvidia-h100``). On CPU it makes no difference.
    """
    return _conv_nd_program(tuple(strides), tuple(padding), tuple(dilation))(x, kernel)


def _xla_conv_nd(x: Array, kernel: Array, strides, padding, dilation) -> Array:
    spatial = "DHW"[3 - len(strides) :]
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        strides,
        [(p, p) for p in padding],
        rhs_dilation=dilation,
        dimension_numbers=(f"N{spatial}C", f"{spatial}IO", f"N{spatial}C"),
    )


def conv_patches(
    x: Array,
    window: tuple[int, ...],
    strides: tuple[int, ...],
    padding: tuple[int, ...],
    dilation: tuple[int, ...],
) -> Array:
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
    x: Array,
    kernel: Array,
    strides: tuple[int, ...],
    padding: tuple[int, ...],
    dilation: tuple[int, ...],
) -> Array:
    """``conv_nd`` (same shapes, same function) as one matmul of the input's patches on CPU:
    ``conv_patches(x) @ kernel.reshape(-1, C_out)``, whose gradients autodiff makes matmuls
    too. Elsewhere XLA's convolution.

    For few output positions and wide kernels it is the faster form on XLA:CPU, whose input
    gradient of a convolution first writes a transposed, reversed copy of the kernel: the
    MelGAN discriminator's kernel-5, 1024 -> 1024 layer at 32, 16 and 8 samples (a 20 MiB
    kernel, a ~35 ms copy per scale on 2 Xeon cores). Its train step took 4 % less.
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


@partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv_matmul_grads(
    x: Array,
    kernel: Array,
    strides: tuple[int, ...],
    padding: tuple[int, ...],
    dilation: tuple[int, ...],
) -> Array:
    """``conv_nd`` (same shapes, same function) whose gradients on CPU are per-tap matmuls.

    With jaxlib's default YNNPACK kernels, XLA:CPU computes a convolution's kernel gradient
    as a convolution whose window is the whole output (39x15 for AlexNet's conv2), and at
    AlexNet's widths both gradients ran 1.2-2x slower than the forward; with XLA's own
    kernels (the train steps' compiler options) XLA's gradients are the faster ones (AlexNet
    train step 12-25 %). Here, for every kernel tap a, dkernel[a] = x_a^T dy
    (``_tap_kernel_grad``) and dx_a += dy kernel[a]^T (``_tap_input_grad``), x_a being the
    input samples that tap a meets. The forward is XLA's; on other platforms so are the
    gradients.
    """
    return conv_nd(x, kernel, strides, padding, dilation)


def _conv_matmul_grads_fwd(x, kernel, strides, padding, dilation):
    return conv_nd(x, kernel, strides, padding, dilation), (x, kernel)


def _conv_matmul_grads_bwd(strides, padding, dilation, residuals, dy):
    x, kernel = residuals

    def xla_grads(x, kernel, dy):
        conv = partial(conv_nd, strides=strides, padding=padding, dilation=dilation)
        return jax.vjp(conv, x, kernel)[1](dy)

    def tap_grads(x, kernel, dy):
        dx = _tap_input_grad(dy, kernel, x.shape, strides, padding, dilation)
        dkernel = _tap_kernel_grad(x, dy, kernel.shape[:-2], strides, padding, dilation)
        return dx.astype(x.dtype), dkernel.astype(kernel.dtype)

    return jax.lax.platform_dependent(x, kernel, dy, cpu=tap_grads, default=xla_grads)


conv_matmul_grads.defvjp(_conv_matmul_grads_fwd, _conv_matmul_grads_bwd)


def _conv_taps(x: Array, kernel: Array, padding: tuple[int, ...]) -> Array:
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
def conv_taps_forward(x: Array, kernel: Array, padding: tuple[int, ...]) -> Array:
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


def _phase_blocks(shape: Sequence[int], padding: Sequence[int], strides: Sequence[int]):
    """Per spatial axis of ``shape`` (B, *spatial, C): ceil((n + 2 p) / s) blocks of s samples."""
    return [-(-(n + 2 * p) // s) for n, p, s in zip(shape[1:-1], padding, strides, strict=True)]


def _fold_phases(x: Array, padding: Sequence[int], strides: Sequence[int]) -> Array:
    """x (B, *spatial, C) zero-padded (p each side, then up to whole blocks) and split per axis
    into (blocks, s): (B, *strides, *blocks, C), padded sample s q + r at [r, q]."""
    blocks, nd = _phase_blocks(x.shape, padding, strides), len(strides)
    axes = list(zip(x.shape[1:-1], padding, strides, blocks, strict=True))
    x = jnp.pad(x, [(0, 0), *((p, q * s - n - p) for n, p, s, q in axes), (0, 0)])
    x = x.reshape(x.shape[0], *(d for _, _, s, q in axes for d in (q, s)), x.shape[-1])
    return x.transpose(0, *range(2, 2 * nd + 1, 2), *range(1, 2 * nd, 2), 2 * nd + 1)


def _tap_starts(index: Array, window, strides, dilation) -> list:
    """Where kernel tap ``index`` (row-major) meets its samples in ``_fold_phases`` layout:
    the phases, then the first blocks."""
    axes = zip(jnp.unravel_index(index, window), dilation, strides, strict=True)
    offsets = [(a * d, s) for a, d, s in axes]
    return [0] + [o % s for o, s in offsets] + [o // s for o, s in offsets] + [0]


def _tap_kernel_grad(x: Array, dy: Array, window, strides, padding, dilation) -> Array:
    """Kernel gradient of ``conv_nd``. x (B, *spatial, C_in), dy (B, *out, C_out) ->
    (*window, C_in, C_out), float32.

    dkernel[a] = sum over (b, t) of x_p[b, s t + d a] dy[b, t] (x_p: x zero-padded, s the
    strides, d the dilation): one (C_in, C_out) matmul per tap a over B * prod(out) rows, cut
    from ``_fold_phases(x)`` by a ``lax.scan`` over taps (one tap's rows live at a time).
    """
    batch, c_in, c_out, out = x.shape[0], x.shape[-1], dy.shape[-1], dy.shape[1:-1]
    x, dy = _fold_phases(x, padding, strides), dy.reshape(-1, c_out)
    size = (batch, *(1,) * len(out), *out, c_in)

    def tap(carry, index):
        rows = jax.lax.dynamic_slice(x, _tap_starts(index, window, strides, dilation), size)
        contract = (((0,), (0,)), ((), ()))
        grad = jax.lax.dot_general(
            rows.reshape(-1, c_in), dy, contract, preferred_element_type=jnp.float32
        )
        return carry, grad

    taps = jnp.arange(int(np.prod(window)))
    return jax.lax.scan(tap, None, taps)[1].reshape(*window, c_in, c_out)


def _tap_input_grad(dy: Array, kernel: Array, x_shape, strides, padding, dilation) -> Array:
    """Input gradient of ``conv_nd``. dy (B, *out, C_out), kernel (*window, C_in, C_out) ->
    (B, *spatial, C_in) = ``x_shape``, float32.

    A ``lax.scan`` over taps a adds dy kernel[a]^T (one (C_out, C_in) matmul over
    B * prod(out) rows) to the samples that tap a met, in a float32 ``_fold_phases`` layout
    of the padded input, which is then unfolded and cropped.
    """
    batch, c_in, c_out, out = x_shape[0], x_shape[-1], dy.shape[-1], dy.shape[1:-1]
    window, nd = kernel.shape[:-2], len(out)
    blocks = _phase_blocks(x_shape, padding, strides)
    grad = jnp.zeros((batch, *strides, *blocks, c_in), jnp.float32)
    dy = dy.reshape(-1, c_out)

    def tap(grad, tap_kernel):
        index, kernel = tap_kernel
        contract = (((1,), (1,)), ((), ()))
        rows = jax.lax.dot_general(dy, kernel, contract, preferred_element_type=jnp.float32)
        rows = rows.reshape(batch, *(1,) * nd, *out, c_in)
        start = _tap_starts(index, window, strides, dilation)
        rows = rows + jax.lax.dynamic_slice(grad, start, rows.shape)
        return jax.lax.dynamic_update_slice(grad, rows, start), None

    taps = (jnp.arange(int(np.prod(window))), kernel.reshape(-1, c_in, c_out))
    grad = jax.lax.scan(tap, grad, taps)[0]
    # (B, *strides, *blocks, C) -> (B, blocks_1, s_1, ..., C) -> padded input, cropped
    grad = grad.transpose(0, *(i for k in range(nd) for i in (1 + nd + k, 1 + k)), 2 * nd + 1)
    grad = grad.reshape(batch, *(q * s for q, s in zip(blocks, strides, strict=True)), c_in)
    crop = [slice(p, p + n) for p, n in zip(padding, x_shape[1:-1], strict=True)]
    return grad[(slice(None), *crop, slice(None))]


def grouped_conv1d(x: Array, kernel: Array, stride: int, padding: int, groups: int) -> Array:
    """``lax.conv_general_dilated(..., feature_group_count=groups)`` of a 1-d input with that
    stride and symmetric zero padding, in the form that is fast on each platform.

    x (B, T, C_in), kernel (k, C_in / groups, C_out) -> (B, T', C_out) with
    T' = (T + 2 padding - k) // stride + 1. On CPU: ``grouped_conv1d_blocks`` (batched
    matmuls over the groups); elsewhere ``grouped_conv1d_polyphase`` (XLA's grouped
    convolution at stride 1 and its gradients).
    """
    return jax.lax.platform_dependent(
        x,
        kernel,
        cpu=partial(grouped_conv1d_blocks, stride=stride, padding=padding, groups=groups),
        default=partial(grouped_conv1d_polyphase, stride=stride, padding=padding,
                        groups=groups),
    )


def _padded_blocks(x: Array, padding: int, block: int, blocks: int, groups: int) -> Array:
    """x (B, T, C_in) zero-padded by ``padding`` samples on the left and cut or padded on the
    right to ``blocks * block`` samples -> (B, blocks, block, groups, C_in / groups)."""
    batch, length, c_in = x.shape
    # lax.pad: the right padding may be negative (samples that no output reaches)
    right = block * blocks - length - padding
    x = jax.lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (padding, right, 0), (0, 0, 0)))
    return x.reshape(batch, blocks, block, groups, c_in // groups)


def _output_blocks(length: int, k: int, stride: int, padding: int) -> tuple[int, int, int, int]:
    """(T', q, n_b, V) of ``grouped_conv1d_blocks``: output length, outputs per block, input
    blocks per output block, output blocks."""
    out = (length + 2 * padding - k) // stride + 1
    q = math.ceil(math.ceil(k / stride) / 3)  # a third of the polyphase taps
    span = stride * q  # input samples per block
    return out, q, math.ceil((stride * (q - 1) + k) / span), math.ceil(out / q)


def _toeplitz_kernel(kernel: Array, stride: int, q: int, n_b: int) -> Array:
    """The block-Toeplitz kernel of ``grouped_conv1d_blocks``: (k, C_in / groups, C_out) ->
    (n_b, S, q, C_in / groups, C_out), entry [m, c, r] = kernel[S m + c - s r] (zero outside
    0..k-1), S = s q."""
    k, per_group, c_out = kernel.shape
    span = stride * q
    tap = (span * np.arange(n_b)[:, None, None] + np.arange(span)[None, :, None]
           - stride * np.arange(q))  # (n_b, S, q): the kernel tap each entry holds
    tap = np.where((tap >= 0) & (tap < k), tap, k)  # k: the appended zero tap
    return jnp.concatenate([kernel, jnp.zeros((1, per_group, c_out), kernel.dtype)])[tap]


def _grouped_blocks_form(
    length: int, c_in: int, c_out: int, k: int, stride: int, padding: int
) -> Literal["patches", "shifted"]:
    """Which matmul ``grouped_conv1d_blocks`` runs: "shifted" (outputs) where n_b copies of
    the output are fewer elements than n_b copies of the input, else "patches" (input)."""
    _, q, n_b, v = _output_blocks(length, k, stride, padding)
    return "shifted" if (v + n_b - 1) * q * c_out < v * stride * q * c_in else "patches"


def grouped_conv1d_blocks(
    x: Array, kernel: Array, stride: int, padding: int, groups: int
) -> Array:
    """``grouped_conv1d`` as one batched matmul over the groups (plain jnp; autodiff gives
    two more batched matmuls as its gradients).

    XLA:CPU runs a grouped convolution as one small convolution per group, ~0.1 ms each: the
    MelGAN discriminator's layers with 64 and 256 groups of 4 input channels spend most of
    their time there (PyTorch's grouped kernels were 2-3.6x faster, forward+backward at
    batch 16). Here the outputs are taken in blocks of q consecutive samples (q = ceil(n / 3)
    of the n = ceil(k / s) polyphase taps; q = 4 for kernel 41, stride 4): with S = s q,
    output block v reads the n_b input blocks x_p[S (v + m) : S (v + m + 1)], m < n_b, of
    the zero-padded input x_p, and
    y[b, q v + r, (g, o)] = sum_{m, c, i} x_p[b, S (v + m) + c, (g, i)] W[g, (m, c, i), (r, o)]
    with the block-Toeplitz kernel W[g, (m, c, i), (r, o)] = kernel[S m + c - s r, i, (g, o)]
    (zero outside 0..k-1): n_b S / k = 1.56x the convolution's multiply-adds for the
    discriminator. The matmul takes one of two forms, whichever moves less data:

    - input patches: per group a (B V, n_b S C_in/groups) x (n_b S C_in/groups, q C_out/groups)
      matmul of the patch matrix, which holds the input n_b times;
    - shifted outputs: per group a (B V', S C_in/groups) x (S C_in/groups, n_b q C_out/groups)
      matmul of the input blocks themselves (V' = V + n_b - 1), whose n_b partial outputs
      per block are then summed shifted by m blocks: the intermediate holds the output n_b
      times. It wins where the output is smaller than the input: the discriminator's
      1024 -> 1024 layer (256 groups), whose forward+backward at batch 16 took 52 instead of
      89 ms (T = 128) on 2 Xeon cores, the discriminator's train step 3 % less.

    On 2 Xeon cores, forward+backward of the discriminator's four grouped layers at batch 16
    ran 1.5-2x faster than the polyphase form, and the discriminator's train step 1.36x
    (q = 4 or 6 were the fastest of 2, 3, 4, 6 and 11).
    """
    batch, length, c_in = x.shape
    k, per_group, c_out = kernel.shape
    out_per_group = c_out // groups
    out, q, n_b, v = _output_blocks(length, k, stride, padding)
    span = stride * q
    blocks = v + n_b - 1
    x = _padded_blocks(x, padding, span, blocks, groups).transpose(3, 0, 1, 2, 4)
    w = _toeplitz_kernel(kernel, stride, q, n_b).reshape(
        n_b, span, q, per_group, groups, out_per_group
    )
    dtype = jnp.result_type(x, kernel)
    batched_matmul = partial(jax.lax.dot_general, dimension_numbers=(((2,), (1,)), ((0,), (0,))),
                             preferred_element_type=jnp.float32)
    if _grouped_blocks_form(length, c_in, c_out, k, stride, padding) == "shifted":
        w = w.transpose(4, 1, 3, 0, 2, 5).reshape(groups, span * per_group, -1)
        z = batched_matmul(x.reshape(groups, batch * blocks, -1), w).astype(dtype)
        z = z.reshape(groups, batch, blocks, n_b, q * out_per_group)
        y = reduce(jnp.add, [z[:, :, m:m + v, m] for m in range(n_b)])
    else:  # input patches
        patches = jnp.concatenate([x[:, :, m:m + v] for m in range(n_b)], axis=3)
        patches = patches.reshape(groups, batch * v, n_b * span * per_group)
        w = w.transpose(4, 0, 1, 3, 2, 5).reshape(groups, n_b * span * per_group, -1)
        y = batched_matmul(patches, w).astype(dtype)
    y = y.reshape(groups, batch, v * q, out_per_group).transpose(1, 2, 0, 3)
    return y[:, :out].reshape(batch, out, c_out)


def grouped_conv1d_polyphase(
    x: Array, kernel: Array, stride: int, padding: int, groups: int
) -> Array:
    """``grouped_conv1d`` as a stride-1 grouped convolution of the polyphase input.

    With s = stride and n = ceil(k / s) taps, the zero-padded input x_p is folded to
    x'[b, u, (g, r, i)] = x_p[b, s u + r, (g, i)], (B, T' + n - 1, s C_in),
    and the kernel to w'[a, (r, i), o] = w[s a + r, i, o] (zero where s a + r >= k),
    (n, s C_in / groups, C_out); then y = ``_conv1d_valid(x', w')``. XLA computes
    the forward and input gradient of this stride-1 form several times faster than those of
    the strided convolution. Its kernel gradient is XLA's (a batch-grouped convolution): on
    one H200 at batch 128 the discriminator's forward+backward took 19 ms with it and 54 ms
    with a custom VJP that computed the kernel gradient as a grouped convolution over
    (batch x groups) channels (vocoder train step 244 -> 176 ms; bench/measured/nvidia-h200,
    2026-11-27).
    """
    k, per_group, c_out = kernel.shape
    batch, length, c_in = x.shape
    s, taps = stride, -(-k // stride)
    folded_length = (length + 2 * padding - k) // s + taps  # T' + n - 1
    x = _padded_blocks(x, padding, s, folded_length, groups).transpose(0, 1, 3, 2, 4)
    kernel = jnp.pad(kernel, ((0, s * taps - k), (0, 0), (0, 0)))
    return _conv1d_valid(
        x.reshape(batch, folded_length, s * c_in),
        kernel.reshape(taps, s * per_group, c_out),
        groups,
    )


def _conv1d_valid(x: Array, kernel: Array, groups: int) -> Array:
    """Unpadded stride-1 grouped conv1d.

    x (B, L, C_in), kernel (k, C_in / groups, C_out) -> (B, L - k + 1, C_out).
    """
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        (1,),
        "VALID",
        dimension_numbers=("NWC", "WIO", "NWC"),
        feature_group_count=groups,
    )


def transposed_padding(stride: int) -> tuple[int, int]:
    """MelGAN's (padding, output_padding) for kernel 2*stride: (r//2 + r%2, r%2)."""
    return stride // 2 + stride % 2, stride % 2


def polyphase_kernel(kernel: Array, stride: int) -> Array:
    """Rewrites a (2r, C_in, C_out) transposed-conv kernel as a (3, C_in, r * C_out) kernel.

    With padding p = r//2 + r%2, output sample t = q*r + j (phase j) of the transposed
    convolution is x[q+a] w[b] + x[q+a-1] w[r+b], a, b = divmod(j + p, r). Over the input
    zero-padded by one sample on each side this is a stride-1, 3-tap convolution whose output
    channel j*C_out + c holds phase j of channel c.
    """
    r = stride
    k, c_in, c_out = kernel.shape
    if k != 2 * r:
        raise ValueError(f"polyphase form needs kernel 2*stride, got kernel {k}, stride {r}")
    p, _ = transposed_padding(r)
    zero = jnp.zeros((c_in, c_out), kernel.dtype)
    phases = []
    for j in range(r):
        a, b = divmod(j + p, r)
        taps = [kernel[r + b], kernel[b], zero] if a == 0 else [zero, kernel[r + b], kernel[b]]
        phases.append(jnp.stack(taps))  # (3, C_in, C_out)
    return jnp.stack(phases, axis=2).reshape(3, c_in, r * c_out)


def two_tap_phases(x: Array, kernel: Array, stride: int) -> Array:
    """MelGAN's transposed convolution as two 2-tap stride-1 convolutions.

    x (B, L, C_in), kernel (2r, C_in, C_out) -> (B, rL, C_out). In ``polyphase_kernel``'s
    terms, the phases j with a = 0 (the first r - p) read x[q-1], x[q] and the others x[q],
    x[q+1]: each group is a 2-tap convolution without the zero taps, and their outputs,
    concatenated over channels, are the phases in order. ``ConvTranspose1d`` uses it on CPU
    for strides above 2: the MelGAN generator's stride-8 layers ran forward+backward in 64 and
    131 ms instead of 100 and 156 (batch 16, 2 Xeon cores) and its train step 2-4 % faster;
    at stride 2, where each group is one phase, the concatenation cost what the zero taps
    saved.
    """
    r = stride
    batch, length, c_in = x.shape
    k, _, c_out = kernel.shape
    if k != 2 * r or r < 2:
        raise ValueError(f"two_tap_phases needs kernel 2*stride and stride >= 2, got kernel {k}, "
                         f"stride {r}")
    p, _ = transposed_padding(r)

    def taps(bs):  # (2, C_in, len(bs) C_out): for phase b, taps kernel[r + b], kernel[b]
        return jnp.stack([jnp.stack([kernel[r + b], kernel[b]]) for b in bs], axis=2).reshape(
            2, c_in, -1)

    def conv(w, pad):
        return jax.lax.conv_general_dilated(
            x, w, (1,), [pad], dimension_numbers=("NWC", "WIO", "NWC")
        )

    y = jnp.concatenate([conv(taps(range(p, r)), (1, 0)), conv(taps(range(p)), (0, 1))], axis=-1)
    return y.reshape(batch, length * r, c_out)


class ConvTranspose1d(nn.Module):
    """MelGAN's weight-normed ConvTranspose1d (kernel 2r, stride r): (B, L, C_in) -> (B, rL, C_out).

    Weight norm follows PyTorch ``weight_norm(dim=0)`` on the (in, out, k) weight: one gain
    per INPUT channel. ``implementation`` picks the polyphase stride-1 form (on CPU, for
    strides above 2, as ``two_tap_phases``) or XLA's transposed convolution; all compute the
    same function of the same parameters.
    """

    features: int
    stride: int
    weight_norm: bool = True
    implementation: Literal["polyphase", "direct"] = "polyphase"
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        r = self.stride
        c_in = x.shape[-1]
        shape = (2 * r, c_in, self.features)
        # PyTorch computes ConvTranspose fan_in from weight dim 1 (= out channels) * k.
        fan_in = self.features * 2 * r
        kernel = self.param("kernel", torch_uniform(fan_in), shape)
        if self.weight_norm:
            gain = self.param("scale", _norm_init(kernel, 1), (c_in,))
            kernel = _weight_norm(kernel, gain, 1)
        bias = self.param("bias", torch_uniform(fan_in), (self.features,))
        dtype = self.dtype or x.dtype
        x = x.astype(dtype)
        kernel = kernel.astype(dtype)
        batch, length, _ = x.shape
        if self.implementation == "polyphase":
            def three_taps(x, kernel):
                y = jax.lax.conv_general_dilated(
                    x,
                    polyphase_kernel(kernel, r),
                    window_strides=(1,),
                    padding=[(1, 1)],
                    dimension_numbers=("NWC", "WIO", "NWC"),
                )
                return y.reshape(batch, length * r, self.features)

            if r > 2:  # on CPU two 2-tap convolutions (two_tap_phases)
                y = jax.lax.platform_dependent(
                    x, kernel, cpu=partial(two_tap_phases, stride=r), default=three_taps
                )
            else:
                y = three_taps(x, kernel)
        elif self.implementation == "direct":
            p, op = transposed_padding(r)
            k = 2 * r
            y = jax.lax.conv_general_dilated(
                x,
                jnp.flip(kernel, axis=0),
                window_strides=(1,),
                padding=[(k - 1 - p, k - 1 - p + op)],
                lhs_dilation=(r,),
                dimension_numbers=("NWC", "WIO", "NWC"),
            )
        else:
            raise ValueError(f"unknown implementation {self.implementation!r}")
        return y + bias.astype(dtype)


class BatchNorm(nn.Module):
    """PyTorch ``BatchNorm`` over the last (channel) axis. (..., C) -> (..., C).

    Training mode normalises with the batch statistics (biased variance) and, outside of
    ``init``, updates ``batch_stats`` with momentum 0.1 and the UNBIASED variance, as PyTorch
    does. Evaluation mode uses the running statistics. Statistics are computed in float32
    (a bfloat16 input is upcast for them) and ``batch_stats`` stay float32; the normalised
    output has dtype ``dtype`` (None = x's). Under ``jit`` with a batch sharded over devices
    the statistics are global (not per device).

    ``relu``: apply a ReLU to the output (BatchNorm -> ReLU); in training mode the two are
    computed by ``batch_norm_relu`` (same function, a hand-written gradient).
    """

    momentum: float = 0.1
    epsilon: float = 1e-5
    dtype: jnp.dtype | None = None
    relu: bool = False

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,))
        bias = self.param("bias", nn.initializers.zeros, (c,))
        running_mean = self.variable("batch_stats", "mean", jnp.zeros, (c,), jnp.float32)
        running_var = self.variable("batch_stats", "var", jnp.ones, (c,), jnp.float32)
        dtype = self.dtype or x.dtype
        if train and self.relu:
            y, mean, var = batch_norm_relu(x, scale, bias, self.epsilon, jnp.dtype(dtype))
        elif train:
            axes = tuple(range(x.ndim - 1))
            xf = x.astype(jnp.float32)
            mean = xf.mean(axes)
            var = jnp.square(xf - mean).mean(axes)
        else:
            mean, var = running_mean.value, running_var.value
        if train and not self.is_initializing():
            n = x.size // c
            m = self.momentum
            running_mean.value = (1 - m) * running_mean.value + m * mean
            running_var.value = (1 - m) * running_var.value + m * var * (n / max(n - 1, 1))
        if train and self.relu:
            return y
        inv = jax.lax.rsqrt(var + self.epsilon) * scale
        y = ((x.astype(jnp.float32) - mean) * inv + bias).astype(dtype)
        return jax.nn.relu(y) if self.relu else y


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


def max_pool(x: Array, window: Sequence[int], strides: Sequence[int]) -> Array:
    """Max pooling without padding (PyTorch floor mode). x: (B, *spatial, C) -> (B, *spatial', C).

    A running maximum over the window's strided slices that also records which tap holds
    each window's first maximum (row-major), where the gradient goes, as with XLA's
    select-and-scatter and PyTorch. The backward (``_max_pool_bwd``) scatters dy by that
    index: 4-8x faster than XLA:CPU's select-and-scatter, and it never compares recomputed
    inputs with the output (XLA may round a fused recomputation differently).
    """
    return _max_pool(x, tuple(window), tuple(strides), x.shape)


def _pool_taps(x: Array, window: tuple[int, ...], strides: tuple[int, ...]):
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
    is computed once and stored. AlexNet's train step at batch 16 on 2 Xeon cores: 309 ->
    289 ms, what it takes with its pools replaced by strided slices (291 ms).
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


def avg_pool1d_exclude_pad(x: Array, window: int = 4, stride: int = 2, pad: int = 1) -> Array:
    """PyTorch ``AvgPool1d(window, stride, pad, count_include_pad=False)``. (B, T, C)."""
    widths = [(0, 0), (pad, pad), (0, 0)]
    total = jax.lax.reduce_window(
        jnp.pad(x, widths), 0.0, jax.lax.add, (1, window, 1), (1, stride, 1), "VALID"
    )
    ones = jnp.pad(jnp.ones((1, x.shape[1], 1), x.dtype), widths)
    count = jax.lax.reduce_window(ones, 0.0, jax.lax.add, (1, window, 1), (1, stride, 1), "VALID")
    return total / count


def adaptive_pool_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out, in) averaging matrix of PyTorch's adaptive average pooling along one axis.

    Bin i covers [floor(i*in/out), ceil((i+1)*in/out)); bins overlap or repeat as needed.
    """
    matrix = np.zeros((out_size, in_size), np.float32)
    for i in range(out_size):
        start = (i * in_size) // out_size
        end = -((-(i + 1) * in_size) // out_size)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


def adaptive_avg_pool2d(x: Array, out_size: tuple[int, int]) -> Array:
    """PyTorch ``AdaptiveAvgPool2d``. (B, H, W, C) -> (B, out_h, out_w, C)."""
    mh = jnp.asarray(adaptive_pool_matrix(x.shape[1], out_size[0]), x.dtype)
    mw = jnp.asarray(adaptive_pool_matrix(x.shape[2], out_size[1]), x.dtype)
    return jnp.einsum("oh,bhwc,pw->bopc", mh, x, mw, precision=jax.lax.Precision.HIGHEST)


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


def reflect_pad1d(x: Array, pad: int) -> Array:
    """Reflection padding of the time axis. (B, T, C) -> (B, T + 2 pad, C)."""
    return jnp.pad(x, [(0, 0), (pad, pad), (0, 0)], mode="reflect")
