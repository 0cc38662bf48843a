"""The training loop shared by every stage.

    final_metrics = train(config, workdir)        # the stage named by config.stage

- Data: a Grain iterator over ``config.data_dir`` / ``config.dataset`` (train split); each
  host-local batch becomes a global array sharded over the mesh's ``data`` axis.
- Checkpoints (``checkpoints``): periodic saves every ``checkpoint_every_steps`` and a final
  one; re-running the same command restores the latest checkpoint and continues.
- Logging: ``WORKDIR/metrics.jsonl`` and ``WORKDIR/tensorboard/`` (see ``logging_utils``), a
  progress bar, periodic evaluation and samples.
- NaN guard: every step reports a ``finite`` flag; a non-finite loss raises
  ``TrainingDivergedError`` without saving, so the last good checkpoint stays.
- Seeds: a stage with ``num_seeds`` N > 1 trains N independent runs in one program (seeds
  ``config.seed + i``, see ``seeds``): N data iterators give N batches per step, stacked to
  (N, B, ...), and the step's ``rng`` is N keys. One checkpoint holds the stacked state, the
  N iterator states and the N keys. Metrics are logged as the mean over seeds (split
  ``train``) and per seed (split ``train/seed<S>``, S the seed); evaluations the same way.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any

import jax
import numpy as np

from pcmelgan_jax import workdir as run_layout
from pcmelgan_jax.logging_utils import MetricWriter, progress_bar, progress_postfix
from pcmelgan_jax.runtime import sharding
from pcmelgan_jax.training import checkpoints, classifiers, pcmelgan_stage, vocoder
from pcmelgan_jax.training.seeds import SeedIterators, per_seed, run_seeds, seed_keys
from pcmelgan_jax.training.stage import Stage, config_to_json, make_train_iterator, sum_metrics

# config.stage -> (config, workdir, mesh) -> Stage
STAGES = {
    "classifiers": classifiers.build_stage,
    "vocoder": vocoder.build_stage,
    "pcmelgan": pcmelgan_stage.build_stage,
}


class TrainingDivergedError(RuntimeError):
    """A loss became NaN or infinite; the run stopped without saving the bad state."""


def train(config: Any, workdir: str, mesh=None) -> dict:
    """Trains the stage named by ``config.stage`` in ``workdir`` (resuming from its latest
    checkpoint); returns its final metrics (also in ``WORKDIR/final_metrics.json``)."""
    if config.stage not in STAGES:
        raise ValueError(f"unknown stage {config.stage!r}; expected one of {tuple(STAGES)}")
    sharding.maybe_initialize_distributed(config)
    mesh = mesh if mesh is not None else sharding.make_mesh()
    stage = STAGES[config.stage](config, os.path.abspath(workdir), mesh)
    return run(config, workdir, stage, mesh)


@dataclasses.dataclass(frozen=True)
class Schedule:
    """When things happen, in steps (an interval of 0 never happens)."""

    num_steps: int
    steps_per_epoch: int
    log_every: int
    eval_every: int
    checkpoint_every: int
    samples_every: int

    @classmethod
    def of(cls, config: Any, steps_per_epoch: int) -> Schedule:
        def interval(field: str, default: int) -> int:
            # 0 means once per epoch, negative never
            value = int(config.get(field, default))
            return steps_per_epoch if value == 0 else max(value, 0)

        return cls(
            num_steps=total_steps(config, steps_per_epoch),
            steps_per_epoch=steps_per_epoch,
            log_every=max(1, int(config.get("log_every_steps", 10))),
            eval_every=interval("eval_every_steps", 0),
            checkpoint_every=interval("checkpoint_every_steps", 0),
            samples_every=interval("samples_every_steps", -1),
        )

    def due(self, interval: int, step: int) -> bool:
        """Whether an ``interval`` falls at ``step``."""
        return bool(interval) and step % interval == 0


def total_steps(config: Any, steps_per_epoch: int) -> int:
    """``config.num_train_steps`` when > 0, else ``num_epochs`` epochs."""
    steps = int(config.get("num_train_steps", -1) or -1)
    if steps > 0:
        return steps
    return int(math.ceil(config.num_epochs * steps_per_epoch))


class TrainLog:
    """Averages the training metrics over each logging interval and writes them (per seed
    too with ``seeds``), with the throughput."""

    def __init__(self, writer: MetricWriter, bar, examples_per_step: int,
                 steps_per_epoch: int, seeds: list[int] | None):
        self.writer, self.bar, self.seeds = writer, bar, seeds
        self.examples_per_step, self.steps_per_epoch = examples_per_step, steps_per_epoch
        self.sums, self.count, self.since = None, 0, time.perf_counter()

    def add(self, metrics: dict) -> None:
        self.sums = sum_metrics(self.sums, metrics)
        self.count += 1

    def flush(self, step: int) -> None:
        now = time.perf_counter()
        steps_per_second = self.count / max(now - self.since, 1e-9)
        rates = {
            "steps_per_second": steps_per_second,
            "examples_per_second": steps_per_second * self.examples_per_step,
            "epoch": step / self.steps_per_epoch,
        }
        if self.seeds is None:
            means = {k: float(v) / self.count for k, v in self.sums.items()}
            means.update(rates)
            self.writer.write_scalars(step, means, "train")
        else:
            averaged = {k: np.asarray(v) / self.count for k, v in self.sums.items()}
            per = per_seed(averaged, self.seeds)
            means = {**per.pop(""), **rates}
            self.writer.write_scalars(step, means, "train")
            for name, values in per.items():
                self.writer.write_scalars(step, values, f"train/{name}")
        self.bar.set_postfix(progress_postfix(means), refresh=False)
        self.sums, self.count, self.since = None, 0, now


def write_per_seed(writer: MetricWriter, step: int, values: dict, split: str,
                   seeds: list[int] | None) -> None:
    """Logs ``values`` under ``split``; with ``seeds``, (N,) values as their mean under
    ``split`` and each seed's under ``split/seed<S>``."""
    if seeds is None:
        writer.write_scalars(step, values, split)
        return
    for name, scalars in per_seed(values, seeds).items():
        writer.write_scalars(step, scalars, f"{split}/{name}" if name else split)


def check_finite(metrics: dict, seeds: list[int] | None, step: int, name: str, mngr) -> None:
    """Raises TrainingDivergedError when a metric of the step that ends at ``step`` (or its
    ``finite`` flag, already popped into ``metrics["finite"]``) is not finite."""
    finite = np.asarray(metrics.pop("finite", 1.0))
    if np.all(finite) and all(np.all(np.isfinite(v)) for v in metrics.values()):
        return
    bad = sorted(k for k, v in metrics.items() if not np.all(np.isfinite(v)))
    where = ""
    if seeds is not None:
        ok = finite.astype(bool) & np.all([np.isfinite(v) for v in metrics.values()], axis=0)
        where = f" in seed(s) {[s for s, g in zip(seeds, ok, strict=True) if not g]}"
    mngr.wait_until_finished()
    last = mngr.latest_step()
    raise TrainingDivergedError(
        f"[{name}] non-finite loss at step {step} ({', '.join(bad)}){where}; stopping without "
        "saving. The last good checkpoint is "
        + (f"step {last} in {mngr.directory}" if last is not None else "none")
    )


def _data(config: Any, seeds: list[int] | None, rng: jax.Array | None):
    """(training iterator, its batch sharder, the run's key or (N,) keys)."""
    if seeds is None:
        rng = jax.random.key(config.seed) if rng is None else rng
        return make_train_iterator(config), sharding.shard_batch, rng
    rng = seed_keys(seeds) if rng is None else rng
    iterators = SeedIterators([make_train_iterator(config, s) for s in seeds])
    return iterators, sharding.shard_seed_batch, rng


def _resume(mngr, stage: Stage, train_iter, seeds: list[int] | None, rng: jax.Array):
    """(state, first step, loop bookkeeping, key): from the latest checkpoint when there is
    one (``train_iter`` restored in place), else the stage's initial state and ``rng``."""
    latest = mngr.latest_step()
    if latest is None:
        loop_meta = {"rng": checkpoints.key_to_json(rng),
                     "bookkeeping": dict(stage.bookkeeping), "early_stopped": False}
        if seeds is not None:
            loop_meta["seeds"] = seeds
        return stage.state, 0, loop_meta, rng
    checkpoints.check_seeds(mngr, latest, seeds)
    state, iter_state, loop_meta = checkpoints.restore(mngr, latest, stage.state)
    train_iter.set_state(iter_state)
    start = int(np.asarray(state.step))
    print(f"[{stage.name}] resuming from step {start} ({mngr.directory})", flush=True)
    return state, start, loop_meta, checkpoints.key_from_json(loop_meta["rng"])


def _after_step(stage: Stage, state, step: int, schedule: Schedule, log: TrainLog,
                seeds: list[int] | None, bookkeeping: dict) -> bool:
    """The logging, evaluation (with the stage's model selection) and samples due at
    ``step``; True when the stage asks to stop early."""
    last = step == schedule.num_steps
    if schedule.due(schedule.log_every, step) or last:
        log.flush(step)
    stop = False
    if stage.evaluate is not None and schedule.eval_every and (
        schedule.due(schedule.eval_every, step) or last
    ):
        eval_metrics = stage.evaluate(state, step)
        write_per_seed(log.writer, step, eval_metrics, "eval", seeds)
        if stage.after_evaluation is not None:
            stop = bool(stage.after_evaluation(state, step, eval_metrics, bookkeeping))
    if stage.write_samples is not None and schedule.due(schedule.samples_every, step):
        stage.write_samples(state, step)
    return stop


def _finish(stage: Stage, state, step: int, bookkeeping: dict, writer: MetricWriter,
            workdir: str) -> dict:
    """Samples, the stage's exports and final metrics, logged and written as the run's
    completion marker ``final_metrics.json``."""
    if stage.write_samples is not None:
        stage.write_samples(state, step)
    final = stage.finalize(state, bookkeeping) if stage.finalize is not None else {}
    final = {"step": step, **final}
    scalars = [("final", final)] + [
        (f"final/{name}", values) for name, values in (final.get("per_seed") or {}).items()
    ]
    for split, values in scalars:
        writer.write_scalars(
            step, {k: v for k, v in values.items() if isinstance(v, int | float)}, split
        )
    if jax.process_index() == 0:
        run_layout.write_json_atomic(run_layout.final_metrics_path(workdir), final)
    return final


def run(config: Any, workdir: str, stage: Stage, mesh=None, rng: jax.Array | None = None) -> dict:
    """Trains ``stage`` to the end (or resumes it), evaluating, logging and checkpointing.

    With ``stage.num_seeds`` N > 1 the N seeds ``config.seed + i`` train together (see the
    module docstring); ``rng`` then holds (N,) keys. Returns the final metrics (also in
    ``WORKDIR/final_metrics.json``). Raises ``TrainingDivergedError`` on a NaN or Inf loss.
    """
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    mesh = mesh if mesh is not None else sharding.make_mesh()
    seeds = run_seeds(config, stage.num_seeds) if stage.num_seeds > 1 else None
    train_iter, shard, rng = _data(config, seeds, rng)
    schedule = Schedule.of(config, train_iter.steps_per_epoch)
    config_json = config_to_json(config)
    mngr = checkpoints.checkpoint_manager(workdir, config)
    state, step, loop_meta, rng = _resume(mngr, stage, train_iter, seeds, rng)
    if jax.process_index() == 0:
        run_layout.write_json_atomic(run_layout.config_path(workdir), config_json)
    state = sharding.replicate(state, mesh)
    writer = MetricWriter(workdir)
    bar = progress_bar(schedule.num_steps, step, stage.name,
                       enabled=config.get("progress_bar", True))
    log = TrainLog(writer, bar, config.batch_size * stage.num_seeds, schedule.steps_per_epoch,
                   seeds)
    try:
        stop = bool(loop_meta.get("early_stopped", False))
        while step < schedule.num_steps and not stop:
            state, metrics = stage.train_step(state, shard(next(train_iter), mesh), rng)
            metrics = jax.device_get(metrics)
            check_finite(metrics, seeds, step + 1, stage.name, mngr)
            step += 1
            bar.update(1)
            log.add(metrics)
            stop = _after_step(stage, state, step, schedule, log, seeds, loop_meta["bookkeeping"])
            if schedule.due(schedule.checkpoint_every, step) or step == schedule.num_steps or stop:
                loop_meta["early_stopped"] = stop
                checkpoints.save(mngr, step, state, train_iter, loop_meta, config_json)
        if stop and step < schedule.num_steps:
            print(f"[{stage.name}] early stop at step {step}", flush=True)
        if mngr.latest_step() != step:
            checkpoints.save(mngr, step, state, train_iter, loop_meta, config_json)
        mngr.wait_until_finished()
        return _finish(stage, state, step, loop_meta["bookkeeping"], writer, workdir)
    finally:
        bar.close()
        writer.close()
        mngr.wait_until_finished()
        mngr.close()
        train_iter.close()
