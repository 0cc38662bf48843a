"""A tiny eps sweep for CPU: the small configs, eps in {0.01, 0.1} x 2 seeds, with Filter.

    pcmelgan-jax sweep configs/sweeps/eps_small.py --workdir runs/sweep_small \
        --config.classifiers_workdir=runs/classifiers --config.vocoder_workdir=runs/vocoder

8 runs of configs/pcmelgan.py:small and :small,filter_only (a few minutes each on 2
cores); the stage workdirs default to those of the README's training commands. ``--jobs 2``
trains two runs at once, one per core; ``--seeds-per-run 2`` makes 4 runs of 2 seeds each
(``eps0.01_seeds0-1`` ...).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.base = "configs/pcmelgan.py:small"
    c.filter_base = "configs/pcmelgan.py:small,filter_only"
    c.axes = ml_collections.ConfigDict({"eps": [0.01, 0.1]})
    c.seeds = [0, 1]
    c.overrides = ml_collections.ConfigDict({
        "data_dir": "data",
        "classifiers_workdir": "runs/classifiers",
        "vocoder_workdir": "runs/vocoder",
        "progress_bar": False,  # one line per log step instead of a bar per run
    })
    c.filter_only_baseline = True
    return c
