"""Trains one stage: ``python train.py --config configs/<stage>.py --workdir DIR [--config.x=y]``.

Stages: classifiers, vocoder, pcmelgan (see configs/). Re-running the same command resumes
from the latest checkpoint in ``DIR/checkpoints``.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from pcmelgan_jax.runtime.host_memory import reexec_with_hugepages

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Stage configuration file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, samples and models.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from pcmelgan_jax.training import train

    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO

    train(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    reexec_with_hugepages()
    app.run(main)
