"""The spectrogram classifier (a modified AlexNet) and the waveform classifier (AudioNet)."""

from __future__ import annotations

from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from pcmelgan_jax.models.layers import Conv, adaptive_avg_pool2d, dense, max_pool

Array = jax.Array


class AlexNet(nn.Module):
    """The modified AlexNet used as FD, GD and the fixed spectrogram classifiers.

    __call__(x (B, 80, 32, 1), train) -> logits (B, num_classes). Dropout (p 0.5) is active
    in training mode and needs the ``dropout`` rng. ``width`` scales every conv and hidden
    layer's width (1.0 = the original; the small CPU configs use less). ``dtype`` is the
    computation dtype: the input is cast to it, parameters stay float32 and the logits are
    returned in float32.
    """

    num_classes: int
    width: float = 1.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        widths = (64, 192, 384, 256, 256, 1024)
        c1, c2, c3, c4, c5, hidden = (scaled(c, self.width) for c in widths)
        dt = self.dtype
        conv = partial(Conv, weight_norm=False, dtype=dt)
        x = x.astype(dt)
        x = nn.relu(conv(c1, (5, 5), padding=2, name="conv1")(x))
        x = max_pool(x, (3, 3), (2, 2))
        x = nn.relu(conv(c2, (5, 5), padding=2, name="conv2")(x))
        x = max_pool(x, (3, 3), (2, 2))
        x = nn.relu(conv(c3, (3, 3), padding=1, name="conv3")(x))
        x = nn.relu(conv(c4, (3, 3), padding=1, name="conv4")(x))
        x = nn.relu(conv(c5, (3, 3), padding=1, name="conv5")(x))
        x = max_pool(x, (3, 3), (2, 2))
        x = adaptive_avg_pool2d(x, (6, 6))
        x = x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1)  # PyTorch's C,H,W flatten
        x = nn.Dropout(0.5, deterministic=not train)(x)
        x = nn.relu(dense(hidden, x.shape[-1], "fc1", dt)(x))
        x = nn.Dropout(0.5, deterministic=not train)(x)
        x = nn.relu(dense(hidden, hidden, "fc2", dt)(x))
        return dense(self.num_classes, hidden, "fc3", dt)(x).astype(jnp.float32)


class AudioNet(nn.Module):
    """Raw-waveform classifier (evaluation only).

    __call__(audio (B, 8192), train) -> (logits (B, num_classes), features (B, 128, 64)).
    The features are the last conv block's output, channels-last (time 128 x channels 64);
    they feed the FID. ``width`` scales every layer's width as in ``AlexNet`` (the features
    then have ``scaled(64, width)`` channels). ``dtype`` is the computation dtype as in
    ``AlexNet``; logits and features are returned in float32.
    """

    num_classes: int
    width: float = 1.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, audio: Array, train: bool = False) -> tuple[Array, Array]:
        dt = self.dtype
        x = audio[..., None].astype(dt)
        for i, features in enumerate((100, 64, 128, 128, 128, 64), start=1):
            features = scaled(features, self.width)
            conv = Conv(features, (3,), padding=1, weight_norm=False, dtype=dt, name=f"conv{i}")
            x = nn.relu(conv(x))
            x = max_pool(x, (2,), (2,))
        features = x
        h1, h2 = scaled(1024, self.width), scaled(512, self.width)
        x = x.transpose(0, 2, 1).reshape(x.shape[0], -1)  # PyTorch's C,W flatten
        x = nn.Dropout(0.5, deterministic=not train)(dense(h1, x.shape[-1], "fc1", dt)(x))
        x = nn.Dropout(0.5, deterministic=not train)(dense(h2, h1, "fc2", dt)(x))
        logits = dense(self.num_classes, h2, "fc3", dt)(x)
        return logits.astype(jnp.float32), features.astype(jnp.float32)


class LinearClassifier(nn.Module):
    """Logistic regression on the flattened spectrogram, starting at chance (zero weights):
    __call__(x (B, 80, 32, 1), train) -> logits (B, num_classes) in float32. The training-time
    counterpart of the evaluation's linear attacker; ``train`` is accepted for AlexNet's
    calling convention and changes nothing."""

    num_classes: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        del train
        x = x.astype(self.dtype).reshape(x.shape[0], -1)
        layer = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=nn.initializers.zeros,
                         name="dense")
        return layer(x).astype(jnp.float32)


def scaled(channels: int, width: float) -> int:
    """``channels`` x ``width``, rounded, at least 1."""
    return max(1, int(round(channels * width)))


def softmax_cross_entropy(logits: Array, labels: Array, label_smoothing: float = 0.0) -> Array:
    """Mean softmax cross-entropy with integer labels. logits (B, K), labels (B,) -> ().

    ``label_smoothing`` a: the target puts 1 - a on the label and a / K on every class."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32))
    nll = -jnp.take_along_axis(logp, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]
    if label_smoothing:
        nll = (1.0 - label_smoothing) * nll - label_smoothing * jnp.mean(logp, axis=-1)
    return nll.mean()
