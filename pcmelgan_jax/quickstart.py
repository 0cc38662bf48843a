"""``pcmelgan-jax quickstart``: the whole pipeline with the small CPU configs.

    pcmelgan-jax quickstart --workdir DIR [--manual-dir AudioMNIST/data] \
        [--config.STAGE.FIELD=VALUE ...]    (e.g. --config.pcmelgan.eps=0.1)

1. ``DIR/corpus``: a synthetic corpus (48 speakers x 10 digits x 5) when no ``--manual-dir``
   is given;
2. ``DIR/data``: the prepared TFDS dataset;
3. ``DIR/classifiers``, ``DIR/pcmelgan`` (and ``DIR/vocoder``, a MelGAN, only with
   ``--config.eval.vocoder=melgan``; the small evaluation vocodes with Griffin-Lim): the
   training stages;
4. ``DIR/eval``: the evaluation.

STAGE is classifiers, vocoder, pcmelgan or eval (the fields of configs/quickstart.py).

Re-running resumes: finished steps are skipped (a stage is finished when its
``final_metrics.json`` exists) and an interrupted stage continues from its checkpoint.
``DIR/quickstart.json`` records the wall time of every step and the main numbers.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from pcmelgan_jax import workdir as run_folder
from pcmelgan_jax.config_files import ConfigError, apply_overrides, load_config

STAGES = ("classifiers", "vocoder", "pcmelgan")
# The synthetic corpus: as many utterances as synth-data's default (24 x 10 repetitions) over
# twice the speakers, so that each gender has 4 test and 4 validation speakers (narrower
# intervals) and 16 training speakers to generalise from.
SPEAKERS = 48
REPS = 5
QUICKSTART_CONFIG = "configs/quickstart.py"


def stage_configs(workdir: str, overrides: list[str] | None = None, seed: int = 0) -> Any:
    """configs/quickstart.py (the small config of every stage) wired to the quickstart's
    folders, then the ``--config.STAGE.FIELD=VALUE`` ``overrides``; ConfigError for a bad one."""
    config = load_config(QUICKSTART_CONFIG)
    data_dir = os.path.join(workdir, "data")
    for stage in config.values():
        stage.data_dir = data_dir
        stage.seed = seed
    pcm = config.pcmelgan
    pcm.classifiers_workdir = os.path.join(workdir, "classifiers")
    pcm.vocoder_workdir = os.path.join(workdir, "vocoder")
    config.eval.update(
        runs=os.path.join(workdir, "pcmelgan"), classifiers_workdir=pcm.classifiers_workdir,
        vocoder_workdir=pcm.vocoder_workdir, dataset=config.classifiers.dataset,
        output_dir=os.path.join(workdir, "eval"))
    wired_vocoder = pcm.vocoder_workdir
    config = apply_overrides(config, overrides or [], QUICKSTART_CONFIG)
    from pcmelgan_jax.evaluation.inference import VOCODERS

    if config.eval.vocoder not in VOCODERS:  # before any stage trains, not at the evaluation
        raise ConfigError(f"--config.eval.vocoder={config.eval.vocoder!r}: must be one of "
                          f"{', '.join(VOCODERS)}")
    if "vocoder" not in stages(config) and config.pcmelgan.vocoder_workdir == wired_vocoder:
        config.pcmelgan.vocoder_workdir = ""  # no MelGAN is trained: no audio samples
    return config


def stages(config: Any) -> tuple[str, ...]:
    """The training stages the quickstart runs: the MelGAN only when the evaluation vocodes
    with it (``eval.vocoder``; the small config's Griffin-Lim needs no training)."""
    return tuple(s for s in STAGES if s != "vocoder" or config.eval.vocoder == "melgan")


def _corpus_complete(corpus_dir: str) -> bool:
    from pcmelgan_jax.data.synth import MARKER

    return bool(run_folder.read_json(os.path.join(corpus_dir, MARKER)).get("complete"))


def _train_stages(workdir: str, configs: Any, summary: dict, timed: Callable) -> None:
    """Trains the stages not finished before; their final metrics go to ``summary``."""
    from pcmelgan_jax.commands import train_stage

    for stage in stages(configs):
        stage_dir = os.path.join(workdir, stage)
        if run_folder.is_complete(stage_dir):
            print(f"[quickstart] {stage} already trained ({stage_dir})", flush=True)
            summary[stage] = run_folder.read_json(run_folder.final_metrics_path(stage_dir))
            continue
        print(f"[quickstart] training {stage} -> {stage_dir}", flush=True)
        summary[stage] = timed(stage, lambda s=stage, d=stage_dir: train_stage(configs[s], d))


def run_quickstart(
    workdir: str,
    manual_dir: str | None = None,
    overrides: list[str] | None = None,
    speakers: int = SPEAKERS,
    reps: int = REPS,
    seed: int = 0,
) -> dict:
    """Runs (or resumes) the whole pipeline in ``workdir``; returns the summary it writes to
    ``workdir/quickstart.json``."""
    from pcmelgan_jax.commands import evaluate
    from pcmelgan_jax.data.prepare import prepare

    workdir = os.path.abspath(os.path.expanduser(workdir))
    configs = stage_configs(workdir, overrides, seed)  # a bad override stops here
    summary_path = os.path.join(workdir, "quickstart.json")
    summary = run_folder.read_json(summary_path) or {"seconds": {}}

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        result = fn()
        summary["seconds"][name] = round(
            summary["seconds"].get(name, 0.0) + time.perf_counter() - t0, 1
        )
        run_folder.write_json_atomic(summary_path, summary)
        return result

    if manual_dir is None:
        corpus = os.path.join(workdir, "corpus")
        if not _corpus_complete(corpus):
            from pcmelgan_jax.data.synth import synthesize_corpus

            print(f"[quickstart] synthesising {speakers} speakers x 10 digits x {reps} -> {corpus}")
            timed("synthesise", lambda: synthesize_corpus(corpus, speakers, reps, seed))
        manual_dir = corpus
    data_dir = configs.classifiers.data_dir
    print(f"[quickstart] preparing {manual_dir} -> {data_dir}", flush=True)
    report = timed("prepare", lambda: prepare(manual_dir, data_dir))
    summary["data"] = {k: v["num_examples"] for k, v in report["splits"].items()}
    _train_stages(workdir, configs, summary, timed)
    print(f"[quickstart] evaluating -> {configs.eval.output_dir}", flush=True)
    summary["eval"] = timed("evaluate", lambda: evaluate(configs.eval, workdir))
    summary["total_seconds"] = round(sum(summary["seconds"].values()), 1)
    run_folder.write_json_atomic(summary_path, summary)
    print(format_summary(summary), flush=True)
    return summary


def format_summary(summary: dict) -> str:
    """A short human-readable report of a quickstart summary."""
    lines = ["", "quickstart summary", "=================="]
    for name, seconds in summary.get("seconds", {}).items():
        lines.append(f"  {name:<12} {seconds / 60:6.1f} min")
    lines.append(f"  {'total':<12} {summary.get('total_seconds', 0) / 60:6.1f} min")
    cls = summary.get("classifiers", {})
    for name in ("spec_digit", "spec_gender", "audio_digit", "audio_gender"):
        if f"{name}/best_accuracy" in cls:
            acc = cls[f"{name}/best_accuracy"]
            lines.append(f"  classifier {name:<13} validation accuracy {acc:.3f}")
    voc = summary.get("vocoder", {})
    if "best_mel_l1" in voc:
        lines.append(f"  vocoder best validation mel L1 {voc['best_mel_l1']:.3f}")
    pcm = summary.get("pcmelgan", {})
    for key in sorted(pcm):
        if key.endswith("_acc") or key.endswith("distortion"):
            lines.append(f"  pcmelgan validation {key:<32} {pcm[key]:.3f}")
    for warning in summary.get("eval", {}).get("warnings", []):
        lines.append(f"  WARNING: {warning}")
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    from absl import logging

    logging.set_verbosity(logging.WARNING)
    try:
        run_quickstart(
            args.workdir, args.manual_dir, args.overrides, speakers=args.speakers,
            reps=args.reps, seed=args.seed,
        )
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"pcmelgan-jax quickstart: error: {e}", file=sys.stderr)
        return 2
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "quickstart",
        help="synthesise (or use) a corpus, prepare it, train all stages, evaluate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--workdir", required=True, help="output folder (re-run to resume)")
    p.add_argument(
        "--manual-dir", default=None, help="AudioMNIST data folder (default: synthesise)"
    )
    p.add_argument("--speakers", type=int, default=SPEAKERS,
                   help=f"synthetic speakers (default {SPEAKERS})")
    p.add_argument("--reps", type=int, default=REPS,
                   help=f"synthetic repetitions (default {REPS})")
    p.add_argument("--seed", type=int, default=0)
    # --config.STAGE.FIELD=VALUE (e.g. --config.pcmelgan.eps=0.1): see cli.main
    p.set_defaults(func=_run, overrides=[])
