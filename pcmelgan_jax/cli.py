"""The ``pcmelgan-jax`` console script: one subcommand per task.

Each subcommand lives in the module that does its work; that module exposes
``add_parser(subparsers)`` which registers its subcommand(s) with ``func`` set to a callable
taking the parsed ``argparse.Namespace`` and returning an exit code. Modules are imported
only when their subcommand is listed here, and they keep heavy imports inside ``func``.
A subcommand with the default ``overrides=[]`` takes ``--config.FIELD=VALUE`` arguments
(one syntax everywhere, see ``config_files``); any other unknown argument is an error.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from pcmelgan_jax.runtime.host_memory import reexec_with_hugepages

# subcommand -> module providing add_parser(subparsers)
SUBCOMMANDS: dict[str, str] = {
    "train": "pcmelgan_jax.commands",
    "eval": "pcmelgan_jax.commands",
    "import-torch": "pcmelgan_jax.interop.torch_import",
    "parity": "pcmelgan_jax.interop.parity",
    "synth-data": "pcmelgan_jax.data.synth",
    "prepare": "pcmelgan_jax.data.prepare",
    "quickstart": "pcmelgan_jax.quickstart",
    "anonymize": "pcmelgan_jax.anonymize",
    "baselines": "pcmelgan_jax.commands",
    "sweep": "pcmelgan_jax.sweep",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pcmelgan-jax", description="PCMelGAN (adversarial privacy for speech) in JAX."
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in dict.fromkeys(SUBCOMMANDS.values()):  # a module may add several
        importlib.import_module(module_name).add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # the console script: glibc malloc's huge pages (see host_memory)
        reexec_with_hugepages()
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # --config.FIELD=VALUE overrides, for the subcommands that take them
    unknown = [a for a in extra if not (hasattr(args, "overrides") and a.startswith("--config."))]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
