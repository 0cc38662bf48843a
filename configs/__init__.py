"""The configs of every stage, importable as ``pcmelgan_jax.configs`` (pyproject maps this folder).

Each file's ``get_config(arg)`` takes its variants after a ``:`` on the command line, e.g.
``--config configs/pcmelgan.py:small,filter_only``; ``sweeps/`` holds the sweep configs.
"""
