"""The three training stages (classifiers, vocoder, PCMelGAN) as jitted, data-parallel steps.

- ``loop``: ``train(config, workdir)`` for every stage, and the loop itself.
- ``losses``: every loss, as pure functions of arrays.
- ``classifiers``, ``vocoder``, ``pcmelgan``: each stage's networks, settings and train step
  (one update function per network); ``pcmelgan_stage`` drives PCMelGAN's runs.
- ``state``: train states (per network: params, optimiser state, batch statistics).
- ``seeds``: one seed or N seeds in one program; ``checkpoints``: save and resume;
  ``stage``: what a stage gives the loop.
"""


def train(config, workdir: str, mesh=None) -> dict:
    """Runs the stage named by ``config.stage`` in ``workdir``; returns its final metrics."""
    from pcmelgan_jax.training.loop import train as train_stage  # imports jax, flax, orbax

    return train_stage(config, workdir, mesh)
