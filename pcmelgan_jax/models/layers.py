"""Building blocks with PyTorch semantics, channels-last.

- ``Conv``: N-d convolution with optional PyTorch ``weight_norm(dim=0)`` (one gain per output
  channel) and PyTorch's default initialisation.
- ``ConvTranspose1d``: PyTorch ``ConvTranspose1d(kernel=2r, stride=r, padding=r//2 + r%2,
  output_padding=r%2)`` with weight norm whose gain is per INPUT channel.
- ``BatchNorm``: PyTorch BatchNorm (unbiased running variance, momentum 0.1, eps 1e-5).
- pooling helpers: max pooling, ``AvgPool1d(count_include_pad=False)``, PyTorch's
  ``AdaptiveAvgPool2d`` bin semantics, nearest-neighbour upsampling and reflection padding.

Each layer holds its parameters and PyTorch's semantics and computes through one call into
``kernels`` (``kernels.conv``, ``kernels.conv_transpose1d``, ``kernels.batch_norm``), which
picks the fast form of the same function.

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
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pcmelgan_jax.models import kernels
from pcmelgan_jax.models.kernels import max_pool, upsample_nearest2d

__all__ = [
    "BatchNorm", "Conv", "ConvTranspose1d", "adaptive_avg_pool2d", "adaptive_pool_matrix",
    "avg_pool1d_exclude_pad", "folded_weight_norm", "max_pool", "reflect_pad1d",
    "torch_uniform", "upsample_nearest2d",
]

Array = jax.Array


def he_normal_reinit(params: dict, key: jax.Array) -> dict:
    """``params`` with every ``kernel`` (fan-in: all axes but the last) drawn from He's
    N(0, 2 / fan_in) and every ``bias`` zero: a ReLU stack that keeps its activations' scale
    from layer to layer (PyTorch's default init shrinks it about 2.4x per layer)."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    keys = iter(jax.random.split(key, len(leaves)))
    out = []
    for path, leaf in leaves:
        name, k = jax.tree_util.keystr(path[-1:]), next(keys)
        if "kernel" in name:
            std = math.sqrt(2.0 / int(np.prod(leaf.shape[:-1])))
            leaf = std * jax.random.normal(k, leaf.shape, leaf.dtype)
        elif "bias" in name:
            leaf = jnp.zeros_like(leaf)
        out.append(leaf)
    return jax.tree_util.tree_unflatten(treedef, out)


def torch_uniform(fan_in: int) -> Callable:
    """PyTorch's default weight/bias init for conv and linear layers: U(-1/sqrt(fan_in), +)."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def dense(features: int, fan_in: int, name: str, dtype: Any = None) -> nn.Dense:
    """A Linear layer with PyTorch's default initialisation, float32 parameters and
    computation dtype ``dtype`` (None: promoted from the input and the parameters)."""
    return nn.Dense(
        features,
        kernel_init=torch_uniform(fan_in),
        bias_init=torch_uniform(fan_in),
        dtype=dtype,
        param_dtype=jnp.float32,
        name=name,
    )


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
    inference paths (``inference.prepare_generator``, ``inference.prepare_unet``)."""
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
    dtype (None = x's); the float32 kernel is weight-normed in float32, then cast.
    ``form``: the fast form ``kernels.conv`` uses where it applies ("grouped_matmul",
    "patches_matmul", "taps_forward"; "xla": none); the function is the same.

    ``__call__(x, upsampled=None)``: with ``upsampled`` (B, H/2, W/2, C_up) the input is
    ``concat([x, upsample_nearest2d(upsampled)], -1)`` (the kernel's input channels: x's
    first), computed without forming the upsampled tensor (2-d, 3x3, padding 1, unit stride
    and dilation only).
    """

    features: int
    kernel_size: Sequence[int]
    strides: int | Sequence[int] = 1
    padding: int | Sequence[int] = 0
    dilation: int | Sequence[int] = 1
    groups: int = 1
    use_bias: bool = True
    weight_norm: bool = True
    form: kernels.ConvForm = "xla"
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x: Array, upsampled: Array | None = None) -> Array:
        nd = len(self.kernel_size)
        as_tuple = lambda v: (v,) * nd if isinstance(v, int) else tuple(v)  # noqa: E731
        strides, padding = as_tuple(self.strides), as_tuple(self.padding)
        dilation = as_tuple(self.dilation)
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
        if upsampled is not None:
            _check_upsampled(x, upsampled, self.kernel_size, strides, padding, dilation,
                             self.groups)
            upsampled = upsampled.astype(dtype)
        y = kernels.conv(x, kernel, strides, padding, dilation, self.groups, self.form,
                         upsampled)
        if self.use_bias:
            bias = self.param("bias", torch_uniform(fan_in), (self.features,))
            y = y + bias.astype(dtype)
        return y


def _check_upsampled(x: Array, upsampled: Array, kernel_size, strides, padding, dilation,
                     groups: int) -> None:
    """Refuses ``Conv(upsampled=...)`` outside 3x3, padding 1, unit stride and dilation,
    ungrouped, and an ``upsampled`` that is not half of x's resolution."""
    if not (tuple(kernel_size) == (3, 3) and padding == (1, 1) and strides == (1, 1)
            and dilation == (1, 1) and groups == 1):
        raise ValueError("Conv(upsampled=...) needs a 3x3, padding 1, unit-stride, "
                         "undilated, ungrouped 2-d convolution")
    if (2 * upsampled.shape[1], 2 * upsampled.shape[2]) != x.shape[1:3]:
        raise ValueError(f"upsampled {upsampled.shape} is not half of x {x.shape}")


class ConvTranspose1d(nn.Module):
    """MelGAN's weight-normed ConvTranspose1d (kernel 2r, stride r): (B, L, C_in) -> (B, rL, C_out).

    Weight norm follows PyTorch ``weight_norm(dim=0)`` on the (in, out, k) weight: one gain
    per INPUT channel. ``implementation`` picks the polyphase stride-1 form or XLA's
    transposed convolution (``kernels.conv_transpose1d``); both compute the same function of
    the same parameters.
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
        y = kernels.conv_transpose1d(x.astype(dtype), kernel.astype(dtype), r,
                                     self.implementation)
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
    computed by ``kernels.batch_norm_relu`` (same function, a hand-written gradient).
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
        stats = None if train else (running_mean.value, running_var.value)
        y, mean, var = kernels.batch_norm(x, scale, bias, self.epsilon, self.dtype or x.dtype,
                                          self.relu, stats)
        if train and not self.is_initializing():
            n = x.size // c
            m = self.momentum
            running_mean.value = (1 - m) * running_mean.value + m * mean
            running_var.value = (1 - m) * running_var.value + m * var * (n / max(n - 1, 1))
        return y


# --------------------------------------------------------------------------- pooling, padding
# (max_pool and upsample_nearest2d, whose fast forms live in kernels, are imported above)


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


def reflect_pad1d(x: Array, pad: int) -> Array:
    """Reflection padding of the time axis. (B, T, C) -> (B, T + 2 pad, C)."""
    return jnp.pad(x, [(0, 0), (pad, pad), (0, 0)], mode="reflect")
