"""Sweep configs for ``pcmelgan-jax sweep`` (a stage config expanded over a grid x seeds).

Each file's ``get_config()`` gives ``base``, ``axes``, ``seeds`` and optionally
``seeds_per_run``, ``overrides``, ``filter_only_baseline`` and ``filter_base`` (see
``pcmelgan_jax.sweep``). Two options of the command change how the runs use the machine, not
what they compute:

- ``--seeds-per-run K`` packs up to K consecutive seeds of a grid point into one run trained
  as one program (``num_seeds``; e.g. ``eps0.05_seeds0-1``, each seed's run folder in
  ``RUN/seed_<S>``, which the evaluation counts as a run of its own);
- ``--jobs N`` trains up to N runs at once in child processes, each on its own GPUs, TPU
  chips or CPU cores, its output in ``RUN/train.log``.
"""
