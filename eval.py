"""Evaluates trained PCMelGAN runs with the paper's protocol (SPEC section 8).

    python eval.py --config configs/eval.py --workdir DIR [--config.runs=RUN1,RUN2,...]

Writes ``DIR/eval/``: results.json, tables.md, privacy_utility.png and examples/
(see ``pcmelgan_jax.evaluation``).
"""

import os

from absl import app, flags
from ml_collections import config_flags

from pcmelgan_jax.runtime.host_memory import reexec_with_hugepages

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "eval.py")

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Workdir: a quickstart workdir or a PCMelGAN run's.")
config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Evaluation config file.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from pcmelgan_jax.evaluation import run_evaluation

    run_evaluation(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    reexec_with_hugepages()
    flags.mark_flags_as_required(["workdir"])
    app.run(main)
