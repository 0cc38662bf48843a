"""Every training loss, as pure functions of arrays.

Logits are (B, K), labels (B,) int; spectrograms (B, 80, 32, 1); waveforms (B, T); each loss
returns a float32 scalar (the STFT loss a tuple of them). The MelGAN discriminator outputs
are, per scale, the list of its layers' feature maps with the score map last.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from pcmelgan_jax.audio import stft_magnitude

# the classifiers' cross-entropy (optional label smoothing) lives beside the models, which
# the evaluation's attackers also train with
from pcmelgan_jax.models.classifiers import softmax_cross_entropy

Array = jax.Array
FAKE = 2  # GD's class for generated spectrograms (0 and 1 are the genders)
# (n_fft, hop, win) of the multi-resolution STFT loss: 16, 32 and 64 ms windows at 8 kHz
STFT_RESOLUTIONS = ((128, 32, 128), (256, 64, 256), (512, 128, 512))
STFT_POWER_FLOOR = 1e-7  # |S|^2 is clamped here before the sqrt (Parallel WaveGAN's floor)

__all__ = [
    "FAKE",
    "STFT_POWER_FLOOR",
    "STFT_RESOLUTIONS",
    "accuracy",
    "discriminator_hinge_loss",
    "distortion_hinge",
    "distortion_penalty",
    "feature_matching_loss",
    "filter_adversarial_loss",
    "generator_discriminator_loss",
    "generator_hinge_loss",
    "l1",
    "label_mean_gap",
    "mean_entropy",
    "multi_resolution_stft_loss",
    "softmax_cross_entropy",
]


def l1(a: Array, b: Array) -> Array:
    """Mean absolute difference."""
    return jnp.mean(jnp.abs(a - b))


def accuracy(logits: Array, labels: Array, mask: Array | None = None) -> Array:
    """Fraction of argmax(logits) == labels, weighted by ``mask`` (B,)."""
    hit = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    if mask is None:
        return hit.mean()
    return jnp.sum(hit * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def distortion_hinge(distortion: Array, eps: float, lamb: float) -> Array:
    """``lamb * relu(distortion - eps)^2``: zero while the distortion stays within ``eps``."""
    return lamb * jnp.square(jax.nn.relu(distortion - eps))


def distortion_penalty(x_out: Array, x: Array, eps: float, lamb: float) -> tuple[Array, Array]:
    """(the distortion hinge of L1(x_out, x), L1(x_out, x))."""
    distortion = l1(x_out, x)
    return distortion_hinge(distortion, eps, lamb), distortion


def label_mean_gap(x: Array, labels: Array) -> Array:
    """Unbiased estimate, from one batch, of the mean over the elements of x of the squared
    difference between the means of x for binary label 1 and for label 0:
    (B, ...) and (B,) in {0, 1} -> ().

    Per element, (m1 - m0)^2 - v1 / n1 - v0 / n0 (batch means m, unbiased variances v,
    counts n): the plain squared gap of batch means also counts the batch's sampling noise
    (v / n), whose gradient would shrink every output toward its class mean instead of
    closing the gap. No linear classifier of x beats chance on the label exactly when the two
    class-conditional means are equal (linear guardedness), so driving this to zero removes
    what a linear attacker could learn. Can be negative; 0 unless each label has 2+ rows.
    """
    x = x.astype(jnp.float32).reshape(x.shape[0], -1)
    ones = (labels == 1).astype(jnp.float32)
    zeros = 1.0 - ones
    n1, n0 = jnp.sum(ones), jnp.sum(zeros)

    def mean_and_noise(w, n):
        mean = w @ x / jnp.maximum(n, 1.0)
        var = w @ jnp.square(x - mean) / jnp.maximum(n - 1.0, 1.0)
        return mean, var / jnp.maximum(n, 1.0)

    m1, noise1 = mean_and_noise(ones, n1)
    m0, noise0 = mean_and_noise(zeros, n0)
    estimate = jnp.mean(jnp.square(m1 - m0) - noise1 - noise0)
    return jnp.where((n1 >= 2) & (n0 >= 2), estimate, 0.0)


def mean_entropy(logits: Array) -> Array:
    """Mean over the batch of the entropy (nats) of softmax(logits). (B, K) -> ()."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32))
    return -jnp.mean(jnp.sum(jnp.exp(logp) * logp, axis=-1))


def filter_adversarial_loss(fd_logits: Array, gender: Array, entropy: bool) -> Array:
    """F's adversarial loss: CE(FD(x1), 1 - s), or with ``entropy`` the NEGATIVE entropy of FD.

    Minimising ``-entropy`` MAXIMISES FD's entropy (pushes it to uniform), the intended
    objective; the original added +entropy (a sign error that makes FD more confident).
    """
    if entropy:
        return -mean_entropy(fd_logits)
    return softmax_cross_entropy(fd_logits, 1 - gender)


def generator_discriminator_loss(real_logits: Array, fake_logits: Array, gender: Array) -> Array:
    """GD's 3-class loss: 0.5 * (CE(GD(x), s) + CE(GD(x2), FAKE))."""
    fake = jnp.full(fake_logits.shape[:1], FAKE, jnp.int32)
    return 0.5 * (
        softmax_cross_entropy(real_logits, gender) + softmax_cross_entropy(fake_logits, fake)
    )


def discriminator_hinge_loss(real: Sequence[list], fake: Sequence[list]) -> Array:
    """MelGAN's discriminator: sum over scales of mean(relu(1 - D(x))) + mean(relu(1 + D(G(s))))."""
    return sum(
        jnp.mean(jax.nn.relu(1.0 - r[-1])) + jnp.mean(jax.nn.relu(1.0 + f[-1]))
        for r, f in zip(real, fake, strict=True)
    )


def generator_hinge_loss(fake: Sequence[list]) -> Array:
    """MelGAN's generator: sum over scales of -mean(D(G(s)))."""
    return sum(-jnp.mean(f[-1]) for f in fake)


def feature_matching_loss(real: Sequence[list], fake: Sequence[list], n_layers: int) -> Array:
    """Sum over scales and all layers but the last of (1/num_D)(4/(n_layers+1)) L1(fake, real)
    (the real features are constants)."""
    weight = (1.0 / len(real)) * (4.0 / (n_layers + 1))
    return sum(
        weight * l1(f, jax.lax.stop_gradient(r))
        for rs, fs in zip(real, fake, strict=True)
        for r, f in zip(rs[:-1], fs[:-1], strict=True)
    )


def _frobenius(x: Array) -> Array:
    """Frobenius norm over the last two axes, with a zero (not NaN) gradient at 0."""
    sq = jnp.sum(jnp.square(x), axis=(-2, -1))
    positive = sq > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def multi_resolution_stft_loss(
    fake: Array, real: Array, resolutions: Sequence[Sequence[int]] = STFT_RESOLUTIONS,
    power_floor: float = STFT_POWER_FLOOR,
) -> tuple[Array, Array, Array]:
    """Parallel WaveGAN's multi-resolution STFT loss of waveforms (..., T):
    (spectral convergence + log magnitude, spectral convergence, log magnitude), each the
    mean over ``resolutions`` of (n_fft, hop, win).

    Per resolution, with M = max(|STFT|, sqrt(power_floor)) (``audio.stft_magnitude``: Hann
    window, reflect padding of (n_fft - hop) / 2 samples each side, no centring):
    spectral convergence ||M_real - M_fake||_F / ||M_real||_F per clip, averaged over clips,
    and log magnitude mean |log M_real - log M_fake|. The floor keeps both terms and their
    gradients finite on silent (all-zero) audio. ``real`` is a constant (no gradient).
    """
    real = jax.lax.stop_gradient(real)
    floor = jnp.sqrt(jnp.float32(power_floor))
    convergence, log_magnitude = [], []
    for n_fft, hop, win in resolutions:
        m_fake, m_real = (
            jnp.maximum(stft_magnitude(a, n_fft, hop, win), floor) for a in (fake, real)
        )
        convergence.append(jnp.mean(_frobenius(m_real - m_fake) / _frobenius(m_real)))
        log_magnitude.append(l1(jnp.log(m_fake), jnp.log(m_real)))
    sc, mag = jnp.mean(jnp.stack(convergence)), jnp.mean(jnp.stack(log_magnitude))
    return sc + mag, sc, mag
