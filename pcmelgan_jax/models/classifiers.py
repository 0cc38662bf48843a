"""Spectrogram AlexNet (SPEC 3) and waveform AudioNet (SPEC 4) classifiers."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from pcmelgan_jax.models.layers import Conv, adaptive_avg_pool2d, max_pool
from pcmelgan_jax.models.unet import dense

Array = jax.Array


class AlexNet(nn.Module):
    """The modified AlexNet used as FD, GD and the fixed spectrogram classifiers.

    __call__(x (B, 80, 32, 1), train) -> logits (B, num_classes). Dropout (p 0.5) is active
    in training mode and needs the ``dropout`` rng.
    """

    num_classes: int

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        x = nn.relu(Conv(64, (5, 5), padding=2, weight_norm=False, name="conv1")(x))
        x = max_pool(x, (3, 3), (2, 2))
        x = nn.relu(Conv(192, (5, 5), padding=2, weight_norm=False, name="conv2")(x))
        x = max_pool(x, (3, 3), (2, 2))
        x = nn.relu(Conv(384, (3, 3), padding=1, weight_norm=False, name="conv3")(x))
        x = nn.relu(Conv(256, (3, 3), padding=1, weight_norm=False, name="conv4")(x))
        x = nn.relu(Conv(256, (3, 3), padding=1, weight_norm=False, name="conv5")(x))
        x = max_pool(x, (3, 3), (2, 2))
        x = adaptive_avg_pool2d(x, (6, 6))
        x = x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1)  # PyTorch's C,H,W flatten
        x = nn.Dropout(0.5, deterministic=not train)(x)
        x = nn.relu(dense(1024, x.shape[-1], "fc1")(x))
        x = nn.Dropout(0.5, deterministic=not train)(x)
        x = nn.relu(dense(1024, 1024, "fc2")(x))
        return dense(self.num_classes, 1024, "fc3")(x)


class AudioNet(nn.Module):
    """Raw-waveform classifier (evaluation only).

    __call__(audio (B, 8192), train) -> (logits (B, num_classes), features (B, 128, 64)).
    The features are the last conv block's output, channels-last (time 128 x channels 64);
    they feed the FID.
    """

    num_classes: int

    @nn.compact
    def __call__(self, audio: Array, train: bool = False) -> tuple[Array, Array]:
        x = audio[..., None]
        for i, features in enumerate((100, 64, 128, 128, 128, 64), start=1):
            x = nn.relu(Conv(features, (3,), padding=1, weight_norm=False, name=f"conv{i}")(x))
            x = max_pool(x, (2,), (2,))
        features = x
        x = x.transpose(0, 2, 1).reshape(x.shape[0], -1)  # PyTorch's C,W flatten
        x = nn.Dropout(0.5, deterministic=not train)(dense(1024, x.shape[-1], "fc1")(x))
        x = nn.Dropout(0.5, deterministic=not train)(dense(512, 1024, "fc2")(x))
        return dense(self.num_classes, 512, "fc3")(x), features


def softmax_cross_entropy(logits: Array, labels: Array) -> Array:
    """Mean softmax cross-entropy with integer labels. logits (B, K), labels (B,) -> ()."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32))
    return -jnp.take_along_axis(logp, labels[:, None].astype(jnp.int32), axis=-1).mean()
