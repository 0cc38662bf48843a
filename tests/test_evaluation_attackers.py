"""The attackers against anonymisers whose answer is known, on synthetic speakers whose
gender is their pitch and whose digit is a spectral band: one that replaces every clip by
noise (informed gender ~0.5, digit ~0.1), the identity (informed ~ fixed ~ 1), one that
swaps the genders deterministically (fixed ~0, informed ~1); the fresh-speaker attacker and
the linear eraser; and the speaker EER."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pcmelgan_jax.audio import SAMPLE_RATE, SEGMENT_LENGTH
from pcmelgan_jax.evaluation import conditions, protocol, speaker
from pcmelgan_jax.evaluation.classifier import TrainSettings, train_classifier
from pcmelgan_jax.evaluation.data import SplitData, log_mels
from pcmelgan_jax.evaluation.report import summarize_trees

BATCH = 16
SPEAKERS = {"train": (3, 3), "validation": (2, 2), "test": (2, 2)}  # (female, male)
REPS = 2


def _clip(f0: float, digit: int, rng: np.random.Generator) -> np.ndarray:
    """A voiced tone at ``f0`` (harmonics) plus a band at 900 + 250 * digit Hz."""
    t = np.arange(SEGMENT_LENGTH) / SAMPLE_RATE
    voice = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6))
    band = 0.8 * np.sin(2 * np.pi * (900 + 250 * digit) * t + rng.uniform(0, 2 * np.pi))
    envelope = np.clip(np.sin(np.pi * t / t[-1]), 0, None) ** 0.5
    clip = envelope * (voice + band) + 0.02 * rng.standard_normal(t.size)
    return (clip / np.abs(clip).max()).astype(np.float32)


def _split(name: str, first_id: int, rng: np.random.Generator) -> SplitData:
    rows = []
    females, males = SPEAKERS[name]
    for k, gender in enumerate([0] * females + [1] * males):
        f0 = (210 + 12 * k) if gender == 0 else (105 + 6 * k)
        rows += [(first_id + k, gender, d, r, _clip(f0, d, rng))
                 for d in range(10) for r in range(REPS)]
    clips = np.stack([r[4] for r in rows])
    x, mean, std = log_mels(clips, BATCH)

    def col(i):
        return np.asarray([r[i] for r in rows], np.int32)

    return SplitData(name, clips, x, mean, std, col(2), col(1), col(0), col(3))


def make_world():
    """Synthetic splits, fixed classifiers trained on them, and a small attack config."""
    rng = np.random.default_rng(0)
    splits = {"train": _split("train", 10, rng), "validation": _split("validation", 20, rng),
              "test": _split("test", 30, rng)}
    fast = TrainSettings(steps=60, batch_size=BATCH, learning_rate=1e-3, warmup_steps=20)
    fixed = {}
    for task, classes in (("digit", 10), ("gender", 2)):
        for field, network in (("spec", "alexnet"), ("audio", "audionet")):
            data = (splits["train"].x if field == "spec" else splits["train"].clips,
                    getattr(splits["train"], task))
            model, variables, _ = train_classifier(network, classes, 0.25, data, fast)
            fixed[f"{field}_{task}"] = (model, variables)
    models = protocol.ModelSet(vocoder=None, **fixed)
    spk_cfg = {"steps": 60, "batch_size": BATCH, "learning_rate": 1e-3, "seed": 0,
               "width": 0.25, "holdout_fraction": 0.5}
    spk_model, spk_vars, _ = train_classifier(
        "alexnet", 6, 0.25, (splits["train"].x, speaker.speaker_labels(splits["train"])[1]),
        TrainSettings(steps=60, batch_size=BATCH, learning_rate=1e-3))
    ctx = protocol.Context(("", "", "", ""), models, splits, (spk_model, spk_vars), {})
    cfg = {"batch_size": BATCH,
           "attackers": ("fixed", "informed", "linear", "features", "fresh", "speaker"),
           "informed": {"spec_width": 0.25, "audio_width": 0.25, "spec_steps": 60,
                        "audio_steps": 40, "spec_warmup_steps": 20, "audio_warmup_steps": 20,
                        "batch_size": BATCH, "learning_rate": 1e-3, "eval_every": 20,
                        "seed": 0},
           "linear": {"l2_grid": (1e-3, 1e-1), "max_iter": 100}, "speaker": spk_cfg}
    return ctx, cfg


@pytest.fixture(scope="module")
def world():
    return make_world()


def _noise(split: SplitData) -> np.ndarray:
    rng = np.random.default_rng([len(split), ("train", "validation", "test").index(split.name)])
    return rng.standard_normal(split.clips.shape).astype(np.float32) * 0.3


def _swap(split: SplitData) -> np.ndarray:
    """Each clip replaced by the same digit and repetition of the k-th speaker of the other
    gender (a fixed pairing of the speakers)."""
    by_gender = {g: sorted(set(split.speaker[split.gender == g].tolist())) for g in (0, 1)}
    partner = {}
    for g in (0, 1):
        for k, s in enumerate(by_gender[g]):
            others = by_gender[1 - g]
            partner[s] = others[k % len(others)]
    index = {(s, d, r): i for i, (s, d, r) in
             enumerate(zip(split.speaker, split.digit, split.repetition, strict=True))}
    return split.clips[[index[(partner[s], d, r)] for s, d, r in
                        zip(split.speaker, split.digit, split.repetition, strict=True)]]


def _attack(world, condition):
    ctx, cfg = world
    outs = {s: condition(ctx.splits[s]) for s in ctx.splits}
    tree, _, _ = protocol.attack(outs, ctx, cfg, "test")
    boot = {"num_resamples": 500, "level": 0.95, "seed": 0}
    return summarize_trees([tree], boot)


def _within(value, target):
    return value["low"] <= target <= value["high"]


# AudioNet does not learn the digit from raw audio in this budget: its digit is not asserted.
NEURAL = (("spectrogram", "gender_acc"), ("spectrogram", "digit_acc"), ("audio", "gender_acc"))


def test_identity_informed_matches_fixed_and_real(world):
    a = _attack(world, conditions.real)
    for domain, task in NEURAL:
        fixed, informed = a["fixed"][domain][task], a["informed"][domain][task]
        # 0.85, not 0.9: this world's small digit AlexNet lands near 0.9, and float rounding
        # that differs between CPUs moves it by a clip or two (docs/measurements.md)
        assert fixed["mean"] >= 0.85 and informed["mean"] >= 0.85, (domain, task)
        assert abs(informed["mean"] - fixed["mean"]) <= 0.1, (domain, task)
    for attacker, domain in (("linear", "spectrogram"), ("linear", "audio"),
                             ("features", "audio"), ("fresh", "spectrogram"),
                             ("fresh", "audio")):
        for task in ("gender_acc", "digit_acc"):
            assert a[attacker][domain][task]["mean"] >= 0.9, (attacker, domain, task)
    spk = a["speaker"]["spectrogram"]
    assert spk["eer_ignorant"]["mean"] < 0.25  # real speech: speakers are recognisable


def test_noise_leaves_nothing_to_learn(world):
    a = _attack(world, conditions.waveform_condition(_noise, BATCH))
    for attacker in ("informed", "linear", "features", "fresh"):
        for domain, values in a[attacker].items():
            assert _within(values["gender_acc"], 0.5), (attacker, domain, values)
            assert _within(values["digit_acc"], 0.1), (attacker, domain, values)
    spk = a["speaker"]["spectrogram"]
    assert spk["eer_informed"]["mean"] > 0.3


def test_gender_swap_fools_fixed_not_informed(world):
    a = _attack(world, conditions.waveform_condition(_swap, BATCH))
    for domain in ("spectrogram", "audio"):
        assert a["fixed"][domain]["gender_acc"]["mean"] <= 0.1, domain
        assert a["informed"][domain]["gender_acc"]["mean"] >= 0.9, domain
        assert a["linear"][domain]["gender_acc"]["mean"] >= 0.9, domain
        assert a["fresh"][domain]["gender_acc"]["mean"] >= 0.9, domain
    assert a["fixed"]["spectrogram"]["digit_acc"]["mean"] >= 0.85  # the digit is kept
    assert a["features"]["audio"]["gender_acc"]["mean"] >= 0.9
    spk = a["speaker"]["spectrogram"]  # the voices are other speakers' voices
    assert spk["eer_ignorant"]["mean"] > spk["eer_informed"]["mean"]


def test_linear_eraser_blinds_the_linear_attacker_to_real_speech(world):
    """Real speech with the gender erased linearly (fitted on the training speakers): the
    linear attacker, which learns from those speakers, is at chance; the digit stays."""
    from pcmelgan_jax.evaluation.erasure import fit_linear_eraser

    ctx, _ = world
    eraser = fit_linear_eraser(ctx.splits["train"].x, ctx.splits["train"].gender)

    def erased(split: SplitData) -> conditions.Outputs:
        x = eraser(split.x)
        return conditions.Outputs(x, split.clips, x)

    a = _attack(world, erased)
    assert _within(a["linear"]["spectrogram"]["gender_acc"], 0.5)
    assert a["linear"]["spectrogram"]["digit_acc"]["mean"] >= 0.9
    real = _attack(world, conditions.real)
    assert real["linear"]["spectrogram"]["gender_acc"]["mean"] >= 0.9


def test_speaker_folds_deal_each_gender_to_every_fold():
    from pcmelgan_jax.evaluation.attackers import speaker_folds

    rng = np.random.default_rng(2)
    split = _split("validation", 20, rng)  # 2 female, 2 male speakers
    folds, kind = speaker_folds(split)
    assert kind == "speakers"
    for f in (0, 1):
        held = split.subset(folds == f)
        assert sorted(set(held.gender.tolist())) == [0, 1]
        assert len(set(held.speaker.tolist())) == 2
        # a speaker's utterances never straddle folds
        assert not set(held.speaker.tolist()) & set(split.speaker[folds != f].tolist())
    one_each = split.subset(np.isin(split.speaker, [20, 22]))  # 1 female, 1 male
    folds, kind = speaker_folds(one_each)
    assert kind == "repetitions"
    np.testing.assert_array_equal(folds, one_each.repetition % 2)
    single = one_each.subset(one_each.repetition == 0)
    folds, kind = speaker_folds(single)
    assert kind == "utterances"
    np.testing.assert_array_equal(folds, np.arange(len(single)) % 2)
    with pytest.raises(ValueError, match="1 utterances for 2 folds"):
        speaker_folds(single.subset(np.arange(1)))


def test_cross_validated_fit_pools_the_held_out_folds():
    """The chosen strength's pooled accuracy is recomputed by hand from per-fold fits, and
    the final model is refitted on every row at that strength."""
    from pcmelgan_jax.evaluation.attackers import fit_cross_validated
    from pcmelgan_jax.evaluation.linear import fit_logistic_regression

    rng = np.random.default_rng(3)
    y = np.repeat([0, 1], 40)
    x = rng.normal(size=(80, 6)) + 0.6 * y[:, None] * np.array([1, 0, 0, 0, 0, 1])
    folds = np.tile([0, 1], 40)
    grid = (1e-3, 1.0, 30.0)
    model, cv = fit_cross_validated(x, y, folds, 2, grid, 200)
    by_hand = []
    for l2 in grid:
        correct = 0
        for f in (0, 1):
            m = fit_logistic_regression(x[folds != f], y[folds != f], x[folds == f],
                                        y[folds == f], 2, l2_grid=(l2,), max_iter=200)
            correct += (m.predict(x[folds == f]) == y[folds == f]).sum()
        by_hand.append(correct / len(y))
    best = max(i for i, v in enumerate(by_hand) if v == max(by_hand))
    assert model.l2 == grid[best] and cv == pytest.approx(by_hand[best])
    refit = fit_logistic_regression(x, y, x, y, 2, l2_grid=(grid[best],), max_iter=200)
    np.testing.assert_allclose(model.weights, refit.weights)


def test_equal_error_rate_hand_cases():
    assert speaker.equal_error_rate(np.array([0.9, 0.8]), np.array([0.1, 0.2])) == 0.0
    assert speaker.equal_error_rate(np.array([0.1, 0.2]), np.array([0.9, 0.8])) == 1.0
    # targets 0.9, 0.4; non-targets 0.5, 0.1: at threshold 0.5 one of two targets is
    # rejected and one of two non-targets accepted
    assert speaker.equal_error_rate(np.array([0.9, 0.4]), np.array([0.5, 0.1])) == 0.5
    rng = np.random.default_rng(0)
    same = rng.normal(size=20000)
    assert speaker.equal_error_rate(same, rng.normal(size=20000)) == pytest.approx(0.5, abs=0.02)


def test_subset_keeps_every_field():
    rng = np.random.default_rng(1)
    split = _split("test", 30, rng)
    half = split.subset(split.repetition < 1)
    assert len(half) == len(split) // 2
    for f in dataclasses.fields(split):
        if f.name != "name":
            assert len(getattr(half, f.name)) == len(half)


def test_strongest_is_chosen_on_validation_not_test():
    from pcmelgan_jax.evaluation.attackers import Scores, strongest

    def s(correct, validation):
        return Scores(np.asarray(correct, np.int8), np.arange(4), np.zeros(4), validation)

    tree = {"informed": {"audio": {"gender_acc": s((1, 1, 1, 1), 0.6)}},
            "linear": {"audio": {"gender_acc": s((0, 0, 1, 1), 0.8)}},
            "features": {"audio": {"gender_acc": s((1, 1, 1, 0), 0.8)}},
            "fixed": {"audio": {"gender_acc": s((1, 1, 1, 1), None)}}}
    best, names = strongest(tree)
    # the linear attacker validated best (ties go to the earlier one), whatever the test says
    assert names == {"audio": {"gender_acc": "linear"}}
    assert best["audio"]["gender_acc"].accuracy == 0.5
