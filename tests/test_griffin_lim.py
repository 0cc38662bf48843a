"""Griffin-Lim: the inverse STFT, the mel inverse and the phase reconstruction."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from pcmelgan_jax import audio as audio_lib
from pcmelgan_jax import griffin_lim


def _chord(rng: np.random.Generator, noise: float = 0.05) -> np.ndarray:
    t = np.arange(audio_lib.SEGMENT_LENGTH) / audio_lib.SAMPLE_RATE
    chord = sum(np.sin(2 * np.pi * f * t) / k for k, f in enumerate((220, 440, 660, 1210), 1))
    return (0.4 * chord + noise * rng.standard_normal(t.size)).astype(np.float32)


@pytest.mark.parametrize("samples", [audio_lib.SEGMENT_LENGTH, 40 * audio_lib.HOP_LENGTH])
def test_istft_inverts_stft(samples):
    """Overlap-add divided by the summed squared window gives the signal back exactly, for
    the one-window clip and a longer input."""
    x = np.random.default_rng(0).standard_normal((2, samples)).astype(np.float32)
    y = np.asarray(griffin_lim.istft(audio_lib.stft(x)))
    assert y.shape == x.shape
    np.testing.assert_allclose(y, x, atol=2e-5)


def test_mel_inverse_is_a_right_inverse_of_the_filter_bank():
    """basis @ inverse = I (80 x 80): a mel spectrogram in the bank's range maps back to
    itself before the clip at 0."""
    product = audio_lib.mel_basis().astype(np.float64) @ griffin_lim.mel_inverse()
    np.testing.assert_allclose(product, np.eye(audio_lib.N_MELS), atol=1e-4)
    magnitude = np.asarray(griffin_lim.mel_to_magnitude(jnp.full((80, 3), -2.0)))
    assert magnitude.shape == (audio_lib.N_FFT // 2 + 1, 3) and magnitude.min() >= 0.0


def test_phase_reconstruction_converges_and_is_deterministic():
    """From the true magnitude, the spectral convergence ||S(y)| - M| / |M| falls with the
    iterations, to below 0.15 at 32 on this chord; the same call
    gives the same audio, and a clip's audio does not depend on its batch."""
    rng = np.random.default_rng(0)
    clips = np.stack([_chord(rng), rng.standard_normal(8192).astype(np.float32)])
    magnitude = audio_lib.stft_magnitude(clips)

    def convergence(iterations):
        y = griffin_lim.griffin_lim(magnitude, iterations=iterations)
        m = audio_lib.stft_magnitude(y)
        return float(jnp.linalg.norm(m[0] - magnitude[0]) / jnp.linalg.norm(magnitude[0])), y

    errors = [convergence(n)[0] for n in (0, 8, 32)]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.15, errors
    _, y = convergence(8)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(convergence(8)[1]))
    alone = griffin_lim.griffin_lim(magnitude[:1], iterations=8)
    np.testing.assert_allclose(np.asarray(alone[0]), np.asarray(y[0]), atol=1e-5)


def test_vocode_keeps_the_log_mel_and_the_level_of_a_chord():
    """From the chord's log-mel alone: the audio's normalised log-mel is within a quarter of
    the distance between the chord and noise, and its mean log-mel (the level) within 0.1
    (a factor 1.26 in amplitude)."""
    rng = np.random.default_rng(1)
    clips = np.stack([_chord(rng), rng.standard_normal(8192).astype(np.float32)])
    log_mel = audio_lib.log_mel(clips)
    audio = griffin_lim.vocode(log_mel[:1])
    assert audio.shape == (1, audio_lib.SEGMENT_LENGTH)
    x = audio_lib.normalize(log_mel)[0]
    error = float(jnp.mean(jnp.abs(audio_lib.mel_features(audio)[0][0] - x[0])))
    assert error < 0.25 * float(jnp.mean(jnp.abs(x[1] - x[0]))), error
    assert abs(float(audio_lib.log_mel(audio).mean() - log_mel[0].mean())) < 0.1
