"""Closed-form linear erasure of a binary attribute (LEACE, Belrose et al. 2023).

    eraser = fit_linear_eraser(x_train, gender_train)
    x_erased = eraser(x)          # any (n, ...) array with the fitted feature count

For features x with covariance S and label z, the least-squares eraser is the affine map
``x - (x - mean) @ a b^T`` with ``v = S^{-1/2} cov(x, z) / |.|``, ``a = S^{-1/2} v`` and
``b = S^{1/2} v``: in whitened coordinates it removes the one direction that covaries with z,
which makes the class means of the fitting set equal, so no linear classifier of the erased
fitting set does better than a constant, while moving x as little as possible (in the
whitened norm). The guarantee is for the data it was fitted on: new speakers' outputs keep
whatever part of the attribute they do not share with the fitting speakers. The evaluation
uses it to show that difference (``attackers.fresh``). S is shrunk towards its mean
eigenvalue (``shrinkage``) so that it is invertible with fewer examples than features.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class LinearEraser:
    """``x -> x - ((x - mean) @ whitened) * unwhitened`` on flattened features."""

    mean: np.ndarray  # (d,)
    whitened: np.ndarray  # (d,) a = S^{-1/2} v
    unwhitened: np.ndarray  # (d,) b = S^{1/2} v

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        flat = x.reshape(len(x), -1).astype(np.float64)
        if flat.shape[1] != self.mean.size:
            raise ValueError(f"eraser fitted on {self.mean.size} features, got {flat.shape[1]}")
        erased = flat - np.outer((flat - self.mean) @ self.whitened, self.unwhitened)
        return erased.reshape(x.shape).astype(x.dtype)


def fit_linear_eraser(x: np.ndarray, labels: np.ndarray, shrinkage: float = 1e-2) -> LinearEraser:
    """The eraser of the binary ``labels`` (n,) from ``x`` (n, ...) (module docstring)."""
    flat = np.asarray(x, np.float64).reshape(len(x), -1)
    z = np.asarray(labels, np.float64).reshape(-1)
    if len(z) != len(flat) or len(np.unique(z)) != 2:
        raise ValueError("fit_linear_eraser needs one binary label per row, both classes present")
    if not 0.0 <= shrinkage <= 1.0:
        raise ValueError(f"shrinkage must lie in [0, 1], got {shrinkage}")
    mean = flat.mean(axis=0)
    centred = flat - mean
    cov = centred.T @ centred / len(flat)
    d = cov.shape[0]
    target = shrinkage * np.trace(cov) / d
    cov *= 1.0 - shrinkage
    cov.flat[:: d + 1] += target  # the diagonal, without a (d, d) identity
    eigenvalues, eigenvectors = np.linalg.eigh(cov)
    eigenvalues = np.maximum(eigenvalues, 1e-12 * max(eigenvalues.max(), 1e-30))
    cross = centred.T @ (z - z.mean()) / len(flat)  # cov(x, z)
    # v = S^{-1/2} cov(x, z), in the eigenbasis
    v_eig = (eigenvectors.T @ cross) / np.sqrt(eigenvalues)
    norm = np.linalg.norm(v_eig)
    if norm == 0:
        return LinearEraser(mean, np.zeros(d), np.zeros(d))
    v_eig /= norm
    whitened = eigenvectors @ (v_eig / np.sqrt(eigenvalues))
    unwhitened = eigenvectors @ (v_eig * np.sqrt(eigenvalues))
    return LinearEraser(mean, whitened, unwhitened)
