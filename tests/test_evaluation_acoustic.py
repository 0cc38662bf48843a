"""Acoustic features: F0 of harmonic tones, silence fallback, shapes and finiteness."""

import numpy as np
import pytest

from pcmelgan_jax.evaluation.acoustic import (
    F0_FALLBACK_HZ,
    FEATURE_NAMES,
    acoustic_features,
)

SR = 8000
L = 8192


def _harmonic(f0, amplitude=0.5):
    t = np.arange(L) / SR
    x = sum(np.sin(2 * np.pi * k * f0 * t + k) / k for k in range(1, 9) if k * f0 < SR / 2)
    return amplitude * x / np.abs(x).max()


def test_f0_of_harmonic_tones():
    feats = acoustic_features(np.stack([_harmonic(120.0), _harmonic(220.0)]))
    f0 = np.exp(feats[:, FEATURE_NAMES.index("log_f0")])
    assert f0[0] == pytest.approx(120.0, rel=0.05)
    assert f0[1] == pytest.approx(220.0, rel=0.05)
    voiced = feats[:, FEATURE_NAMES.index("voiced_fraction")]
    assert np.all(voiced > 0.9)
    # The brighter (higher) tone has the higher spectral centroid.
    centroid = feats[:, FEATURE_NAMES.index("spectral_centroid_hz")]
    assert centroid[1] > centroid[0]


def test_silence_gets_fallback_and_finite_features():
    feats = acoustic_features(np.zeros((2, L), np.float32))
    assert np.all(np.isfinite(feats))
    np.testing.assert_allclose(feats[:, 0], np.log(F0_FALLBACK_HZ))
    assert np.all(feats[:, FEATURE_NAMES.index("voiced_fraction")] == 0)


def test_noise_shape_finite_and_unvoiced():
    rng = np.random.default_rng(0)
    clips = rng.normal(scale=0.3, size=(3, L)).astype(np.float32)
    feats = acoustic_features(clips)
    assert feats.shape == (3, len(FEATURE_NAMES)) == (3, 43)
    assert np.all(np.isfinite(feats))
    assert np.all(feats[:, FEATURE_NAMES.index("voiced_fraction")] < 0.1)
    # Deterministic, and a single clip is treated as a batch of one.
    np.testing.assert_array_equal(acoustic_features(clips), feats)
    np.testing.assert_allclose(acoustic_features(clips[0]), feats[:1])


def test_tone_in_silence_uses_only_energetic_frames():
    x = np.zeros(L)
    x[2000:5000] = _harmonic(180.0)[:3000]
    feats = acoustic_features(x[None])
    assert np.exp(feats[0, 0]) == pytest.approx(180.0, rel=0.05)
    assert 0.2 < feats[0, FEATURE_NAMES.index("voiced_fraction")] < 0.5
