"""``pcmelgan-jax baselines``: the training-free anonymisers through the evaluation protocol.

    pcmelgan-jax baselines --workdir DIR [--small] [--config.FIELD=VALUE ...]

Attacks the untransformed speech, the vocoded original, McAdams anonymisation and the
gender-flipping pitch shift with every attacker, on the same split as ``eval.py``. ``DIR``
holds (or the overrides name) ``classifiers/``, ``vocoder/`` and ``data/``, as a quickstart
workdir does; results go to ``DIR/baselines/`` (``--config.output_dir`` overrides).
"""

from __future__ import annotations

import argparse
import os
import sys


def eval_config(small: bool, overrides: list[str]):
    """The evaluation config with ``runs = "none"`` and ``--config.x=y`` overrides applied."""
    from pcmelgan_jax.sweep import parse_field_value, set_field
    from pcmelgan_jax.training.configs import evaluation

    config = evaluation(small=small)
    config.runs = "none"
    for item in overrides:
        key, sep, value = item.partition("=")
        if not key.startswith("--config.") or not sep:
            raise ValueError(f"unexpected argument {item!r}; overrides are --config.FIELD=VALUE")
        field = key.removeprefix("--config.")
        try:
            set_field(config, field, parse_field_value(config, field, value))
        except (KeyError, AttributeError):
            raise ValueError(f"{item}: the evaluation config has no field {field!r}") from None
    return config


def _run(args: argparse.Namespace) -> int:
    from pcmelgan_jax.evaluation.protocol import run_evaluation
    from pcmelgan_jax.evaluation.runs import EvaluationError

    try:
        config = eval_config(args.small, args.overrides)
        if not config.output_dir:
            config.output_dir = os.path.join(os.path.abspath(args.workdir), "baselines")
        run_evaluation(config, args.workdir)
    except (EvaluationError, FileNotFoundError, ValueError) as e:
        print(f"pcmelgan-jax baselines: error: {e}", file=sys.stderr)
        return 2
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "baselines", help="attack the training-free anonymisers (vocoded, McAdams, pitch shift)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True,
                   help="holds classifiers/, vocoder/ and data/ (a quickstart workdir)")
    p.add_argument("--small", action="store_true",
                   help="the small CPU attacker settings of the quickstart")
    p.set_defaults(func=_run, overrides=[])  # --config.FIELD=VALUE arguments (see cli.main)
