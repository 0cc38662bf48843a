"""``pcmelgan-jax prepare``: build the ``audio_mnist`` TFDS dataset and report what went in.

    pcmelgan-jax prepare --manual-dir AudioMNIST/data --data-dir DATA [--config all|paper]

The report lists speakers and utterances per split (train, validation, test) and gender, and
every file that was left out with the reason. ``prepare()`` is the same as a Python function for
later stages; an already-built dataset of the current version is reused (its stored report is
returned) unless ``overwrite``. A dataset of an older version in the same data dir (e.g.
``audio_mnist/all/1.0.0``, without a validation split) is left as it is and the current
version is built next to it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

DATASET = "audio_mnist"


def _counts_summary(counts: dict) -> dict:
    """{speaker: {gender, utterances}} -> per-gender speaker/utterance totals."""
    out = {"speakers": 0, "utterances": 0}
    for gender in ("female", "male"):
        out[gender] = {"speakers": 0, "utterances": 0}
    for entry in counts.values():
        g = ("female", "male")[int(entry["gender"])]
        out[g]["speakers"] += 1
        out[g]["utterances"] += int(entry["utterances"])
        out["speakers"] += 1
        out["utterances"] += int(entry["utterances"])
    return out


def _split_order(names) -> list[str]:
    """train, validation, test first (in that order), then any others sorted."""
    from pcmelgan_jax.data.corpus import SPLITS

    return [n for n in SPLITS if n in names] + sorted(n for n in names if n not in SPLITS)


def _report(builder, reused: bool, seconds: float) -> dict:
    meta = builder.info.metadata
    splits = {
        name: _counts_summary(dict(meta["counts"][name])) for name in _split_order(meta["counts"])
    }
    for name, summary in splits.items():
        summary["num_examples"] = int(builder.info.splits[name].num_examples)
    return {
        "dataset": f"{DATASET}/{builder.builder_config.name}",
        "version": str(builder.version),
        "data_dir": os.fspath(builder.data_dir),
        "reused": reused,
        "seconds": round(seconds, 2),
        "split": dict(meta["split"]),
        "splits": splits,
        "skipped": [{"path": p, "problem": q} for p, q in meta["skipped"]],
        "notes": [{"path": p, "problem": q} for p, q in meta["notes"]],
        "source": dict(meta["source"]),
    }


def prepare(
    manual_dir: str | os.PathLike,
    data_dir: str | os.PathLike,
    config: str = "all",
    overwrite: bool = False,
    quiet: bool = True,
) -> dict:
    """Builds ``audio_mnist/<config>`` from ``manual_dir`` into ``data_dir``; returns a report.

    Report keys: ``dataset``, ``data_dir`` (the dataset's own folder, holding ``split.json``),
    ``split`` (the recorded speaker split), ``splits`` (per split, train / validation / test:
    ``speakers``, ``utterances``, ``num_examples``, and the same per ``female`` / ``male``),
    ``skipped`` and ``notes``
    (``[{"path", "problem"}]``), ``reused``, ``seconds``. Raises ``CorpusError`` for an unusable
    corpus. The source folder is only read.
    """
    import tensorflow_datasets as tfds

    from pcmelgan_jax.data import audio_mnist  # noqa: F401  (registers the builder)
    from pcmelgan_jax.data.corpus import CONFIGS, find_data_root

    if config not in CONFIGS:
        raise ValueError(f"unknown config {config!r}; expected one of {CONFIGS}")
    if quiet:
        tfds.disable_progress_bar()
    t0 = time.perf_counter()
    data_dir = os.path.abspath(os.fspath(data_dir))
    builder = tfds.builder(f"{DATASET}/{config}", data_dir=data_dir, file_format="array_record")
    if builder.is_prepared() and not overwrite:
        return _report(builder, True, time.perf_counter() - t0)
    root = find_data_root(manual_dir)  # clear errors before TFDS's own checks
    mode = (
        tfds.download.GenerateMode.FORCE_REDOWNLOAD
        if overwrite
        else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
    )
    builder.download_and_prepare(  # file_format was given to tfds.builder above
        download_config=tfds.download.DownloadConfig(manual_dir=root, download_mode=mode),
    )
    # Re-open from disk so that the report shows what was stored.
    stored = tfds.builder(f"{DATASET}/{config}", data_dir=data_dir)
    return _report(stored, False, time.perf_counter() - t0)


def format_report(report: dict, max_listed: int = 20) -> str:
    """Human-readable report: a per-split/gender table, then skipped files and notes."""
    lines = [
        f"{report['dataset']} {report['version']} in {report['data_dir']}"
        + (" (already prepared; reused)" if report["reused"] else f" ({report['seconds']} s)"),
        f"{'split':<10} {'gender':<7} {'speakers':>8} {'utterances':>10}  speaker ids",
    ]
    for name, s in report["splits"].items():
        ids = report["split"]["splits"][name]
        for g in ("female", "male"):
            listed = " ".join(f"{i:02d}" for i in ids[g])
            lines.append(
                f"{name:<10} {g:<7} {s[g]['speakers']:>8} {s[g]['utterances']:>10}  {listed}"
            )
        lines.append(f"{name:<10} {'total':<7} {s['speakers']:>8} {s['utterances']:>10}")
    lines.append(f"split policy: {report['split']['policy']}")
    skipped = report["skipped"]
    lines.append(f"files skipped: {len(skipped)}")
    lines += [f"  {p['path']}: {p['problem']}" for p in skipped[:max_listed]]
    if len(skipped) > max_listed:
        lines.append(f"  ... and {len(skipped) - max_listed} more (see build_report.json)")
    notes = report["notes"]
    if notes:
        lines.append(f"notes: {len(notes)}")
        lines += [f"  {p['path']}: {p['problem']}" for p in notes[:max_listed]]
        if len(notes) > max_listed:
            lines.append(f"  ... and {len(notes) - max_listed} more (see build_report.json)")
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    from pcmelgan_jax.data.corpus import CorpusError
    from pcmelgan_jax.workdir import write_json_atomic

    try:
        report = prepare(args.manual_dir, args.data_dir, args.config, overwrite=args.overwrite)
    except (CorpusError, FileNotFoundError, ValueError) as e:
        print(f"prepare: error: {e}", file=sys.stderr)
        return 2
    print(format_report(report))
    if args.json:
        write_json_atomic(args.json, report, indent=1)
    return 0


def add_parser(subparsers) -> None:
    """Registers ``prepare``."""
    p = subparsers.add_parser(
        "prepare",
        help="build the audio_mnist TFDS dataset (array_record) from an AudioMNIST folder",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--manual-dir", required=True, help="AudioMNIST data/ folder (read only)")
    p.add_argument("--data-dir", required=True, help="TFDS data dir to build into")
    p.add_argument("--config", choices=("all", "paper"), default="all")
    p.add_argument("--overwrite", action="store_true", help="rebuild an existing dataset")
    p.add_argument("--json", help="also write the report as JSON to this path")
    p.set_defaults(func=_run)
