"""The training loop shared by every stage.

    final_metrics = train(config, workdir)        # the stage named by config.stage

- Data: a Grain iterator over ``config.data_dir`` / ``config.dataset`` (train split); each
  host-local batch becomes a global array sharded over the mesh's ``data`` axis.
- Checkpoints (``checkpoints``): periodic saves every ``checkpoint_every_steps`` and a final
  one; re-running the same command restores the latest checkpoint and continues.
- Logging: ``WORKDIR/metrics.jsonl`` and ``WORKDIR/tensorboard/`` (see ``logging_utils``), a
  progress bar, periodic evaluation and samples.
- Metrics stay on the device: each step's metrics are added to a device-side window (sums
  and finiteness, one small jitted update) and fetched only at host events: logging,
  evaluation, samples and checkpoints. Between them the loop transfers nothing to the host,
  so dispatch runs ahead of the device.
- NaN guard: every step reports a ``finite`` flag, ANDed into the window; every host event
  checks it first, so a non-finite step is caught at the next host event at the latest and
  raises ``TrainingDivergedError`` (naming the step) without saving: no checkpoint is written
  from an unchecked window, and the last good one stays.
- One process per run folder: ``WORKDIR/.lock`` (``workdir.exclusive``) is held while
  training; a second process on the same folder stops with a one-line error.
- Seeds: a stage with ``num_seeds`` N > 1 trains N independent runs in one program (seeds
  ``config.seed + i``, see ``seeds``): N data iterators give N batches per step, stacked to
  (N, B, ...), and the step's ``rng`` is N keys. One checkpoint holds the stacked state, the
  N iterator states and the N keys. Metrics are logged as the mean over seeds (split
  ``train``) and per seed (split ``train/seed<S>``, S the seed); evaluations the same way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pcmelgan_jax import workdir as run_layout
from pcmelgan_jax.logging_utils import MetricWriter, progress_bar, progress_postfix
from pcmelgan_jax.runtime import sharding
from pcmelgan_jax.training import checkpoints, classifiers, pcmelgan_stage, vocoder
from pcmelgan_jax.training.seeds import SeedIterators, per_seed, run_seeds, seed_keys
from pcmelgan_jax.training.stage import Stage, config_to_json, make_train_iterator

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
    workdir = os.path.abspath(workdir)
    with _exclusive(workdir):  # before the stage is built: a busy folder is refused at once
        mesh = mesh if mesh is not None else sharding.make_mesh()
        stage = STAGES[config.stage](config, workdir, mesh)
        return run(config, workdir, stage, mesh)


@contextlib.contextmanager
def _exclusive(workdir: str):
    """``workdir.exclusive`` on process 0 (the processes of one multi-host run share the
    folder)."""
    if jax.process_index() == 0:
        with run_layout.exclusive(workdir):
            yield
    else:
        yield


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

    def host_event(self, step: int) -> bool:
        """Whether the loop fetches from the device after ``step``: to log, evaluate, write
        samples or checkpoint (the last step does all of them)."""
        return step == self.num_steps or any(
            self.due(interval, step) for interval in
            (self.log_every, self.eval_every, self.samples_every, self.checkpoint_every)
        )


def total_steps(config: Any, steps_per_epoch: int) -> int:
    """``config.num_train_steps`` when > 0, else ``num_epochs`` epochs."""
    steps = int(config.get("num_train_steps", -1) or -1)
    if steps > 0:
        return steps
    return int(math.ceil(config.num_epochs * steps_per_epoch))


class MetricsWindow:
    """The device-side accumulator of the steps since the last fetch.

    ``add`` folds one step's metrics in with one jitted call (no host transfer): ``sums``
    per metric (reset at each log; a metric may appear later, e.g. the vocoder's
    discriminator loss, and is averaged over the steps that reported it), and the health of
    the steps since the last check: ``ok`` (every metric and the step's ``finite`` flag
    finite; (N,) with seeds), ``bad`` (which metrics were not) and ``first_bad`` (the first
    failing step, -1 if none).
    """

    def __init__(self):
        self.sums, self.health, self.counts, self.steps = {}, None, {}, 0
        self._add = jax.jit(_add_to_window, donate_argnums=(0, 1))

    def add(self, metrics: dict, step: int) -> None:
        self.sums, self.health = self._add(self.sums, self.health, metrics, step)
        for name in metrics:
            if name != "finite":
                self.counts[name] = self.counts.get(name, 0) + 1
        self.steps += 1

    def take_health(self) -> dict | None:
        """The health since the last check, on the host (None when no step ran)."""
        health, self.health = self.health, None
        return None if health is None else jax.device_get(health)

    def take_sums(self) -> tuple[dict, dict, int]:
        """(metric sums, steps that reported each metric, steps) since the last log, on the
        host."""
        sums, counts, steps = self.sums, self.counts, self.steps
        self.sums, self.counts, self.steps = {}, {}, 0
        return jax.device_get(sums), counts, steps


def _add_to_window(sums: dict, health: dict | None, metrics: dict, step) -> tuple[dict, dict]:
    """``metrics`` added to ``sums`` (a metric seen for the first time starts its sum) and to
    ``health`` (None: a new window)."""
    values = {k: v for k, v in metrics.items() if k != "finite"}
    finite = {k: jnp.isfinite(v) for k, v in values.items()}
    ok = jnp.asarray(metrics.get("finite", 1.0)) > 0
    for f in finite.values():
        ok = ok & f
    if health is None:
        health = {"ok": jnp.ones_like(ok), "first_bad": jnp.full(ok.shape, -1, jnp.int32),
                  "bad": {}}
    bad = dict(health["bad"])
    for k, f in finite.items():
        bad[k] = (bad[k] | ~f) if k in bad else ~f
    sums = dict(sums)
    for k, v in values.items():
        sums[k] = (sums[k] + v) if k in sums else v
    first_bad = jnp.where(health["ok"] & ~ok, step, health["first_bad"])
    return sums, {"ok": health["ok"] & ok, "first_bad": first_bad, "bad": bad}


class TrainLog:
    """Writes the training metrics averaged over each logging interval (per seed too with
    ``seeds``), with the throughput."""

    def __init__(self, writer: MetricWriter, bar, examples_per_step: int,
                 steps_per_epoch: int, seeds: list[int] | None):
        self.writer, self.bar, self.seeds = writer, bar, seeds
        self.examples_per_step, self.steps_per_epoch = examples_per_step, steps_per_epoch
        self.since = time.perf_counter()

    def flush(self, step: int, sums: dict, counts: dict, steps: int) -> None:
        """Writes the means of ``sums`` (``counts[name]`` steps each) over the ``steps``
        steps since the last flush."""
        now = time.perf_counter()
        if not steps:
            return
        steps_per_second = steps / max(now - self.since, 1e-9)
        rates = {
            "steps_per_second": steps_per_second,
            "examples_per_second": steps_per_second * self.examples_per_step,
            "epoch": step / self.steps_per_epoch,
        }
        if self.seeds is None:
            means = {k: float(v) / counts[k] for k, v in sums.items()}
            means.update(rates)
            self.writer.write_scalars(step, means, "train")
        else:
            averaged = {k: np.asarray(v) / counts[k] for k, v in sums.items()}
            per = per_seed(averaged, self.seeds)
            means = {**per.pop(""), **rates}
            self.writer.write_scalars(step, means, "train")
            for name, values in per.items():
                self.writer.write_scalars(step, values, f"train/{name}")
        self.bar.set_postfix(progress_postfix(means), refresh=False)
        self.since = now


def write_per_seed(writer: MetricWriter, step: int, values: dict, split: str,
                   seeds: list[int] | None) -> None:
    """Logs ``values`` under ``split``; with ``seeds``, (N,) values as their mean under
    ``split`` and each seed's under ``split/seed<S>``."""
    if seeds is None:
        writer.write_scalars(step, values, split)
        return
    for name, scalars in per_seed(values, seeds).items():
        writer.write_scalars(step, scalars, f"{split}/{name}" if name else split)


def check_finite(health: dict | None, seeds: list[int] | None, step: int, name: str,
                 mngr) -> None:
    """Raises TrainingDivergedError when a step of the window that ends at ``step`` (its
    ``health``, see MetricsWindow) had a non-finite metric or ``finite`` flag."""
    if health is None or np.all(health["ok"]):
        return
    ok = np.atleast_1d(health["ok"])
    first = int(np.min(np.atleast_1d(health["first_bad"])[~ok]))
    bad = sorted(k for k, v in health["bad"].items() if np.any(v))
    where = ""
    if seeds is not None:
        where = f" in seed(s) {[s for s, good in zip(seeds, ok, strict=True) if not good]}"
    mngr.wait_until_finished()
    last = mngr.latest_step()
    raise TrainingDivergedError(
        f"[{name}] non-finite loss at step {first} ({', '.join(bad) or 'parameters'}){where}, "
        f"found at step {step}; stopping without saving. The last good checkpoint is "
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
                window: MetricsWindow, seeds: list[int] | None, bookkeeping: dict) -> bool:
    """The logging, evaluation (with the stage's model selection) and samples due at
    ``step`` (the window already checked); True when the stage asks to stop early."""
    last = step == schedule.num_steps
    if schedule.due(schedule.log_every, step) or last:
        log.flush(step, *window.take_sums())
    stop = False
    if stage.evaluate is not None and schedule.eval_every and (
        schedule.due(schedule.eval_every, step) or last
    ):
        eval_metrics = stage.evaluate(state, step)
        write_per_seed(log.writer, step, eval_metrics, "eval", seeds)
        if stage.after_evaluation is not None:
            stop = bool(stage.after_evaluation(state, step, eval_metrics, bookkeeping))
    if stage.write_samples is not None and schedule.due(schedule.samples_every, step) and not last:
        stage.write_samples(state, step, log.writer)  # the last step's: in _finish
    return stop


def _finish(stage: Stage, state, step: int, bookkeeping: dict, writer: MetricWriter,
            workdir: str) -> dict:
    """Samples, the stage's exports and final metrics, logged and written as the run's
    completion marker ``final_metrics.json``."""
    if stage.write_samples is not None:
        stage.write_samples(state, step, writer)
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


def run(config: Any, workdir: str, stage: Stage, mesh=None, rng: jax.Array | None = None,
        transfer_guard: str = "allow") -> dict:
    """Trains ``stage`` to the end (or resumes it), evaluating, logging and checkpointing.

    With ``stage.num_seeds`` N > 1 the N seeds ``config.seed + i`` train together (see the
    module docstring); ``rng`` then holds (N,) keys. Returns the final metrics (also in
    ``WORKDIR/final_metrics.json``). Raises ``TrainingDivergedError`` on a NaN or Inf loss and
    ``workdir.WorkdirBusyError`` when another process trains in ``workdir``.
    ``transfer_guard``: the ``jax.transfer_guard_device_to_host`` level of the steps between
    host events (tests set ``"disallow_explicit"`` to prove they fetch nothing).
    """
    workdir = os.path.abspath(workdir)
    with _exclusive(workdir):
        return _run(config, workdir, stage, mesh, rng, transfer_guard)


def _run(config: Any, workdir: str, stage: Stage, mesh, rng: jax.Array | None,
         transfer_guard: str) -> dict:
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
    window = MetricsWindow()
    try:
        stop = bool(loop_meta.get("early_stopped", False))
        while step < schedule.num_steps and not stop:
            with jax.transfer_guard_device_to_host(transfer_guard):
                state, metrics = stage.train_step(state, shard(next(train_iter), mesh), rng)
                window.add(metrics, step + 1)
            step += 1
            bar.update(1)
            if not schedule.host_event(step):
                continue
            check_finite(window.take_health(), seeds, step, stage.name, mngr)
            stop = _after_step(stage, state, step, schedule, log, window, seeds,
                               loop_meta["bookkeeping"])
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
