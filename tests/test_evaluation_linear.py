"""Linear attacker: Bayes accuracy on Gaussian blobs, chance on noise, grid choice, objective."""

import math

import numpy as np
import pytest
from scipy.special import ndtr

from pcmelgan_jax.evaluation.linear import (
    LogisticModel,
    fit_logistic_regression,
    logistic_objective,
)


def _blobs(rng, n, shift=1.0):
    y = rng.integers(0, 2, n)
    x = rng.normal(size=(n, 2))
    x[:, 0] += shift * (2 * y - 1)
    x[:, 1] = 3.0 * x[:, 1] + 5.0  # an uninformative feature on another scale
    return x, y


def test_gaussian_blobs_reach_bayes_accuracy():
    rng = np.random.default_rng(0)
    (xt, yt), (xv, yv), (xs, ys) = (_blobs(rng, n) for n in (2000, 1000, 20000))
    model = fit_logistic_regression(xt, yt, xv, yv, num_classes=2)
    assert isinstance(model, LogisticModel)
    accuracy = float((model.predict(xs) == ys).mean())
    bayes = float(((xs[:, 0] > 0) == (ys == 1)).mean())  # the Bayes rule on the same test set
    assert accuracy >= bayes - 0.005
    assert accuracy == pytest.approx(float(ndtr(1.0)), abs=0.01)
    assert model.train_accuracy == pytest.approx(float(ndtr(1.0)), abs=0.03)
    assert model.logits(xs[:5]).shape == (5, 2)
    assert model.predict(xs[:5]).dtype.kind == "i"
    np.testing.assert_allclose(model.mean, xt.mean(0))
    np.testing.assert_allclose(model.std, xt.std(0))


def test_independent_labels_give_chance_on_held_out_data():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(5000, 4, 5))  # higher-dimensional inputs are flattened to 20 features
    y = rng.integers(0, 4, 5000)
    model = fit_logistic_regression(x[:500], y[:500], x[500:1000], y[500:1000], num_classes=4)
    assert model.weights.shape == (20, 4)
    accuracy = float((model.predict(x[1000:]) == y[1000:]).mean())
    assert accuracy == pytest.approx(0.25, abs=0.04)


def test_chosen_l2_is_the_validation_best_and_strong_regularisation_can_win():
    # d >> n, pure noise features, 80/20 labels: weak regularisation fits the noise, strong
    # regularisation falls back on the class prior, the best one can do (this seed's draw:
    # validation accuracy rises from 0.71 at 1e-4 to 0.77 at 1.0).
    rng = np.random.default_rng(0)

    def draw(n):
        return rng.normal(size=(n, 400)), (rng.random(n) < 0.2).astype(int)

    (xt, yt), (xv, yv) = draw(60), draw(400)
    grid = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
    model = fit_logistic_regression(xt, yt, xv, yv, num_classes=2, l2_grid=grid)
    accs = dict(model.grid_val_accuracy)
    assert sorted(accs) == list(grid)
    best = max(accs.values())
    assert model.l2 == max(g for g, a in accs.items() if a == best)  # ties -> strongest
    assert model.val_accuracy == best == pytest.approx(float((model.predict(xv) == yv).mean()))
    assert model.l2 == 1.0
    assert model.val_accuracy >= 1.0 - yv.mean() - 0.01  # about the majority-class rate
    assert accs[1e-4] < best - 0.03


def test_objective_matches_hand_computed_cross_entropy():
    w = np.array([[1.0, -1.0, 0.5], [0.0, 2.0, -0.5]], np.float32)  # (d=2, C=3)
    b = np.array([0.1, 0.0, -0.2], np.float32)
    x = np.array([[1.0, 2.0], [-1.0, 0.5]], np.float32)
    y = np.array([2, 0])
    # example 0: logits (1.1, 3.0, -0.7), label 2; example 1: logits (-0.9, 2.0, -0.95), label 0
    ce0 = math.log(math.exp(1.1) + math.exp(3.0) + math.exp(-0.7)) + 0.7
    ce1 = math.log(math.exp(-0.9) + math.exp(2.0) + math.exp(-0.95)) + 0.9
    l2 = 0.3
    penalty = 0.5 * l2 * (1 + 1 + 0.25 + 0 + 4 + 0.25)
    value = float(logistic_objective({"w": w, "b": b}, x, y, l2))
    assert value == pytest.approx((ce0 + ce1) / 2 + penalty, rel=1e-6)


def test_rejects_bad_labels():
    x = np.zeros((4, 3))
    with pytest.raises(ValueError):
        fit_logistic_regression(x, [0, 1, 2, 3], x, [0, 1, 0, 1], num_classes=3)
