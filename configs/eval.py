"""Evaluation config (SPEC section 8): ``python eval.py --config configs/eval.py --workdir DIR``.

Empty strings mean "derive it": runs default to ``DIR/pcmelgan`` (a quickstart workdir) or
``DIR`` itself; classifiers, vocoder and data come from each run's ``config.json``, else
``DIR/classifiers``, ``DIR/vocoder``, ``DIR/data``. Override on the command line, e.g.
``--config.runs='sweep/eps0.05_seed*,sweep/eps0.1_seed*'``.
"""

from pcmelgan_jax.training import configs


def get_config():
    return configs.evaluation()
