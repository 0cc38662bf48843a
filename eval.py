"""Evaluates trained PCMelGAN runs with the paper's protocol; ``pcmelgan-jax eval`` does the same.

    python eval.py --config configs/eval.py[:small] --workdir DIR [--config.runs=RUN1,RUN2,...]

Writes ``DIR/eval/``: results.json, tables.md, privacy_utility.png and examples/
(see ``pcmelgan_jax.evaluation``).
"""

from absl import app, flags
from ml_collections import config_flags

from pcmelgan_jax.config_files import absl_flags_parser
from pcmelgan_jax.runtime.host_memory import reexec_with_hugepages

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Workdir: a quickstart workdir or a PCMelGAN run's.")
config_flags.DEFINE_config_file(  # default (set by the flags parser): configs/eval.py
    "config", None, "Evaluation config, PATH[:VARIANTS] (default configs/eval.py).")
flags.mark_flags_as_required(["workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from pcmelgan_jax.commands import evaluate

    evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    reexec_with_hugepages()
    app.run(main, flags_parser=absl_flags_parser("eval.py", "configs/eval.py"))
