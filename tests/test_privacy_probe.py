"""bench/privacy_probe.py: the validation-split probe's numbers."""

from __future__ import annotations

import numpy as np
import pytest

from bench import privacy_probe


def test_gender_gap_rms_by_hand():
    # male rows [1, 3], [3, 5] (mean [2, 4]); female [2, 0] (mean [2, 0]): gap [0, 4], RMS sqrt(8)
    x = np.array([[1.0, 3.0], [2.0, 0.0], [3.0, 5.0]])
    assert privacy_probe.gender_gap_rms(x, np.array([1, 0, 1])) == pytest.approx(np.sqrt(8))


def test_linear_accuracy_finds_a_linear_cue_and_nothing_in_noise():
    rng = np.random.default_rng(0)
    y_train, y_val = rng.integers(0, 2, 200), rng.integers(0, 2, 100)
    noise = lambda n: rng.standard_normal((n, 4, 3))
    cue = lambda x, y: x + 3.0 * y[:, None, None] * (np.arange(3) == 1)  # one column shifted
    got = privacy_probe.linear_accuracy(cue(noise(200), y_train), y_train,
                                        cue(noise(100), y_val), y_val, 2)
    assert got >= 0.95
    chance = privacy_probe.linear_accuracy(noise(200), y_train, noise(100), y_val, 2)
    assert 0.3 <= chance <= 0.7


def test_markdown_has_a_row_per_output():
    table = privacy_probe.markdown({"run": {"filter": {"linear_gender": 0.5, "distortion": 0.1},
                                            "pcmelgan": {"fixed_sampled_gender": 0.9}}})
    lines = table.splitlines()
    assert len(lines) == 4 and lines[2].startswith("| run | filter | 0.500 |")
    assert "0.900" in lines[3] and lines[3].count("|") == lines[0].count("|")


def _speakers(rng, shift: float, speakers=(1, 2, 3, 4), name: str = "validation",
              speaker_offset: float = 0.0):
    """40 utterances per speaker (odd ids male); male features shifted by ``shift`` in one
    column, every speaker's by its own random offset of scale ``speaker_offset``."""
    from pcmelgan_jax.evaluation.data import SplitData

    speaker = np.repeat(speakers, 40)
    gender = (speaker % 2).astype(np.int32)
    x = rng.standard_normal((len(speaker), 4, 3)) + shift * gender[:, None, None] * (
        np.arange(3) == 1)
    x += speaker_offset * rng.standard_normal((max(speakers) + 1, 4, 3))[speaker]
    zeros = np.zeros(len(speaker), np.int32)
    return x, SplitData(name, zeros, x, zeros, zeros, zeros, gender, speaker,
                        np.tile(np.arange(40), len(speakers)))


def test_fresh_accuracy_learns_across_speakers_and_not_from_noise():
    rng = np.random.default_rng(1)
    x, val = _speakers(rng, 3.0)
    assert privacy_probe.fresh_accuracy(x, val, val.gender, 2) >= 0.95
    x, val = _speakers(rng, 0.0)
    assert 0.35 <= privacy_probe.fresh_accuracy(x, val, val.gender, 2) <= 0.65


def test_cv_accuracy_pools_both_splits_and_keeps_speakers_apart():
    rng = np.random.default_rng(2)
    split = lambda shift, offset: (
        _speakers(rng, shift, (1, 2, 3, 4, 5, 6), "train", offset)
        + _speakers(rng, shift, (7, 8, 9, 10), "validation", offset))
    train_x, train, val_x, val = split(3.0, 0.0)
    assert privacy_probe.cv_accuracy(train_x, val_x, train, val) >= 0.95
    # each speaker's own offset identifies it: a model that saw a speaker's utterances would
    # name its gender, one scored on unseen speakers cannot (5 folds of 10 speakers)
    train_x, train, val_x, val = split(0.0, 3.0)
    assert 0.3 <= privacy_probe.cv_accuracy(train_x, val_x, train, val) <= 0.7


def test_joined_splits_keep_order_and_fields():
    rng = np.random.default_rng(3)
    (_, a), (_, b) = _speakers(rng, 0.0, (1, 2)), _speakers(rng, 0.0, (3,))
    both = type(a).joined("both", (a, b))
    assert both.name == "both" and len(both) == 120
    np.testing.assert_array_equal(both.speaker, np.repeat([1, 2, 3], 40))
    np.testing.assert_array_equal(both.x, np.concatenate([a.x, b.x]))
