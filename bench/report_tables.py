"""The report's tables: one per benchmark JSON (``bench/report.py``), JAX next to PyTorch."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from bench.common import NETWORK_LABELS

NA = "n/a"


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
    a / b."""

    columns: tuple[str, str, str, str]
    rows: list[Row]
    notes: list[str] = dataclasses.field(default_factory=list)  # lines above the table

    def markdown(self) -> str:
        """The rows as a markdown table; a missing number or ratio is "n/a"."""
        name, a, b, ratio = self.columns
        lines = [f"| {name} | batch size | {a} | {b} | {ratio} |", "|---|---:|---:|---:|---:|"]
        for r in self.rows:
            lines.append(
                f"| {r.label} | {r.batch} | {fmt_number(r.a)} | {fmt_number(r.b)} "
                f"| {fmt_ratio(r.a, r.b)} |"
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


def env_note(d: Mapping[str, Any]) -> str:
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


def seeds_table(d: Mapping[str, Any]) -> Table:
    """``bench_seeds`` JSON: examples/s of N seeds in one program (vmapped; the 'lax.map' and
    'unrolled' rows: the other strategies) vs N sequential runs; ratio = speed-up."""
    rows = []
    for r in d["results"]:
        width = r.get("discriminator_width", 1.0)
        label = f"{r['stage']} {r['num_seeds']} seeds" + (
            f" (FD/GD width {width:g})" if width != 1.0 else "")
        sequential = _get(r, "sequential", "examples_per_s")
        for key, suffix in (("vmapped", ""), ("mapped", " lax.map"), ("unrolled", " unrolled")):
            if key in r:
                rows.append(Row(label + suffix, str(r["batch_size"]),
                                _get(r, key, "examples_per_s"), sequential))
    notes = ["Examples/s of N seeds in one program vs N sequential runs, higher is better; "
             "ratio = speed-up."]
    return Table(("stage, seeds", "one program (ex/s)", "sequential (ex/s)",
                  "speed-up (one program vs sequential)"), rows, notes)


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
