"""Multinomial logistic regression in JAX: the "linear attacker".

    model = fit_logistic_regression(x_train, y_train, x_val, y_val, num_classes=10)
    accuracy = (model.predict(x_test) == y_test).mean()

Features are flattened to (n, d) and standardised with the training mean and std. For every L2
strength of the grid the regularised mean cross-entropy (``logistic_objective``) is minimised by
L-BFGS-B (scipy) on the JAX objective and gradient, strongest first, each fit warm-starting
the next, with one compiled objective for the whole grid (optax's L-BFGS compiles for longer
than these fits take; docs/measurements.md). The strength with the best
validation accuracy wins (ties: the stronger one), so the attacker is tuned on held-out data,
never on the test set.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize

try:  # installed with librosa (via scikit-learn); optional here
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover
    threadpool_limits = None

DEFAULT_L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
GRAD_TOL = 1e-5  # L-BFGS-B stops when every gradient entry is below this ...
FTOL = 1e-7  # ... or the relative decrease of the loss is (float32 objective)


def logistic_objective(
    params: dict[str, jax.Array], x: jax.Array, y: jax.Array, l2: float | jax.Array
) -> jax.Array:
    """Mean cross-entropy of ``softmax(x @ w + b)`` against integer labels ``y``, plus
    ``l2 * ||w||^2 / 2`` (the bias is not penalised). ``params = {"w": (d, C), "b": (C,)}``."""
    logits = x @ params["w"] + params["b"]
    log_z = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, y[:, None], axis=-1)[:, 0]
    return jnp.mean(log_z - picked) + 0.5 * l2 * jnp.sum(params["w"] ** 2)


@jax.jit
def _flat_value_and_grad(theta, x, y, l2):
    """``logistic_objective`` and its gradient for flat parameters ``[w.ravel(), b]``.
    Compiled once per data shape; ``l2`` is traced, so the whole grid shares it."""
    num_classes = theta.shape[0] // (x.shape[1] + 1)
    unflatten = lambda t: {
        "w": t[:-num_classes].reshape(x.shape[1], num_classes),
        "b": t[-num_classes:],
    }
    value, grad = jax.value_and_grad(lambda t: logistic_objective(unflatten(t), x, y, l2))(theta)
    return value, grad


def _single_threaded_blas() -> contextlib.AbstractContextManager:
    """L-BFGS-B's small vector updates run in OpenBLAS, whose threads spin-wait on busy cores
    (docs/measurements.md); one thread is enough. The objective runs in XLA."""
    if threadpool_limits is None:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _solve(x, y, l2: float, init: np.ndarray, max_iter: int) -> tuple[np.ndarray, int]:
    """L-BFGS-B (scipy) on the JAX objective from ``init``: (flat params, iterations)."""

    def fun(theta):
        value, grad = _flat_value_and_grad(jnp.asarray(theta, jnp.float32), x, y, l2)
        return float(value), np.asarray(grad, np.float64)

    result = scipy.optimize.minimize(
        fun,
        init,
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": max_iter, "gtol": GRAD_TOL, "ftol": FTOL},
    )
    return result.x, int(result.nit)


def _flatten(x: Any) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim < 2:
        raise ValueError(f"features must be (n, ...) with a feature axis, got shape {x.shape}")
    return x.reshape(x.shape[0], -1)


@dataclasses.dataclass(frozen=True)
class LogisticModel:
    """A fitted linear classifier on standardised features: ``(x - mean) / std @ w + b``."""

    weights: np.ndarray  # (d, C)
    bias: np.ndarray  # (C,)
    mean: np.ndarray  # (d,) training mean
    std: np.ndarray  # (d,) training std (1 for constant features)
    l2: float  # chosen L2 strength
    val_accuracy: float
    train_accuracy: float
    grid_val_accuracy: tuple[tuple[float, float], ...] = ()  # (l2, validation accuracy)
    iterations: int = 0  # L-BFGS iterations at the chosen strength

    def logits(self, x: Any) -> np.ndarray:
        """(n, C) class scores for inputs of any trailing shape (flattened to d features)."""
        z = (_flatten(x).astype(np.float64) - self.mean) / self.std
        return z @ self.weights + self.bias

    def predict(self, x: Any) -> np.ndarray:
        """(n,) predicted class indices."""
        return np.argmax(self.logits(x), axis=-1)


def _checked_sets(
    x_train: Any, y_train: Any, x_val: Any, y_val: Any, num_classes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_val, y_val) as flat features and int32 labels, checked."""
    xtr, xva = _flatten(x_train), _flatten(x_val)
    ytr = np.asarray(y_train).astype(np.int32).reshape(-1)
    yva = np.asarray(y_val).astype(np.int32).reshape(-1)
    if xtr.shape[0] != ytr.shape[0] or xva.shape[0] != yva.shape[0]:
        raise ValueError("features and labels must have the same number of rows")
    if xtr.shape[1] != xva.shape[1]:
        raise ValueError(f"train has {xtr.shape[1]} features, validation {xva.shape[1]}")
    if xtr.shape[0] == 0 or xva.shape[0] == 0:
        raise ValueError("training and validation sets must be non-empty")
    for name, labels in (("y_train", ytr), ("y_val", yva)):
        if labels.min() < 0 or labels.max() >= num_classes:
            raise ValueError(f"{name} must lie in [0, {num_classes})")
    return xtr, ytr, xva, yva


def _fit_grid(
    ztr: np.ndarray, ytr: np.ndarray, grid: np.ndarray, c: int, max_iter: int
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Weights (G, d, C), biases (G, C) and L-BFGS iteration counts at each ``grid`` strength."""
    x_dev, y_dev = jnp.asarray(ztr), jnp.asarray(ytr)
    d = ztr.shape[1]
    theta = np.zeros(d * c + c)
    fitted, counts = [], []
    with _single_threaded_blas():
        for l2 in grid[::-1]:  # strongest first; each warm-starts the next (same optimum)
            theta, count = _solve(x_dev, y_dev, jnp.float32(l2), theta, max_iter)
            fitted.append(theta)
            counts.append(count)
    fitted, counts = fitted[::-1], counts[::-1]
    w = np.stack([t[: d * c].reshape(d, c) for t in fitted])
    b = np.stack([t[d * c :] for t in fitted])
    return w, b, counts


def fit_logistic_regression(
    x_train: Any,
    y_train: Any,
    x_val: Any,
    y_val: Any,
    num_classes: int,
    l2_grid: Sequence[float] = DEFAULT_L2_GRID,
    max_iter: int = 300,
    seed: int = 0,
) -> LogisticModel:
    """Fit one L2-regularised multinomial logistic regression per grid strength and keep the
    one with the best validation accuracy (ties: stronger regularisation).

    Deterministic (L-BFGS from zero weights on a strictly convex problem); ``seed`` is accepted
    for symmetry with the other attackers and unused.
    """
    del seed
    xtr, ytr, xva, yva = _checked_sets(x_train, y_train, x_val, y_val, num_classes)
    grid = np.asarray(sorted(float(v) for v in l2_grid), dtype=np.float64)
    if grid.size == 0 or np.any(grid < 0):
        raise ValueError(f"l2_grid must be non-empty and non-negative, got {l2_grid}")

    mean = xtr.mean(axis=0, dtype=np.float64)
    std = xtr.std(axis=0, dtype=np.float64)
    std = np.where(std > 1e-12 * max(1.0, float(np.abs(mean).max())), std, 1.0)
    ztr = ((xtr - mean) / std).astype(np.float32)
    zva = ((xva - mean) / std).astype(np.float32)

    w, b, counts = _fit_grid(ztr, ytr, grid, int(num_classes), int(max_iter))
    val_correct = (np.argmax(np.matmul(zva, w) + b[:, None], -1) == yva).sum(-1)
    best = int(np.flatnonzero(val_correct == val_correct.max()).max())  # ties -> strongest
    train_pred = np.argmax(ztr @ w[best] + b[best], axis=-1)
    return LogisticModel(
        weights=w[best],
        bias=b[best],
        mean=mean,
        std=std,
        l2=float(grid[best]),
        val_accuracy=float(val_correct[best] / yva.size),
        train_accuracy=float((train_pred == ytr).mean()),
        grid_val_accuracy=tuple(
            (float(g), float(k / yva.size)) for g, k in zip(grid, val_correct, strict=True)
        ),
        iterations=counts[best],
    )
