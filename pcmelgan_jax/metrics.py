"""Evaluation metrics: masked correct counts, mean/std over runs, and a sample-efficient FID.

Everything here is host-side NumPy (float64) except ``masked_correct``, which is jittable.

FID (the evaluation's utility measure in the audio domain, on the digit AudioNet's
features) is the Frechet distance between Gaussian fits of two feature sets::

    FID = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr sqrt(S1 S2)

With n samples of d-dimensional features and n < d (400 test utterances, d = 8192 AudioNet
features) the covariances have rank < n, and the usual ``scipy.linalg.sqrtm(S1 @ S2)`` on the
d x d product is slow and numerically fragile. Here ``tr sqrt(S1 S2)`` is computed exactly
from factors: if S1 = L1 L1^T and S2 = L2 L2^T, then the eigenvalues of S1 S2 are the squared
singular values of L1^T L2, so ``tr sqrt(S1 S2) = ||L1^T L2||_*`` (the nuclear norm). For
samples the factor is the centred data, L = A^T / sqrt(n - 1), which makes ``L1^T L2`` the
small (n1 x n2) matrix A1 A2^T / sqrt((n1 - 1)(n2 - 1)); for explicit covariances it is a
symmetric square root from ``eigh``. Either way the result is real, needs no offset, and
FID(X, X) is 0 up to rounding.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def masked_correct(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> jax.Array:
    """Number of correct predictions among the examples with mask 1. (B, K), (B,), (B,) -> ()."""
    hit = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    return jnp.sum(hit * mask.astype(jnp.float32))


def summarize(values: Sequence[float | None]) -> dict:
    """Mean and standard deviation over runs: ``{"mean", "std", "runs"}``.

    ``std`` is the sample standard deviation (ddof = 1) for two or more runs and 0.0 for one.
    ``None`` values (not applicable) are dropped; no values gives mean and std ``None``.
    NaN is written as ``None`` so the result is valid JSON.
    """
    runs = [None if v is None or not np.isfinite(v) else float(v) for v in values]
    present = [v for v in runs if v is not None]
    if not present:
        return {"mean": None, "std": None, "runs": runs}
    arr = np.asarray(present, np.float64)
    std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return {"mean": float(arr.mean()), "std": std, "runs": runs}


# ----------------------------------------------------------------------------------- FID


def gaussian_fit(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (d,) and unbiased covariance (d, d) of features (n, ...) flattened to (n, d)."""
    x = np.asarray(features, np.float64).reshape(len(features), -1)
    if x.shape[0] < 2:
        raise ValueError(f"a Gaussian fit needs at least 2 samples, got {x.shape[0]}")
    return x.mean(axis=0), np.cov(x, rowvar=False, ddof=1).reshape(x.shape[1], x.shape[1])


def _psd_factor(cov: np.ndarray) -> np.ndarray:
    """A factor L (d, d) with cov = L L^T (symmetric square root; negative eigenvalues -> 0)."""
    cov = np.asarray(cov, np.float64)
    w, v = np.linalg.eigh(0.5 * (cov + cov.T))
    return v * np.sqrt(np.clip(w, 0.0, None))


def _sample_factor(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (d,) and a factor L (d, k), k = min(n, d), with L L^T = the unbiased covariance."""
    mean = x.mean(axis=0)
    centred = x - mean
    n, d = centred.shape
    if n <= d:
        return mean, centred.T / np.sqrt(n - 1)
    return mean, _psd_factor(centred.T @ centred / (n - 1))


def _fid_from_factors(mu1, l1, mu2, l2) -> float:
    diff = mu1 - mu2
    cross = np.linalg.svd(l1.T @ l2, compute_uv=False).sum()  # tr sqrt(S1 S2)
    value = diff @ diff + np.sum(l1 * l1) + np.sum(l2 * l2) - 2.0 * cross
    return float(max(value, 0.0))


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2). (d,), (d, d) each."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    return _fid_from_factors(mu1, _psd_factor(sigma1), mu2, _psd_factor(sigma2))


def fid(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """FID between two feature sets (n_a, ...) and (n_b, ...), flattened to (n, d); n >= 2.

    Exact for any n and d (see the module docstring), in float64.
    """
    a = np.asarray(features_a, np.float64).reshape(len(features_a), -1)
    b = np.asarray(features_b, np.float64).reshape(len(features_b), -1)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sizes differ: {a.shape[1]} vs {b.shape[1]}")
    if min(a.shape[0], b.shape[0]) < 2:
        raise ValueError(f"FID needs at least 2 samples per set, got {a.shape[0]} and {b.shape[0]}")
    mu_a, l_a = _sample_factor(a)
    mu_b, l_b = _sample_factor(b)
    return _fid_from_factors(mu_a, l_a, mu_b, l_b)
