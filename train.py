"""Trains one stage; ``pcmelgan-jax train`` does the same.

    python train.py --config configs/<stage>.py[:small] --workdir DIR [--config.x=y ...]

Stages: classifiers, vocoder, pcmelgan (see configs/).
Re-running the same command resumes from the latest checkpoint in ``DIR/checkpoints``.
"""

import sys

from absl import app, flags
from ml_collections import config_flags

from pcmelgan_jax.config_files import absl_flags_parser
from pcmelgan_jax.runtime.host_memory import reexec_with_hugepages

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Stage config file, PATH[:VARIANTS].", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, samples and models.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from pcmelgan_jax.commands import train_or_report

    sys.exit(train_or_report("train.py", FLAGS.config, FLAGS.workdir))


if __name__ == "__main__":
    reexec_with_hugepages()
    app.run(main, flags_parser=absl_flags_parser("train.py"))
