"""MelGAN generator and multi-scale discriminator, channels-last."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from pcmelgan_jax.models.layers import Conv, ConvTranspose1d, avg_pool1d_exclude_pad, reflect_pad1d

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

    The input is the (de-normalised) log10 mel spectrogram, laid out as
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
    layers (``Conv(form="grouped_matmul")``) and of the kernel-5 layer
    (``Conv(form="patches_matmul")``, see ``kernels``); the function is the same either way.
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
                form="grouped_matmul" if self.grouped_as_matmul else "xla",
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
                form="patches_matmul" if self.patches_matmul else "xla",
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
    grouped_as_matmul: bool = True  # see kernels_1d.grouped_conv1d
    patches_matmul: bool = True  # the kernel-5 layer: see kernels.conv_patches_matmul

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
