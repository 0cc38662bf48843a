"""One markdown report of every benchmark under ``bench/``.

    pcmelgan-jax bench [--quick] [--only models,train] [--out bench/results/report.md]
                       [--from-results] [--no-torch] [--results-dir DIR] [--timeout S]

Runs each benchmark script of ``BENCHMARKS`` as a subprocess (``python -m bench.bench_x`` from
the repository root; ``--quick`` passes small settings, the default is each script's full
settings), then reads the JSON each one writes to ``bench/results/`` and writes one report:
a header (devices, CPU, Python and library versions, date, load average) and one table per
benchmark with columns stage / network, batch size, JAX, PyTorch and their ratio (the header
of the ratio column says whether it is a time or a throughput ratio). ``--from-results``
builds the report from the existing JSON files without running anything.

A benchmark that fails (non-zero exit, or no fresh JSON) gets its stderr tail in the report
and makes the command exit 1; a script that does not exist (yet) gets one line; numbers
measured without PyTorch show "n/a". The report is written atomically.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pcmelgan_jax.workdir import write_text_atomic

NA = "n/a"
STDERR_TAIL_LINES = 25
NETWORK_LABELS = {
    "unet_filter": "UNet filter F",
    "unet_generator": "UNet generator G",
    "alexnet": "AlexNet K=2",
    "audionet": "AudioNet K=10",
    "melgan_generator": "MelGAN generator",
    "melgan_discriminator": "MelGAN discriminator (3 scales)",
}


# --------------------------------------------------------------------------- tables


@dataclasses.dataclass(frozen=True)
class Row:
    """One table row: ``a`` / ``b`` are the two measured numbers (None: not measured)."""

    label: str
    batch: str
    a: float | None
    b: float | None


@dataclasses.dataclass
class Table:
    """A benchmark's table; ``columns`` = (name, a, b, ratio) headers; the ratio column is
    a / b (b / a when ``inverted``, e.g. a speed-up from two times)."""

    columns: tuple[str, str, str, str]
    rows: list[Row]
    notes: list[str] = dataclasses.field(default_factory=list)  # lines above the table
    inverted: bool = False

    def markdown(self) -> str:
        """The rows as a markdown table; a missing number or ratio is "n/a"."""
        name, a, b, ratio = self.columns
        lines = [f"| {name} | batch size | {a} | {b} | {ratio} |", "|---|---:|---:|---:|---:|"]
        for r in self.rows:
            lines.append(
                f"| {r.label} | {r.batch} | {fmt_number(r.a)} | {fmt_number(r.b)} "
                f"| {fmt_ratio(r.b, r.a) if self.inverted else fmt_ratio(r.a, r.b)} |"
            )
        return "\n".join(lines)


def fmt_number(x: float | None) -> str:
    """3 significant digits or more for large numbers (1,234; 56.8; 2.50; 0.123); None: n/a."""
    if x is None:
        return NA
    x = float(x)
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    if abs(x) >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def ratio(a: float | None, b: float | None) -> float | None:
    """``a / b``, or None when either is missing or ``b`` is 0."""
    if a is None or b is None or float(b) == 0.0:
        return None
    return float(a) / float(b)


def fmt_ratio(a: float | None, b: float | None) -> str:
    r = ratio(a, b)
    return NA if r is None else f"{r:.2f}"


def _get(d: Any, *path: str) -> Any:
    """``d[p0][p1]...`` or None when any step is missing."""
    for p in path:
        if not isinstance(d, Mapping) or p not in d:
            return None
        d = d[p]
    return d


def _load_note(env: Mapping[str, Any] | None) -> str | None:
    if not env:
        return None
    start, end = env.get("load_average_start"), env.get("load_average_end")
    if start and end:
        return f"load average (1 min) at start / end {start[0]:.1f} / {end[0]:.1f}"
    if env.get("load_average"):
        return f"load average (1 min) {env['load_average'][0]:.1f}"
    return None


def _env_note(d: Mapping[str, Any]) -> str:
    env = d.get("environment") or {}
    parts = []
    if env.get("jax_device"):
        parts.append(f"JAX device {env['jax_device']}")
    if env.get("torch"):
        parts.append(f"torch {env['torch']} ({env.get('torch_threads', '?')} threads)")
    if env.get("torch_cuda_device"):
        parts.append(f"PyTorch CUDA device {env['torch_cuda_device']}")
    load = _load_note(env)
    if load:
        parts.append(load)
    return "; ".join(parts)


def models_table(d: Mapping[str, Any]) -> Table:
    """``bench_models`` JSON: forward and train step per network (median ms) and the MelGAN
    upsampling layers forward+backward (polyphase JAX vs PyTorch)."""
    batch = str(d.get("batch_size", "?"))
    rows = []
    for name, r in d["networks"].items():
        label = NETWORK_LABELS.get(name, name)
        for kind, what in (("forward", "forward"), ("train_step", "train step")):
            rows.append(Row(f"{label}, {what}", batch, _get(r, "jax", kind, "median_ms"),
                            _get(r, "torch", kind, "median_ms")))
    for layer in _get(d, "upsampling", "layers") or []:
        rows.append(Row(
            f"upsampling layer r={layer['ratio']} ({batch}, {layer['length_in']}, "
            f"{layer['c_in']}) -> {layer['c_out']}, forward+backward (JAX polyphase)",
            batch, _get(layer, "polyphase", "forward_backward", "median_ms"),
            _get(layer, "torch", "forward_backward", "median_ms"),
        ))
    if d.get("isolation") == "process":
        calls = (f"Median of {d.get('repeats', '?')} calls x {d.get('rounds', '?')} rounds, each "
                 "side in a worker process of its own timing blocks of calls after warm-up")
    else:
        calls = f"Median of {d.get('repeats', '?')} calls after warm-up"
    notes = [f"{calls}; "
             "times in ms, lower is better; ratio < 1: JAX is faster."]
    return Table(("network", "JAX (ms)", "PyTorch (ms)", "JAX / PyTorch time"), rows, notes)


def data_table(d: Mapping[str, Any]) -> Table:
    """``bench_data`` JSON: input-pipeline examples/s per worker setting (no PyTorch side)."""
    rows = [
        Row(f"pipeline, {r['workers']} workers, {r['threads']} reader threads",
            str(r.get("batch_size", "?")), r.get("examples_per_sec"), None)
        for r in d["results"]
    ]
    notes = ["Examples/s, higher is better. The input pipeline (Grain, NumPy) has no PyTorch "
             "counterpart here: PyTorch and ratio are n/a."]
    if d.get("step_examples_per_sec") is not None:
        ratios = ", ".join(f"{r.get('ratio_to_step', NA)}x" for r in d["results"])
        notes.append(f"Training consumes {d['step_examples_per_sec']} examples/s "
                     f"({d.get('step_source', '')}); pipeline / training: {ratios} "
                     "(needed: 10x).")
    return Table(("stage", "JAX pipeline (ex/s)", "PyTorch (ex/s)", "JAX / PyTorch throughput"),
                 rows, notes)


def train_table(d: Mapping[str, Any]) -> Table:
    """``bench_train`` JSON: train-step examples/s per stage and batch size."""
    rows = [
        Row(r["stage"] + (f" ({r['dtype']})" if r.get("dtype", "float32") != "float32" else ""),
            str(r["batch_size"]), _get(r, "jax", "examples_per_s"),
            _get(r, "torch", "examples_per_s"))
        for r in d["results"]
    ]
    notes = ["Examples/s = batch / median step time, higher is better; ratio > 1: JAX is "
             "faster."]
    return Table(("stage", "JAX (ex/s)", "PyTorch (ex/s)", "JAX / PyTorch throughput"),
                 rows, notes)


def anonymize_table(d: Mapping[str, Any]) -> Table:
    """``bench_anonymize`` JSON: real-time factors (audio s per wall s) per pipeline/input."""
    batch = f"{d.get('batch_size', '?')} / {d.get('vocoder_batch_size', '?')}"
    inputs = {"long": f"{d.get('seconds', 0):.0f} s recording",
              "clips": f"{d.get('clips', '?')} x 1 s clips"}
    rows = []
    for pipe, label in (("anonymize", "anonymize (F + G + vocoder)"),
                        ("copy_synthesis", "copy synthesis (vocoder)")):
        for key, what in inputs.items():
            if _get(d, pipe, "jax", key) is None:
                continue
            rows.append(Row(f"{label}, {what}", batch, _get(d, pipe, "jax", key, "rtf"),
                            _get(d, pipe, "torch", key, "rtf")))
    if d.get("vocoder_network"):
        rows.append(Row("vocoder network forward", str(d.get("vocoder_network_batch", "?")),
                        _get(d, "vocoder_network", "jax", "rtf"),
                        _get(d, "vocoder_network", "torch", "rtf")))
    notes = ["Real-time factor = seconds of audio per second of wall time, higher is better; "
             "batch size = U-Net windows / vocoder chunks per batch; ratio > 1: JAX is "
             f"faster. Target {d.get('target_rtf', '?')}x."]
    return Table(("pipeline", "JAX (RTF)", "PyTorch (RTF)", "JAX / PyTorch throughput"),
                 rows, notes)


_SEED_COUNT_KEYS = ("num_seeds", "seeds", "n_seeds", "n")
_THROUGHPUT_KEYS = ("examples_per_s", "examples_per_sec", "steps_per_s", "steps_per_sec")
_TIME_KEYS = ("median_s", "seconds", "wall_s", "wall_seconds", "time_s", "step_s")


def _measure(entry: Any) -> tuple[float | None, bool]:
    """(value, is_throughput) of a vmapped / sequential entry (a number = seconds)."""
    if isinstance(entry, int | float):
        return float(entry), False
    if isinstance(entry, Mapping):
        for k in _THROUGHPUT_KEYS:
            if isinstance(entry.get(k), int | float):
                return float(entry[k]), True
        for k in _TIME_KEYS:
            if isinstance(entry.get(k), int | float):
                return float(entry[k]), False
    return None, False


def seeds_table(d: Mapping[str, Any]) -> Table:
    """``bench_seeds`` JSON (N vmapped seeds vs N sequential runs): rows from ``results``
    entries with a seed count and ``vmapped`` / ``sequential`` measurements (a throughput such
    as ``examples_per_s``, or seconds). The ratio column is the speed-up from vmapping:
    vmapped / sequential throughput, or sequential / vmapped time."""
    rows, throughput = [], None
    for r in d.get("results") or d.get("rows") or []:
        n = next((r[k] for k in _SEED_COUNT_KEYS if k in r), "?")
        vm, vm_tp = _measure(r.get("vmapped", r.get("vmap")))
        seq, seq_tp = _measure(r.get("sequential"))
        if vm is None and seq is None:
            continue
        if throughput is None:
            throughput = vm_tp if vm is not None else seq_tp
        stage = r.get("stage") or r.get("name") or ""
        width = r.get("discriminator_width")
        label = f"{stage} {n} seeds".strip() + (
            f" (FD/GD width {width:g})" if width not in (None, 1, 1.0) else "")
        rows.append(Row(label, str(r.get("batch_size", "?")), vm, seq))
        for key, name in (("mapped", "lax.map"), ("unrolled", "unrolled")):
            other, _ = _measure(r.get(key))
            if other is not None:  # the same seeds in one program, another strategy
                rows.append(Row(f"{label} {name}", str(r.get("batch_size", "?")), other, seq))
    if not rows:
        raise ValueError(f"no rows with vmapped / sequential numbers (keys: {sorted(d)})")
    unit = "throughput" if throughput else "s"
    better = "higher" if throughput else "lower"
    notes = [f"N seeds in one program (vmapped; 'lax.map' / 'unrolled' rows: the other strategies) "
             f"vs N sequential runs ({better} is better); ratio = speed-up."]
    return Table(("stage, seeds", f"vmapped ({unit})", f"sequential ({unit})",
                  "speed-up (vmapped vs sequential)"), rows, notes, inverted=not throughput)


def host_memory_table(d: Mapping[str, Any]) -> Table:
    """``bench_host_memory`` JSON: train-step time with glibc malloc's huge pages (what the
    entry points run with) vs glibc's defaults, per network (fresh processes, alternating)."""
    rows = [
        Row(NETWORK_LABELS.get(name, name), str(d.get("batch_size", "?")),
            _get(e, "huge_pages", "median_ms"), _get(e, "plain", "median_ms"))
        for name, e in d["networks"].items()
    ]
    notes = ["JAX train-step time in ms, lower is better: 'huge pages' sets "
             "glibc.malloc.hugetlb=1 (runtime.host_memory), 'plain' is glibc's default; "
             "ratio < 1: huge pages are faster. Page faults per step (plain / huge pages): "
             + ", ".join(f"{NETWORK_LABELS.get(n, n)} "
                         f"{fmt_number(_get(e, 'plain', 'faults_per_step'))} / "
                         f"{fmt_number(_get(e, 'huge_pages', 'faults_per_step'))}"
                         for n, e in d["networks"].items()) + "."]
    return Table(("network", "huge pages (ms)", "plain (ms)", "huge pages / plain time"),
                 rows, notes)


def vocoder_parts_table(d: Mapping[str, Any]) -> Table:
    """``bench_vocoder_parts`` JSON: the vocoder stage's step, generator and discriminator
    (forward + gradients) and their variants, median ms, JAX vs PyTorch."""
    parts, batch = d["parts"], str(d.get("batch_size", "?"))
    rows = [
        Row(name, batch, _get(parts, name, "median_ms"),
            _get(parts, f"torch_{name}", "median_ms"))
        for name in parts if not name.startswith("torch_")
    ]
    notes = ["Median ms of interleaved rounds, lower is better; ratio < 1: JAX is faster. "
             "The variants (_strided: XLA's strided grouped convolutions in D; _direct: XLA's "
             "transposed convolutions in G) and log_mel have no PyTorch counterpart."]
    return Table(("part", "JAX (ms)", "PyTorch (ms)", "JAX / PyTorch time"), rows, notes)


# --------------------------------------------------------------------------- registry


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """A benchmark script and how to read its JSON."""

    name: str
    script: str  # relative to the repo root
    result: str  # JSON file name in the results folder
    title: str
    table: Callable[[Mapping[str, Any]], Table]
    quick_args: tuple[str, ...] = ()
    full_args: tuple[str, ...] = ()
    has_torch: bool = True  # accepts --no-torch

    @property
    def module(self) -> str:
        return self.script[:-3].replace("/", ".")


BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark("models", "bench/bench_models.py", "models.json",
              "Networks: forward and train step, JAX vs PyTorch", models_table,
              quick_args=("--batch-size", "4", "--repeats", "2", "--rounds", "1",
                          "--only", ",".join(NETWORK_LABELS))),
    Benchmark("data", "bench/bench_data.py", "data.json", "Input pipeline throughput",
              data_table, quick_args=("--batch-size", "32", "--batches", "10", "--reps", "2"),
              has_torch=False),
    Benchmark("train", "bench/bench_train.py", "train.json",
              "Train-step throughput per stage, JAX vs PyTorch", train_table,
              quick_args=("--batch-sizes", "16", "--repeats", "2")),
    Benchmark("anonymize", "bench/bench_anonymize.py", "anonymize.json",
              "Anonymisation real-time factor, JAX vs PyTorch", anonymize_table,
              quick_args=("--seconds", "10", "--clips", "8", "--repeats", "1")),
    Benchmark("seeds", "bench/bench_seeds.py", "seeds.json",
              "N vmapped seeds vs N sequential runs", seeds_table,
              quick_args=("--batch-size", "8", "--repeats", "2"), has_torch=False),
    Benchmark("vocoder_parts", "bench/bench_vocoder_parts.py", "vocoder_parts.json",
              "Vocoder stage by part, JAX vs PyTorch", vocoder_parts_table,
              quick_args=("--batch-size", "2", "--repeats", "2", "--only",
                          "step,generator,discriminator,torch_step,torch_generator,"
                          "torch_discriminator")),
    Benchmark("host_memory", "bench/bench_host_memory.py", "host_memory.json",
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


# --------------------------------------------------------------------------- running


@dataclasses.dataclass
class Outcome:
    """What happened to one benchmark: status "ok", "failed", "missing" or "no results"."""

    bench: Benchmark
    status: str
    message: str = ""
    table: Table | None = None
    result_path: Path | None = None
    seconds: float | None = None
    returncode: int | None = None
    stderr_tail: str = ""
    measured: str = ""  # when and where the JSON was written


def bench_root(package_dir: str | Path | None = None) -> Path:
    """The checkout holding ``bench/``; ``RepoRootError`` for a non-editable install."""
    from pcmelgan_jax.repo import repo_root

    return repo_root("bench", package_dir=package_dir)


def _tail(path: Path, lines: int = STDERR_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def read_result(bench: Benchmark, path: Path, outcome: Outcome) -> Outcome:
    """Fills ``outcome.table`` from the JSON at ``path`` (status "failed" if unreadable)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        outcome.table = bench.table(data)
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
        outcome.status = "failed"
        outcome.message = f"cannot read {path}: {type(e).__name__}: {e}"
        return outcome
    mtime = datetime.datetime.fromtimestamp(path.stat().st_mtime).astimezone()
    env = _env_note(data)
    outcome.measured = f"{mtime.isoformat(timespec='seconds')}" + (f"; {env}" if env else "")
    return outcome


def run_benchmark(
    bench: Benchmark,
    root: Path,
    results_dir: Path,
    quick: bool = False,
    no_torch: bool = False,
    timeout: float | None = None,
    python: str | None = None,
) -> Outcome:
    """Runs one script (``python -m bench.bench_x ARGS`` in ``root``), logs its stdout and
    stderr to ``RESULTS_DIR/logs/``, then reads its JSON (it must be newer than the start)."""
    result = results_dir / bench.result
    if not (root / bench.script).is_file():
        return Outcome(bench, "missing", f"`{bench.script}` does not exist (yet): not run.")
    args = list(bench.quick_args if quick else bench.full_args)
    if no_torch and bench.has_torch:
        args.append("--no-torch")
    if results_dir.resolve() != (root / "bench" / "results").resolve():
        args += ["--out", str(result)]
    cmd = [python or sys.executable, "-m", bench.module, *args]
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
    outcome = Outcome(bench, "ok", result_path=result, seconds=seconds, returncode=rc,
                      stderr_tail=_tail(err_log))
    fresh = result.is_file() and result.stat().st_mtime >= start_wall - 1.0
    if rc != 0:
        outcome.status = "failed"
        outcome.message = (f"timed out after {timeout} s" if rc is None
                           else f"exited with status {rc}") + f" after {seconds:.0f} s"
    elif not fresh:
        outcome.status = "failed"
        outcome.message = f"exited 0 after {seconds:.0f} s but wrote no {result}"
    print(f"[bench] {bench.name}: {outcome.status} ({seconds:.0f} s)"
          + (f": {outcome.message}" if outcome.message else ""), flush=True)
    if fresh:
        message, status = outcome.message, outcome.status
        read_result(bench, result, outcome)
        if status == "failed":  # keep the failure, but still show what was written
            outcome.status, outcome.message = status, message
    return outcome


def from_results(bench: Benchmark, root: Path, results_dir: Path) -> Outcome:
    """The outcome from an existing JSON file (nothing is run)."""
    result = results_dir / bench.result
    if not result.is_file():
        if not (root / bench.script).is_file():
            return Outcome(bench, "missing", f"`{bench.script}` does not exist (yet); no results.")
        return Outcome(bench, "no results",
                       f"no {result} (run `pcmelgan-jax bench --only {bench.name}`).")
    return read_result(bench, result, Outcome(bench, "ok", result_path=result))


# --------------------------------------------------------------------------- report


def _version(dist: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def environment() -> dict[str, Any]:
    """This machine: devices (``jax.devices()``), CPU, platform, versions, date, load."""
    try:
        import jax

        devices = [f"{d.device_kind} ({d.platform}:{d.id})" for d in jax.devices()]
    except Exception as e:  # the report must still be written
        devices = [f"unavailable ({type(e).__name__}: {e})"]
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    return {
        "devices": devices, "cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
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
        lines += ["", f"## {b.name}: {b.title}", "", f"Script `{b.script}`."
                  + (f" Results `{_shown(o.result_path, root)}`, written {o.measured}."
                     if o.measured else "")]
        if o.status in ("missing", "no results"):
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
        env = _env_note(json.loads(path.read_text(encoding="utf-8")))
        lines += ["", f"### `{path.name}`: {bench.title}", ""]
        if o.status == "failed":
            lines += [f"**Unreadable**: {o.message}."]
            continue
        lines += [f"Measured with {env}." if env else "", *o.table.notes, "",
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
            outcomes.append(from_results(bench, root, results_dir))
    if not run:
        mode = f"built from the existing results in `{results_dir}` (--from-results)"
    else:
        mode = ("ran the benchmarks with the small --quick settings" if quick
                else "ran the benchmarks with their full settings")
    text = render(outcomes, env or environment(), mode, root)
    for folder in recorded_dirs(root) if recorded is None else recorded:
        text += "\n" + recorded_section(Path(folder), root)
    return text, outcomes


def _run(args) -> int:
    from pcmelgan_jax.repo import RepoRootError

    try:
        root = bench_root()
        select(args.only)
    except (RepoRootError, ValueError) as e:
        print(f"pcmelgan-jax bench: error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else root / "bench" / "results" / "report.md"
    text, outcomes = build_report(
        root, args.only, Path(args.results_dir) if args.results_dir else None,
        run=not args.from_results, quick=args.quick, no_torch=args.no_torch,
        timeout=args.timeout,
    )
    write_text_atomic(out, text)
    print(text)
    failed = [o.bench.name for o in outcomes if o.status == "failed"]
    print(f"[bench] report written to {out}"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""), file=sys.stderr)
    return 1 if failed else 0


def add_parser(subparsers) -> None:
    """Registers ``bench``."""
    p = subparsers.add_parser(
        "bench",
        help="run every benchmark (bench/) and write one markdown report",
        description=(
            "Runs bench/bench_{models,data,train,anonymize,seeds}.py one after another and "
            "writes a markdown report (machine, versions, one JAX vs PyTorch table per "
            "benchmark). Needs the source checkout (bench/ next to the package)."
        ),
    )
    p.add_argument("--quick", action="store_true",
                   help="small settings (fewer repeats, smaller batches): minutes, not hours")
    p.add_argument("--only", default="",
                   help="comma-separated subset of " + ",".join(b.name for b in BENCHMARKS))
    p.add_argument("--out", default=None, help="report file (default bench/results/report.md)")
    p.add_argument("--from-results", action="store_true",
                   help="build the report from the existing JSON files; run nothing")
    p.add_argument("--results-dir", default=None,
                   help="where the JSON files are (default bench/results of the checkout)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch columns")
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds per benchmark before it counts as failed")
    p.set_defaults(func=_run)
