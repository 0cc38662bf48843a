"""Bootstrap accuracy intervals: binomial agreement, clustering, strata, runs, edge cases."""

import numpy as np
import pytest

from pcmelgan_jax.evaluation.intervals import bootstrap_accuracy, format_interval


def _width(d):
    return d["high"] - d["low"]


def test_iid_matches_binomial_normal_interval():
    correct = np.zeros(400)
    correct[:300] = 1
    d = bootstrap_accuracy(correct, num_resamples=4000, seed=1)
    p, n = 0.75, 400
    half = 1.96 * np.sqrt(p * (1 - p) / n)
    assert d["value"] == pytest.approx(0.75)
    assert abs(d["low"] - (p - half)) < 0.01
    assert abs(d["high"] - (p + half)) < 0.01
    assert d["num_resamples"] == 4000
    assert set(d) == {"value", "low", "high", "num_resamples"}


def test_speaker_clustering_widens_interval_when_speakers_differ():
    speakers = np.repeat(np.arange(4), 50)
    rates = [1.0, 1.0, 0.2, 0.2]
    correct = np.concatenate([np.arange(50) < 50 * r for r in rates]).astype(float)
    clip_only = bootstrap_accuracy(correct, seed=0)
    clustered = bootstrap_accuracy(correct, speakers=speakers, seed=0)
    assert clustered["value"] == clip_only["value"] == pytest.approx(0.6)
    assert _width(clustered) > 2 * _width(clip_only)
    assert clustered["low"] <= 0.6 <= clustered["high"]


def test_speaker_clustering_matches_clip_bootstrap_when_speakers_agree():
    # Every speaker has 14 of 20 right: no between-speaker variance, so the two-stage interval
    # reduces to the clip one and the cluster-only one (speakers kept intact) to a point.
    speakers = np.repeat(np.arange(20), 20)
    correct = np.tile(np.arange(20) < 14, 20).astype(float)
    clip_only = bootstrap_accuracy(correct, num_resamples=4000, seed=0)
    clustered = bootstrap_accuracy(correct, speakers=speakers, num_resamples=4000, seed=0)
    assert _width(clustered) == pytest.approx(_width(clip_only), rel=0.15)
    intact = bootstrap_accuracy(correct, speakers=speakers, resample_clips=False, seed=0)
    assert intact["low"] == pytest.approx(0.7) and intact["high"] == pytest.approx(0.7)


def test_strata_keep_balance():
    # 2 speakers of stratum 0 (always right), 8 of stratum 1 (always wrong): with strata each
    # resample has exactly 2 stratum-0 speakers, so every resampled accuracy is 0.2.
    speakers = np.repeat(np.arange(10), 5)
    strata = (speakers >= 2).astype(int)
    correct = (strata == 0).astype(float)
    stratified = bootstrap_accuracy(correct, speakers=speakers, strata=strata, seed=3)
    assert stratified["low"] == pytest.approx(0.2) and stratified["high"] == pytest.approx(0.2)
    free = bootstrap_accuracy(correct, speakers=speakers, seed=3)
    assert _width(free) > 0.2  # unstratified resamples vary the number of stratum-0 speakers
    # Strata without speakers: a stratified clip bootstrap.
    clips = bootstrap_accuracy(correct, strata=strata, seed=3)
    assert clips["low"] == pytest.approx(0.2) and clips["high"] == pytest.approx(0.2)


def test_strata_must_be_constant_per_speaker():
    with pytest.raises(ValueError, match="constant"):
        bootstrap_accuracy(np.ones(4), speakers=[0, 0, 1, 1], strata=[0, 1, 1, 1])


def test_runs_resampling_widens_interval_when_runs_disagree():
    n = 400
    agree = np.tile((np.arange(n) < 300).astype(float), (4, 1))
    disagree = np.stack([(np.arange(n) < k).astype(float) for k in (200, 250, 350, 400)])
    d_agree = bootstrap_accuracy(agree, seed=0)
    d_disagree = bootstrap_accuracy(disagree, seed=0)
    assert d_agree["value"] == d_disagree["value"] == pytest.approx(0.75)
    assert _width(d_disagree) > 1.5 * _width(d_agree)
    # Identical runs give the single-run interval.
    single = bootstrap_accuracy(agree[0], seed=0)
    assert _width(d_agree) == pytest.approx(_width(single), abs=0.02)


def test_deterministic_for_a_seed():
    rng = np.random.default_rng(0)
    correct = rng.random((3, 120)) < 0.6
    speakers = np.repeat(np.arange(12), 10)
    a = bootstrap_accuracy(correct, speakers=speakers, seed=7)
    b = bootstrap_accuracy(correct, speakers=speakers, seed=7)
    c = bootstrap_accuracy(correct, speakers=speakers, seed=8)
    assert a == b
    assert a != c


def test_unequal_speaker_sizes():
    speakers = np.array([0] * 3 + [1] * 7 + [2] * 1 + [3] * 9)
    correct = np.array([1, 1, 1] + [0] * 7 + [1] + [1, 0] * 4 + [1], dtype=float)
    d = bootstrap_accuracy(correct, speakers=speakers, seed=0)
    assert d["value"] == pytest.approx(correct.mean())
    assert 0.0 <= d["low"] <= d["value"] <= d["high"] <= 1.0


def test_edge_cases():
    d = bootstrap_accuracy(np.ones(50), speakers=np.repeat(np.arange(5), 10))
    assert (d["value"], d["low"], d["high"]) == (1.0, 1.0, 1.0)
    d = bootstrap_accuracy(np.zeros((3, 20)))
    assert (d["value"], d["low"], d["high"]) == (0.0, 0.0, 0.0)
    d = bootstrap_accuracy([1])
    assert (d["value"], d["low"], d["high"]) == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError):
        bootstrap_accuracy([])
    with pytest.raises(ValueError):
        bootstrap_accuracy([0, 2])
    with pytest.raises(ValueError):
        bootstrap_accuracy([0, 1], level=1.0)


def test_format_interval():
    d = {"value": 0.825, "low": 0.78, "high": 0.868, "num_resamples": 1000}
    assert format_interval(d) == "82.5 [78.0, 86.8]"
    assert format_interval(d, percent=False) == "0.825 [0.780, 0.868]"
    assert format_interval(None) == "-"
    assert format_interval({}) == "-"
    assert format_interval({"value": None}) == "-"
    assert format_interval({"value": 0.5}) == "50.0"
