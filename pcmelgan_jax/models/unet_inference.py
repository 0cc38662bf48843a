"""Evaluation-mode U-Net with folded constants: ``UNet.apply(..., train=False)``, faster.

In evaluation mode every (weight-normed conv -> BatchNorm) pair is one affine map, so
``prepare_unet`` folds weight norm, the conv bias and the running statistics into a plain
kernel and bias once per model (in float64), and ``unet_apply`` runs conv + bias + ReLU per
layer. On CPU the first layer (one input channel) is nine shifted products
(``layers.conv_taps_forward``, as in training), ~5x faster than XLA:CPU's convolution at
80 x 32; other platforms keep XLA's convolution. The decoder's first convolutions skip the
upsampled tensor as the module does (``layers.upsampled_conv3x3``), here with the phase
kernels computed once in ``prepare_unet``. (Winograd F(2x2, 3x3) at the 10 x 4 level was
faster per layer but slower in the network.)

``anonymize`` uses this path; training and the parity checks use the module.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from pcmelgan_jax.models.layers import (
    conv_nd,
    conv_taps_forward,
    folded_weight_norm,
    max_pool,
    phase_kernel,
    upsampled_conv3x3,
    upsampled_conv_from_phases,
)
from pcmelgan_jax.models.unet import BOTTLENECK_SHAPE, CHANNELS, UNet

Array = jax.Array

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
    with BatchNorm folded in, and each ``up{l}.conv0`` the ``layers.phase_kernel`` of its
    upsampled input's channels as ``phases``; ``project_noise``, ``conv_last`` (and for the
    generator ``embed_condition``, ``project_cond``) as they are.
    """
    if not isinstance(model, UNet):
        raise TypeError(f"prepare_unet expects a UNet, got {type(model).__name__}")
    params, stats = variables["params"], variables["batch_stats"]
    out = {name: {f"conv{i}": _fold(params[name], stats[name], i) for i in range(2)}
           for name in params if name.startswith(("down", "up"))}
    for level in range(1, len(CHANNELS)):  # up{level + 1}: skip of CHANNELS[level - 1]
        conv0 = out[f"up{level + 1}"]["conv0"]
        conv0["phases"] = phase_kernel(conv0["kernel"][:, :, CHANNELS[level - 1]:])
    for name in ("project_noise", "conv_last", "embed_condition", "project_cond"):
        if name in params:
            out[name] = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), dict(params[name]))
    return out


def _conv3x3(x: Array, kernel: Array) -> Array:
    """XLA's convolution; a one-channel input by ``layers.conv_taps_forward`` (per-tap
    products on CPU, XLA's convolution elsewhere)."""
    if x.shape[-1] == 1:
        return conv_taps_forward(x, kernel, (1, 1))
    return conv_nd(x, kernel, (1, 1), (1, 1), (1, 1))


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
    if model.conditional:
        if cond is None:
            raise ValueError("the conditional U-Net (generator) needs cond")
        p = prepared["project_cond"]
        label = prepared["embed_condition"]["embedding"][cond] @ p["kernel"] + p["bias"]
        parts.append(label.reshape(batch, h, w, 1))
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
