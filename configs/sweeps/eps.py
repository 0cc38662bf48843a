"""The paper's eps sweep: eps in {0.005, 0.01, 0.05, 0.1} x 3 seeds, plus the Filter baseline.

    pcmelgan-jax sweep configs/sweeps/eps.py --workdir runs/sweep_eps [--print]
    pcmelgan-jax sweep configs/sweeps/eps.py --workdir runs/sweep_eps --jobs 8 --seeds-per-run 3

Runs ``eps0.05_seed0`` ... (configs/pcmelgan.py) and ``filter_eps0.05_seed0`` ...
(configs/pcmelgan.py:filter_only) under the workdir; the classifiers, vocoder and data come from
``overrides`` (change them with ``--config.classifiers_workdir=...``). The second command
trains the 3 seeds of a point as one program (``eps0.05_seeds0-2`` ...), 8 runs at once, one
per GPU of an 8-GPU host (``--jobs``: see ``pcmelgan_jax.sweep``).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.base = "configs/pcmelgan.py"  # PATH[:VARIANTS]; the current folder, else the package's
    c.filter_base = "configs/pcmelgan.py:filter_only"
    c.axes = ml_collections.ConfigDict({"eps": [0.005, 0.01, 0.05, 0.1]})
    c.seeds = [0, 1, 2]
    # Fixed for every run, as --config.x=y (the README's stage workdirs).
    c.overrides = ml_collections.ConfigDict({
        "data_dir": "data",
        "classifiers_workdir": "runs/classifiers",
        "vocoder_workdir": "runs/vocoder",
    })
    c.filter_only_baseline = True  # the Filter column of the paper's tables
    return c
