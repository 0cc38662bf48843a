"""Locating the source checkout (the folder holding ``train.py``, ``configs/`` and ``bench/``).

The scripts and configs live next to the package, not inside it, so commands that run them
(``pcmelgan-jax sweep --print``, ``pcmelgan-jax bench``) need an editable install or a
checkout; a plain ``pip install`` of the package has none of them.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


class RepoRootError(FileNotFoundError):
    """The package is not inside a source checkout (or the checkout lacks a needed path)."""


def repo_root(*required: str, package_dir: str | Path | None = None) -> Path:
    """The checkout holding this package: the parent of ``pcmelgan_jax/``.

    ``required``: paths relative to the root that must exist there (e.g. ``"bench"``);
    ``package_dir`` overrides where the package is (for tests). Raises ``RepoRootError``
    naming the missing path and how to get a checkout.
    """
    root = Path(package_dir or PACKAGE_DIR).resolve().parent
    for rel in required:
        if not (root / rel).exists():
            raise RepoRootError(
                f"{root / rel} does not exist: this command needs the pcmelgan-jax source "
                f"checkout (its {rel!r} next to the pcmelgan_jax package), but the package at "
                f"{Path(package_dir or PACKAGE_DIR).resolve()} is not inside one (a "
                "non-editable install?). Clone the repository and install it with "
                "`pip install -e .`, or run from the checkout."
            )
    return root
