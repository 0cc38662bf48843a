"""The quickstart: the small config of every stage (``pcmelgan-jax quickstart``).

    pcmelgan-jax quickstart --workdir DIR --config.pcmelgan.eps=0.1
    pcmelgan-jax quickstart --workdir DIR --config.eval.vocoder=melgan --config.vocoder.num_epochs=2

The quickstart wires the stages' folders (data, classifiers, vocoder, runs) to DIR before the
``--config.STAGE.FIELD=VALUE`` overrides are applied. The MelGAN vocoder is trained only when
the evaluation vocodes with it (``eval.vocoder``; the small evaluation uses Griffin-Lim).
"""

from __future__ import annotations

import ml_collections

from pcmelgan_jax.configs import classifiers, common, pcmelgan, vocoder
from pcmelgan_jax.configs import eval as evaluation


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """No variants: the stages' ``small`` configs."""
    common.parse_arg(arg)
    c = ml_collections.ConfigDict()
    c.classifiers = classifiers.get_config("small")
    c.vocoder = vocoder.get_config("small")
    c.pcmelgan = pcmelgan.get_config("small")
    c.eval = evaluation.get_config("small")
    # every attacker on the untransformed speech and PCMelGAN's output, the fixed classifiers
    # alone (the test split alone) on the conditions they are compared with, so that the
    # whole pipeline fits the quickstart's CPU budget (eval.py and baselines attack them all)
    c.eval.comparison_attackers = ("fixed",)
    return c
