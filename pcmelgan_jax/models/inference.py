"""Evaluation-mode forward passes with constants folded once per model: the module's
function in fewer operations, for ``anonymize`` (training and the parity checks use the
modules).

- U-Net (F, G): ``prepare_unet`` folds weight norm, the conv bias and BatchNorm's running
  statistics into one kernel and bias per convolution (in evaluation mode each weight-normed
  conv -> BatchNorm pair is one affine map); ``unet_apply`` runs conv + bias + ReLU per
  layer, the first layer (one input channel) as per-tap products on CPU
  (``kernels.conv_taps_forward``) and the decoder's upsampled input by phase kernels
  computed once (``kernels.upsampled_conv_from_phases``).
- MelGAN generator: ``prepare_generator`` folds weight norm and the upsampling kernels;
  ``generate`` computes each upsampling layer as a 2-tap convolution at the input rate by
  Winograd F(2, 2) (1.5 C_in r C_out multiply-adds per input sample instead of the module's
  3; a third of the polyphase taps are zero) and each dilated kernel-3 convolution by
  Winograd F(4, 3) (1.5 C^2 instead of 3 C^2 per sample; the rounding error per layer grows
  from ~2e-6 to ~1e-5 on unit-scale activations, ~4e-6 on the output audio), and skips the
  context frames of a chunk at the high rates.
- ``transform_mels`` and ``vocode_folded``: the jitted programs ``anonymize`` calls.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from pcmelgan_jax import audio as audio_lib
from pcmelgan_jax.models import kernels
from pcmelgan_jax.models.kernels import (
    max_pool,
    phase_kernel,
    upsampled_conv3x3,
    upsampled_conv_from_phases,
)
from pcmelgan_jax.models.kernels_1d import conv1d_valid, transposed_padding
from pcmelgan_jax.models.layers import folded_weight_norm, reflect_pad1d
from pcmelgan_jax.models.melgan import MelGANGenerator, leaky_relu
from pcmelgan_jax.models.unet import (
    BOTTLENECK_SHAPE,
    CHANNELS,
    DIGIT_CLASSIFIER,
    UNet,
    generator_input,
    output_statistics,
    recognised_digit,
    reduced_input,
)
from pcmelgan_jax.runtime import compilation

Array = jax.Array

# --------------------------------------------------------------------------- U-Net


def _fold(params: dict, stats: dict, i: int) -> dict:
    """conv{i} (weight norm, bias) then bn{i} (running statistics) -> kernel (3, 3, C_in,
    C_out) and bias (C_out,), float32 from float64."""
    conv, bn, st = params[f"conv{i}"], params[f"bn{i}"], stats[f"bn{i}"]
    kernel = folded_weight_norm(conv, -1)
    inv = np.asarray(bn["scale"], np.float64) / np.sqrt(np.asarray(st["var"], np.float64) + 1e-5)
    bias = ((np.asarray(conv["bias"], np.float64) - np.asarray(st["mean"], np.float64)) * inv
            + np.asarray(bn["bias"], np.float64))
    return {"kernel": jnp.asarray(kernel * inv, jnp.float32),
            "bias": jnp.asarray(bias, jnp.float32)}


def prepare_unet(model: UNet, variables: dict) -> dict:
    """``unet_apply``'s constants for ``model``'s variables (params and batch_stats).

    ``down{l}`` / ``up{l}``: ``conv0`` and ``conv1``, each kernel (3, 3, C_in, C_out) and bias
    with BatchNorm folded in, and each ``up{l}.conv0`` the ``kernels.phase_kernel`` of its
    upsampled input's channels as ``phases``; ``project_noise``, ``conv_last`` (and for the
    generator ``embed_condition``, ``project_cond``; for a digit-conditioned one its
    ``digit_classifier``, ``embed_digit``, ``project_digit``) as they are.
    """
    if not isinstance(model, UNet):
        raise TypeError(f"prepare_unet expects a UNet, got {type(model).__name__}")
    params, stats = variables["params"], variables["batch_stats"]
    out = {name: {f"conv{i}": _fold(params[name], stats[name], i) for i in range(2)}
           for name in params if name.startswith(("down", "up"))}
    for level in range(1, len(CHANNELS)):  # up{level + 1}: skip of CHANNELS[level - 1]
        conv0 = out[f"up{level + 1}"]["conv0"]
        conv0["phases"] = phase_kernel(conv0["kernel"][:, :, CHANNELS[level - 1]:])
    for name in ("project_noise", "conv_last", "embed_condition", "project_cond",
                 DIGIT_CLASSIFIER, "embed_digit", "project_digit"):
        if name in params:
            out[name] = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), dict(params[name]))
    return out


def _conv3x3(x: Array, kernel: Array) -> Array:
    """The module's 3x3 convolution in evaluation mode (``kernels.conv``): a one-channel
    input as per-tap products on CPU."""
    form = "taps_forward" if x.shape[-1] == 1 else "xla"
    return kernels.conv(x, kernel, (1, 1), (1, 1), (1, 1), form=form)


def unet_apply(model: UNet, prepared: dict, x: Array, z: Array, cond: Array | None = None
               ) -> Array:
    """``model.apply(variables, x, z, cond, train=False)`` from ``prepare_unet(model,
    variables)``: x (B, 80, 32, 1), z (B, noise_dim), cond (B,) int (generator) or None ->
    (B, 80, 32, 1) in (-1, 1), float32."""
    if x.shape[1:3] != (80, 32):
        raise ValueError(f"UNet expects (B, 80, 32, 1) spectrograms, got {x.shape}")

    def conv_relu(p: dict, x: Array) -> Array:
        return jax.nn.relu(_conv3x3(x, p["kernel"]) + p["bias"])

    batch = x.shape[0]
    h, w = BOTTLENECK_SHAPE
    x = jnp.asarray(x, jnp.float32)
    if model.digit_classes:
        digit = recognised_digit(model, prepared[DIGIT_CLASSIFIER], x)
    x = reduced_input(model, x)
    skips = []
    for level in range(1, len(CHANNELS) + 1):
        if level > 1:
            x = max_pool(x, (2, 2), (2, 2))
        for i in range(2):
            x = conv_relu(prepared[f"down{level}"][f"conv{i}"], x)
        skips.append(x)
    skips.pop()
    p = prepared["project_noise"]
    noise = (z @ p["kernel"] + p["bias"]).reshape(batch, CHANNELS[-1], h, w).transpose(0, 2, 3, 1)
    parts = [x, noise]

    def label_map(label: Array, embed: str, project: str) -> Array:
        p = prepared[project]
        return (prepared[embed]["embedding"][label] @ p["kernel"] + p["bias"]).reshape(
            batch, h, w, 1)

    if model.conditional:
        if cond is None:
            raise ValueError("the conditional U-Net (generator) needs cond")
        parts.append(label_map(cond, "embed_condition", "project_cond"))
    if model.digit_classes:
        parts.append(label_map(digit, "embed_digit", "project_digit"))
    x = jnp.concatenate(parts, axis=-1)
    for level in range(len(CHANNELS) - 1, 0, -1):
        skip = skips[level - 1]
        p = prepared[f"up{level + 1}"]["conv0"]
        c = skip.shape[-1]  # conv(concat(skip, upsample(x))) = conv(skip) + conv(upsample(x))
        upsampled = jax.lax.platform_dependent(
            x, p["phases"], p["kernel"][:, :, c:],
            cpu=lambda x, phases, _: upsampled_conv_from_phases(x, phases),
            default=lambda x, _, kernel: upsampled_conv3x3(x, kernel),
        )
        x = jax.nn.relu(_conv3x3(skip, p["kernel"][:, :, :c]) + upsampled + p["bias"])
        x = conv_relu(prepared[f"up{level + 1}"]["conv1"], x)
    p = prepared["conv_last"]
    return jnp.tanh(x @ p["kernel"][0, 0] + p["bias"])


# --------------------------------------------------------------------------- MelGAN generator

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


def winograd_conv1d(x: Array, kernel: Array, dilation: int) -> Array:
    """Dilated kernel-3 conv1d by Winograd F(4, 3).

    x (B, T + 2 d, C_in) (already padded), kernel (6, C_in, C_out) = WINOGRAD_G @ the (3,
    C_in, C_out) kernel w -> (B, T, C_out), the unpadded convolution of x with w dilated by
    d. Outputs t = 4 d q + d j + r (j < 4, r < d) form tile (q, r), which reads
    x[4 d q + d k + r], k < 6.
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
    x = conv1d_valid(reflect_pad1d(x, 3), prepared["conv_in"]["kernel"])
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
    x = conv1d_valid(reflect_pad1d(leaky_relu(x), 3), prepared["conv_out"]["kernel"])
    x, _ = cut(x, start, rate, 0)
    return jnp.tanh(x[..., 0] + prepared["conv_out"]["bias"][0])


# --------------------------------------------------------------------------- programs


@functools.partial(compilation.jit, kind="inference", static_argnums=(0, 1))
def transform_mels(f_model: UNet | None, g_model: UNet | None, f_consts: dict | None,
                   g_consts: dict | None, audio: Array, z1: Array, z2: Array,
                   cond: Array) -> Array:
    """Peak-normalised windows (B, 8192) -> F's (then, with ``g_model``, G's) log-mels
    (B, 80, 32), de-normalised with each window's mean and std (G's: at its ``output_level``
    when it has one, ``unet.output_statistics``); ``f_model`` None: the
    windows' own log-mels (copy synthesis). ``*_consts``: ``prepare_unet``'s."""
    if f_model is None:
        return audio_lib.log_mel(audio)
    x, mean, std = audio_lib.mel_features(audio)
    x = x[..., None]
    y = unet_apply(f_model, f_consts, x, z1)
    if g_model is not None:
        y = unet_apply(g_model, g_consts, generator_input(g_model, x, y), z2, cond)
        mean, std = output_statistics(g_model.output_level, mean, std)
    return audio_lib.denormalize(y[..., 0], mean, std)


@functools.partial(compilation.jit, kind="inference", static_argnums=(0, 3))
def vocode_folded(model: MelGANGenerator, prepared: dict, mels: Array, context: int = 0) -> Array:
    """Jitted ``generate``: log-mels (B, 80, T) -> audio (B, 256 (T - 2 context))."""
    return generate(model, prepared, mels, context)
