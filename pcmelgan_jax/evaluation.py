"""The paper's evaluation protocol (SPEC section 8) plus speaker re-identification.

    run_evaluation(config, workdir)   # config: configs/eval.py's get_config(), fields filled

For every trained run (a PCMelGAN or Filter-only workdir holding ``models/filter`` and, for a
full run, ``models/generator``), over the test split: x1 = F(x, z1) and x2 = G(x1, z2, s') with
s' uniform in {0, 1}. Spectrogram domain: the fixed AlexNet digit and gender classifiers on
x1 and x2 (gender against the original gender, and on x2 against s'). Audio domain: the same
outputs de-normalised with the input utterance's mean and std, vocoded by the MelGAN
generator, and classified by the digit and gender AudioNets. FID between the digit AudioNet's
8192-d features of the real test audio and of vocoded x1, x2 and vocoded originals. Reference
rows: the classifiers on the untransformed and on the vocoded original test data.

Speaker re-identification (beyond the paper): an AlexNet speaker classifier trained on real
utterances of the TRAINING speakers with a deterministic per-speaker hold-out of repetitions;
its accuracy on the held-out utterances, real and transformed by F and G. It is cached as a
model checkpoint in ``OUT/speaker_classifier/`` and reused while its settings and data match.

Runs are grouped by ``eps`` (from each run's ``config.json``); mean and standard deviation are
taken over the runs of a group. Outputs in ``OUT`` (default ``WORKDIR/eval``):

- ``results.json``: ``groups`` (one entry per eps, see ``evaluate_group``), the top-level
  ``spectrogram`` / ``audio`` / ``fid`` entries of the first group in ascending eps (the only
  one for a single experiment) with its ``eps``, ``runs`` (per-run numbers) and ``config``;
  accuracies are fractions in [0, 1], each value ``{"mean", "std", "runs"}``.
- ``tables.md``: the paper's tables (rows eps; columns gender Filter, gender PCMelGAN, digit
  Filter, digit PCMelGAN; one per domain), reference rows, speaker and FID tables.
- ``privacy_utility.png``: x digit accuracy, y original-gender accuracy, Filter vs PCMelGAN.
- ``examples/<run>/``: wavs (original, vocoded original, filtered, generated; 8 kHz) and
  ``spectrograms.png`` for the first ``num_examples_to_save`` test utterances.

Deterministic for a seed: the noise and the sampled gender of batch i come from
``fold_in(key(seed), i)``, so every run of a group sees the same z and s'.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import hashlib
import json
import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pcmelgan_jax import audio as audio_lib
from pcmelgan_jax import compilation, metrics
from pcmelgan_jax.files import write_text_atomic

DEFAULT_DATASET = "audio_mnist/all"
SPEC_CLASSIFIERS = ("spec_digit", "spec_gender")
AUDIO_CLASSIFIERS = ("audio_digit", "audio_gender")


class EvaluationError(ValueError):
    """A run, workdir or model that cannot be evaluated; the message says what is missing."""


# --------------------------------------------------------------------------- runs and paths


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """One trained run: where its models are and what it was trained with."""

    path: str
    name: str
    eps: float | None
    seed: int | None
    filter_only: bool
    classifiers_workdir: str
    vocoder_workdir: str
    data_dir: str
    dataset: str


def is_run_dir(path: str | os.PathLike) -> bool:
    """True for a PCMelGAN / Filter-only workdir (it holds ``models/filter``)."""
    return os.path.isfile(os.path.join(os.fspath(path), "models", "filter", "model.json"))


def _split_runs(runs: str | Sequence[str] | None) -> list[str]:
    if runs is None:
        return []
    if isinstance(runs, str):
        return [r.strip() for r in runs.split(",") if r.strip()]
    return [os.fspath(r) for r in runs if os.fspath(r).strip()]


def _runs_below(folder: str) -> list[str]:
    """The runs one level below ``folder``, and two levels below through sub-folders that
    are not runs (a sweep's ``RUN/seed_<S>/`` exports of ``num_seeds`` runs)."""
    if not os.path.isdir(folder):
        return []
    found = []
    for d in sorted(os.listdir(folder)):
        sub = os.path.join(folder, d)
        if is_run_dir(sub):
            found.append(sub)
        elif os.path.isdir(sub):
            found += [os.path.join(sub, e) for e in sorted(os.listdir(sub))
                      if is_run_dir(os.path.join(sub, e))]
    return found


def find_runs(runs: str | Sequence[str] | None, workdir: str | os.PathLike) -> list[str]:
    """Run workdirs from ``runs`` (paths or globs, a list or a comma string; relative to the
    current directory, else to ``workdir``). A folder that is not a run but holds runs one
    level down (or two: a sweep of ``num_seeds`` runs) stands for them. Empty ``runs``:
    ``WORKDIR/pcmelgan`` if it exists (a quickstart workdir), else ``WORKDIR``. Returns
    sorted absolute paths without duplicates.
    """
    workdir = os.path.abspath(os.fspath(workdir))
    patterns = _split_runs(runs)
    if not patterns:
        quick = os.path.join(workdir, "pcmelgan")
        patterns = [quick if os.path.isdir(quick) else workdir]
    found: list[str] = []
    for pattern in patterns:
        matches = sorted(glob.glob(os.path.expanduser(pattern)))
        if not matches and not os.path.isabs(pattern):
            matches = sorted(glob.glob(os.path.join(workdir, pattern)))
        if not matches:
            raise EvaluationError(f"runs: {pattern!r} matches nothing")
        for match in matches:
            if is_run_dir(match):
                found.append(os.path.abspath(match))
                continue
            inner = _runs_below(match)
            if not inner:
                raise EvaluationError(
                    f"{match}: not a PCMelGAN run (no models/filter) and holds no runs"
                )
            found += [os.path.abspath(p) for p in inner]
    return sorted(dict.fromkeys(found))


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON file as a dict ({} when it does not exist)."""
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _existing(candidates: Iterable[str | None], base: str) -> str | None:
    """The first candidate that exists (relative ones tried as given, then below ``base``)."""
    for c in candidates:
        if not c:
            continue
        c = os.path.expanduser(os.fspath(c))
        for p in (c, os.path.join(base, c)):
            if os.path.exists(p):
                return os.path.abspath(p)
    return None


def resolve_run(
    path: str, workdir: str, config: Mapping[str, Any] | None = None
) -> RunInfo:
    """Reads a run's ``config.json`` and resolves its classifiers, vocoder and data.

    Precedence: a non-empty field of the evaluation ``config`` > the run's ``config.json`` >
    ``WORKDIR/classifiers`` / ``WORKDIR/vocoder`` / ``WORKDIR/data`` > siblings of the run.
    A run without ``config.json`` (e.g. imported PyTorch checkpoints) takes ``eps`` from the
    evaluation config (None if unset).
    """
    config = dict(config or {})
    run_cfg = read_json(os.path.join(path, "config.json"))
    workdir = os.path.abspath(workdir)
    parent = os.path.dirname(path)

    def pick(field: str, fallbacks: Sequence[str]) -> str | None:
        return _existing([config.get(field), run_cfg.get(field), *fallbacks], path)

    classifiers = pick(
        "classifiers_workdir",
        [os.path.join(workdir, "classifiers"), os.path.join(parent, "classifiers")],
    )
    vocoder = pick(
        "vocoder_workdir", [os.path.join(workdir, "vocoder"), os.path.join(parent, "vocoder")]
    )
    data_dir = pick("data_dir", [os.path.join(workdir, "data"), os.path.join(parent, "data")])
    if classifiers is None:
        raise EvaluationError(f"{path}: no classifiers workdir found (set classifiers_workdir)")
    if vocoder is None:
        raise EvaluationError(f"{path}: no vocoder workdir found (set vocoder_workdir)")
    if data_dir is None:
        raise EvaluationError(f"{path}: no TFDS data_dir found (set data_dir)")
    eps = run_cfg.get("eps", config.get("eps"))
    has_generator = os.path.isfile(os.path.join(path, "models", "generator", "model.json"))
    return RunInfo(
        path=path,
        name=os.path.basename(path.rstrip(os.sep)),
        eps=None if eps is None else float(eps),
        seed=run_cfg.get("seed"),
        filter_only=bool(run_cfg.get("filter_only", False)) or not has_generator,
        classifiers_workdir=classifiers,
        vocoder_workdir=vocoder,
        data_dir=data_dir,
        dataset=config.get("dataset") or run_cfg.get("dataset") or DEFAULT_DATASET,
    )


def model_dir(workdir: str, name: str) -> str:
    """``WORKDIR/models/NAME`` (the stage workdir convention)."""
    return os.path.join(workdir, "models", name)


@functools.lru_cache(maxsize=32)
def _load_model_cached(directory: str, stamp: int):
    del stamp  # part of the cache key: a re-saved checkpoint is loaded again
    from pcmelgan_jax.checkpointing import load_model, read_model_info

    if not os.path.isdir(directory):
        raise EvaluationError(f"{directory}: missing model checkpoint")
    info = read_model_info(directory)
    module, variables = load_model(directory)
    return info, module, jax.tree.map(jnp.asarray, variables)


def load_checked(directory: str, network: str | Sequence[str]) -> tuple[Any, dict]:
    """(module, variables) of a model checkpoint, checking that it holds ``network``."""
    directory = os.path.abspath(directory)
    try:
        stamp = os.stat(os.path.join(directory, "model.json")).st_mtime_ns
    except OSError:
        stamp = 0
    info, module, variables = _load_model_cached(directory, stamp)
    allowed = (network,) if isinstance(network, str) else tuple(network)
    if info["network"] not in allowed:
        raise EvaluationError(
            f"{directory}: holds a {info['network']}, expected {' or '.join(allowed)}"
        )
    return module, variables


# --------------------------------------------------------------------------- jitted pieces


_mel_features_jit = compilation.jit(audio_lib.mel_features, "inference")


def mel_features(audio: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Jitted ``audio.mel_features``: (B, 8192) -> normalised (B, 80, 32), mean (B,), std (B,)."""
    return _mel_features_jit(audio)


@functools.partial(compilation.jit, kind="inference", static_argnums=0)
def unet_apply(model, variables, x: jax.Array, z: jax.Array, cond: jax.Array | None):
    """F or G in evaluation mode: (B, 80, 32), (B, noise_dim), (B,) or None -> (B, 80, 32)."""
    return model.apply(variables, x[..., None], z, cond, train=False)[..., 0]


@functools.partial(compilation.jit, kind="inference", static_argnums=0)
def spec_predict(model, variables, x: jax.Array) -> jax.Array:
    """AlexNet class predictions of normalised log-mels (B, 80, 32) -> (B,) int32."""
    return jnp.argmax(model.apply(variables, x[..., None]), axis=-1).astype(jnp.int32)


@functools.partial(compilation.jit, kind="inference", static_argnums=0)
def audio_predict(model, variables, audio: jax.Array) -> tuple[jax.Array, jax.Array]:
    """AudioNet: (B, 8192) -> predictions (B,) int32 and features (B, 8192) float32."""
    logits, features = model.apply(variables, audio)
    return (
        jnp.argmax(logits, axis=-1).astype(jnp.int32),
        features.reshape(features.shape[0], -1),
    )


@functools.partial(compilation.jit, kind="inference", static_argnums=0)
def vocode(model, variables, x: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
    """De-normalise (B, 80, 32) with the input's mean/std (B,) and vocode -> (B, 8192)."""
    return model.apply(variables, audio_lib.denormalize(x, mean, std))


def batch_noise(
    seed: int, index: int, batch_size: int, noise_dim: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """z1, z2 (B, noise_dim) standard normal and s' (B,) in {0, 1} for batch ``index``."""
    key = jax.random.fold_in(jax.random.key(seed), index)
    k1, k2, k3 = jax.random.split(key, 3)
    return (
        np.asarray(jax.random.normal(k1, (batch_size, noise_dim))),
        np.asarray(jax.random.normal(k2, (batch_size, noise_dim))),
        np.asarray(jax.random.randint(k3, (batch_size,), 0, 2), np.int32),
    )


# --------------------------------------------------------------------------- data


@functools.lru_cache(maxsize=4)
def load_test_batches(data_dir: str, dataset: str, batch_size: int) -> tuple[dict, ...]:
    """The whole test split as padded evaluation batches (see ``data.pipeline``)."""
    from pcmelgan_jax.data.pipeline import make_dataset

    it = make_dataset(data_dir, dataset, "test", batch_size=batch_size, seed=0, train=False)
    try:
        return tuple(dict(b) for b in it)
    finally:
        it.close()


@dataclasses.dataclass
class SpeakerData:
    """Training-split utterances split into speaker-classifier training and held-out parts."""

    speakers: list[int]  # class index -> speaker id
    train_x: np.ndarray  # (N, 80, 32) normalised log-mel
    train_y: np.ndarray  # (N,) class index
    heldout_x: np.ndarray  # (M, 80, 32)
    heldout_y: np.ndarray  # (M,)
    heldout_reps: dict[int, list[int]]  # speaker id -> held-out repetitions
    fingerprint: str


def heldout_repetitions(reps: Iterable[int], fraction: float) -> list[int]:
    """The repetitions of one speaker held out: the last max(1, round(fraction * n)) of the
    sorted distinct repetitions, none when the speaker has fewer than two."""
    distinct = sorted(set(int(r) for r in reps))
    if len(distinct) < 2 or fraction <= 0:
        return []
    k = min(len(distinct) - 1, max(1, int(round(fraction * len(distinct)))))
    return distinct[-k:]


def _features_in_batches(clips: np.ndarray, batch_size: int = 64) -> np.ndarray:
    out = []
    for start in range(0, len(clips), batch_size):
        chunk = clips[start : start + batch_size]
        n = len(chunk)
        padded = np.zeros((batch_size, chunk.shape[1]), np.float32)
        padded[:n] = chunk
        out.append(np.asarray(mel_features(padded)[0])[:n])
    return np.concatenate(out) if out else np.zeros((0, audio_lib.N_MELS, audio_lib.N_FRAMES))


@functools.lru_cache(maxsize=2)
def load_speaker_data(
    data_dir: str, dataset: str, holdout_fraction: float, batch_size: int = 64
) -> SpeakerData:
    """Real training-split utterances, per speaker split by repetition (``heldout_repetitions``).

    ``batch_size`` only sets the shape of the jitted log-mel computation."""
    from pcmelgan_jax.data.pipeline import load_source

    source = load_source(data_dir, dataset, "train")
    records = [source[i] for i in range(len(source))]
    if not records:
        raise EvaluationError(f"{dataset} in {data_dir}: the train split is empty")
    by_speaker: dict[int, list[int]] = {}
    for r in records:
        by_speaker.setdefault(int(r["speaker"]), []).append(int(r["repetition"]))
    speakers = sorted(by_speaker)
    held = {s: heldout_repetitions(by_speaker[s], holdout_fraction) for s in speakers}
    index = {s: i for i, s in enumerate(speakers)}
    clips, labels, is_held = [], [], []
    for r in records:
        spk = int(r["speaker"])
        audio = np.asarray(r["audio"], np.float32) / 32768.0
        clips.append(audio_lib.prepare_clip(audio))
        labels.append(index[spk])
        is_held.append(int(r["repetition"]) in held[spk])
    x = _features_in_batches(np.stack(clips), batch_size)
    y = np.asarray(labels, np.int32)
    mask = np.asarray(is_held, bool)
    if not mask.any():
        raise EvaluationError(
            f"{dataset} in {data_dir}: no speaker has two repetitions, nothing to hold out"
        )
    blob = json.dumps(
        {"data_dir": os.path.abspath(data_dir), "dataset": dataset, "speakers": speakers,
         "held": {str(k): v for k, v in held.items()}, "n": len(records)},
        sort_keys=True,
    ).encode()
    return SpeakerData(
        speakers=speakers,
        train_x=x[~mask], train_y=y[~mask],
        heldout_x=x[mask], heldout_y=y[mask],
        heldout_reps=held,
        fingerprint=hashlib.sha256(blob).hexdigest()[:16],
    )


# --------------------------------------------------------------------------- speaker classifier


def train_speaker_classifier(
    data: SpeakerData,
    steps: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    width: float = 1.0,
) -> tuple[Any, dict, dict]:
    """AlexNet (K = number of training speakers, ``width`` as ``AlexNet.width``) on the
    non-held-out real utterances.

    Adam (betas 0.5, 0.9), softmax cross-entropy, dropout on; ``steps`` updates on batches
    drawn from per-epoch permutations of ``numpy.random.default_rng(seed)``.
    Returns (module, variables, training log).
    """
    import optax

    from pcmelgan_jax.models import softmax_cross_entropy
    from pcmelgan_jax.models.registry import build_model, init_variables

    k = len(data.speakers)
    model = build_model("alexnet", num_classes=k, width=width)
    variables = init_variables("alexnet", jax.random.key(seed), num_classes=k, width=width)
    params = variables["params"]
    tx = optax.adam(learning_rate, b1=0.5, b2=0.9)
    opt_state = tx.init(params)

    @functools.partial(compilation.jit, kind="train")
    def step(params, opt_state, x, y, key):
        def loss_fn(p):
            logits = model.apply({"params": p}, x[..., None], train=True, rngs={"dropout": key})
            return softmax_cross_entropy(logits, y)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    n = len(data.train_y)
    batch_size = min(batch_size, n)
    rng = np.random.default_rng(seed)
    order = np.zeros(0, np.int64)
    losses = []
    key = jax.random.key(seed + 1)
    t0 = time.perf_counter()
    for i in range(steps):
        if order.size < batch_size:
            order = np.concatenate([order, rng.permutation(n)])
        idx, order = order[:batch_size], order[batch_size:]
        params, opt_state, loss = step(
            params, opt_state, data.train_x[idx], data.train_y[idx], jax.random.fold_in(key, i)
        )
        losses.append(float(loss))
    log = {
        "steps": steps, "batch_size": batch_size, "learning_rate": learning_rate, "seed": seed,
        "num_train": n, "num_heldout": int(len(data.heldout_y)), "num_speakers": k,
        "final_loss": losses[-1] if losses else None, "seconds": time.perf_counter() - t0,
    }
    return model, {"params": params}, log


def speaker_classifier(
    data: SpeakerData, cache_dir: str, settings: Mapping[str, Any]
) -> tuple[Any, dict, dict]:
    """The cached speaker classifier at ``cache_dir`` if its data fingerprint and training
    settings match (and ``settings['retrain']`` is false), else a freshly trained one, saved
    there. Returns (module, variables, info)."""
    from pcmelgan_jax.checkpointing import load_model, read_model_info, save_model

    wanted = {
        "fingerprint": data.fingerprint,
        "steps": int(settings["steps"]),
        "batch_size": int(settings["batch_size"]),
        "learning_rate": float(settings["learning_rate"]),
        "seed": int(settings["seed"]),
        "holdout_fraction": float(settings["holdout_fraction"]),
        "width": float(settings.get("width", 1.0)),
    }
    if os.path.isdir(cache_dir) and not settings.get("retrain", False):
        try:
            info = read_model_info(cache_dir)
            if info.get("speaker_classifier", {}).get("settings") == wanted:
                module, variables = load_model(cache_dir)
                return module, jax.tree.map(jnp.asarray, variables), {
                    **info["speaker_classifier"], "reused": True}
        except (OSError, ValueError, KeyError):
            pass  # unreadable cache: retrain below
    module, variables, log = train_speaker_classifier(
        data, wanted["steps"], wanted["batch_size"], wanted["learning_rate"], wanted["seed"],
        wanted["width"],
    )
    extra = {"speaker_classifier": {
        "settings": wanted, "speakers": data.speakers,
        "heldout_repetitions": {str(k): v for k, v in data.heldout_reps.items()}, "log": log,
    }}
    arch = {"num_classes": len(data.speakers), "width": wanted["width"]}
    save_model(cache_dir, "alexnet", variables, arch=arch, extra=extra, overwrite=True)
    return module, variables, {**extra["speaker_classifier"], "reused": False}


# --------------------------------------------------------------------------- per-run passes


@dataclasses.dataclass
class ModelSet:
    """The fixed models of one evaluation: classifiers and vocoder (module, variables) pairs."""

    spec_digit: tuple
    spec_gender: tuple
    audio_digit: tuple
    audio_gender: tuple
    vocoder: tuple

    @classmethod
    def load(cls, classifiers_workdir: str, vocoder_workdir: str) -> ModelSet:
        c = classifiers_workdir
        return cls(
            spec_digit=load_checked(model_dir(c, "spec_digit"), "alexnet"),
            spec_gender=load_checked(model_dir(c, "spec_gender"), "alexnet"),
            audio_digit=load_checked(model_dir(c, "audio_digit"), "audionet"),
            audio_gender=load_checked(model_dir(c, "audio_gender"), "audionet"),
            vocoder=load_checked(model_dir(vocoder_workdir, "generator"), "melgan_generator"),
        )


def _classify_both(models: ModelSet, x: jax.Array, audio: jax.Array):
    """(spec digit, spec gender, audio digit, audio gender predictions, digit features)."""
    sd = spec_predict(models.spec_digit[0], models.spec_digit[1], x)
    sg = spec_predict(models.spec_gender[0], models.spec_gender[1], x)
    ad, feats = audio_predict(models.audio_digit[0], models.audio_digit[1], audio)
    ag, _ = audio_predict(models.audio_gender[0], models.audio_gender[1], audio)
    return sd, sg, ad, ag, feats


def _masked(features: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return np.asarray(features)[np.asarray(mask) > 0]


def evaluate_reference(models: ModelSet, batches: Sequence[dict]) -> dict[str, Any]:
    """Classifiers on untransformed and vocoded original test data, and the vocoder's FID.

    Returns {"spectrogram": {"real", "vocoded_real"}, "audio": {"real", "vocoded_real"} each
    {"digit_acc", "gender_acc"}, "fid": {"vocoded_real"}, "features_real" (n, 8192)}.
    """
    acc = metrics.AccuracyCounter()
    real_feats, voc_feats = [], []
    for b in batches:
        audio, mask = jnp.asarray(b["audio"]), b["mask"]
        x, mean, std = mel_features(audio)
        sd, sg, ad, ag, f_real = _classify_both(models, x, audio)
        voc = vocode(*models.vocoder, x, mean, std)
        xv, _, _ = mel_features(voc)
        vsd, vsg, vad, vag, f_voc = _classify_both(models, xv, voc)
        for name, pred, label in [
            ("spectrogram/real/digit_acc", sd, b["digit"]),
            ("spectrogram/real/gender_acc", sg, b["gender"]),
            ("audio/real/digit_acc", ad, b["digit"]),
            ("audio/real/gender_acc", ag, b["gender"]),
            ("spectrogram/vocoded_real/digit_acc", vsd, b["digit"]),
            ("spectrogram/vocoded_real/gender_acc", vsg, b["gender"]),
            ("audio/vocoded_real/digit_acc", vad, b["digit"]),
            ("audio/vocoded_real/gender_acc", vag, b["gender"]),
        ]:
            acc.update(name, np.asarray(pred), label, mask)
        real_feats.append(_masked(f_real, mask))
        voc_feats.append(_masked(f_voc, mask))
    out = _nest(acc.result())
    features_real = np.concatenate(real_feats)
    out["fid"] = {"vocoded_real": metrics.fid(features_real, np.concatenate(voc_feats))}
    out["features_real"] = features_real
    return out


CHANCE_MARGIN = 0.05  # a fixed classifier within this of chance on real data is "at chance"
TASK_CLASSES = (("digit", 10), ("gender", 2))  # the fixed classifiers' tasks and class counts


def _at_chance(acc: float, classes: int) -> bool:
    """Accuracy within ``CHANCE_MARGIN`` of chance (1 / classes)."""
    return acc < 1.0 / classes + CHANCE_MARGIN


def reference_warnings(reference: Mapping[str, Any]) -> list[str]:
    """What makes numbers of ``evaluate_reference``'s result meaningless: a fixed classifier
    within ``CHANCE_MARGIN`` of chance (10 % digit, 50 % gender) on untransformed test data,
    whose accuracies then say nothing of the transformed data; digit AudioNet features that
    are constant over the real test audio (a dead network), which make every FID 0."""
    out = []
    for domain, net in (("spectrogram", "AlexNet"), ("audio", "AudioNet")):
        for task, classes in TASK_CLASSES:
            acc = reference[domain]["real"][f"{task}_acc"]
            if acc is not None and _at_chance(acc, classes):
                out.append(
                    f"the {domain} {task} classifier ({net}) is at chance on untransformed test "
                    f"data ({100 * acc:.1f} %, chance {100 / classes:.0f} %): its {domain}-domain "
                    f"{task} accuracies carry no information; retrain it"
                )
    features = np.asarray(reference["features_real"])
    if features.shape[0] > 1 and not np.any(np.ptp(features, axis=0) > 0):
        out.append("the digit AudioNet's features are the same for every real test clip: "
                   "every FID is 0 and carries no information")
    return out


def vocoder_warnings(reference: Mapping[str, Any]) -> list[str]:
    """An AudioNet that recognises the original test clips (above ``CHANCE_MARGIN`` of
    chance) but is within it of chance on their vocoded copies: the vocoder loses what that
    classifier needs, so the runs' audio-domain accuracies of that task measure the vocoder."""
    out = []
    for task, classes in TASK_CLASSES:
        real = reference["audio"]["real"][f"{task}_acc"]
        vocoded = reference["audio"]["vocoded_real"][f"{task}_acc"]
        if (real is not None and vocoded is not None and not _at_chance(real, classes)
                and _at_chance(vocoded, classes)):
            out.append(
                f"the {task} AudioNet recognises {100 * real:.1f} % of the original test clips "
                f"but {100 * vocoded:.1f} % of their vocoded copies (chance {100 / classes:.0f} "
                f"%): the vocoder loses the {task}, so the audio-domain {task} accuracies of "
                "Filter and PCMelGAN carry no information; train the vocoder longer"
            )
    return out


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        *parents, leaf = key.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def evaluate_run(
    run: RunInfo,
    models: ModelSet,
    batches: Sequence[dict],
    features_real: np.ndarray,
    seed: int,
    num_examples: int = 0,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """One run over the test batches. Returns (numbers, examples).

    numbers: {"spectrogram"/"audio": {"filter": {"digit_acc", "gender_acc"}, "pcmelgan":
    {..., "sampled_gender_acc"}}, "fid": {"filter", "pcmelgan"}} (no "pcmelgan" entries for a
    filter-only run). examples: the first ``num_examples`` masked-in utterances' ``x``, ``x1``
    [, ``x2``] (n, 80, 32) and ``audio``, ``vocoded``, ``audio_filter`` [, ``audio_pcmelgan``]
    (n, 8192).
    """
    filt = load_checked(model_dir(run.path, "filter"), "unet_filter")
    gen = None if run.filter_only else load_checked(
        model_dir(run.path, "generator"), "unet_generator")
    noise_dim = filt[0].noise_dim
    acc = metrics.AccuracyCounter()
    feats: dict[str, list] = {"filter": [], "pcmelgan": []}
    examples: dict[str, list] = {}
    for i, b in enumerate(batches):
        audio, mask = jnp.asarray(b["audio"]), b["mask"]
        z1, z2, s_new = batch_noise(seed, i, len(mask), noise_dim)
        x, mean, std = mel_features(audio)
        x1 = unet_apply(filt[0], filt[1], x, jnp.asarray(z1), None)
        a1 = vocode(*models.vocoder, x1, mean, std)
        sd, sg, ad, ag, f1 = _classify_both(models, x1, a1)
        for dom, d, g in (("spectrogram", sd, sg), ("audio", ad, ag)):
            acc.update(f"{dom}/filter/digit_acc", np.asarray(d), b["digit"], mask)
            acc.update(f"{dom}/filter/gender_acc", np.asarray(g), b["gender"], mask)
        feats["filter"].append(_masked(f1, mask))
        batch_examples = {"x": x, "x1": x1, "audio": audio, "audio_filter": a1}
        if gen is not None:
            x2 = unet_apply(gen[0], gen[1], x1, jnp.asarray(z2), jnp.asarray(s_new))
            a2 = vocode(*models.vocoder, x2, mean, std)
            sd, sg, ad, ag, f2 = _classify_both(models, x2, a2)
            for dom, d, g in (("spectrogram", sd, sg), ("audio", ad, ag)):
                acc.update(f"{dom}/pcmelgan/digit_acc", np.asarray(d), b["digit"], mask)
                acc.update(f"{dom}/pcmelgan/gender_acc", np.asarray(g), b["gender"], mask)
                acc.update(f"{dom}/pcmelgan/sampled_gender_acc", np.asarray(g), s_new, mask)
            feats["pcmelgan"].append(_masked(f2, mask))
            batch_examples.update(x2=x2, audio_pcmelgan=a2)
        have = len(examples.get("x", []))
        if have < num_examples:
            keep = np.flatnonzero(np.asarray(mask) > 0)[: num_examples - have]
            batch_examples["vocoded"] = vocode(*models.vocoder, x, mean, std)
            for k, v in batch_examples.items():
                examples.setdefault(k, []).extend(np.asarray(v)[keep])
    numbers = _nest(acc.result())
    numbers["fid"] = {
        k: metrics.fid(features_real, np.concatenate(v)) for k, v in feats.items() if v
    }
    return numbers, {k: np.stack(v) for k, v in examples.items()}


def speaker_accuracy(
    run: RunInfo, data: SpeakerData, classifier: tuple, seed: int, batch_size: int
) -> dict[str, float]:
    """Speaker classifier accuracy on the held-out utterances transformed by F (``filter``)
    and by G after F (``pcmelgan``, full runs only)."""
    filt = load_checked(model_dir(run.path, "filter"), "unet_filter")
    gen = None if run.filter_only else load_checked(
        model_dir(run.path, "generator"), "unet_generator")
    acc = metrics.AccuracyCounter()
    for i, (x, y, mask) in enumerate(_padded_batches(data.heldout_x, data.heldout_y, batch_size)):
        # batch indices after the test split's, so that the noise differs from the test pass
        z1, z2, s_new = batch_noise(seed, 1_000_000 + i, batch_size, filt[0].noise_dim)
        x1 = unet_apply(filt[0], filt[1], x, jnp.asarray(z1), None)
        acc.update("filter", np.asarray(spec_predict(*classifier, x1)), y, mask)
        if gen is not None:
            x2 = unet_apply(gen[0], gen[1], x1, jnp.asarray(z2), jnp.asarray(s_new))
            acc.update("pcmelgan", np.asarray(spec_predict(*classifier, x2)), y, mask)
    return acc.result()


def _padded_batches(x: np.ndarray, y: np.ndarray, batch_size: int):
    for start in range(0, len(y), batch_size):
        n = min(batch_size, len(y) - start)
        xb = np.zeros((batch_size, *x.shape[1:]), np.float32)
        yb = np.zeros(batch_size, np.int32)
        mb = np.zeros(batch_size, np.float32)
        xb[:n], yb[:n], mb[:n] = x[start : start + n], y[start : start + n], 1.0
        yield jnp.asarray(xb), yb, mb


def real_speaker_accuracy(data: SpeakerData, classifier: tuple, batch_size: int) -> float:
    """Speaker classifier accuracy on the untransformed held-out utterances."""
    acc = metrics.AccuracyCounter()
    for x, y, mask in _padded_batches(data.heldout_x, data.heldout_y, batch_size):
        acc.update("real", np.asarray(spec_predict(*classifier, x)), y, mask)
    return acc.result()["real"]


# --------------------------------------------------------------------------- aggregation


def eps_key(eps: float | None) -> str:
    """A group's key in results.json: the eps as written (``repr``), or "unknown"."""
    return "unknown" if eps is None else repr(float(eps))


def aggregate_group(per_run: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean and std over the runs of one eps group.

    ``per_run``: dicts with ``spectrogram`` / ``audio`` -> ``real`` / ``vocoded_real`` /
    ``filter`` / ``pcmelgan`` -> metric -> float, and ``fid`` -> name -> float (missing
    entries, e.g. ``pcmelgan`` of a filter-only run, are left out of that entry's runs).
    Returns the same tree with each number replaced by ``metrics.summarize`` of its runs.
    """
    entries = {
        "spectrogram": {
            "real": ("digit_acc", "gender_acc", "speaker_acc"),
            "vocoded_real": ("digit_acc", "gender_acc"),
            "filter": ("digit_acc", "gender_acc", "speaker_acc"),
            "pcmelgan": ("digit_acc", "gender_acc", "sampled_gender_acc", "speaker_acc"),
        },
        "audio": {
            "real": ("digit_acc", "gender_acc"),
            "vocoded_real": ("digit_acc", "gender_acc"),
            "filter": ("digit_acc", "gender_acc"),
            "pcmelgan": ("digit_acc", "gender_acc", "sampled_gender_acc"),
        },
    }
    out: dict[str, Any] = {}
    for domain, names in entries.items():
        out[domain] = {}
        for entry, keys in names.items():
            out[domain][entry] = {}
            for key in keys:
                values = [
                    r[domain][entry][key] for r in per_run
                    if key in r.get(domain, {}).get(entry, {})
                ]
                out[domain][entry][key] = metrics.summarize(values)
    out["fid"] = {
        name: metrics.summarize([r["fid"][name] for r in per_run if name in r.get("fid", {})])
        for name in ("filter", "pcmelgan", "vocoded_real")
    }
    return out


# --------------------------------------------------------------------------- reports


def _pct(value: Mapping[str, Any]) -> str:
    if value is None or value.get("mean") is None:
        return "-"
    mean, std = 100 * value["mean"], 100 * (value["std"] or 0.0)
    return f"{mean:.1f} ± {std:.1f}" if len(value["runs"]) > 1 else f"{mean:.1f}"


def _num(value: Mapping[str, Any]) -> str:
    if value is None or value.get("mean") is None:
        return "-"
    return (
        f"{value['mean']:.2f} ± {value['std']:.2f}" if len(value["runs"]) > 1
        else f"{value['mean']:.2f}"
    )


def markdown_tables(results: Mapping[str, Any]) -> str:
    """The paper's tables from ``results.json`` content (accuracies in %, mean ± std)."""
    groups = results["groups"]
    lines = ["# PCMelGAN evaluation", ""]
    runs_note = ", ".join(f"eps {g['eps_label']}: {g['num_runs']} run(s)" for g in groups)
    lines += [f"Runs: {runs_note}. Accuracies in %, mean ± std over runs; gender against the "
              "original gender (lower is more private, 50 is chance).", ""]
    lines += [f"**Warning:** {w}." for w in results.get("warnings", [])]
    if results.get("warnings"):
        lines.append("")
    titles = {"spectrogram": "Spectrogram-domain classifiers (AlexNet)",
              "audio": "Audio-domain classifiers (vocoded, AudioNet)"}
    for domain, title in titles.items():
        lines += [f"## {title}", "",
                  "| eps | gender Filter | gender PCMelGAN | digit Filter | digit PCMelGAN |",
                  "|---|---:|---:|---:|---:|"]
        for g in groups:
            d = g[domain]
            lines.append(
                f"| {g['eps_label']} | {_pct(d['filter']['gender_acc'])} "
                f"| {_pct(d['pcmelgan']['gender_acc'])} | {_pct(d['filter']['digit_acc'])} "
                f"| {_pct(d['pcmelgan']['digit_acc'])} |"
            )
        lines += ["", "Reference rows and the sampled gender (PCMelGAN output against s'):", "",
                  "| data | gender | digit |", "|---|---:|---:|"]
        ref = groups[0][domain]
        for name, label in (("real", "untransformed"), ("vocoded_real", "vocoded original")):
            lines.append(f"| {label} | {_pct(ref[name]['gender_acc'])} "
                         f"| {_pct(ref[name]['digit_acc'])} |")
        for g in groups:
            lines.append(f"| PCMelGAN eps {g['eps_label']}, sampled gender "
                         f"| {_pct(g[domain]['pcmelgan']['sampled_gender_acc'])} | |")
        lines.append("")
    lines += ["## Speaker re-identification (held-out utterances of training speakers)", "",
              "| eps | real | Filter | PCMelGAN |", "|---|---:|---:|---:|"]
    for g in groups:
        s = g["spectrogram"]
        lines.append(
            f"| {g['eps_label']} | {_pct(s['real']['speaker_acc'])} "
            f"| {_pct(s['filter']['speaker_acc'])} | {_pct(s['pcmelgan']['speaker_acc'])} |"
        )
    chance = results.get("speaker", {}).get("num_speakers")
    if chance:
        lines.append(f"\nChance: {100 / chance:.1f} % ({chance} speakers).")
    lines += ["", "## FID (digit AudioNet features, against real test audio)", "",
              "| eps | Filter | PCMelGAN |", "|---|---:|---:|"]
    for g in groups:
        lines.append(f"| {g['eps_label']} | {_num(g['fid']['filter'])} "
                     f"| {_num(g['fid']['pcmelgan'])} |")
    lines.append(f"| vocoded original | {_num(groups[0]['fid']['vocoded_real'])} | |")
    return "\n".join(lines) + "\n"


def plot_privacy_utility(results: Mapping[str, Any], path: str) -> None:
    """Scatter: x digit accuracy, y original-gender accuracy; Filter vs PCMelGAN; eps labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8))
    styles = {"filter": ("Filter", "o", "tab:blue"), "pcmelgan": ("PCMelGAN", "s", "tab:orange")}
    for ax, domain in zip(axes, ("spectrogram", "audio"), strict=True):
        for entry, (label, marker, color) in styles.items():
            first = True
            for g in results["groups"]:
                d = g[domain][entry]
                if d["digit_acc"]["mean"] is None:
                    continue
                x, y = d["digit_acc"]["mean"], d["gender_acc"]["mean"]
                ax.errorbar(x, y, xerr=d["digit_acc"]["std"], yerr=d["gender_acc"]["std"],
                            fmt=marker, color=color, capsize=3, label=label if first else None)
                ax.annotate(f"eps {g['eps_label']}", (x, y), textcoords="offset points",
                            xytext=(5, 5), fontsize=8, color=color)
                first = False
        ref = results["groups"][0][domain]
        for name, label, marker in (("real", "real", "*"), ("vocoded_real", "vocoded real", "^")):
            r = ref[name]
            if r["digit_acc"]["mean"] is not None:
                ax.plot(r["digit_acc"]["mean"], r["gender_acc"]["mean"], marker, color="gray",
                        markersize=10, label=label)
        ax.axhline(0.5, color="gray", lw=0.8, ls="--")
        ax.set(xlim=(0, 1.02), ylim=(0, 1.02), xlabel="digit accuracy (utility)",
               ylabel="gender accuracy vs original (privacy leak)",
               title=f"{domain} domain")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def save_examples(examples: Mapping[str, np.ndarray], directory: str) -> list[str]:
    """Writes example wavs (8 kHz) and a spectrogram panel PNG; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(directory, exist_ok=True)
    written = []
    n = len(examples.get("x", []))
    for i in range(n):
        for key, suffix in (("audio", "original"), ("vocoded", "vocoded"),
                            ("audio_filter", "filter"), ("audio_pcmelgan", "pcmelgan")):
            if key in examples:
                path = os.path.join(directory, f"{i:02d}_{suffix}.wav")
                audio_lib.write_audio(path, examples[key][i])
                written.append(path)
    if n:
        cols = [(k, t) for k, t in (("x", "original"), ("x1", "Filter"), ("x2", "PCMelGAN"))
                if k in examples]
        fig, axes = plt.subplots(n, len(cols), figsize=(3.2 * len(cols), 2.2 * n), squeeze=False)
        for i in range(n):
            for j, (k, title) in enumerate(cols):
                ax = axes[i, j]
                ax.imshow(examples[k][i], origin="lower", aspect="auto", vmin=-1, vmax=1,
                          cmap="magma")
                ax.set_xticks([])
                ax.set_yticks([])
                if i == 0:
                    ax.set_title(title)
        fig.tight_layout()
        path = os.path.join(directory, "spectrograms.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def _json_ready(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_ready(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


# --------------------------------------------------------------------------- entry point


def _config_dict(config: Any) -> dict[str, Any]:
    if hasattr(config, "to_dict"):
        return config.to_dict()
    return dict(config or {})


def run_evaluation(config: Any, workdir: str | os.PathLike) -> dict[str, Any]:
    """Evaluates the runs of ``config`` (see ``configs/eval.py``); writes ``OUT`` (default
    ``WORKDIR/eval``) and returns the content of ``results.json``."""
    t0 = time.perf_counter()
    cfg = _config_dict(config)
    workdir = os.path.abspath(os.fspath(workdir))
    out_dir = os.path.abspath(cfg.get("output_dir") or os.path.join(workdir, "eval"))
    seed = int(cfg.get("seed", 0))
    batch_size = int(cfg.get("batch_size", 50))
    num_examples = int(cfg.get("num_examples_to_save", 4))
    from pcmelgan_jax.training.configs import evaluation as default_config

    spk_cfg = dict(cfg.get("speaker") or {})
    spk_cfg.setdefault("seed", seed)
    spk_cfg = {**default_config().speaker.to_dict(), **spk_cfg}
    paths = find_runs(cfg.get("runs"), workdir)
    runs = [resolve_run(p, workdir, cfg) for p in paths]
    os.makedirs(out_dir, exist_ok=True)

    references: dict[tuple, dict] = {}
    speaker_sets: dict[tuple, tuple] = {}
    per_run: list[dict[str, Any]] = []
    speaker_info: dict[str, Any] = {}
    warnings: list[str] = []
    for idx, run in enumerate(runs):
        print(f"[eval] run {idx + 1}/{len(runs)}: {run.path} (eps {eps_key(run.eps)}"
              f"{', filter only' if run.filter_only else ''})", flush=True)
        batches = load_test_batches(run.data_dir, run.dataset, batch_size)
        models = ModelSet.load(run.classifiers_workdir, run.vocoder_workdir)
        ref_key = (run.classifiers_workdir, run.vocoder_workdir, run.data_dir, run.dataset)
        if ref_key not in references:
            references[ref_key] = evaluate_reference(models, batches)
            for source, check in ((run.classifiers_workdir, reference_warnings),
                                  (run.vocoder_workdir, vocoder_warnings)):
                for warning in check(references[ref_key]):
                    warning = f"{source}: {warning}"
                    print(f"[eval] WARNING: {warning}", flush=True)
                    warnings.append(warning)
        ref = references[ref_key]
        numbers, examples = evaluate_run(run, models, batches, ref["features_real"], seed,
                                         num_examples)
        spk_key = (run.data_dir, run.dataset)
        if spk_key not in speaker_sets:
            data = load_speaker_data(run.data_dir, run.dataset,
                                     float(spk_cfg.get("holdout_fraction", 0.2)), batch_size)
            cache = os.path.join(out_dir, "speaker_classifier")
            module, variables, info = speaker_classifier(data, cache, spk_cfg)
            classifier = (module, variables)
            real = real_speaker_accuracy(data, classifier, batch_size)
            speaker_sets[spk_key] = (data, classifier, real)
            speaker_info = {"num_speakers": len(data.speakers), "speakers": data.speakers,
                            "num_train": int(len(data.train_y)),
                            "num_heldout": int(len(data.heldout_y)),
                            "checkpoint": cache, "reused": info["reused"],
                            "log": info.get("log"), "heldout_accuracy": real}
        data, classifier, real_spk = speaker_sets[spk_key]
        spk = speaker_accuracy(run, data, classifier, seed, batch_size)
        entry: dict[str, Any] = {
            "spectrogram": {
                "real": {**ref["spectrogram"]["real"], "speaker_acc": real_spk},
                "vocoded_real": ref["spectrogram"]["vocoded_real"],
                "filter": {**numbers["spectrogram"]["filter"], "speaker_acc": spk["filter"]},
            },
            "audio": {
                "real": ref["audio"]["real"],
                "vocoded_real": ref["audio"]["vocoded_real"],
                "filter": numbers["audio"]["filter"],
            },
            "fid": {**numbers["fid"], "vocoded_real": ref["fid"]["vocoded_real"]},
        }
        if not run.filter_only:
            entry["spectrogram"]["pcmelgan"] = {
                **numbers["spectrogram"]["pcmelgan"], "speaker_acc": spk["pcmelgan"]}
            entry["audio"]["pcmelgan"] = numbers["audio"]["pcmelgan"]
        if num_examples:
            save_examples(examples, os.path.join(out_dir, "examples", f"{idx:02d}_{run.name}"))
        per_run.append({"run": dataclasses.asdict(run), **entry})

    groups = []
    for eps in sorted({r.eps for r in runs}, key=lambda e: (e is None, e or 0.0)):
        members = [p for p, r in zip(per_run, runs, strict=True) if r.eps == eps]
        groups.append({
            "eps": eps, "eps_label": "unknown" if eps is None else f"{eps:g}",
            "num_runs": len(members), "runs": [m["run"]["path"] for m in members],
            **aggregate_group(members),
        })
    results: dict[str, Any] = {
        "eps": groups[0]["eps"],
        "spectrogram": groups[0]["spectrogram"],
        "audio": groups[0]["audio"],
        "fid": groups[0]["fid"],
        "groups": groups,
        "runs": per_run,
        "speaker": speaker_info,
        "warnings": warnings,
        "config": cfg,
        "output_dir": out_dir,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    results = _json_ready(results)
    write_text_atomic(os.path.join(out_dir, "results.json"), json.dumps(results, indent=1))
    write_text_atomic(os.path.join(out_dir, "tables.md"), markdown_tables(results))
    plot_privacy_utility(results, os.path.join(out_dir, "privacy_utility.png"))
    print(markdown_tables(results), flush=True)
    print(f"[eval] wrote {out_dir} ({results['seconds']} s)", flush=True)
    return results
