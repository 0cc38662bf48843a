"""The linear eraser (LEACE): hand-computed cases and its guarantee on the fitting set."""

import numpy as np
import pytest

from pcmelgan_jax.evaluation.erasure import fit_linear_eraser
from pcmelgan_jax.evaluation.linear import fit_logistic_regression


def test_isotropic_square_is_projected_onto_the_other_axis():
    # class 0 at x1 = -1, class 1 at x1 = +1, x2 = +-1 in both: covariance I, so the eraser
    # is the orthogonal projection removing x1
    x = np.array([[-1.0, -1.0], [-1.0, 1.0], [1.0, -1.0], [1.0, 1.0]])
    eraser = fit_linear_eraser(x, np.array([0, 0, 1, 1]), shrinkage=0.0)
    np.testing.assert_allclose(eraser(x), [[0, -1], [0, 1], [0, -1], [0, 1]], atol=1e-12)
    np.testing.assert_allclose(np.abs(eraser.whitened), [1, 0], atol=1e-12)


def test_stretched_axis_uses_the_whitened_direction():
    # covariance diag(4, 1): a = S^(-1/2) v = (1/2, 0), b = S^(1/2) v = (2, 0) (up to sign)
    x = np.array([[-2.0, -1.0], [-2.0, 1.0], [2.0, -1.0], [2.0, 1.0]])
    eraser = fit_linear_eraser(x, np.array([0, 0, 1, 1]), shrinkage=0.0)
    np.testing.assert_allclose(eraser.whitened * np.sign(eraser.whitened[0]), [0.5, 0],
                               atol=1e-12)
    np.testing.assert_allclose(eraser.unwhitened * np.sign(eraser.unwhitened[0]), [2, 0],
                               atol=1e-12)
    np.testing.assert_allclose(eraser(np.array([[3.0, 5.0]])), [[0.0, 5.0]], atol=1e-12)


def test_fitting_set_class_means_become_equal_and_erasure_is_idempotent():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    mix = rng.normal(size=(8, 8))
    x = (rng.normal(size=(300, 8)) + 1.5 * y[:, None] * rng.normal(size=8)) @ mix
    x = x.reshape(300, 2, 4).astype(np.float32)
    eraser = fit_linear_eraser(x, y)
    erased = eraser(x)
    assert erased.shape == x.shape and erased.dtype == x.dtype
    gap = erased[y == 1].mean(0) - erased[y == 0].mean(0)
    assert np.abs(gap).max() < 1e-4 * np.abs(x).max()
    np.testing.assert_allclose(eraser(erased), erased, atol=1e-4)
    # a linear attacker (within the fitting set: trained on 200 rows, validated on 100)
    # finds the class on the raw features and nothing on the erased ones
    raw = fit_logistic_regression(x[:200], y[:200], x[200:], y[200:], 2)
    blind = fit_logistic_regression(erased[:200], y[:200], erased[200:], y[200:], 2)
    assert raw.val_accuracy > 0.9
    assert blind.val_accuracy < 0.65


def test_bad_input_is_refused():
    x = np.zeros((4, 3))
    with pytest.raises(ValueError, match="binary label"):
        fit_linear_eraser(x, np.zeros(4))
    with pytest.raises(ValueError, match="shrinkage"):
        fit_linear_eraser(x, np.array([0, 1, 0, 1]), shrinkage=2.0)
    eraser = fit_linear_eraser(np.eye(4, 3), np.array([0, 1, 0, 1]))
    with pytest.raises(ValueError, match="fitted on 3 features"):
        eraser(np.zeros((2, 4)))
