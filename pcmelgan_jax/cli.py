"""The ``pcmelgan-jax`` console script: one subcommand per task.

Each subcommand lives in the module that does its work; that module exposes
``add_parser(subparsers)`` which registers the subcommand with ``func`` set to a callable
taking the parsed ``argparse.Namespace`` and returning an exit code. Modules are imported
only when their subcommand is listed here, and they keep heavy imports inside ``func``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from pcmelgan_jax.runtime.host_memory import reexec_with_hugepages

# subcommand -> module providing add_parser(subparsers)
SUBCOMMANDS: dict[str, str] = {
    "import-torch": "pcmelgan_jax.interop.torch_import",
    "parity": "pcmelgan_jax.interop.parity",
    "synth-data": "pcmelgan_jax.data.synth",
    "prepare": "pcmelgan_jax.data.prepare",
    "quickstart": "pcmelgan_jax.quickstart",
    "anonymize": "pcmelgan_jax.anonymize",
    "baselines": "pcmelgan_jax.evaluation.command",
    "sweep": "pcmelgan_jax.sweep",
    "bench": "pcmelgan_jax.bench_report",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pcmelgan-jax", description="PCMelGAN (adversarial privacy for speech) in JAX."
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in SUBCOMMANDS.values():
        importlib.import_module(module_name).add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # the console script: glibc malloc's huge pages (see host_memory)
        reexec_with_hugepages()
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not hasattr(args, "overrides"):  # only some subcommands take --config.x=y
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
