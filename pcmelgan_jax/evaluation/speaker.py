"""Speaker attackers: re-identification and verification.

- Re-identification: an AlexNet speaker classifier over the training speakers, trained on
  their non-held-out repetitions and scored on the held-out ones (``heldout_repetitions``).
  Ignorant: trained on real speech (cached in ``OUT/speaker_classifier/``); informed:
  retrained on the anonymiser's output.
- Verification on the unseen test speakers: cosine scores between the classifier's
  penultimate-layer embeddings, reported as the equal error rate (EER; 0.5 = no
  information). Ignorant: the real-speech classifier, real enrolment against anonymised
  trials; informed: the retrained classifier, anonymised against anonymised.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pcmelgan_jax.evaluation.attackers import Scores, scores
from pcmelgan_jax.evaluation.classifier import TrainSettings, predict, train_classifier
from pcmelgan_jax.evaluation.data import SplitData, heldout_mask, pad_rows, padded_batches
from pcmelgan_jax.runtime import compilation


def _settings(cfg: Mapping[str, Any]) -> TrainSettings:
    return TrainSettings(steps=int(cfg["steps"]), batch_size=int(cfg["batch_size"]),
                         learning_rate=float(cfg["learning_rate"]), seed=int(cfg["seed"]))


def speaker_labels(split: SplitData) -> tuple[list[int], np.ndarray]:
    """(class index -> speaker id, class index of every utterance)."""
    speakers = sorted(int(s) for s in np.unique(split.speaker))
    index = {s: i for i, s in enumerate(speakers)}
    return speakers, np.asarray([index[int(s)] for s in split.speaker], np.int32)


def fingerprint(split: SplitData, fraction: float, data_dir: str, dataset: str) -> str:
    blob = json.dumps({"data_dir": os.path.abspath(data_dir), "dataset": dataset,
                       "speakers": speaker_labels(split)[0], "n": len(split),
                       "held": np.flatnonzero(heldout_mask(split, fraction)).tolist()},
                      sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def ignorant_classifier(train: SplitData, cfg: Mapping[str, Any], cache_dir: str,
                        data_id: str) -> tuple[tuple, dict]:
    """The real-speech speaker classifier, reused from ``cache_dir`` while its data
    fingerprint and settings match (and ``cfg['retrain']`` is false)."""
    from pcmelgan_jax.checkpointing import load_model, read_model_info, save_model

    fraction = float(cfg["holdout_fraction"])
    wanted = {"fingerprint": data_id, "width": float(cfg.get("width", 1.0)),
              "holdout_fraction": fraction,
              **dataclasses.asdict(_settings(cfg))}
    if os.path.isdir(cache_dir) and not cfg.get("retrain", False):
        try:
            info = read_model_info(cache_dir)
            if info.get("speaker_classifier", {}).get("settings") == wanted:
                module, variables = load_model(cache_dir)
                return (module, jax.tree.map(jnp.asarray, variables)), {
                    **info["speaker_classifier"], "reused": True}
        except (OSError, ValueError, KeyError):
            pass  # unreadable cache: retrain below
    speakers, labels = speaker_labels(train)
    keep = ~heldout_mask(train, fraction)
    module, variables, log = train_classifier(
        "alexnet", len(speakers), wanted["width"], (train.x[keep], labels[keep]),
        _settings(cfg))
    extra = {"speaker_classifier": {"settings": wanted, "speakers": speakers, "log": log}}
    save_model(cache_dir, "alexnet", variables,
               arch={"num_classes": len(speakers), "width": wanted["width"]}, extra=extra,
               overwrite=True)
    return (module, variables), {**extra["speaker_classifier"], "reused": False}


@functools.partial(compilation.jit, kind="inference", static_argnums=0)
def _embed(model, variables, x: jax.Array) -> jax.Array:
    _, state = model.apply(variables, x[..., None], mutable=["intermediates"],
                           capture_intermediates=lambda mdl, _: mdl.name == "fc2")
    return jax.nn.relu(state["intermediates"]["fc2"]["__call__"][0])


def embeddings(classifier: tuple, x: np.ndarray, batch_size: int) -> np.ndarray:
    """Unit-norm penultimate-layer embeddings (N, hidden) of log-mels (N, 80, 32)."""
    out = []
    for _, rows, n in padded_batches(len(x), batch_size):
        out.append(np.asarray(_embed(*classifier, pad_rows(x[rows], batch_size)))[:n])
    e = np.concatenate(out).astype(np.float64)
    return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)


def equal_error_rate(target: np.ndarray, nontarget: np.ndarray) -> float:
    """The rate at which false acceptances equal false rejections, for scores of same-speaker
    (``target``) and different-speaker (``nontarget``) trials; higher score = same."""
    target, nontarget = np.sort(target), np.sort(nontarget)
    if not len(target) or not len(nontarget):
        return float("nan")
    thresholds = np.concatenate([target, nontarget, [np.inf]])
    thresholds.sort()
    frr = np.searchsorted(target, thresholds, side="left") / len(target)
    far = 1.0 - np.searchsorted(nontarget, thresholds, side="left") / len(nontarget)
    i = int(np.argmin(np.abs(far - frr)))
    return float((far[i] + frr[i]) / 2)


def verification_eer(enrol: np.ndarray, trial: np.ndarray, speakers: np.ndarray) -> float:
    """EER over every pair of distinct utterances (enrolment i, trial j), i != j."""
    score = enrol @ trial.T
    same = speakers[:, None] == speakers[None, :]
    off = ~np.eye(len(speakers), dtype=bool)
    return equal_error_rate(score[same & off], score[~same & off])


def speaker_attack(
    real_train: SplitData, real_test: SplitData, anon_train: np.ndarray,
    anon_test: np.ndarray, ignorant: tuple, cfg: Mapping[str, Any], batch_size: int,
) -> dict[str, Any]:
    """Re-identification accuracy (``Scores`` on the held-out repetitions) and verification
    EER, ignorant and informed, of spectrograms ``anon_train`` / ``anon_test`` (N, 80, 32)."""
    fraction = float(cfg["holdout_fraction"])
    held = heldout_mask(real_train, fraction)
    speakers, labels = speaker_labels(real_train)
    heldout = real_train.subset(held)
    module, variables, _ = train_classifier(
        "alexnet", len(speakers), float(cfg.get("width", 1.0)),
        (anon_train[~held], labels[~held]), _settings(cfg))
    informed = (module, variables)

    def reid(classifier: tuple) -> Scores:
        return scores(predict("alexnet", *classifier, anon_train[held], batch_size),
                      labels[held], heldout)

    test_real = embeddings(ignorant, real_test.x, batch_size)
    test_anon = embeddings(ignorant, anon_test, batch_size)
    test_informed = embeddings(informed, anon_test, batch_size)
    return {
        "reid_ignorant_acc": reid(ignorant),
        "reid_informed_acc": reid(informed),
        "eer_ignorant": verification_eer(test_real, test_anon, real_test.speaker),
        "eer_informed": verification_eer(test_informed, test_informed, real_test.speaker),
    }
