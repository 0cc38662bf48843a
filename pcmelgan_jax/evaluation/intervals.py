"""Bootstrap confidence intervals for classification accuracies.

    ci = bootstrap_accuracy(correct, speakers=speaker_ids, strata=genders)
    format_interval(ci)  # "82.5 [78.0, 86.8]"

Test utterances of one speaker are not independent (a classifier that fails on a voice fails on
most of its clips), so with ``speakers`` the resampling is a two-stage cluster bootstrap: draw
speakers with replacement (within each stratum, e.g. gender, so every resample keeps the
balance), then draw each drawn speaker's clips with replacement. With several runs (seeds)
evaluated on the same utterances, the runs are resampled as well. Percentile intervals.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


def _cluster_table(speakers: np.ndarray | None, strata: np.ndarray | None, n: int):
    """Speaker index tables: (clip table (K, m_max) padded with 0, clips per speaker (K,),
    list of speaker-index arrays, one per stratum)."""
    if speakers is None:
        codes = np.arange(n)
    else:
        speakers = np.asarray(speakers)
        if speakers.shape != (n,):
            raise ValueError(f"speakers must have shape ({n},), got {speakers.shape}")
        _, codes = np.unique(speakers, return_inverse=True)
        codes = codes.reshape(-1)
    num_clusters = int(codes.max()) + 1
    order = np.argsort(codes, kind="stable")
    sizes = np.bincount(codes, minlength=num_clusters)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    m_max = int(sizes.max())
    pos = np.arange(m_max)
    flat = starts[:, None] + np.minimum(pos[None, :], sizes[:, None] - 1)
    table = order[flat]  # (K, m_max); padded entries repeat the cluster's last clip

    if strata is None:
        groups = [np.arange(num_clusters)]
    else:
        strata = np.asarray(strata)
        if strata.shape != (n,):
            raise ValueError(f"strata must have shape ({n},), got {strata.shape}")
        first = strata[order[starts]]  # stratum of each cluster's first clip
        if np.any(strata != first[codes]):
            raise ValueError("strata must be constant within each speaker")
        groups = [np.flatnonzero(first == s) for s in np.unique(first)]
    return table, sizes, groups


def _checked_correct(correct: Any) -> np.ndarray:
    """``correct`` as (R, n) float64 values in [0, 1]."""
    c = np.asarray(correct, dtype=np.float64)
    if c.ndim == 1:
        c = c[None, :]
    if c.ndim != 2 or c.shape[1] == 0 or c.shape[0] == 0:
        raise ValueError(f"correct must have shape (n,) or (R, n) with n, R > 0, got {c.shape}")
    if not np.all(np.isfinite(c)) or c.min() < 0.0 or c.max() > 1.0:
        raise ValueError("correct must hold values in [0, 1]")
    return c


def _draw_clips(
    table: np.ndarray, sizes: np.ndarray, groups: list, rng: np.random.Generator, b: int,
    resample_clips: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """The two bootstrap stages: (B, K, m_max) drawn clip ids and the mask of real entries."""
    # Stage 1: clusters with replacement, within each stratum -> (B, K) drawn cluster ids.
    drawn = np.concatenate([g[rng.integers(0, g.size, size=(b, g.size))] for g in groups], axis=1)
    # Stage 2: each drawn cluster's clips with replacement -> (B, K, m_max) clip ids + mask.
    m = sizes[drawn][..., None]
    m_max = table.shape[1]
    if m_max == 1 or not resample_clips:
        clips = table[drawn]
    else:
        within = np.floor(rng.random((*drawn.shape, m_max)) * m).astype(np.int64)
        clips = table[drawn[..., None], within]
    return clips, np.arange(m_max) < m


def _clip_values(c: np.ndarray, clips: np.ndarray, rng: np.random.Generator, b: int) -> np.ndarray:
    """The 0/1 values of the drawn ``clips``, averaged over resampled runs when R > 1."""
    num_runs = c.shape[0]
    # Runs with replacement: per-clip mean over the drawn runs, (B, n) (or (n,) for one run).
    if num_runs > 1:
        picks = rng.integers(0, num_runs, (b, num_runs)) + num_runs * np.arange(b)[:, None]
        run_weights = np.bincount(picks.ravel(), minlength=b * num_runs).reshape(b, num_runs)
        run_weights = run_weights / num_runs
        per_clip = run_weights @ c  # (B, n)
        return np.take_along_axis(per_clip, clips.reshape(b, -1), axis=1).reshape(clips.shape)
    return c[0][clips]


def bootstrap_accuracy(
    correct: Any,
    speakers: Any = None,
    strata: Any = None,
    num_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    resample_clips: bool = True,
) -> dict[str, Any]:
    """Accuracy and its percentile bootstrap interval, clustered by speaker if ``speakers``.

    ``correct``: (n,) 0/1 per test utterance, or (R, n) for R runs on the same n utterances
    (``value`` is then the mean of the runs' accuracies and the runs are resampled too).
    ``speakers`` (n,): cluster ids for the two-stage bootstrap; ``strata`` (n,): a label
    constant per speaker (per clip without ``speakers``) whose counts every resample keeps.
    Returns ``{"value", "low", "high", "num_resamples"}`` (fractions in [0, 1]).

    Resampling at both stages counts the within-speaker variance twice, so the two-stage
    interval is conservative (up to sqrt(2) too wide when speakers do not differ at all);
    ``resample_clips=False`` keeps each drawn speaker's clips as they are (cluster bootstrap).
    """
    c = _checked_correct(correct)
    if num_resamples < 1:
        raise ValueError(f"num_resamples must be >= 1, got {num_resamples}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    table, sizes, groups = _cluster_table(speakers, strata, c.shape[1])
    rng = np.random.default_rng(seed)
    b = num_resamples
    clips, valid = _draw_clips(table, sizes, groups, rng, b, resample_clips)
    values = _clip_values(c, clips, rng, b)
    sums = np.where(valid, values, 0.0).reshape(b, -1).sum(axis=1)
    counts = valid.reshape(b, -1).sum(axis=1)
    accuracies = sums / counts

    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(accuracies, [alpha, 1.0 - alpha])
    return {
        "value": float(c.mean()),
        "low": float(np.clip(low, 0.0, 1.0)),
        "high": float(np.clip(high, 0.0, 1.0)),
        "num_resamples": int(num_resamples),
    }


def format_interval(d: Mapping[str, Any] | None, percent: bool = True) -> str:
    """``"82.5 [78.0, 86.8]"`` (percent, 1 decimal) or ``"0.825 [0.780, 0.868]"``; "-" if no
    value. Without ``low``/``high`` only the value is printed."""
    if d is None or d.get("value") is None:
        return "-"
    scale, digits = (100.0, 1) if percent else (1.0, 3)
    value = f"{float(d['value']) * scale:.{digits}f}"
    low, high = d.get("low"), d.get("high")
    if low is None or high is None:
        return value
    return f"{value} [{float(low) * scale:.{digits}f}, {float(high) * scale:.{digits}f}]"
