"""Sweep configs for ``pcmelgan-jax sweep`` (a stage config expanded over a grid x seeds)."""
