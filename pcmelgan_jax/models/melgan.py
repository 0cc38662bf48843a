"""MelGAN generator and multi-scale discriminator (SPEC 5), channels-last."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pcmelgan_jax.models.layers import (
    Conv,
    ConvTranspose1d,
    avg_pool1d_exclude_pad,
    folded_weight_norm,
    reflect_pad1d,
    transposed_padding,
)

Array = jax.Array


def leaky_relu(x: Array) -> Array:
    return nn.leaky_relu(x, 0.2)


class ResidualBlock(nn.Module):
    """shortcut(x) + conv1x1(lrelu(conv3_dilated(reflect_pad(lrelu(x))))). (B, T, C) -> same."""

    dilation: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = x.shape[-1]
        y = reflect_pad1d(leaky_relu(x), self.dilation)
        y = Conv(c, (3,), dilation=self.dilation, name="conv_dilated")(y)
        y = Conv(c, (1,), name="conv_out")(leaky_relu(y))
        return Conv(c, (1,), name="shortcut")(x) + y


class MelGANGenerator(nn.Module):
    """MelGAN generator: log-mel (B, n_mels, frames) -> waveform (B, frames * 256) in (-1, 1).

    The input is the (de-normalised) log10 mel spectrogram of SPEC section 1, laid out as
    ``pcmelgan_jax.audio.log_mel`` returns it: (B, 80, 32) -> (B, 8192).
    """

    ngf: int = 32
    n_residual_layers: int = 3
    ratios: Sequence[int] = (8, 8, 2, 2)
    upsample_implementation: Literal["polyphase", "direct"] = "polyphase"

    @nn.compact
    def __call__(self, mel: Array) -> Array:
        x = jnp.swapaxes(mel, -1, -2)  # (B, frames, n_mels)
        channels = self.ngf * 2 ** len(self.ratios)
        x = Conv(channels, (7,), name="conv_in")(reflect_pad1d(x, 3))
        for i, r in enumerate(self.ratios):
            channels //= 2
            x = ConvTranspose1d(
                channels, r, implementation=self.upsample_implementation, name=f"upsample{i}"
            )(leaky_relu(x))
            for j in range(self.n_residual_layers):
                x = ResidualBlock(3**j, name=f"res{i}_{j}")(x)
        x = Conv(1, (7,), name="conv_out")(reflect_pad1d(leaky_relu(x), 3))
        return jnp.tanh(x[..., 0])


class NLayerDiscriminator(nn.Module):
    """One MelGAN discriminator scale: (B, T, 1) -> list of every layer's output (B, T_l, C_l).

    The last entry is the score map (B, T / 256, 1); the others are the feature-matching
    features. ``grouped_as_matmul`` and ``patches_matmul`` pick the CPU forms of the grouped
    layers (``layers.grouped_conv1d``) and of the kernel-5 layer
    (``layers.conv_patches_matmul``); the function is the same either way.
    """

    ndf: int = 16
    n_layers: int = 4
    downsampling_factor: int = 4
    grouped_as_matmul: bool = True
    patches_matmul: bool = True

    @nn.compact
    def __call__(self, x: Array) -> list[Array]:
        outputs = []
        x = leaky_relu(Conv(self.ndf, (15,), name="layer_0")(reflect_pad1d(x, 7)))
        outputs.append(x)
        nf = self.ndf
        stride = self.downsampling_factor
        nf_prev = nf
        for n in range(1, self.n_layers + 1):
            nf_prev = nf
            nf = min(nf * stride, 1024)
            x = Conv(
                nf,
                (stride * 10 + 1,),
                strides=stride,
                padding=stride * 5,
                groups=nf_prev // 4,
                grouped_as_matmul=self.grouped_as_matmul,
                name=f"layer_{n}",
            )(x)
            x = leaky_relu(x)
            outputs.append(x)
        # The original sizes this layer from the previous loop's in-channels (nf_prev), which
        # only matches the tensor when the last two widths both reach the 1024 cap.
        if nf_prev != x.shape[-1]:
            raise ValueError(
                f"invalid MelGAN discriminator (ndf={self.ndf}, n_layers={self.n_layers}): "
                "the original's penultimate layer expects the last two widths to be equal"
            )
        x = leaky_relu(
            Conv(
                min(nf * 2, 1024),
                (5,),
                padding=2,
                patches_matmul=self.patches_matmul,
                name=f"layer_{self.n_layers + 1}",
            )(x)
        )
        outputs.append(x)
        outputs.append(Conv(1, (3,), padding=1, name=f"layer_{self.n_layers + 2}")(x))
        return outputs


class MelGANDiscriminator(nn.Module):
    """Multi-scale discriminator: waveform (B, T) -> per scale, every layer's output.

    Scale k sees the audio average-pooled k times (AvgPool1d(4, 2, pad 1, excluding pads)).
    Returns ``[[layer_0, ..., score] for each scale]``, arrays channels-last (B, T_l, C_l).
    """

    num_scales: int = 3
    ndf: int = 16
    n_layers: int = 4
    downsampling_factor: int = 4
    grouped_as_matmul: bool = True  # see layers.grouped_conv1d
    patches_matmul: bool = True  # the kernel-5 layer: see layers.conv_patches_matmul

    @nn.compact
    def __call__(self, audio: Array) -> list[list[Array]]:
        x = audio[..., None]
        results = []
        for i in range(self.num_scales):
            results.append(
                NLayerDiscriminator(
                    self.ndf,
                    self.n_layers,
                    self.downsampling_factor,
                    self.grouped_as_matmul,
                    self.patches_matmul,
                    name=f"disc_{i}",
                )(x)
            )
            if i + 1 < self.num_scales:
                x = avg_pool1d_exclude_pad(x)
        return results


# --------------------------------------------------------------------------- fast inference
#
# ``MelGANGenerator.apply`` recomputes weight norm and the upsampling kernels on every call,
# spends 1.5x the necessary multiply-adds on the polyphase upsampling (a third of its taps
# are zero) and 3 C^2 per sample on each dilated kernel-3 convolution. For inference the
# constants are computed once per model (``prepare_generator``) and ``generate`` computes the
# same function with fewer operations: each upsampling layer as a 2-tap convolution at the
# input rate by Winograd F(2, 2) (1.5 C_in r C_out multiply-adds per input sample instead of
# the module's 3) and Winograd F(4, 3) dilated convolutions (1.5 C^2 multiply-adds per
# sample; the rounding error per layer grows from ~2e-6 to ~1e-5 on unit-scale activations,
# ~4e-6 on the output audio). On XLA:CPU (2 cores) this was ~1.35x faster than ``apply`` on
# vocoder calls of ~128 frames with two plain 2-tap convolutions per upsampling layer; the
# F(2, 2) form is another 3-6 % faster (interleaved A/B runs).

# Winograd F(4, 3) for correlation y[t] = sum_a w[a] x[t + a] (Lavin & Gray 2016):
# y[4q : 4q + 4] = AT ((G w) * (BT x[4q : 4q + 6])), the product over the 6 points.
WINOGRAD_BT = np.array(
    [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
     [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], np.float64)
WINOGRAD_G = np.array(
    [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
     [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], np.float64)
WINOGRAD_AT = np.array(
    [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
    np.float64)


def prepare_generator(model: MelGANGenerator, variables: dict) -> dict:
    """``generate``'s constants for ``model``'s variables, computed once (float64, stored f32).

    conv_in / conv_out: kernel (7, C_in, C_out), bias. upsample{i}: ``winograd`` (3, C_in,
    r C_out) = (A, A + B, B) of the block form of ``_upsample``, bias.
    res{i}_{j}: ``dilated`` (6 Winograd points, C, C), ``dilated_bias``, ``out`` and
    ``shortcut`` (C, C) and their summed ``bias``.
    """
    params = variables["params"]
    f32 = lambda a: jnp.asarray(np.asarray(a, np.float64), jnp.float32)
    out = {name: {"kernel": f32(folded_weight_norm(params[name], -1)),
                  "bias": f32(params[name]["bias"])}
           for name in ("conv_in", "conv_out")}
    for i, r in enumerate(model.ratios):
        w = folded_weight_norm(params[f"upsample{i}"], 1)  # (2r, C_in, C_out)
        a = np.concatenate(list(w[r:]), axis=-1)  # (C_in, r C_out): reads x[k - 1]
        b = np.concatenate(list(w[:r]), axis=-1)  # reads x[k]
        out[f"upsample{i}"] = {"winograd": f32(np.stack([a, a + b, b])),
                               "bias": f32(params[f"upsample{i}"]["bias"])}
        for j in range(model.n_residual_layers):
            q = params[f"res{i}_{j}"]
            out[f"res{i}_{j}"] = {
                "dilated": f32(np.einsum("na,aio->nio", WINOGRAD_G,
                                         folded_weight_norm(q["conv_dilated"], -1))),
                "dilated_bias": f32(q["conv_dilated"]["bias"]),
                "out": f32(folded_weight_norm(q["conv_out"], -1)[0]),
                "shortcut": f32(folded_weight_norm(q["shortcut"], -1)[0]),
                "bias": f32(np.asarray(q["conv_out"]["bias"], np.float64)
                            + np.asarray(q["shortcut"]["bias"], np.float64)),
            }
    return out


def _conv_valid(x: Array, kernel: Array, dilation: int = 1) -> Array:
    """Unpadded stride-1 conv1d: x (B, L, C_in), kernel (k, C_in, C_out) -> (B, L', C_out)."""
    return jax.lax.conv_general_dilated(
        x, kernel, (1,), "VALID", rhs_dilation=(dilation,),
        dimension_numbers=("NWC", "WIO", "NWC"))


def winograd_conv1d(x: Array, kernel: Array, dilation: int) -> Array:
    """Dilated kernel-3 conv1d by Winograd F(4, 3).

    x (B, T + 2 d, C_in) (already padded), kernel (6, C_in, C_out) = WINOGRAD_G @ the (3,
    C_in, C_out) kernel -> (B, T, C_out), the same as ``_conv_valid(x, w, d)``. Outputs
    t = 4 d q + d j + r (j < 4, r < d) form tile (q, r), which reads x[4 d q + d k + r], k < 6.
    """
    batch, length, c_in = x.shape
    d = dilation
    t = length - 2 * d
    tiles = -(-t // (4 * d))
    need = 4 * d * tiles + 5 * d  # tap k = 5 is sliced from x[5 d : 5 d + 4 d tiles]
    x = jnp.pad(x, [(0, 0), (0, max(need - length, 0)), (0, 0)])
    taps = [x[:, k * d : k * d + 4 * d * tiles].reshape(batch, tiles, 4 * d, c_in)[:, :, :d]
            for k in range(6)]  # (B, tiles, d, C_in)
    v = jnp.stack([sum(float(c) * taps[k] for k, c in enumerate(row) if c)
                   for row in WINOGRAD_BT])
    m = jnp.einsum("nbqrc,nco->nbqro", v, kernel)
    y = jnp.stack([sum(float(c) * m[i] for i, c in enumerate(row) if c)
                   for row in WINOGRAD_AT], axis=2)  # (B, tiles, 4, d, C_out)
    return y.reshape(batch, tiles * 4 * d, -1)[:, :t]


def _upsample(x: Array, p: dict, stride: int) -> Array:
    """ConvTranspose1d(kernel 2r, stride r, padding p) from ``prepare_generator``'s kernels.
    x (B, L, C_in) -> (B, r L, C_out).

    Block form: output samples [k r - p, k r - p + r), k = 0 .. L, are one block
    ``x[k - 1] A + x[k] B`` (x zero outside [0, L); A = w[r:], B = w[:r] side by side), so
    the transposed convolution is a 2-tap convolution at the input rate with r C_out output
    channels, cut by p samples at each end. Two neighbouring blocks by Winograd F(2, 2):
    m0 = (x[k-1] - x[k]) A, m1 = x[k] (A + B), m2 = (x[k+1] - x[k]) B; blocks m0 + m1 and
    m1 + m2: three products instead of four.
    """
    batch, length, _ = x.shape
    pad, _ = transposed_padding(stride)
    pairs = -(-(length + 1) // 2)  # block pairs
    x = jnp.pad(x, [(0, 0), (1, 2 * pairs - length), (0, 0)])  # x[-1 .. 2 pairs - 1]
    x0, x1, x2 = x[:, 0 : 2 * pairs : 2], x[:, 1 : 2 * pairs : 2], x[:, 2 : 2 * pairs + 1 : 2]
    m = jnp.einsum("nbqc,nco->nbqo", jnp.stack([x0 - x1, x1, x2 - x1]), p["winograd"])
    y = jnp.stack([m[0] + m[1], m[1] + m[2]], axis=2).reshape(batch, 2 * pairs * stride, -1)
    return y[:, pad : pad + length * stride] + p["bias"]


def context_margins(model: MelGANGenerator) -> list[int]:
    """Samples each side that the rest of the generator reads, after conv_in (frames) and
    after each upsampling level (samples at that level's rate), rounded up.

    Conservative reaches: conv_in and conv_out 3 samples, a residual stack sum(3^j), an
    upsampling layer 2 input samples (phase j of step q reads x[q-1 .. q+1]). The default
    generator: [5, 6, 14, 10, 3].
    """
    rates = np.cumprod((1, *model.ratios))  # samples per frame after conv_in, each level
    stack = sum(3**j for j in range(model.n_residual_layers))
    margins = []
    for i, rate in enumerate(rates):
        reach = 3 * rate / rates[-1]  # conv_out
        for level in range(i, len(model.ratios)):
            reach += 2 * rate / rates[level] + stack * rate / rates[level + 1]
        margins.append(int(np.ceil(reach)))
    return margins


def generate(model: MelGANGenerator, prepared: dict, mel: Array, context: int = 0) -> Array:
    """``model.apply(variables, mel)`` from ``prepare_generator(model, variables)``.

    mel (B, n_mels, frames) -> waveform (B, (frames - 2 context) * prod(ratios)), float32:
    the audio of frames [context, frames - context). The first and last ``context`` frames
    are context only: after conv_in and after each level the activations are cut to what the
    rest of the network reads for the kept frames (``context_margins``), so the expensive
    high-rate levels skip the context; the kept audio equals ``apply``'s wherever the network
    reads no further than ``context`` frames (``anonymize``'s chunks).
    """
    x = jnp.swapaxes(jnp.asarray(mel, jnp.float32), -1, -2)
    frames = x.shape[1]
    x = _conv_valid(reflect_pad1d(x, 3), prepared["conv_in"]["kernel"])
    x = x + prepared["conv_in"]["bias"]
    start, rate = 0, 1  # x holds samples [start, start + length) at ``rate`` per frame

    def cut(x, start, rate, margin):
        lo = max(start, context * rate - margin)
        hi = min(start + x.shape[1], (frames - context) * rate + margin)
        return x[:, lo - start : hi - start], lo

    margins = context_margins(model)
    for i, r in enumerate(model.ratios):
        x, start = cut(x, start, rate, margins[i])
        x = _upsample(leaky_relu(x), prepared[f"upsample{i}"], r)
        start, rate = start * r, rate * r
        for j in range(model.n_residual_layers):
            p = prepared[f"res{i}_{j}"]
            d = 3**j
            y = winograd_conv1d(reflect_pad1d(leaky_relu(x), d), p["dilated"], d)
            y = leaky_relu(y + p["dilated_bias"])
            x = x @ p["shortcut"] + y @ p["out"] + p["bias"]
    x, start = cut(x, start, rate, margins[-1])
    x = _conv_valid(reflect_pad1d(leaky_relu(x), 3), prepared["conv_out"]["kernel"])
    x, _ = cut(x, start, rate, 0)
    return jnp.tanh(x[..., 0] + prepared["conv_out"]["bias"][0])
