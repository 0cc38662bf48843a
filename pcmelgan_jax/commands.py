"""``pcmelgan-jax train``, ``eval`` (what ``train.py`` and ``eval.py`` do) and ``baselines``.

    pcmelgan-jax train --config configs/pcmelgan.py:small --workdir DIR [--config.FIELD=VALUE ...]
    pcmelgan-jax eval --workdir DIR [--config configs/eval.py:small] [--config.FIELD=VALUE ...]
    pcmelgan-jax baselines --workdir DIR [--small] [--config.FIELD=VALUE ...]

Training resumes from the latest checkpoint in ``DIR/checkpoints``; the evaluation writes
``DIR/eval/`` (results.json, tables.md, privacy_utility.png, examples/). ``baselines``
attacks the untransformed speech, the vocoded original, McAdams anonymisation and the
gender-flipping pitch shift with every attacker, on the same split as ``eval``; ``DIR``
holds (or the overrides name) ``classifiers/``, ``vocoder/`` and ``data/``, as a quickstart
workdir does; results go to ``DIR/baselines/`` (``--config.output_dir`` overrides).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

from pcmelgan_jax.config_files import ConfigError, apply_overrides, load_config

EVAL_CONFIG = "configs/eval.py"


def train_stage(config: Any, workdir: str) -> Any:
    """Trains the stage ``config.stage`` in ``workdir``; returns its final metrics."""
    from absl import logging

    from pcmelgan_jax.training import train

    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
    return train(config, workdir)


def train_or_report(command: str, config: Any, workdir: str) -> int:
    """Trains ``config`` in ``workdir``; a run folder busy with another process is one line on
    stderr and exit code 2 (a diverged run still raises: its traceback names the step)."""
    from pcmelgan_jax.workdir import WorkdirBusyError

    try:
        train_stage(config, workdir)
    except WorkdirBusyError as e:
        print(f"{command}: error: {e}", file=sys.stderr)
        return 2
    return 0


def evaluate(config: Any, workdir: str) -> Any:
    """Evaluates the runs ``config`` names (see configs/eval.py); returns results.json."""
    from pcmelgan_jax.evaluation.protocol import run_evaluation

    return run_evaluation(config, workdir)


def load_with_overrides(spec: str, overrides: list[str]) -> Any:
    """The config of ``PATH[:VARIANTS]`` with ``--config.FIELD=VALUE`` overrides, locked."""
    config = apply_overrides(load_config(spec), overrides, spec)
    config.lock()
    return config


def _train(args: argparse.Namespace) -> int:
    try:
        config = load_with_overrides(args.config, args.overrides)
    except ConfigError as e:
        print(f"pcmelgan-jax train: error: {e}", file=sys.stderr)
        return 2
    return train_or_report("pcmelgan-jax train", config, args.workdir)


def evaluate_or_report(command: str, make_config: Callable[[], Any], workdir: str) -> int:
    """Evaluates the config ``make_config()`` builds; a bad config or a missing input is one
    line on stderr and exit code 2."""
    from pcmelgan_jax.evaluation.runs import EvaluationError

    try:
        evaluate(make_config(), workdir)
    except (EvaluationError, FileNotFoundError, ValueError) as e:  # ConfigError included
        print(f"pcmelgan-jax {command}: error: {e}", file=sys.stderr)
        return 2
    return 0


def _eval(args: argparse.Namespace) -> int:
    return evaluate_or_report(
        "eval", lambda: load_with_overrides(args.config, args.overrides), args.workdir)


def baselines_config(small: bool, overrides: list[str], workdir: str) -> Any:
    """The evaluation config of ``baselines``: no runs, results in ``workdir/baselines``."""
    spec = EVAL_CONFIG + (":small" if small else "")
    config = load_config(spec)
    config.runs = "none"
    config.output_dir = os.path.join(os.path.abspath(workdir), "baselines")
    return apply_overrides(config, overrides, spec)


def _baselines(args: argparse.Namespace) -> int:
    return evaluate_or_report(
        "baselines", lambda: baselines_config(args.small, args.overrides, args.workdir),
        args.workdir)


def add_parser(subparsers) -> None:
    """Registers ``train``, ``eval`` and ``baselines`` (``--config.FIELD=VALUE``: cli.main)."""
    train = subparsers.add_parser(
        "train", help="train one stage (classifiers, vocoder, pcmelgan) as train.py does",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    train.add_argument("--config", required=True, metavar="PATH[:VARIANTS]",
                       help="stage config, e.g. configs/pcmelgan.py:small")
    train.add_argument("--workdir", required=True,
                       help="checkpoints, logs, samples and models (re-run to resume)")
    train.set_defaults(func=_train, overrides=[])
    evaluation = subparsers.add_parser(
        "eval", help="evaluate trained PCMelGAN runs as eval.py does",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    evaluation.add_argument("--config", default=EVAL_CONFIG, metavar="PATH[:VARIANTS]",
                            help=f"evaluation config (default {EVAL_CONFIG})")
    evaluation.add_argument("--workdir", required=True,
                            help="a quickstart workdir or a PCMelGAN run's")
    evaluation.set_defaults(func=_eval, overrides=[])
    baselines = subparsers.add_parser(
        "baselines", help="attack the training-free anonymisers (vocoded, McAdams, pitch shift)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    baselines.add_argument("--workdir", required=True,
                           help="holds classifiers/, vocoder/ and data/ (a quickstart workdir)")
    baselines.add_argument("--small", action="store_true",
                           help="the small CPU attacker settings of the quickstart")
    baselines.set_defaults(func=_baselines, overrides=[])
