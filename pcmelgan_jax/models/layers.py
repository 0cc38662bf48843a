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

import math
from collections.abc import Callable, Sequence
from functools import partial
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
    dtype (None = x's); the float32 kernel is weight-normed in float32, then cast.
    ``grouped_as_matmul``: compute a grouped, undilated 1-d convolution with
    ``grouped_conv1d`` (the fast form on CPU) instead of XLA's strided grouped convolution.
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
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        nd = len(self.kernel_size)
        as_tuple = lambda v: (v,) * nd if isinstance(v, int) else tuple(v)
        in_features = x.shape[-1]
        if in_features % self.groups:
            raise ValueError(f"{in_features} input channels are not divisible by {self.groups}")
        shape = (*self.kernel_size, in_features // self.groups, self.features)
        fan_in = int(np.prod(shape[:-1]))
        kernel = self.param("kernel", torch_uniform(fan_in), shape)
        if self.weight_norm:
            gain = self.param("scale", _norm_init(kernel, -1), (self.features,))
            kernel = _weight_norm(kernel, gain, -1)
        dtype = self.dtype or x.dtype
        spatial = "".join("DHW"[3 - nd :])
        if self.grouped_as_matmul and self.groups > 1 and nd == 1 and self.dilation == 1:
            y = grouped_conv1d(
                x.astype(dtype),
                kernel.astype(dtype),
                as_tuple(self.strides)[0],
                as_tuple(self.padding)[0],
                self.groups,
            )
            if self.use_bias:
                y = y + self.param("bias", torch_uniform(fan_in), (self.features,)).astype(dtype)
            return y
        y = jax.lax.conv_general_dilated(
            x.astype(dtype),
            kernel.astype(dtype),
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


def grouped_conv1d(x: Array, kernel: Array, stride: int, padding: int, groups: int) -> Array:
    """A grouped 1-d convolution as a stride-1 grouped convolution of the polyphase input.

    x (B, T, C_in), kernel (k, C_in / groups, C_out) -> (B, T', C_out) with
    T' = (T + 2 padding - k) // stride + 1: the same function as
    ``lax.conv_general_dilated(..., feature_group_count=groups)`` with that stride and
    symmetric zero padding. With s = stride and n = ceil(k / s) taps, the zero-padded input
    x_p is folded to x'[b, u, (g, r, i)] = x_p[b, s u + r, (g, i)], (B, T' + n - 1, s C_in),
    and the kernel to w'[a, (r, i), o] = w[s a + r, i, o] (zero where s a + r >= k),
    (n, s C_in / groups, C_out); then y = ``_grouped_conv_valid(x', w')``. XLA:CPU computes
    the forward and input gradient of this stride-1 form several times faster than those of
    the strided convolution, and ``_grouped_conv_valid`` supplies a fast kernel gradient.
    """
    k, per_group, c_out = kernel.shape
    batch, length, c_in = x.shape
    s, taps = stride, -(-k // stride)
    folded_length = (length + 2 * padding - k) // s + taps  # T' + n - 1
    # lax.pad: the right padding may be negative (samples no window reaches)
    right = s * folded_length - length - padding
    x = jax.lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (padding, right, 0), (0, 0, 0)))
    x = x.reshape(batch, folded_length, s, groups, per_group).transpose(0, 1, 3, 2, 4)
    kernel = jnp.pad(kernel, ((0, s * taps - k), (0, 0), (0, 0)))
    return _grouped_conv_valid(
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


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def _grouped_conv_valid(x: Array, kernel: Array, groups: int) -> Array:
    """``_conv1d_valid`` whose kernel gradient is itself a grouped convolution.

    XLA's kernel gradient of a grouped convolution (a batch-grouped convolution) is up to
    ~100x slower on CPU than this forward one. The input gradient is XLA's.
    """
    return _conv1d_valid(x, kernel, groups)


def _grouped_conv_valid_fwd(x: Array, kernel: Array, groups: int):
    return _conv1d_valid(x, kernel, groups), (x, kernel)


def _grouped_conv_valid_bwd(groups: int, residuals: tuple[Array, Array], dy: Array):
    """dy (B, L', C_out) -> (dx (B, L, C_in), dkernel (k, C_in / groups, C_out)).

    dkernel[a, i, (g, o)] = sum_{b, t} x[b, t + a, (g, i)] dy[b, t, (g, o)]: the unpadded
    grouped convolution of x laid out (C_in / groups, L, (g, B)) with the kernel
    dy (L', B, C_out), which gives (C_in / groups, k, C_out).
    """
    x, kernel = residuals
    batch, length, c_in = x.shape
    dx = jax.vjp(lambda x: _conv1d_valid(x, kernel, groups), x)[1](dy)[0]
    x = x.reshape(batch, length, groups, c_in // groups).transpose(3, 1, 2, 0)
    x = x.reshape(c_in // groups, length, groups * batch)
    dkernel = _conv1d_valid(x, dy.transpose(1, 0, 2), groups).transpose(1, 0, 2)
    return dx, dkernel


_grouped_conv_valid.defvjp(_grouped_conv_valid_fwd, _grouped_conv_valid_bwd)


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


class ConvTranspose1d(nn.Module):
    """MelGAN's weight-normed ConvTranspose1d (kernel 2r, stride r): (B, L, C_in) -> (B, rL, C_out).

    Weight norm follows PyTorch ``weight_norm(dim=0)`` on the (in, out, k) weight: one gain
    per INPUT channel. ``implementation`` picks the polyphase stride-1 form or XLA's
    transposed convolution; both compute the same function of the same parameters.
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
            y = jax.lax.conv_general_dilated(
                x,
                polyphase_kernel(kernel, r),
                window_strides=(1,),
                padding=[(1, 1)],
                dimension_numbers=("NWC", "WIO", "NWC"),
            )
            y = y.reshape(batch, length * r, self.features)
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
    """

    momentum: float = 0.1
    epsilon: float = 1e-5
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,))
        bias = self.param("bias", nn.initializers.zeros, (c,))
        running_mean = self.variable("batch_stats", "mean", jnp.zeros, (c,), jnp.float32)
        running_var = self.variable("batch_stats", "var", jnp.ones, (c,), jnp.float32)
        if train:
            axes = tuple(range(x.ndim - 1))
            xf = x.astype(jnp.float32)
            mean = xf.mean(axes)
            var = jnp.square(xf - mean).mean(axes)
            if not self.is_initializing():
                n = x.size // c
                m = self.momentum
                running_mean.value = (1 - m) * running_mean.value + m * mean
                running_var.value = (1 - m) * running_var.value + m * var * (n / max(n - 1, 1))
        else:
            mean, var = running_mean.value, running_var.value
        inv = jax.lax.rsqrt(var + self.epsilon) * scale
        return ((x.astype(jnp.float32) - mean) * inv + bias).astype(self.dtype or x.dtype)


def max_pool(x: Array, window: Sequence[int], strides: Sequence[int]) -> Array:
    """Max pooling without padding (PyTorch floor mode). x: (B, *spatial, C)."""
    return nn.max_pool(x, tuple(window), tuple(strides), padding="VALID")


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


def reflect_pad1d(x: Array, pad: int) -> Array:
    """Reflection padding of the time axis. (B, T, C) -> (B, T + 2 pad, C)."""
    return jnp.pad(x, [(0, 0), (pad, pad), (0, 0)], mode="reflect")
