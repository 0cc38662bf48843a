"""Package list: ``pcmelgan_jax*`` plus the top-level ``configs/`` as ``pcmelgan_jax.configs``.

pyproject.toml cannot combine a package search with a mapped folder, so the list is built here.
"""

from setuptools import find_packages, setup

setup(packages=[
    *find_packages(include=["pcmelgan_jax", "pcmelgan_jax.*"]),
    "pcmelgan_jax.configs", "pcmelgan_jax.configs.sweeps",
])
