"""A quick privacy probe of trained runs on the VALIDATION speakers (for choosing settings).

    .venv/bin/python -m bench.privacy_probe --data-dir DIR --classifiers-workdir DIR \
        [--vocoder VOCODER_WORKDIR ...] [--out bench/results/privacy_probe.json] [RUN ...]

For each run (a PCMelGAN or Filter-only run folder holding ``models/filter`` and perhaps
``models/generator``) the Filter's output x1 = F(x) and, for a full run, PCMelGAN's
x2 = G(x1, s') (G(x, s') for a G fed the original) are computed for the training and the
validation speakers (the noise of ``eval.py``), then scored in the spectrogram domain:

- ``linear_gender`` / ``linear_digit``: the linear attacker (``evaluation.linear``: logistic
  regression on the normalised log-mel grid, trained on the training speakers' outputs with
  their true labels, L2 strength chosen on the validation speakers) on the validation outputs;
- ``fresh_gender``: the fresh-speaker attacker (``attackers.fresh``): the same regression
  trained on some validation speakers' outputs and scored on the others (speaker-disjoint
  folds, both genders in each), pooled: what an attacker with speakers of their own finds;
- ``cv_gender``: the same regression cross-validated over the training and the validation
  speakers together (5 speaker-disjoint folds, pooled): five times the held-out speakers of
  the validation split alone, so a cue that 8 validation speakers happen to reverse (or
  share) moves it less; choose on it as well as on ``linear_gender``;
- ``fixed_gender`` / ``fixed_digit`` (and ``fixed_sampled_gender`` for x2 against s'): the
  fixed spectrogram classifiers of ``--classifiers-workdir``;
- ``distortion``: mean |output - x|; ``gender_gap_rms``: the RMS over the grid of the
  difference between the male and the female mean output (what a linear attacker exploits).

With ``--linear-eraser``: every output also after a linear gender eraser fitted on its
training-split output (``evaluation.erasure``), as ``<output>+eraser``.

With ``--vocoder`` (repeatable): the fixed AudioNets (``audio_digit``, ``audio_gender`` of
``--classifiers-workdir``) on the validation speakers' original clips and on their copies
vocoded by each vocoder workdir's ``models/generator`` (the vocoder's own loss of content),
and the mean |log-mel difference| to the originals; ``--griffin-lim`` adds the training-free
Griffin-Lim inversion as a vocoder.

The test speakers are never touched: ``eval.py`` reports those, once the settings are chosen.
Writes ``--out`` (JSON, atomically) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import numpy as np

from pcmelgan_jax.workdir import write_json_atomic

ROOT = Path(__file__).resolve().parents[1]
BATCH = 50


def spectrogram_outputs(run: str, split: Any) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """{"filter": (x1, None)[, "pcmelgan": (x2, s')]} of ``run`` on ``split``."""
    from pcmelgan_jax.checkpointing import load_network
    from pcmelgan_jax.evaluation.conditions import filter_and_generator_spectrograms
    from pcmelgan_jax.workdir import model_dir

    filt = load_network(model_dir(run, "filter"), "unet_filter")
    generator_dir = model_dir(run, "generator")
    gen = (load_network(generator_dir, "unet_generator")
           if os.path.isdir(generator_dir) else None)
    x1, x2, sampled = filter_and_generator_spectrograms(filt, gen, 0, BATCH, split)
    out = {"filter": (x1, None)}
    if x2 is not None:
        out["pcmelgan"] = (x2, sampled)
    return out


def linear_accuracy(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray,
                    val_y: np.ndarray, num_classes: int) -> float:
    """The linear attacker's accuracy on the validation rows (the fit measures it)."""
    from pcmelgan_jax.evaluation.linear import fit_logistic_regression

    model = fit_logistic_regression(train_x, train_y, val_x, val_y, num_classes, max_iter=200)
    return model.val_accuracy


def gender_gap_rms(x: np.ndarray, gender: np.ndarray) -> float:
    """RMS over the elements of (male mean - female mean)."""
    return float(np.sqrt(np.mean((x[gender == 1].mean(0) - x[gender == 0].mean(0)) ** 2)))


CV_FOLDS = 5  # cv_gender's speaker-disjoint folds over the training + validation speakers


def fresh_accuracy(x: np.ndarray, split: Any, labels: np.ndarray, num_classes: int,
                   num_folds: int | None = None) -> float:
    """Logistic regression trained on some of ``split``'s speakers' outputs ``x``, scored on
    the others, pooled over speaker-disjoint folds (``attackers.speaker_folds``; by default
    ``attackers.fresh``'s)."""
    from pcmelgan_jax.evaluation.attackers import fit_cross_validated, speaker_folds
    from pcmelgan_jax.evaluation.linear import DEFAULT_L2_GRID

    folds, _ = (speaker_folds(split) if num_folds is None
                else speaker_folds(split, num_folds))
    flat = np.asarray(x, np.float32).reshape(len(x), -1)
    return fit_cross_validated(flat, labels, folds, num_classes, DEFAULT_L2_GRID, 200)[1]


def cv_accuracy(train_x: np.ndarray, val_x: np.ndarray, train: Any, val: Any) -> float:
    """``cv_gender``: the fresh regression cross-validated over the training and the
    validation speakers together."""
    from pcmelgan_jax.evaluation.data import SplitData

    both = SplitData.joined("train+validation", (train, val))
    return fresh_accuracy(np.concatenate([train_x, val_x]), both, both.gender, 2, CV_FOLDS)


def scores(train_x: np.ndarray, val_x: np.ndarray, train: Any, val: Any, fixed: dict,
           sampled: np.ndarray | None) -> dict[str, float]:
    """One output's row (module docstring) from its training- and validation-split arrays."""
    from pcmelgan_jax.evaluation.classifier import predict

    fixed_pred = {t: predict("alexnet", *fixed[t], val_x, BATCH) for t in fixed}
    row = {
        "linear_gender": linear_accuracy(train_x, train.gender, val_x, val.gender, 2),
        "linear_digit": linear_accuracy(train_x, train.digit, val_x, val.digit, 10),
        "fresh_gender": fresh_accuracy(val_x, val, val.gender, 2),
        "cv_gender": cv_accuracy(train_x, val_x, train, val),
        "fixed_gender": float(np.mean(fixed_pred["gender"] == val.gender)),
        "fixed_digit": float(np.mean(fixed_pred["digit"] == val.digit)),
        "distortion": float(np.mean(np.abs(val_x - val.x))),
        "gender_gap_rms": gender_gap_rms(val_x, val.gender),
    }
    if sampled is not None:
        row["fixed_sampled_gender"] = float(np.mean(fixed_pred["gender"] == sampled))
    return row


def probe(run: str, train: Any, val: Any, fixed: dict,
          linear_eraser: bool = False) -> dict[str, dict[str, float]]:
    """Rows for the run's outputs (and with ``linear_eraser`` each output after a linear
    gender eraser fitted on its training-split output: ``"<output>+eraser"``)."""
    from pcmelgan_jax.evaluation.erasure import fit_linear_eraser

    out = {}
    train_out, val_out = spectrogram_outputs(run, train), spectrogram_outputs(run, val)
    for name, (val_x, sampled) in val_out.items():
        train_x = train_out[name][0]
        out[name] = scores(train_x, val_x, train, val, fixed, sampled)
        if linear_eraser:
            eraser = fit_linear_eraser(train_x, train.gender)
            out[f"{name}+eraser"] = scores(eraser(train_x), eraser(val_x), train, val, fixed,
                                           sampled)
    return out


def vocoder_probe(vocoders: list[str], val: Any, classifiers_workdir: str,
                  with_griffin_lim: bool = False) -> dict:
    """{"real clips" | vocoder [| "griffin-lim"]: {"audionet_digit", "audionet_gender",
    "mel_l1"}} on ``val`` (``mel_l1``: mean |log-mel of the audio - the original's|)."""
    from pcmelgan_jax.checkpointing import load_network
    from pcmelgan_jax.evaluation.classifier import predict
    from pcmelgan_jax.evaluation.conditions import vocode_all
    from pcmelgan_jax.evaluation.data import log_mels
    from pcmelgan_jax.evaluation.inference import griffin_lim_vocoder, melgan_vocoder
    from pcmelgan_jax.workdir import model_dir

    nets = {t: load_network(model_dir(classifiers_workdir, f"audio_{t}"), "audionet")
            for t in ("digit", "gender")}

    def audio_scores(audio):
        row = {f"audionet_{t}": float(np.mean(
            predict("audionet", *nets[t], audio, BATCH) == getattr(val, t))) for t in nets}
        return {**row, "mel_l1": float(np.mean(np.abs(log_mels(audio, BATCH)[0] - val.x)))}

    out = {"real clips": audio_scores(val.clips)}
    for workdir in vocoders:
        voc = melgan_vocoder(*load_network(model_dir(workdir, "generator"), "melgan_generator"))
        out[os.path.abspath(workdir)] = audio_scores(
            vocode_all(voc, val.x, val.mean, val.std, BATCH))
    if with_griffin_lim:
        out["griffin-lim (32 iterations)"] = audio_scores(
            vocode_all(griffin_lim_vocoder(32), val.x, val.mean, val.std, BATCH))
    return out


def markdown(results: dict) -> str:
    cols = ("linear_gender", "linear_digit", "fresh_gender", "cv_gender", "fixed_gender",
            "fixed_digit", "fixed_sampled_gender", "distortion", "gender_gap_rms")
    lines = ["| run | output | " + " | ".join(cols) + " |", "|---|---|" + "---:|" * len(cols)]
    for run, outputs in results.items():
        for name, row in outputs.items():
            cells = [f"{row[c]:.3f}" if c in row else "" for c in cols]
            lines.append(f"| {run} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="*", help="run folders (models/filter[, models/generator])")
    p.add_argument("--vocoder", action="append", default=[],
                   help="a vocoder workdir (models/generator) to probe; repeatable")
    p.add_argument("--data-dir", required=True, help="prepared TFDS data")
    p.add_argument("--dataset", default="audio_mnist/all")
    p.add_argument("--classifiers-workdir", required=True,
                   help="holds models/spec_digit and models/spec_gender")
    p.add_argument("--griffin-lim", action="store_true",
                   help="also probe the training-free Griffin-Lim inversion as a vocoder")
    p.add_argument("--linear-eraser", action="store_true",
                   help="also score each output after a linear gender eraser fitted on its "
                        "training-split output")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "privacy_probe.json"))
    args = p.parse_args(argv)
    from pcmelgan_jax.checkpointing import load_network
    from pcmelgan_jax.evaluation.data import load_split
    from pcmelgan_jax.workdir import model_dir

    train = load_split(args.data_dir, args.dataset, "train", BATCH)
    val = load_split(args.data_dir, args.dataset, "validation", BATCH)
    fixed = {t: load_network(model_dir(args.classifiers_workdir, f"spec_{t}"), "alexnet")
             for t in ("gender", "digit")}
    results = {"untransformed": {"real": {
        "linear_gender": linear_accuracy(train.x, train.gender, val.x, val.gender, 2),
        "linear_digit": linear_accuracy(train.x, train.digit, val.x, val.digit, 10),
        "fresh_gender": fresh_accuracy(val.x, val, val.gender, 2),
        "cv_gender": cv_accuracy(train.x, val.x, train, val),
        "gender_gap_rms": gender_gap_rms(val.x, val.gender), "distortion": 0.0,
    }}}
    for run in args.runs:
        results[os.path.abspath(run)] = probe(run, train, val, fixed, args.linear_eraser)
        print(markdown({run: results[os.path.abspath(run)]}).splitlines()[-1], flush=True)
    vocoders = (vocoder_probe(args.vocoder, val, args.classifiers_workdir, args.griffin_lim)
                if args.vocoder or args.griffin_lim else {})
    write_json_atomic(args.out, {"data_dir": os.path.abspath(args.data_dir),
                                 "results": results, "vocoders": vocoders})
    print(markdown(results))
    if vocoders:
        print("\n| vocoder | AudioNet digit | AudioNet gender | mel L1 |\n|---|---:|---:|---:|")
        for name, row in vocoders.items():
            print(f"| {name} | {row['audionet_digit']:.3f} | {row['audionet_gender']:.3f} "
                  f"| {row['mel_l1']:.3f} |")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
