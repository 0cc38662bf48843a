"""A lambda (distortion penalty weight) sweep at eps 0.05: lambda in {10, 100, 1000} x 3 seeds.

    pcmelgan-jax sweep configs/sweeps/lamb.py --workdir runs/sweep_lamb [--print]

Runs ``lamb10_seed0`` ... and the Filter baseline ``filter_lamb10_seed0`` ... (lambda also
weighs F's distortion penalty). The evaluation groups runs by eps, so the sweep prints one
evaluation per lambda (``WORKDIR/eval_lamb10`` ...).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.base = "configs/pcmelgan.py"
    c.filter_base = "configs/pcmelgan.py:filter_only"
    c.axes = ml_collections.ConfigDict({"lamb": [10.0, 100.0, 1000.0]})
    c.seeds = [0, 1, 2]
    c.overrides = ml_collections.ConfigDict({
        "eps": 0.05,
        "data_dir": "data",
        "classifiers_workdir": "runs/classifiers",
        "vocoder_workdir": "runs/vocoder",
    })
    c.filter_only_baseline = True
    return c
