"""Training-free anonymisers: McAdams LPC warping, the gender-flipping pitch shift and the
digit templates."""

import librosa
import numpy as np
import pytest
import scipy.signal

from pcmelgan_jax.evaluation.baselines import (
    digit_templates,
    mcadams,
    mcadams_batch,
    pitch_shift_flip,
    pitch_shift_flip_batch,
)

SR = 8000
L = 8192


def _vowel(f0, formants=((700, 80), (1200, 90), (2500, 120))):
    """Impulse train through three second-order resonators: a crude vowel."""
    x = np.zeros(L)
    x[:: int(round(SR / f0))] = 1.0
    for freq, bandwidth in formants:
        radius = np.exp(-np.pi * bandwidth / SR)
        theta = 2 * np.pi * freq / SR
        x = scipy.signal.lfilter([1.0], [1.0, -2 * radius * np.cos(theta), radius**2], x)
    return 0.9 * x / np.abs(x).max()


def _harmonic(f0):
    t = np.arange(L) / SR
    x = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 8))
    return 0.5 * x / np.abs(x).max()


def _median_f0(x):
    return float(np.median(librosa.yin(x, fmin=60, fmax=400, sr=SR, frame_length=512)[4:-4]))


def _centroid(x):
    return float(librosa.feature.spectral_centroid(y=x, sr=SR, n_fft=256, hop_length=128).mean())


def test_mcadams_shape_dtype_and_peak():
    rng = np.random.default_rng(0)
    x32 = (0.3 * rng.normal(size=L)).astype(np.float32)
    y32 = mcadams(x32)
    assert y32.shape == x32.shape and y32.dtype == np.float32
    assert np.abs(y32).max() == pytest.approx(np.abs(x32).max(), rel=1e-5)
    clips = np.stack([_vowel(110.0), _vowel(200.0)])
    out = mcadams_batch(clips)
    assert out.shape == clips.shape and out.dtype == np.float64
    np.testing.assert_allclose(out[1], mcadams(clips[1]))


def test_coefficient_one_reconstructs_the_input():
    # Poles -> polynomial round trip, residual and overlap-add leave the signal as it was.
    rng = np.random.default_rng(1)
    for x in (_vowel(130.0), 0.3 * rng.normal(size=L)):
        y = mcadams(x, coefficient=1.0)
        assert np.corrcoef(x[160:-160], y[160:-160])[0, 1] > 0.99
        np.testing.assert_allclose(y, x, atol=1e-6)


def test_mcadams_keeps_f0_and_moves_formants():
    x = _vowel(125.0)
    y = mcadams(x, coefficient=0.8)
    assert _median_f0(y) == pytest.approx(_median_f0(x), rel=0.05)
    assert _median_f0(y) == pytest.approx(125.0, rel=0.05)
    # 700 Hz -> ~790 Hz, 2500 Hz -> ~2180 Hz: the centroid moves (here by ~8 %).
    assert abs(_centroid(y) / _centroid(x) - 1.0) > 0.03
    assert np.corrcoef(x, y)[0, 1] < 0.95


def test_silence_stays_finite():
    zeros = np.zeros(L, np.float32)
    assert np.all(mcadams(zeros) == 0)
    assert np.all(np.isfinite(pitch_shift_flip(zeros, 1)))
    # Digital silence around a sound: finite, silent parts stay silent.
    x = np.zeros(L)
    x[3000:5000] = _vowel(150.0)[:2000]
    y = mcadams(x)
    assert np.all(np.isfinite(y))
    assert np.abs(y[:2800]).max() < 1e-6 and np.abs(y[5200:]).max() < 1e-6


@pytest.mark.parametrize("gender, steps", [(1, 4.0), (0, -4.0)])
def test_pitch_shift_flip_moves_f0(gender, steps):
    x = _harmonic(150.0).astype(np.float32)
    y = pitch_shift_flip(x, gender)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert _median_f0(y) == pytest.approx(150.0 * 2 ** (steps / 12), rel=0.03)


def test_pitch_shift_flip_batch_matches_single_clips():
    clips = np.stack([_harmonic(120.0), _harmonic(210.0), _harmonic(140.0)])
    genders = np.array([1, 0, 1])
    out = pitch_shift_flip_batch(clips, genders)
    assert out.shape == clips.shape and out.dtype == clips.dtype
    for clip, gender, row in zip(clips, genders, out, strict=True):
        np.testing.assert_allclose(row, pitch_shift_flip(clip, gender), atol=1e-5)
    with pytest.raises(ValueError):
        pitch_shift_flip_batch(clips, [0, 1, 2])


def test_digit_templates_are_cell_means_with_fallbacks():
    x = np.arange(5 * 2, dtype=np.float32).reshape(5, 2)  # rows (0,1) (2,3) (4,5) (6,7) (8,9)
    bank = digit_templates(x, np.array([0, 0, 0, 1, 3]), np.array([0, 0, 1, 1, 0]))
    assert bank.shape == (10, 2, 2)
    np.testing.assert_allclose(bank[0, 0], [1, 2])  # mean of rows 0 and 1
    np.testing.assert_allclose(bank[0, 1], [4, 5])
    np.testing.assert_allclose(bank[1, 0], [6, 7])  # no female 1: the digit's mean
    np.testing.assert_allclose(bank[3, 1], [8, 9])
    np.testing.assert_allclose(bank[5, 0], [4, 5])  # no 5 at all: the mean of everything
    with pytest.raises(ValueError, match="as many digits"):
        digit_templates(x, np.zeros(4, int), np.zeros(5, int))
