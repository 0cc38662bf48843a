"""The whole training loop against its jitted step alone, on the same stage and config.

    .venv/bin/python -m bench.bench_loop [--stage classifiers] [--steps 60] [--repeats 3]
        [--data-dir DIR] [--out bench/results/loop.json]

"loop" is ``training.loop.run`` for ``--steps`` steps in a fresh run folder: the Grain data
iterator and its host-to-device batches, the step, the on-device metric window, logging
every ``--log-every`` steps, checkpoints every ``--checkpoint-every`` steps and at the end
(Orbax, asynchronous as configured), the progress bar. The stage's evaluation, samples and
exports are switched off: they are work of their own, not the loop's. "step" is the same
jitted step called ``--steps`` times on one device-resident batch, then waited for. The two
alternate in ``--repeats`` rounds after a compiling warm-up; throughput = steps / median
seconds, and ``loop / step`` is the fraction of the step's throughput the loop keeps.
Data: ``--data-dir`` (prepared TFDS data) or a synthetic corpus prepared in a temporary
folder. Writes ``--out`` (JSON, atomically) and prints a markdown table.
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
    """{"loop": ..., "step": ...}: zero-argument calls that each run ``config``'s steps."""
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

    def run_loop() -> int:
        workdir = os.path.join(runs_dir, f"run{next(runs)}")
        fresh = dataclasses.replace(stage, state=sharding.replicate(initial, mesh))
        return loop.run(config, workdir, fresh, mesh)["step"]

    def run_steps() -> int:
        state = sharding.replicate(initial, mesh)
        for _ in range(config.num_train_steps):
            state, metrics = stage.train_step(state, batch, rng)
        jax.block_until_ready((state, metrics))
        return config.num_train_steps

    return {"loop": run_loop, "step": run_steps}


def markdown(rows: list[dict]) -> str:
    lines = ["| stage | batch | steps | loop steps/s | step steps/s | loop / step |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['stage']} | {r['batch_size']} | {r['steps']} | "
                     f"{r['loop_steps_per_second']:.3f} | {r['step_steps_per_second']:.3f} | "
                     f"{r['loop_fraction']:.3f} |")
    return "\n".join(lines)


def measure(stage: str, data_dir: str, args: argparse.Namespace) -> dict[str, Any]:
    config = stage_config(stage, data_dir, args.steps, args.log_every, args.checkpoint_every)
    with tempfile.TemporaryDirectory(prefix=f"bench_loop_{stage}_") as runs_dir:
        timed = time_interleaved(loop_and_step(config, runs_dir), args.repeats, warmup=1)
    rates = {k: args.steps / (v["median_ms"] / 1e3) for k, v in timed.items()}
    return {
        "stage": stage, "batch_size": config.batch_size, "steps": args.steps,
        "log_every_steps": args.log_every, "checkpoint_every_steps": args.checkpoint_every,
        "loop_steps_per_second": rates["loop"], "step_steps_per_second": rates["step"],
        "loop_fraction": rates["loop"] / rates["step"],
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
