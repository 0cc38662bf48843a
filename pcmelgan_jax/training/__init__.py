"""The three training stages (classifiers, vocoder, PCMelGAN) as jitted, data-parallel steps.

- ``state``: train states (per network: params, optimiser state, batch statistics).
- ``steps``: the pure step functions ``(state, batch, rng) -> (state, metrics)`` and losses.
- ``loop``: the generic loop (Orbax CheckpointManager, logging, NaN guard, progress bar).
- ``classifiers``, ``vocoder``, ``pcmelgan``: the stage drivers, ``train(config, workdir)``.
"""

STAGES = ("classifiers", "vocoder", "pcmelgan")


def train(config, workdir: str) -> dict:
    """Runs the stage named by ``config.stage`` in ``workdir``; returns its final metrics."""
    import importlib

    if config.stage not in STAGES:
        raise ValueError(f"unknown stage {config.stage!r}; expected one of {STAGES}")
    return importlib.import_module(f"pcmelgan_jax.training.{config.stage}").train(config, workdir)
