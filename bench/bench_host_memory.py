"""Train-step time with and without glibc malloc's huge pages (``runtime.host_memory``).

Each measurement is a fresh process (glibc reads the setting at start-up) that builds one
network's JAX train step exactly as ``bench_models`` does (batch 16, Adam, the package's
compiler options), runs it ``--warmup`` times untimed and ``--steps`` times timed, and reports
per step: the median wall time, minor page faults, and user and system CPU time. The two
settings alternate, process by process, for ``--rounds`` rounds (the same background load
for both); the table gives the median over rounds. "plain" is glibc's default
(``PCMELGAN_HUGEPAGES=0``), "huge pages" what the entry points run with.

Usage::

    .venv/bin/python -m bench.bench_host_memory [--only melgan_generator,...] [--rounds 3]
        [--steps 5] [--out bench/results/host_memory.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.common import environment, parse_subset
from pcmelgan_jax.workdir import write_json_atomic

ROOT = Path(__file__).resolve().parents[1]
NETWORKS = ("unet_filter", "unet_generator", "alexnet", "audionet", "melgan_generator",
            "melgan_discriminator")
SETTINGS = {"plain": "0", "huge_pages": "1"}


def worker(name: str, steps: int, warmup: int) -> dict[str, Any]:
    """One network's train step in this process: per-step wall ms, faults, CPU seconds."""
    import resource
    import time

    from bench import bench_models
    from pcmelgan_jax.runtime.host_memory import startup_tunables

    step = bench_models.prepare_jax(name, bench_models.make_inputs(name, 16))["train_step"]
    for _ in range(warmup):
        step()
    before = resource.getrusage(resource.RUSAGE_SELF)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(1e3 * (time.perf_counter() - t0))
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "median_ms": statistics.median(times),
        "all_ms": [round(t, 1) for t in times],
        "faults_per_step": (after.ru_minflt - before.ru_minflt) / steps,
        "user_s_per_step": (after.ru_utime - before.ru_utime) / steps,
        "system_s_per_step": (after.ru_stime - before.ru_stime) / steps,
        "glibc_tunables": startup_tunables(),
    }


def measure(name: str, setting: str, steps: int, warmup: int) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    env["PCMELGAN_HUGEPAGES"] = SETTINGS[setting]
    cmd = [sys.executable, "-m", "bench.bench_host_memory", "--worker", name,
           "--steps", str(steps), "--warmup", str(warmup)]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if out.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(only: tuple[str, ...], rounds: int, steps: int, warmup: int) -> dict[str, Any]:
    results: dict[str, Any] = {"environment": environment(), "rounds": rounds, "steps": steps,
                               "warmup": warmup, "batch_size": 16, "networks": {}}
    for name in only:
        runs: dict[str, list[dict[str, Any]]] = {s: [] for s in SETTINGS}
        for r in range(rounds):
            for setting in SETTINGS:
                runs[setting].append(measure(name, setting, steps, warmup))
            print(f"  {name} round {r + 1}/{rounds}", file=sys.stderr)
        entry = {"runs": runs}
        for setting, rs in runs.items():
            entry[setting] = {key: statistics.median(r[key] for r in rs) for key in
                              ("median_ms", "faults_per_step", "user_s_per_step",
                               "system_s_per_step")}
            entry[setting]["glibc_tunables"] = rs[0]["glibc_tunables"]
        entry["ratio"] = entry["huge_pages"]["median_ms"] / entry["plain"]["median_ms"]
        results["networks"][name] = entry
    results["environment"]["load_average_end"] = list(os.getloadavg())
    return results


def markdown(results: dict[str, Any]) -> str:
    env = results["environment"]
    lines = [
        f"Train step at batch {results['batch_size']}, {env['cpu']}, {env['cores']} cores; "
        f"median over {results['rounds']} alternating processes of each one's median of "
        f"{results['steps']} steps; ratio = huge pages / plain",
        "",
        "| network | plain ms | huge pages ms | ratio | faults per step (plain / huge) "
        "| system s per step (plain / huge) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, e in results["networks"].items():
        p, h = e["plain"], e["huge_pages"]
        lines.append(
            f"| {name} | {p['median_ms']:,.0f} | {h['median_ms']:,.0f} | {e['ratio']:.2f} "
            f"| {p['faults_per_step']:,.0f} / {h['faults_per_step']:,.0f} "
            f"| {p['system_s_per_step']:.2f} / {h['system_s_per_step']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help=f"comma-separated subset of {NETWORKS}")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps (incl. compile)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "host_memory.json"))
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.steps, max(args.warmup, 1))))
        return
    only = parse_subset(parser, args.only, NETWORKS)
    results = run(only, args.rounds, args.steps, max(args.warmup, 1))
    write_json_atomic(args.out, results)
    print(markdown(results))
    print(f"\nwritten to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    from pcmelgan_jax.runtime.host_memory import reexec_with_hugepages

    reexec_with_hugepages()  # a worker with PCMELGAN_HUGEPAGES=0 stays plain
    main()
