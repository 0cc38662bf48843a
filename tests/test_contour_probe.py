"""bench/contour_probe.py: the band contour G is fed, and a nonlinear reader of it."""

from __future__ import annotations

import numpy as np
import pytest

from bench import contour_probe, privacy_probe


def test_contour_is_the_band_means_by_hand():
    x = np.random.default_rng(0).standard_normal((2, 80, 5)).astype(np.float32)
    got = contour_probe.contour(x, 3, (10, 70))
    assert got.shape == (2, 3, 5)
    want = np.stack([x[:, 10 + 20 * k:30 + 20 * k].mean(1) for k in range(3)], 1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(contour_probe.contour(x, 80, (0, 80)), x)  # one-bin bands
    masked = contour_probe.contour(x, 3, (10, 70), mask_depth=0.2)
    np.testing.assert_array_equal(masked, np.where(want > want.max(2, keepdims=True) - 0.2,
                                                   1.0, -1.0))


def test_features_append_the_recognised_digit():
    x = np.random.default_rng(2).standard_normal((3, 80, 4)).astype(np.float32)
    digit = np.eye(10, dtype=np.float32)[[7, 0, 3]]
    got = contour_probe.features(x, 2, (0, 80), digit)
    assert got.shape == (3, 2 * 4 + 10)
    np.testing.assert_array_equal(got[:, :8], contour_probe.contour(x, 2, (0, 80)).reshape(3, 8))
    np.testing.assert_array_equal(got[:, 8:], digit)
    assert contour_probe.features(x, 2, (0, 80)).shape == (3, 8)


def test_mlp_reads_a_cue_the_linear_attacker_cannot():
    """The label is the sign of the product of two features (XOR): no linear model beats
    chance, a one-hidden-layer network does."""
    rng = np.random.default_rng(1)

    def world(n):
        x = rng.standard_normal((n, 2, 2)).astype(np.float32)
        return x, (x[:, 0, 0] * x[:, 1, 1] > 0).astype(np.int32)

    (tx, ty), (vx, vy) = world(600), world(300)
    assert contour_probe.mlp_accuracy(tx, ty, vx, vy) >= 0.85
    assert 0.35 <= privacy_probe.linear_accuracy(tx, ty, vx, vy, 2) <= 0.65


def test_layouts_parse_and_bad_ones_are_named():
    assert contour_probe.parse_layout("3:10-70") == (3, (10, 70), 0.0)
    assert contour_probe.parse_layout("1:10-70@0.3") == (1, (10, 70), 0.3)
    for bad in ("3-10:70", "1:10-70@x"):
        with pytest.raises(ValueError, match=f"'{bad}'"):
            contour_probe.parse_layout(bad)
    with pytest.raises(ValueError, match="mask depth must be >= 0"):
        contour_probe.parse_layout("1:10-70@-1")


def test_markdown_has_a_row_per_layout():
    row = {"linear_gender": 0.5, "mlp_gender": 0.75, "linear_digit": 0.8, "mlp_digit": 0.9}
    lines = contour_probe.markdown({"80:0-80": row, "1:10-70": row}).splitlines()
    assert len(lines) == 4 and lines[3].startswith("| 1:10-70 | 0.500 | 0.750 | 0.800 |")
