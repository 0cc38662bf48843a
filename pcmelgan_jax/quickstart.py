"""``pcmelgan-jax quickstart``: the whole pipeline with the small CPU configs.

    pcmelgan-jax quickstart --workdir DIR [--manual-dir AudioMNIST/data] [--set stage.key=value]

1. ``DIR/corpus``: a synthetic 24-speaker corpus when no ``--manual-dir`` is given;
2. ``DIR/data``: the prepared TFDS dataset;
3. ``DIR/classifiers``, ``DIR/vocoder``, ``DIR/pcmelgan``: the three training stages;
4. ``DIR/eval``: the evaluation (when ``pcmelgan_jax.evaluation`` is available).

Re-running resumes: finished steps are skipped (a stage is finished when its
``final_metrics.json`` exists) and an interrupted stage continues from its checkpoint.
``DIR/quickstart.json`` records the wall time of every step and the main numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from pcmelgan_jax.workdir import write_text_atomic

STAGES = ("classifiers", "vocoder", "pcmelgan")


def stage_configs(workdir: str, overrides: list[str] | None = None, seed: int = 0) -> dict:
    """The small configs of the three stages wired to the quickstart's folders.

    ``overrides``: ``"stage.key=value"`` strings, ``value`` parsed by the field's type as
    ``--config.key=value`` would be (``sweep.parse_field_value``).
    """
    from pcmelgan_jax.sweep import parse_field_value
    from pcmelgan_jax.training import configs

    data_dir = os.path.join(workdir, "data")
    out = {
        "classifiers": configs.classifiers(small=True),
        "vocoder": configs.vocoder(small=True),
        "pcmelgan": configs.pcmelgan(small=True),
        "eval": configs.evaluation(small=True),
    }
    for config in out.values():
        config.data_dir = data_dir
        config.seed = seed
    out["pcmelgan"].classifiers_workdir = os.path.join(workdir, "classifiers")
    out["pcmelgan"].vocoder_workdir = os.path.join(workdir, "vocoder")
    ev = out["eval"]
    ev.runs = os.path.join(workdir, "pcmelgan")
    ev.classifiers_workdir = out["pcmelgan"].classifiers_workdir
    ev.vocoder_workdir = out["pcmelgan"].vocoder_workdir
    ev.dataset = out["classifiers"].dataset
    ev.output_dir = os.path.join(workdir, "eval")
    for item in overrides or []:
        key, _, value = item.partition("=")
        stage, _, field = key.partition(".")
        if stage not in out or not field or not _:
            raise ValueError(
                f"bad override {item!r}; expected STAGE.KEY=VALUE, STAGE in {tuple(out)}"
            )
        try:  # typed like --config.<field>=<value> (the sweep's --set does the same)
            parsed = parse_field_value(out[stage], field, value)
        except (KeyError, AttributeError) as e:
            raise ValueError(f"bad override {item!r}: {stage} has no field {field!r}") from e
        except ValueError as e:
            raise ValueError(f"bad override {item!r}: {e}") from e
        target = out[stage]
        *parents, leaf = field.split(".")
        for p in parents:
            target = target[p]
        target[leaf] = parsed
    return out


def _corpus_complete(corpus_dir: str) -> bool:
    from pcmelgan_jax.data.synth import MARKER

    path = os.path.join(corpus_dir, MARKER)
    if not os.path.isfile(path):
        return False
    with open(path) as f:
        return bool(json.load(f).get("complete"))


def _load_json(path: str) -> dict | None:
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def run_quickstart(
    workdir: str,
    manual_dir: str | None = None,
    overrides: list[str] | None = None,
    speakers: int = 24,
    reps: int = 10,
    seed: int = 0,
) -> dict:
    """Runs (or resumes) the whole pipeline in ``workdir``; returns the summary it writes to
    ``workdir/quickstart.json``."""
    from pcmelgan_jax.data.prepare import prepare

    workdir = os.path.abspath(os.path.expanduser(workdir))
    os.makedirs(workdir, exist_ok=True)
    summary_path = os.path.join(workdir, "quickstart.json")
    summary = _load_json(summary_path) or {"seconds": {}}
    configs = stage_configs(workdir, overrides, seed)

    def timed(name, fn):
        t0 = time.perf_counter()
        result = fn()
        summary["seconds"][name] = round(
            summary["seconds"].get(name, 0.0) + time.perf_counter() - t0, 1
        )
        write_text_atomic(summary_path, json.dumps(summary, indent=2, sort_keys=True))
        return result

    if manual_dir is None:
        corpus = os.path.join(workdir, "corpus")
        if not _corpus_complete(corpus):
            from pcmelgan_jax.data.synth import synthesize_corpus

            print(f"[quickstart] synthesising {speakers} speakers x 10 digits x {reps} -> {corpus}")
            timed("synthesise", lambda: synthesize_corpus(corpus, speakers, reps, seed))
        manual_dir = corpus
    print(f"[quickstart] preparing {manual_dir} -> {configs['classifiers'].data_dir}", flush=True)
    report = timed("prepare", lambda: prepare(manual_dir, configs["classifiers"].data_dir))
    summary["data"] = {k: v["num_examples"] for k, v in report["splits"].items()}

    from pcmelgan_jax.training import train

    for stage in STAGES:
        stage_dir = os.path.join(workdir, stage)
        final = _load_json(os.path.join(stage_dir, "final_metrics.json"))
        if final is None:
            print(f"[quickstart] training {stage} -> {stage_dir}", flush=True)
            final = timed(stage, lambda stage=stage, stage_dir=stage_dir: train(
                configs[stage], stage_dir
            ))
        else:
            print(f"[quickstart] {stage} already trained ({stage_dir})", flush=True)
        summary[stage] = final

    eval_dir = os.path.join(workdir, "eval")
    try:
        from pcmelgan_jax import evaluation
    except ImportError:
        evaluation = None
    if evaluation is None or not hasattr(evaluation, "run_evaluation"):
        print("[quickstart] note: pcmelgan_jax.evaluation is not available; skipping the "
              "evaluation (the spectrogram-domain numbers above come from training)")
    else:
        eval_config = configs["eval"]
        print(f"[quickstart] evaluating -> {eval_dir}", flush=True)
        result = timed("evaluate", lambda: evaluation.run_evaluation(eval_config, workdir))
        summary["eval"] = result if isinstance(result, dict) else {"eval_dir": eval_dir}
    summary["total_seconds"] = round(sum(summary["seconds"].values()), 1)
    write_text_atomic(summary_path, json.dumps(summary, indent=2, sort_keys=True))
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
            args.workdir, args.manual_dir, args.set, speakers=args.speakers, reps=args.reps,
            seed=args.seed,
        )
    except (FileNotFoundError, ValueError) as e:
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
    p.add_argument("--speakers", type=int, default=24, help="synthetic speakers (default 24)")
    p.add_argument("--reps", type=int, default=10, help="synthetic repetitions (default 10)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--set", action="append", default=[], metavar="STAGE.KEY=VALUE",
        help="override a small-config field, e.g. pcmelgan.eps=0.1 (repeatable)",
    )
    p.set_defaults(func=_run)
