"""The PCMelGAN U-Net: the filter F and (``conditional=True``) the generator G."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pcmelgan_jax.models.classifiers import AlexNet
from pcmelgan_jax.models.layers import BatchNorm, Conv, dense, max_pool

Array = jax.Array

CHANNELS = (8, 16, 32, 64, 128)
BOTTLENECK_SHAPE = (5, 2)  # 80 x 32 after four 2x poolings
# what the anonymiser feeds the generator: F's output (the paper) or the original input
GENERATOR_SOURCES = ("filtered", "original")
ALL_BINS = (0, 80)  # the mel bins [start, stop) of the whole spectrogram
# the U-Net fields that say what a generator reads and how the anonymiser turns its output
# into log-mels (exported with its architecture)
GENERATOR_FIELDS = ("input_bands", "input_bins", "input_mask_depth", "source", "digit_classes",
                    "digit_classifier_width", "output_level")
DIGIT_CLASSIFIER = "digit_classifier"  # the name of a digit-conditioned G's frozen classifier


def check_bands(bands: int, bins: tuple[int, int] | None, num_bins: int = 80) -> None:
    """Raises ValueError unless ``bins`` (start, stop) lies within the ``num_bins`` mel bins
    and ``bands`` >= 1 divides the bins of that range."""
    start, stop = bins if bins is not None else (0, num_bins)
    if not 0 <= start < stop <= num_bins:
        raise ValueError(f"input_bins must satisfy 0 <= start < stop <= {num_bins}, got {bins}")
    if bands < 1 or (stop - start) % bands:
        raise ValueError(f"input_bands must divide the {stop - start} mel bins, got {bands}")


def band_means(x: Array, bands: int, bins: tuple[int, int] | None = None) -> Array:
    """``x`` (B, F, T, C) with the mel bins ``bins`` = [start, stop) (default all) split into
    ``bands`` equal bands, each bin replaced by its band's mean, and the bins outside the range
    by the range's mean (they pass nothing of their own): a content bottleneck that keeps the
    coarse energy contour and drops the spectral detail (harmonics, formants) and, with a
    range, the lowest and highest bins, where the speaker's gender sits."""
    b, f, t, c = x.shape
    check_bands(bands, bins, f)
    start, stop = bins if bins is not None else (0, f)
    width = (stop - start) // bands
    means = x[:, start:stop].reshape(b, bands, width, t, c).mean(axis=2, keepdims=True)
    pooled = jnp.broadcast_to(means, (b, bands, width, t, c)).reshape(b, stop - start, t, c)
    fill = means.mean(axis=1)  # (B, 1, T, C): the range's mean (equal-width bands)
    return jnp.concatenate([jnp.broadcast_to(fill, (b, start, t, c)), pooled,
                            jnp.broadcast_to(fill, (b, f - stop, t, c))], axis=1)


def loudness_mask(x: Array, depth: float) -> Array:
    """``x`` (B, F, T, C) with each bin replaced by +1 in the frames within ``depth`` of its
    peak over time and -1 elsewhere: the contour's timing (where the loud part of the word is)
    without its levels and shape, which carry the speaker's voice."""
    if depth <= 0:
        raise ValueError(f"the mask depth must be > 0, got {depth}")
    peak = x.max(axis=2, keepdims=True)
    return jnp.where(x > peak - depth, 1.0, -1.0).astype(x.dtype)


def generator_input(generator: UNet, x: Array, x1: Array) -> Array:
    """The spectrogram ``generator`` is fed: F's output ``x1``, or the original ``x`` when
    its ``source`` is "original" (G then sees no trace of F)."""
    if generator.source not in GENERATOR_SOURCES:
        raise ValueError(f"generator source must be one of {GENERATOR_SOURCES}, got "
                         f"{generator.source!r}")
    return x if generator.source == "original" else x1


def output_statistics(level: tuple[float, float] | None, mean: Any, std: Any
                      ) -> tuple[Any, Any]:
    """The (mean, std) that de-normalise a generator's output into log-mels: each
    utterance's own ``mean``, ``std`` (N,), or, with a ``level`` (a generator's
    ``output_level``), that one pair for every utterance (float32, the shape of ``mean``)."""
    if level is None:
        return mean, std
    return tuple(np.full(np.shape(mean), v, np.float32) for v in level)


def reduced_input(model: UNet, x: Array) -> Array:
    """What ``model`` reads of its input ``x`` (B, 80, T, 1): the band contour
    (``input_bands``), then its loud frames (``input_mask_depth``), or ``x`` itself."""
    if model.input_mask_depth and not model.input_bands:
        raise ValueError("input_mask_depth needs input_bands > 0 (it masks the band contour)")
    if model.input_bands:
        x = band_means(x, model.input_bands, model.input_bins)
    if model.input_mask_depth:
        x = loudness_mask(x, model.input_mask_depth)
    return x


def recognised_digit(model: UNet, params: Any, x: Array) -> Array:
    """The digit (B,) int that ``model``'s frozen digit classifier (``params``: its weights)
    recognises in ``x`` (B, 80, 32, 1): the argmax only (its posterior carries more of the
    speaker), with no gradient to the classifier."""
    classifier = AlexNet(model.digit_classes, model.digit_classifier_width, dtype=model.dtype)
    logits = classifier.apply({"params": params}, x, train=False)
    return jnp.argmax(jax.lax.stop_gradient(logits), axis=-1)


class DoubleConv(nn.Module):
    """(weight-normed 3x3 conv -> BatchNorm -> ReLU) x 2. (B, H, W, C) -> (B, H, W, features).

    BatchNorm and ReLU are one ``BatchNorm(relu=True)`` (in training mode
    ``kernels.batch_norm_relu``, a hand-written gradient); in evaluation mode a one-channel
    input is convolved by ``Conv(form="taps_forward")`` (per-tap forward on CPU).
    ``upsampled`` (B, H/2, W/2, C_up), the decoder's input: the first convolution's input is
    ``concat([x, upsample_nearest2d(upsampled)])``, computed at the low resolution
    (``Conv(upsampled=...)``). ``dtype``: computation dtype (None = x's); BatchNorm
    statistics stay float32.
    """

    features: int
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array, train: bool, upsampled: Array | None = None) -> Array:
        for i in range(2):
            # one input channel (the first convolution), evaluation mode: the per-tap forward
            # (CPU only); in training XLA's convolution is the faster one
            conv = Conv(
                self.features,
                (3, 3),
                padding=1,
                form="taps_forward" if x.shape[-1] == 1 and not train else "xla",
                dtype=self.dtype,
                name=f"conv{i}",
            )
            x = conv(x, upsampled) if i == 0 else conv(x)
            x = BatchNorm(dtype=self.dtype, relu=True, name=f"bn{i}")(x, train)
        return x


class UNet(nn.Module):
    """U-Net on normalised log-mels with noise (and, for G, a gender condition) at the bottleneck.

    __call__(x (B, 80, 32, 1) in [-1, 1], z (B, noise_dim), cond (B,) int in {0, 1} or None,
    train) -> (B, 80, 32, 1) in (-1, 1). ``train`` selects batch statistics (and updates
    ``batch_stats``, so apply with ``mutable=['batch_stats']``) or running statistics.
    The filter (``conditional=False``) has no conditioning parameters. ``input_bands`` > 0:
    the input is first reduced to that many band means of the mel bins ``input_bins``
    (``band_means``); 0: the original. ``input_mask_depth`` > 0 (with ``input_bands``): the
    band contour further reduced to its loud frames, those within that depth of each band's
    peak (``loudness_mask``); 0: the contour itself.
    ``source`` (a generator's) records which spectrogram the anonymiser feeds it
    (``GENERATOR_SOURCES``, ``generator_input``); the module applies to whatever it is given.
    ``output_level`` (a generator's): the (mean, std) the anonymiser de-normalises its output
    with (``output_statistics``), the training speakers' average; None: each utterance's
    own. The module does not use it either.
    ``digit_classes`` > 0 (a generator's): also conditioned on the digit that its frozen
    digit classifier (an AlexNet of ``digit_classifier_width``, parameters
    ``DIGIT_CLASSIFIER``, copied from the fixed spectrogram classifier and never trained: the
    argmax has no gradient) recognises in its input before any band reduction; 0: not.

    ``dtype`` is the computation dtype (e.g. ``jnp.bfloat16``): inputs are cast to it at entry,
    parameters stay float32 (cast per layer), BatchNorm statistics are float32 and the output
    is returned in float32 (tanh computed in float32).
    """

    conditional: bool = False
    noise_dim: int = 10
    embedding_dim: int = 16
    num_classes: int = 2
    dtype: Any = jnp.float32
    input_bands: int = 0
    input_bins: tuple[int, int] = ALL_BINS
    input_mask_depth: float = 0.0
    source: str = "filtered"
    output_level: tuple[float, float] | None = None
    digit_classes: int = 0
    digit_classifier_width: float = 1.0

    @nn.compact
    def __call__(self, x: Array, z: Array, cond: Array | None = None, train: bool = False) -> Array:
        if x.shape[1:3] != (80, 32):
            raise ValueError(f"UNet expects (B, 80, 32, 1) spectrograms, got {x.shape}")
        h, w = BOTTLENECK_SHAPE
        batch = x.shape[0]
        if self.digit_classes:
            classifier = AlexNet(self.digit_classes, self.digit_classifier_width,
                                 dtype=self.dtype, name=DIGIT_CLASSIFIER)
            digit = jnp.argmax(jax.lax.stop_gradient(classifier(x, train=False)), axis=-1)
        x = reduced_input(self, x).astype(self.dtype)
        skips = []
        for level, features in enumerate(CHANNELS, start=1):
            if level > 1:
                x = max_pool(x, (2, 2), (2, 2))
            x = DoubleConv(features, dtype=self.dtype, name=f"down{level}")(x, train)
            skips.append(x)
        skips.pop()  # the bottleneck is not a skip
        noise = dense(CHANNELS[-1] * h * w, self.noise_dim, "project_noise", self.dtype)(z)
        noise = noise.reshape(batch, CHANNELS[-1], h, w).transpose(0, 2, 3, 1)  # PyTorch C,H,W
        parts = [x, noise.astype(x.dtype)]
        if self.conditional:
            if cond is None:
                raise ValueError("the conditional U-Net (generator) needs cond")
            parts.append(self._label_map(cond, self.num_classes, "condition").astype(x.dtype))
        if self.digit_classes:
            parts.append(self._label_map(digit, self.digit_classes, "digit").astype(x.dtype))
        x = jnp.concatenate(parts, axis=-1)
        for level in range(len(CHANNELS) - 1, 0, -1):
            # conv(concat(skip, upsample(x))) without forming the upsampled tensor
            x = DoubleConv(CHANNELS[level - 1], dtype=self.dtype, name=f"up{level + 1}")(
                skips[level - 1], train, upsampled=x
            )
        x = Conv(1, (1, 1), weight_norm=False, dtype=self.dtype, name="conv_last")(x)
        return jnp.tanh(x.astype(jnp.float32))

    def _label_map(self, label: Array, classes: int, what: str) -> Array:
        """A class label (B,) as one bottleneck channel (B, h, w, 1): embedded
        (``embed_<what>``), then projected (``project_<what>``, "condition" -> "cond")."""
        h, w = BOTTLENECK_SHAPE
        embedding = nn.Embed(classes, self.embedding_dim,
                             embedding_init=nn.initializers.normal(1.0), dtype=self.dtype,
                             param_dtype=jnp.float32, name=f"embed_{what}")(label)
        project = "cond" if what == "condition" else what
        out = dense(h * w, self.embedding_dim, f"project_{project}", self.dtype)(embedding)
        return out.reshape(label.shape[0], h, w, 1)
