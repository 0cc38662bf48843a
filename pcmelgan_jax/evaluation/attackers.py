"""The gender and digit attackers, each scored per test utterance.

- ``fixed``: the classifiers trained on real speech (the original protocol's ignorant
  attacker): AlexNet on the spectrogram, AudioNet on the audio.
- ``informed``: the same architectures trained from scratch on the anonymiser's output for
  the training speakers with their true labels, selected on the validation speakers.
- ``linear``: a logistic regression on the normalised log-mel grid (80 x 32), trained the
  same way: cheap, and a floor for ``informed``.
- ``features``: a logistic regression on hand-made features (median F0, MFCC statistics),
  audio domain only.
- ``fresh``: the linear attacker trained on speakers the anonymiser never saw (the
  validation speakers' anonymised clips, its L2 strength chosen by speaker-disjoint
  cross-validation among them): an attacker who anonymises labelled recordings of their own.
  The attackers above train on the anonymiser's own training speakers, so an anonymiser
  fitted to those speakers (e.g. a linear eraser fitted on their outputs) can blind them
  without hiding anything from this one. Not part of ``strongest`` (fewer training speakers).
- ``strongest``: per domain and task, whichever learned attacker (informed, linear,
  features) did best on the validation speakers: the leak a careful attacker would report.

Every attacker returns ``{domain: {metric: Scores}}``: which test utterances it got right.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from pcmelgan_jax import audio as audio_lib
from pcmelgan_jax.evaluation.classifier import TrainSettings, predict, train_classifier
from pcmelgan_jax.evaluation.conditions import Outputs
from pcmelgan_jax.evaluation.data import SplitData, pad_rows, padded_batches

TASKS = {"digit": 10, "gender": 2}  # task -> number of classes
ATTACKERS = ("fixed", "informed", "linear", "features", "fresh")
CV_FOLDS = 2  # the fresh attacker's cross-validation folds


@dataclasses.dataclass(frozen=True)
class Scores:
    """Per-utterance correctness (N,) with the speakers and strata a bootstrap resamples."""

    correct: np.ndarray
    speakers: np.ndarray
    strata: np.ndarray
    validation: float | None = None  # a learned attacker's validation accuracy

    @property
    def accuracy(self) -> float:
        return float(np.mean(self.correct)) if len(self.correct) else float("nan")


def scores(pred: np.ndarray, labels: np.ndarray, split: SplitData,
           validation: float | None = None) -> Scores:
    """Scores of predictions on ``split``'s utterances (strata: the speakers' gender)."""
    return Scores((np.asarray(pred) == np.asarray(labels)).astype(np.int8), split.speaker,
                  split.gender, validation)


def fixed(models: Any, out: Outputs, test: SplitData, batch_size: int) -> dict:
    """The fixed classifiers on the test output; also the digit AudioNet's features (FID).

    Gender is scored against the original gender and, for PCMelGAN, against s'."""
    from pcmelgan_jax.evaluation.inference import audio_predict

    digit, features = [], []  # one digit AudioNet pass gives its predictions and features
    for _, rows, n in padded_batches(len(test), batch_size):
        p, f = audio_predict(*models.audio_digit, pad_rows(out.audio[rows], batch_size))
        digit.append(np.asarray(p)[:n])
        features.append(np.asarray(f)[:n])
    preds = {
        "spectrogram": {t: predict("alexnet", *getattr(models, f"spec_{t}"), out.spec,
                                   batch_size) for t in TASKS},
        "audio": {"digit": np.concatenate(digit),
                  "gender": predict("audionet", *models.audio_gender, out.audio, batch_size)},
    }
    result: dict[str, dict[str, Scores]] = {}
    for domain, by_task in preds.items():
        result[domain] = {f"{t}_acc": scores(by_task[t], getattr(test, t), test) for t in TASKS}
        if out.sampled_gender is not None:
            result[domain]["sampled_gender_acc"] = scores(by_task["gender"],
                                                          out.sampled_gender, test)
    return {"scores": result, "features": np.concatenate(features)}


def _settings(cfg: Mapping[str, Any], domain: str, task: str) -> TrainSettings:
    prefix = "spec" if domain == "spectrogram" else "audio"
    return TrainSettings(
        steps=int(cfg[f"{prefix}_steps"]), batch_size=int(cfg["batch_size"]),
        learning_rate=float(cfg["learning_rate"]),
        warmup_steps=int(cfg[f"{prefix}_warmup_steps"]), eval_every=int(cfg["eval_every"]),
        seed=int(cfg["seed"]) + (0 if task == "digit" else 1),
    )


def informed(outs: Mapping[str, Outputs], splits: Mapping[str, SplitData],
             cfg: Mapping[str, Any], batch_size: int) -> tuple[dict, dict]:
    """AlexNet / AudioNet trained from scratch on the anonymised training split, selected on
    the anonymised validation split, scored on the anonymised test split."""
    result: dict[str, dict[str, Scores]] = {"spectrogram": {}, "audio": {}}
    logs: dict[str, Any] = {}
    for domain, network, field, width in (("spectrogram", "alexnet", "spec", cfg["spec_width"]),
                                          ("audio", "audionet", "audio", cfg["audio_width"])):
        for task, classes in TASKS.items():
            data = {s: (getattr(outs[s], field), getattr(splits[s], task)) for s in outs}
            model, variables, log = train_classifier(
                network, classes, float(width), data["train"], _settings(cfg, domain, task),
                validation=data["validation"], eval_batch_size=batch_size)
            pred = predict(network, model, variables, data["test"][0], batch_size)
            result[domain][f"{task}_acc"] = scores(pred, getattr(splits["test"], task),
                                                   splits["test"], log["validation_accuracy"])
            logs[f"{domain}/{task}"] = {k: log[k] for k in ("best_step", "validation_accuracy")}
    return result, logs


def _flat(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, np.float32).reshape(len(x), -1)


def _logistic(features: Mapping[str, np.ndarray], splits: Mapping[str, SplitData],
              cfg: Mapping[str, Any]) -> dict[str, Scores]:
    from pcmelgan_jax.evaluation.linear import fit_logistic_regression

    out = {}
    for task, classes in TASKS.items():
        model = fit_logistic_regression(
            features["train"], getattr(splits["train"], task),
            features["validation"], getattr(splits["validation"], task), classes,
            l2_grid=tuple(cfg["l2_grid"]), max_iter=int(cfg["max_iter"]))
        out[f"{task}_acc"] = scores(model.predict(features["test"]),
                                    getattr(splits["test"], task), splits["test"],
                                    model.val_accuracy)
    return out


def linear(outs: Mapping[str, Outputs], splits: Mapping[str, SplitData],
           cfg: Mapping[str, Any]) -> dict:
    """Logistic regression on the log-mel grid: the spectrogram output, and the log-mel of
    the audio output (the same grid for waveform anonymisers, fitted once)."""
    spec = _logistic({s: _flat(o.spec) for s, o in outs.items()}, splits, cfg)
    same = all(o.audio_x is o.spec for o in outs.values())
    audio = spec if same else _logistic({s: _flat(o.audio_x) for s, o in outs.items()},
                                        splits, cfg)
    return {"spectrogram": spec, "audio": audio}


def features(outs: Mapping[str, Outputs], splits: Mapping[str, SplitData],
             cfg: Mapping[str, Any]) -> dict:
    """Logistic regression on median F0 and MFCC statistics of the audio output."""
    from pcmelgan_jax.evaluation.acoustic import acoustic_features

    feats = {s: acoustic_features(o.audio, audio_lib.SAMPLE_RATE) for s, o in outs.items()}
    return {"audio": _logistic(feats, splits, cfg)}


def speaker_folds(split: SplitData, num_folds: int = CV_FOLDS) -> tuple[np.ndarray, str]:
    """A fold index per utterance and how the folds were made: each gender's speakers dealt
    to the folds in turn (``"speakers"``: every fold holds both genders); when a gender has
    fewer speakers than folds, the repetitions (``"repetitions"``: speakers shared), or, with
    a single repetition, alternate utterances (``"utterances"``)."""
    folds = np.zeros(len(split), np.int32)
    by_gender = [sorted(set(split.speaker[split.gender == g].tolist())) for g in (0, 1)]
    if min(len(s) for s in by_gender) >= num_folds:
        for speakers in by_gender:
            for k, s in enumerate(speakers):
                folds[split.speaker == s] = k % num_folds
        return folds, "speakers"
    if len(split) < num_folds:
        raise ValueError(f"{split.name}: {len(split)} utterances for {num_folds} folds")
    if len(set(split.repetition.tolist())) >= num_folds:
        return (split.repetition % num_folds).astype(np.int32), "repetitions"
    return (np.arange(len(split)) % num_folds).astype(np.int32), "utterances"


def fit_cross_validated(x: np.ndarray, y: np.ndarray, folds: np.ndarray, num_classes: int,
                        l2_grid: Any, max_iter: int) -> tuple[Any, float]:
    """Logistic regression on all of (x, y) at the L2 strength with the best pooled
    accuracy over the held-out folds (ties: the stronger). Returns (model, that accuracy)."""
    from pcmelgan_jax.evaluation.linear import fit_logistic_regression

    grid = sorted(float(v) for v in l2_grid)
    correct = np.zeros(len(grid))
    for f in np.unique(folds):
        held = folds == f
        model = fit_logistic_regression(x[~held], y[~held], x[held], y[held], num_classes,
                                        l2_grid=grid, max_iter=max_iter)
        correct += [acc * held.sum() for _, acc in model.grid_val_accuracy]
    best = int(np.flatnonzero(correct >= correct.max() - 1e-9).max())
    model = fit_logistic_regression(x, y, x, y, num_classes, l2_grid=(grid[best],),
                                    max_iter=max_iter)
    return model, float(correct[best] / len(y))


def fresh(outs: Mapping[str, Outputs], splits: Mapping[str, SplitData],
          cfg: Mapping[str, Any]) -> tuple[dict, dict]:
    """The linear attacker trained on the validation speakers (see the module docstring),
    scored on the test speakers, in both domains. Returns (scores, logs)."""
    val, test = splits["validation"], splits["test"]
    folds, kind = speaker_folds(val)
    result: dict[str, dict[str, Scores]] = {}
    logs: dict[str, Any] = {"folds": kind}
    for domain, field in (("spectrogram", "spec"), ("audio", "audio_x")):
        result[domain] = {}
        x_val, x_test = (_flat(getattr(outs[s], field)) for s in ("validation", "test"))
        for task, classes in TASKS.items():
            model, cv_accuracy = fit_cross_validated(
                x_val, getattr(val, task), folds, classes, cfg["l2_grid"], int(cfg["max_iter"]))
            result[domain][f"{task}_acc"] = scores(
                model.predict(x_test), getattr(test, task), test, cv_accuracy)
            logs[f"{domain}/{task}"] = {"l2": model.l2, "cv_accuracy": cv_accuracy}
    return result, logs


def strongest(tree: Mapping[str, Any]) -> tuple[dict, dict]:
    """Per domain and task, the learned attacker with the best validation accuracy (the
    first of equals in informed, linear, features order): (its scores, its names)."""
    best: dict[str, dict[str, Scores]] = {}
    names: dict[str, dict[str, str]] = {}
    for attacker in ("informed", "linear", "features"):
        for domain, values in tree.get(attacker, {}).items():
            for metric, s in values.items():
                held = best.get(domain, {}).get(metric)
                if s.validation is not None and (held is None or s.validation > held.validation):
                    best.setdefault(domain, {})[metric] = s
                    names.setdefault(domain, {})[metric] = attacker
    return best, names
