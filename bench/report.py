"""One markdown report of every benchmark under ``bench/``, run from a checkout:

    python -m bench.report [--quick] [--only models,train] [--out bench/results/report.md]
                           [--from-results] [--no-torch] [--results-dir DIR] [--timeout S]

Runs each benchmark of ``BENCHMARKS`` as a subprocess (``python -m bench.bench_x``; ``--quick``
passes small settings, the default is each script's full settings), then reads the JSON each
one writes to ``bench/results/`` and writes one report: a header (devices, CPU, Python and
library versions, date, load average) and one table per benchmark with columns stage /
network, batch size, JAX, PyTorch and their ratio (the ratio column's header says whether it
is a time or a throughput ratio). ``--from-results`` builds the report from the existing JSON
files without running anything; ``bench/measured/<machine>/`` folders add sections of results
recorded elsewhere.

A benchmark that fails (non-zero exit, or no fresh JSON) gets its stderr tail in the report
and makes the command exit 1; numbers measured without PyTorch show "n/a".
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.common import NETWORK_LABELS
from bench.report_tables import (
    NA,
    Table,
    anonymize_table,
    data_table,
    env_note,
    host_memory_table,
    models_table,
    seeds_table,
    train_table,
    vocoder_parts_table,
)
from pcmelgan_jax.workdir import read_json, write_text_atomic

ROOT = Path(__file__).resolve().parents[1]
STDERR_TAIL_LINES = 25


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """A benchmark script and how to read its JSON."""

    name: str
    module: str  # run as ``python -m MODULE`` from the checkout
    result: str  # JSON file name in the results folder
    title: str
    table: Callable[[Mapping[str, Any]], Table]
    quick_args: tuple[str, ...] = ()
    full_args: tuple[str, ...] = ()
    has_torch: bool = True  # accepts --no-torch


BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark("models", "bench.bench_models", "models.json",
              "Networks: forward and train step, JAX vs PyTorch", models_table,
              quick_args=("--batch-size", "4", "--repeats", "2", "--rounds", "1",
                          "--only", ",".join(NETWORK_LABELS))),
    Benchmark("data", "bench.bench_data", "data.json", "Input pipeline throughput",
              data_table, quick_args=("--batch-size", "32", "--batches", "10", "--reps", "2"),
              has_torch=False),
    Benchmark("train", "bench.bench_train", "train.json",
              "Train-step throughput per stage, JAX vs PyTorch", train_table,
              quick_args=("--batch-sizes", "16", "--repeats", "2")),
    Benchmark("anonymize", "bench.bench_anonymize", "anonymize.json",
              "Anonymisation real-time factor, JAX vs PyTorch", anonymize_table,
              quick_args=("--seconds", "10", "--clips", "8", "--repeats", "1")),
    Benchmark("seeds", "bench.bench_seeds", "seeds.json",
              "N vmapped seeds vs N sequential runs", seeds_table,
              quick_args=("--batch-size", "8", "--repeats", "2"), has_torch=False),
    Benchmark("vocoder_parts", "bench.bench_vocoder_parts", "vocoder_parts.json",
              "Vocoder stage by part, JAX vs PyTorch", vocoder_parts_table,
              quick_args=("--batch-size", "2", "--repeats", "2", "--only",
                          "step,generator,discriminator,torch_step,torch_generator,"
                          "torch_discriminator")),
    Benchmark("host_memory", "bench.bench_host_memory", "host_memory.json",
              "Train step with and without glibc malloc's huge pages", host_memory_table,
              quick_args=("--only", "melgan_discriminator", "--rounds", "1", "--steps", "2",
                          "--warmup", "1"), has_torch=False),
)


def select(names: str | Sequence[str] | None) -> list[Benchmark]:
    """The benchmarks named (comma-separated or a list), in registry order; all if empty."""
    if isinstance(names, str):
        names = [n for n in names.split(",")]
    wanted = [n.strip() for n in names or () if n.strip()]
    known = [b.name for b in BENCHMARKS]
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise ValueError(f"unknown benchmark(s) {unknown}; choose from {', '.join(known)}")
    return [b for b in BENCHMARKS if not wanted or b.name in wanted]


@dataclasses.dataclass
class Outcome:
    """What happened to one benchmark: status "ok", "failed" or "no results"."""

    bench: Benchmark
    status: str
    message: str = ""
    table: Table | None = None
    result_path: Path | None = None
    stderr_tail: str = ""
    measured: str = ""  # when and where the JSON was written
    env_note: str = ""  # where: devices, PyTorch, load


def _tail(path: Path, lines: int = STDERR_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def read_result(bench: Benchmark, path: Path, outcome: Outcome) -> Outcome:
    """Fills ``outcome.table`` from the JSON at ``path`` (status "failed" if unreadable)."""
    try:
        data = read_json(path)
        outcome.table = bench.table(data)
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
        outcome.status = "failed"
        outcome.message = f"cannot read {path}: {type(e).__name__}: {e}"
        return outcome
    mtime = datetime.datetime.fromtimestamp(path.stat().st_mtime).astimezone()
    outcome.env_note = env_note(data)
    outcome.measured = mtime.isoformat(timespec="seconds") + (
        f"; {outcome.env_note}" if outcome.env_note else "")
    return outcome


def _command(bench: Benchmark, root: Path, results_dir: Path, quick: bool, no_torch: bool
             ) -> list[str]:
    args = list(bench.quick_args if quick else bench.full_args)
    if no_torch and bench.has_torch:
        args.append("--no-torch")
    if results_dir.resolve() != (root / "bench" / "results").resolve():
        args += ["--out", str(results_dir / bench.result)]
    return [sys.executable, "-m", bench.module, *args]


def run_benchmark(
    bench: Benchmark,
    root: Path,
    results_dir: Path,
    quick: bool = False,
    no_torch: bool = False,
    timeout: float | None = None,
) -> Outcome:
    """Runs one benchmark in ``root``, logs its stdout and stderr to ``RESULTS_DIR/logs/``,
    then reads its JSON (which must be newer than the start)."""
    result = results_dir / bench.result
    cmd = _command(bench, root, results_dir, quick, no_torch)
    logs = results_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    out_log, err_log = logs / f"{bench.name}.stdout.txt", logs / f"{bench.name}.stderr.txt"
    print(f"[bench] {bench.name}: {' '.join(cmd)}", flush=True)
    start_wall, t0 = time.time(), time.perf_counter()
    with open(out_log, "w") as out, open(err_log, "w") as err:
        try:
            rc = subprocess.run(cmd, cwd=root, stdout=out, stderr=err, timeout=timeout,
                                check=False).returncode
        except subprocess.TimeoutExpired:
            rc = None
    seconds = time.perf_counter() - t0
    outcome = Outcome(bench, "ok", result_path=result, stderr_tail=_tail(err_log))
    fresh = result.is_file() and result.stat().st_mtime >= start_wall - 1.0
    if fresh:
        read_result(bench, result, outcome)
    if rc != 0:
        outcome.status = "failed"
        outcome.message = (f"timed out after {timeout} s" if rc is None
                           else f"exited with status {rc}") + f" after {seconds:.0f} s"
    elif not fresh:
        outcome.status = "failed"
        outcome.message = f"exited 0 after {seconds:.0f} s but wrote no {result}"
    print(f"[bench] {bench.name}: {outcome.status} ({seconds:.0f} s)"
          + (f": {outcome.message}" if outcome.message else ""), flush=True)
    return outcome


def from_results(bench: Benchmark, results_dir: Path) -> Outcome:
    """The outcome from an existing JSON file (nothing is run)."""
    result = results_dir / bench.result
    if not result.is_file():
        return Outcome(bench, "no results",
                       f"no {result} (run `python -m bench.report --only {bench.name}`).")
    return read_result(bench, result, Outcome(bench, "ok", result_path=result))


def _version(dist: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def environment() -> dict[str, Any]:
    """This machine: devices (``jax.devices()``), CPU, platform, versions, date, load."""
    import jax

    from bench.common import cpu_name

    try:
        devices = [f"{d.device_kind} ({d.platform}:{d.id})" for d in jax.devices()]
    except Exception as e:  # the report must still be written
        devices = [f"unavailable ({type(e).__name__}: {e})"]
    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    return {
        "devices": devices, "cpu": cpu_name(), "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {d: _version(d) for d in ("jax", "jaxlib", "flax", "optax", "torch")},
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "load_average": load,
    }


def _shown(path: Path | None, root: Path | None) -> str:
    """``path`` relative to the checkout when inside it."""
    if path is None:
        return ""
    if root is not None:
        try:
            return str(Path(path).resolve().relative_to(Path(root).resolve()))
        except ValueError:
            pass
    return str(path)


def render(
    outcomes: Sequence[Outcome], env: Mapping[str, Any], mode: str, root: Path | None = None
) -> str:
    """The markdown report: header from ``env`` (see ``environment``), then one section per
    outcome (paths shown relative to ``root``)."""
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    load = env.get("load_average")
    lines = [
        "# pcmelgan-jax benchmarks",
        "",
        f"- date: {env['date']}",
        f"- devices (jax.devices()): {', '.join(env['devices'])}",
        f"- CPU: {env['cpu']}, {env['cores']} cores; platform {env['platform']}",
        f"- Python {env['python']}; {versions}",
        "- load average (1 / 5 / 15 min): "
        + (" / ".join(f"{x:.2f}" for x in load) if load else NA),
        f"- {mode}",
    ]
    for o in outcomes:
        b = o.bench
        lines += ["", f"## {b.name}: {b.title}", "", f"`python -m {b.module}`."
                  + (f" Results `{_shown(o.result_path, root)}`, written {o.measured}."
                     if o.measured else "")]
        if o.status == "no results":
            lines += ["", o.message]
            continue
        if o.status == "failed":
            lines += ["", f"**FAILED**: {o.message}."]
            if o.stderr_tail:
                lines += ["", "stderr (last lines):", "", "```text", o.stderr_tail, "```"]
        if o.table is not None:
            lines += ["", *o.table.notes, "", o.table.markdown()]
    return "\n".join(lines) + "\n"


def recorded_dirs(root: Path) -> list[Path]:
    """The folders of ``bench/measured/`` (results recorded on other machines, e.g. a GPU)."""
    base = root / "bench" / "measured"
    return sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else []


def recorded_section(folder: Path, root: Path | None = None) -> str:
    """Markdown for one folder of recorded results: its README's first paragraph, then a
    table per JSON file whose name starts with a benchmark's result name (``train*.json``
    gets the train table, ``seeds*.json`` the seeds table, ...)."""
    lines = [f"## Recorded results: `{_shown(folder, root)}`"]
    readme = folder / "README.md"
    if readme.is_file():
        text = readme.read_text(encoding="utf-8").strip().split("\n\n")
        para = text[1] if text[0].startswith("#") and len(text) > 1 else text[0]
        lines += ["", para]
    for path in sorted(folder.glob("*.json")):
        bench = next((b for b in BENCHMARKS if path.name.startswith(b.result[:-5])), None)
        if bench is None:
            continue
        o = read_result(bench, path, Outcome(bench, "ok", result_path=path))
        lines += ["", f"### `{path.name}`: {bench.title}", ""]
        if o.status == "failed":
            lines += [f"**Unreadable**: {o.message}."]
            continue
        lines += [f"Measured with {o.env_note}." if o.env_note else "", *o.table.notes, "",
                  o.table.markdown()]
    return "\n".join(lines) + "\n"


def build_report(
    root: Path,
    only: str | Sequence[str] | None = None,
    results_dir: Path | None = None,
    run: bool = True,
    quick: bool = False,
    no_torch: bool = False,
    timeout: float | None = None,
    env: Mapping[str, Any] | None = None,
    recorded: Sequence[Path] | None = None,
) -> tuple[str, list[Outcome]]:
    """Runs (``run``) or reads (``run=False``) the selected benchmarks; returns the markdown
    report and the outcomes (any status "failed" means the command should exit 1). Each folder
    of ``recorded`` (default: ``recorded_dirs(root)``) adds a section of results recorded
    elsewhere."""
    results_dir = Path(results_dir) if results_dir else root / "bench" / "results"
    outcomes = []
    for bench in select(only):
        if run:
            outcomes.append(run_benchmark(bench, root, results_dir, quick, no_torch, timeout))
        else:
            outcomes.append(from_results(bench, results_dir))
    if not run:
        mode = f"built from the existing results in `{results_dir}` (--from-results)"
    else:
        mode = ("ran the benchmarks with the small --quick settings" if quick
                else "ran the benchmarks with their full settings")
    text = render(outcomes, env or environment(), mode, root)
    for folder in recorded_dirs(root) if recorded is None else recorded:
        text += "\n" + recorded_section(Path(folder), root)
    return text, outcomes


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.report",
        description="Runs the benchmarks of bench/ one after another and writes a markdown "
        "report (machine, versions, one JAX vs PyTorch table per benchmark).")
    parser.add_argument("--quick", action="store_true",
                        help="small settings (fewer repeats, smaller batches): minutes, not hours")
    parser.add_argument("--only", default="",
                        help="comma-separated subset of " + ",".join(b.name for b in BENCHMARKS))
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "report.md"),
                        help="report file")
    parser.add_argument("--from-results", action="store_true",
                        help="build the report from the existing JSON files; run nothing")
    parser.add_argument("--results-dir", default=None,
                        help="where the JSON files are (default bench/results)")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch columns")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds per benchmark before it counts as failed")
    args = parser.parse_args(argv)
    try:
        select(args.only)
    except ValueError as e:
        parser.error(str(e))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Writes the report; 1 when a benchmark failed."""
    args = parse_args(argv)
    text, outcomes = build_report(
        ROOT, args.only, Path(args.results_dir) if args.results_dir else None,
        run=not args.from_results, quick=args.quick, no_torch=args.no_torch,
        timeout=args.timeout,
    )
    write_text_atomic(args.out, text)
    print(text)
    failed = [o.bench.name for o in outcomes if o.status == "failed"]
    print(f"[bench] report written to {args.out}"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
