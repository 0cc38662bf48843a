"""The whole training loop against its jitted step alone, on the same stage and config.

    .venv/bin/python -m bench.bench_loop [--stage classifiers] [--steps 60] [--repeats 3]
        [--data-dir DIR] [--out bench/results/loop.json]

"loop" is ``training.loop.run`` for ``--steps`` steps in a fresh run folder: the Grain data
iterator and its host-to-device batches, the step, the on-device metric window, logging
every ``--log-every`` steps, checkpoints every ``--checkpoint-every`` steps and at the end
(Orbax, asynchronous as configured), the progress bar. The stage's evaluation, samples and
exports are switched off: they are work of their own, not the loop's. "step" is the same
jitted step called ``--steps`` times on one device-resident batch, then waited for. Each is
also timed for twice the steps ("loop_2x", "step_2x"); all four alternate in ``--repeats``
rounds after a compiling warm-up.

Reported per stage: the whole call's throughput (steps / median seconds of ``--steps``
steps) and ``loop_fraction``, the loop's share of the step's; the steady-state throughput,
``--steps`` / (median of 2x - median of 1x), which removes what a call pays once (the
iterator, the checkpoint manager, the final save and its wait), and ``steady_fraction``;
``loop_fixed_seconds``, what the loop pays once per run. Data: ``--data-dir`` (prepared
TFDS data) or a synthetic corpus prepared in a temporary folder. Writes ``--out`` (JSON,
atomically) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import tempfile
from pathlib import Path
from typing import Any

import jax

from bench.common import environment, time_interleaved
from pcmelgan_jax.workdir import write_json_atomic

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("classifiers", "vocoder")


def prepare_data(folder: str, speakers: int = 12, reps: int = 4) -> str:
    """A synthetic corpus (``speakers`` x 10 digits x ``reps``) prepared under ``folder``."""
    from pcmelgan_jax.data.prepare import prepare
    from pcmelgan_jax.data.synth import synthesize_corpus

    synthesize_corpus(Path(folder) / "corpus", speakers=speakers, reps=reps, seed=0)
    prepare(Path(folder) / "corpus", Path(folder) / "data", "all")
    return str(Path(folder) / "data")


def stage_config(stage: str, data_dir: str, steps: int, log_every: int,
                 checkpoint_every: int) -> Any:
    """The stage's small config on ``data_dir``, run for ``steps`` steps, no evaluation."""
    from pcmelgan_jax.config_files import load_config

    config = load_config(f"configs/{stage}.py:small")
    config.update(data_dir=data_dir, num_train_steps=steps, log_every_steps=log_every,
                  checkpoint_every_steps=checkpoint_every, eval_every_steps=-1,
                  samples_every_steps=-1, progress_bar=True)
    if stage == "vocoder":
        config.discriminator_start_step = 0  # the full step (G and D), not the warm-up's
    return config


def loop_and_step(config: Any, runs_dir: str) -> dict[str, Any]:
    """{"loop", "loop_2x", "step", "step_2x"}: zero-argument calls that each run ``config``'s
    steps (twice as many for the ``_2x`` ones)."""
    from pcmelgan_jax.runtime import sharding
    from pcmelgan_jax.training import loop
    from pcmelgan_jax.training.stage import make_train_iterator

    mesh = sharding.make_mesh()
    built = loop.STAGES[config.stage](config, os.path.join(runs_dir, "template"), mesh)
    initial = jax.device_get(built.state)
    stage = dataclasses.replace(built, evaluate=None, after_evaluation=None,
                                write_samples=None, finalize=None)
    it = make_train_iterator(config)
    batch = sharding.shard_batch(next(it), mesh)
    it.close()
    rng = jax.random.key(config.seed)
    runs = itertools.count()

    def run_loop(steps: int) -> int:
        workdir = os.path.join(runs_dir, f"run{next(runs)}")
        fresh = dataclasses.replace(stage, state=sharding.replicate(initial, mesh))
        return loop.run(_with_steps(config, steps), workdir, fresh, mesh)["step"]

    def run_steps(steps: int) -> int:
        state = sharding.replicate(initial, mesh)
        for _ in range(steps):
            state, metrics = stage.train_step(state, batch, rng)
        jax.block_until_ready((state, metrics))
        return steps

    n = config.num_train_steps
    return {"loop": lambda: run_loop(n), "loop_2x": lambda: run_loop(2 * n),
            "step": lambda: run_steps(n), "step_2x": lambda: run_steps(2 * n)}


def _with_steps(config: Any, steps: int) -> Any:
    out = config.copy_and_resolve_references()
    out.num_train_steps = steps
    return out


def markdown(rows: list[dict]) -> str:
    lines = ["| stage | batch | steps | loop steps/s | step steps/s | loop / step "
             "| steady loop / step | loop fixed s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['stage']} | {r['batch_size']} | {r['steps']} | "
                     f"{r['loop_steps_per_second']:.3f} | {r['step_steps_per_second']:.3f} | "
                     f"{r['loop_fraction']:.3f} | {r['steady_fraction']:.3f} | "
                     f"{r['loop_fixed_seconds']:.2f} |")
    return "\n".join(lines)


def summarize(timed: dict[str, dict], steps: int) -> dict[str, float]:
    """Throughputs and fractions from the median milliseconds of the four calls."""
    ms = {k: v["median_ms"] for k, v in timed.items()}
    whole = {k: steps / (ms[k] / 1e3) for k in ("loop", "step")}
    steady = {k: steps / max((ms[f"{k}_2x"] - ms[k]) / 1e3, 1e-9) for k in ("loop", "step")}
    return {
        "loop_steps_per_second": whole["loop"], "step_steps_per_second": whole["step"],
        "loop_fraction": whole["loop"] / whole["step"],
        "steady_loop_steps_per_second": steady["loop"],
        "steady_step_steps_per_second": steady["step"],
        "steady_fraction": steady["loop"] / steady["step"],
        "loop_fixed_seconds": ms["loop"] / 1e3 - steps / steady["loop"],
    }


def measure(stage: str, data_dir: str, args: argparse.Namespace) -> dict[str, Any]:
    config = stage_config(stage, data_dir, args.steps, args.log_every, args.checkpoint_every)
    if args.no_cache_records:
        config.cache_records = False
    with tempfile.TemporaryDirectory(prefix=f"bench_loop_{stage}_") as runs_dir:
        timed = time_interleaved(loop_and_step(config, runs_dir), args.repeats, warmup=1)
    return {
        "stage": stage, "batch_size": config.batch_size, "steps": args.steps,
        "log_every_steps": args.log_every, "checkpoint_every_steps": args.checkpoint_every,
        "cache_records": bool(config.get("cache_records", True)),
        **summarize(timed, args.steps),
        "timings_ms": {k: {f: v[f] for f in ("first_ms", "median_ms", "min_ms", "all_ms")}
                       for k, v in timed.items()},
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stage", action="append", choices=STAGES,
                   help="stage(s) to time (default classifiers)")
    p.add_argument("--steps", type=int, default=60, help="steps per timed call")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--checkpoint-every", type=int, default=30)
    p.add_argument("--repeats", type=int, default=3, help="alternating rounds")
    p.add_argument("--no-cache-records", action="store_true",
                   help="decode every record at every read (config cache_records=False)")
    p.add_argument("--data-dir", default=None, help="prepared TFDS data (default: synthetic)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "loop.json"))
    args = p.parse_args(argv)
    os.chdir(ROOT)  # the stage configs are read from configs/
    env = environment()
    with tempfile.TemporaryDirectory(prefix="bench_loop_data_") as folder:
        data_dir = args.data_dir or prepare_data(folder)
        rows = [measure(stage, data_dir, args) for stage in (args.stage or ["classifiers"])]
    write_json_atomic(args.out, {"environment": env, "results": rows})
    print(markdown(rows))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    from pcmelgan_jax.runtime.host_memory import reexec_with_hugepages

    reexec_with_hugepages()
    main()
