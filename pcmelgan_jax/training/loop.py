"""The generic training loop shared by every stage.

    result = run(config, workdir, stage)

- Data: a Grain iterator over ``config.data_dir`` / ``config.dataset`` (train split); each
  host-local batch becomes a global array sharded over the mesh's ``data`` axis.
- Checkpoints: an Orbax ``CheckpointManager`` in ``WORKDIR/checkpoints`` holding the train
  state, the data iterator state, the RNG key and the loop's bookkeeping (JSON), and the
  config. Periodic saves every ``checkpoint_every_steps``, a final save, and a preservation
  policy (the latest ``keep_checkpoints``, plus every ``keep_period`` steps when set).
  Re-running the same command restores the latest checkpoint and continues.
- Logging: ``WORKDIR/metrics.jsonl`` and ``WORKDIR/tensorboard/`` (see ``logging_utils``), a
  progress bar, periodic evaluation and samples.
- NaN guard: every step reports a ``finite`` flag; a non-finite loss raises
  ``TrainingDivergedError`` without saving, so the last good checkpoint stays.
- Seeds: a stage with ``num_seeds`` N > 1 trains N independent runs in one program (seeds
  ``config.seed + i``): its state's network leaves, its step's ``rng`` (N keys
  ``jax.random.key(config.seed + i)``) and its metrics carry a leading seed axis; N data
  iterators (seeded ``config.seed + i``) give N batches per step, stacked to (N, B, ...) (see
  ``sharding.shard_seed_batch``). One checkpoint holds the stacked state, the N iterator
  states and the N keys. Metrics are logged as the mean over seeds (split ``train``) and per
  seed (split ``train/seed<S>``, S the seed); ``evaluate`` returns (N,) values, logged the
  same way.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from pcmelgan_jax.logging_utils import MetricWriter, progress_bar, progress_postfix
from pcmelgan_jax.runtime import sharding
from pcmelgan_jax.training.state import TrainState


class TrainingDivergedError(RuntimeError):
    """A loss became NaN or infinite; the run stopped without saving the bad state."""


@dataclasses.dataclass
class Stage:
    """What a stage plugs into the loop.

    Attributes:
      name: the stage's name (progress bar, logs).
      state: the initial ``TrainState`` (replicated on the mesh); also the restore target.
      train_step: ``(state, batch, rng) -> (state, metrics)``, jitted, state donated.
      evaluate: ``(state, step) -> {name: float}`` on the evaluation split, or None.
      after_evaluation: ``(state, step, metrics, bookkeeping) -> stop?``: model selection and
        early stopping; may update the JSON-able ``bookkeeping`` dict (checkpointed).
      write_samples: ``(state, step) -> None`` (samples/ and TensorBoard), or None.
      finalize: ``(state, bookkeeping) -> {name: value}`` once training ends (exports the
        networks); its result is written to ``WORKDIR/final_metrics.json``.
      bookkeeping: initial JSON-able loop state of the stage (best values, patience...).
      num_seeds: N > 1: ``state`` network leaves are stacked (N, ...) over the seeds
        ``config.seed + i``; ``train_step`` takes (N, B, ...) batches and (N,) keys and returns
        (N,) metrics; ``evaluate`` returns {name: (N,) values}; ``write_samples`` and
        ``finalize`` get the stacked state (``finalize`` exports one run per seed; a
        ``per_seed`` entry {"seed<S>": {name: value}} of its result is logged per seed).
    """

    name: str
    state: TrainState
    train_step: Callable
    evaluate: Callable | None = None
    after_evaluation: Callable | None = None
    write_samples: Callable | None = None
    finalize: Callable | None = None
    bookkeeping: dict = dataclasses.field(default_factory=dict)
    num_seeds: int = 1


def checkpoint_manager(directory: str, config: Any):
    """An Orbax CheckpointManager with a preservation policy (no deprecated max_to_keep)."""
    import orbax.checkpoint as ocp
    from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

    policies = [pp.LatestN(n=max(1, int(config.get("keep_checkpoints", 2))))]
    keep_period = int(config.get("keep_period", 0) or 0)
    if keep_period > 0:
        policies.append(pp.EveryNSteps(interval_steps=keep_period))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=pp.AnyPreservationPolicy(policies),
        create=True,
        enable_async_checkpointing=bool(config.get("async_checkpointing", True)),
    )
    # every process saves and restores its own data iterator (its shard of the data)
    data_iter = ocp.handlers.JsonCheckpointHandler(
        filename=data_iter_filename(),
        multiprocessing_options=ocp.options.MultiprocessingOptions(primary_host=None),
    )
    return ocp.CheckpointManager(
        os.path.abspath(directory),
        options=options,
        item_names=("state", "data_iter", "loop", "config"),
        item_handlers={"data_iter": data_iter},
    )


def data_iter_filename() -> str:
    """This process's data-iterator file in a checkpoint's ``data_iter/`` folder."""
    return f"process_{jax.process_index()}-of-{jax.process_count()}.json"


def config_to_json(config: Any) -> dict:
    """The config as a JSON-able dict."""
    return json.loads(config.to_json_best_effort()) if hasattr(config, "to_json_best_effort") else (
        dict(config)
    )


def _save(mngr, step: int, state, train_iter, loop_meta: dict, config_json: dict) -> None:
    import orbax.checkpoint as ocp

    mngr.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data_iter=ocp.args.JsonSave(train_iter.get_state()),
            loop=ocp.args.JsonSave(loop_meta),
            config=ocp.args.JsonSave(config_json),
        ),
        force=True,
    )


def _restore(mngr, step: int, target_state):
    import orbax.checkpoint as ocp

    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target_state)
    restored = mngr.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), loop=ocp.args.JsonRestore()
        ),
    )
    folder = os.path.join(mngr.directory, str(step), "data_iter")
    path = os.path.join(folder, data_iter_filename())
    if not os.path.exists(path) and jax.process_count() == 1:
        path = os.path.join(folder, "metadata")  # written by earlier versions (one process)
    try:
        with open(path, encoding="utf-8") as f:
            data_iter = json.load(f)
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"{folder}: no data-iterator state for process {jax.process_index()} of "
            f"{jax.process_count()} (resume with the process count that saved it)"
        ) from e
    return restored["state"], data_iter, restored["loop"]


def key_to_json(key: jax.Array) -> list:
    """A key as a JSON list of its uint32 words; (N,) keys as N such lists."""
    data = np.asarray(jax.random.key_data(key))
    return data.ravel().tolist() if key.ndim == 0 else data.reshape(key.shape[0], -1).tolist()


def key_from_json(data: list, impl: str = "threefry2x32") -> jax.Array:
    """The inverse of ``key_to_json`` (a key, or (N,) keys from N lists)."""
    return jax.random.wrap_key_data(np.asarray(data, np.uint32), impl=impl)


def seed_keys(seeds: list[int]) -> jax.Array:
    """(N,) keys: ``jax.random.key(s)`` for each seed, stacked."""
    return jax.numpy.stack([jax.random.key(s) for s in seeds])


def run_seeds(config: Any, num_seeds: int) -> list[int]:
    """The seeds of a ``num_seeds`` run: ``config.seed + i``."""
    return [int(config.seed) + i for i in range(num_seeds)]


def per_seed(values: dict[str, Any], seeds: list[int]) -> dict[str, dict[str, float]]:
    """{name: (N,) values} -> {"": means over the seeds, "seed<S>": that seed's values}."""
    arrays = {k: np.asarray(v, np.float64).reshape(len(seeds)) for k, v in values.items()}
    out = {"": {k: float(np.mean(v)) for k, v in arrays.items()}}
    for i, s in enumerate(seeds):
        out[f"seed{s}"] = {k: float(v[i]) for k, v in arrays.items()}
    return out


class SeedIterators:
    """N data iterators (one per seed) as one: ``next`` -> host batch (N, B, ...), with a
    JSON-able ``get_state`` / ``set_state`` of the N iterator states."""

    def __init__(self, iterators: list):
        self.iterators = list(iterators)
        self.steps_per_epoch = self.iterators[0].steps_per_epoch

    def __iter__(self) -> SeedIterators:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return sharding.stack_seed_batches([next(it) for it in self.iterators])

    def get_state(self) -> dict:
        return {"num_seeds": len(self.iterators),
                "iterators": [it.get_state() for it in self.iterators]}

    def set_state(self, state: dict) -> None:
        states = state.get("iterators") if isinstance(state, dict) else None
        if states is None or len(states) != len(self.iterators):
            raise ValueError(
                f"the checkpoint's data state is for {len(states) if states else 1} seed(s), "
                f"this run has {len(self.iterators)}"
            )
        for it, st in zip(self.iterators, states, strict=True):
            it.set_state(st)

    def close(self) -> None:
        for it in self.iterators:
            it.close()


def require_path(path: str, what: str) -> str:
    """``path`` made absolute; raises FileNotFoundError naming it (and ``what``) if missing."""
    if not path:
        raise ValueError(f"no {what} configured")
    path = os.path.abspath(os.path.expanduser(os.fspath(path)))
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


def make_train_iterator(config: Any, seed: int | None = None):
    """The training batch iterator of ``config`` (per-process batch), shuffled with ``seed``
    (default ``config.seed``)."""
    from pcmelgan_jax.data.pipeline import make_dataset

    data_dir = require_path(config.data_dir, "data_dir (the prepared TFDS data)")
    per_process = config.batch_size // jax.process_count()
    return make_dataset(
        data_dir,
        config.dataset,
        "train",
        batch_size=per_process,
        seed=config.seed if seed is None else seed,
        train=True,
        worker_count=config.get("worker_count", 0),
        worker_threads=config.get("worker_threads", 0),
    )


def eval_batches(config: Any, mesh, split: str | None = None):
    """Global, sharded evaluation batches of ``split`` (default ``config.eval_split``, the
    validation split in every stage's config), padded, with ``mask``."""
    from pcmelgan_jax.data.pipeline import make_dataset

    per_process = config.eval_batch_size // jax.process_count()
    it = make_dataset(
        require_path(config.data_dir, "data_dir (the prepared TFDS data)"),
        config.dataset,
        split or config.eval_split,
        batch_size=per_process,
        seed=config.seed,
        train=False,
    )
    try:
        for batch in it:
            yield sharding.shard_batch(batch, mesh)
    finally:
        it.close()


def sum_metrics(sums: dict | None, metrics: dict) -> dict:
    """Accumulates device scalars (host floats at the end via ``jax.device_get``)."""
    if sums is None:
        return dict(metrics)
    return {k: sums[k] + metrics[k] for k in sums}


def total_steps(config: Any, steps_per_epoch: int) -> int:
    steps = int(config.get("num_train_steps", -1) or -1)
    if steps > 0:
        return steps
    return int(math.ceil(config.num_epochs * steps_per_epoch))


def _interval(value: Any, steps_per_epoch: int) -> int:
    """A step interval; 0 means once per epoch, negative never."""
    value = int(value)
    if value == 0:
        return steps_per_epoch
    return value if value > 0 else 0


def _write(writer: MetricWriter, step: int, values: dict, split: str, seeds: list[int] | None):
    """Logs ``values`` under ``split``; with ``seeds``, (N,) values as their mean under
    ``split`` and each seed's under ``split/seed<S>``."""
    if seeds is None:
        writer.write_scalars(step, values, split)
        return
    for name, scalars in per_seed(values, seeds).items():
        writer.write_scalars(step, scalars, f"{split}/{name}" if name else split)


def _check_seeds(mngr, step: int, seeds: list[int] | None, workdir: str) -> None:
    """Raises ValueError when the checkpoint at ``step`` holds other seeds than this run."""
    import orbax.checkpoint as ocp

    meta = mngr.restore(step, args=ocp.args.Composite(loop=ocp.args.JsonRestore()))["loop"]
    saved = meta.get("seeds")
    if saved != seeds:
        def what(s):
            return f"the seeds {s}" if s else "a single seed"

        raise ValueError(
            f"{workdir}/checkpoints (step {step}) holds {what(saved)}, this run trains "
            f"{what(seeds)}: use the same --config.seed and --config.num_seeds, or another "
            "workdir"
        )


def run(config: Any, workdir: str, stage: Stage, mesh=None, rng: jax.Array | None = None) -> dict:
    """Trains ``stage`` to the end (or resumes it), evaluating, logging and checkpointing.

    With ``stage.num_seeds`` N > 1 the N seeds ``config.seed + i`` train together (see the
    module docstring); ``rng`` then holds (N,) keys. Returns the final metrics (also in
    ``WORKDIR/final_metrics.json``). Raises ``TrainingDivergedError`` on a NaN or Inf loss.
    """
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    mesh = mesh if mesh is not None else sharding.make_mesh()
    num_seeds = int(stage.num_seeds)
    seeds = run_seeds(config, num_seeds) if num_seeds > 1 else None
    config_json = config_to_json(config)
    if seeds is None:
        rng = jax.random.key(config.seed) if rng is None else rng
        train_iter = make_train_iterator(config)
        shard = sharding.shard_batch
    else:
        rng = seed_keys(seeds) if rng is None else rng
        train_iter = SeedIterators([make_train_iterator(config, s) for s in seeds])
        shard = sharding.shard_seed_batch
    steps_per_epoch = train_iter.steps_per_epoch
    num_steps = total_steps(config, steps_per_epoch)
    log_every = max(1, int(config.get("log_every_steps", 10)))
    eval_every = _interval(config.get("eval_every_steps", 0), steps_per_epoch)
    ckpt_every = _interval(config.get("checkpoint_every_steps", 0), steps_per_epoch)
    samples_every = _interval(config.get("samples_every_steps", -1), steps_per_epoch)

    mngr = checkpoint_manager(os.path.join(workdir, "checkpoints"), config)
    state = stage.state
    loop_meta = {
        "rng": key_to_json(rng),
        "bookkeeping": dict(stage.bookkeeping),
        "early_stopped": False,
    }
    if seeds is not None:
        loop_meta["seeds"] = seeds
    start = 0
    latest = mngr.latest_step()
    if latest is not None:
        _check_seeds(mngr, latest, seeds, workdir)
        state, iter_state, loop_meta = _restore(mngr, latest, stage.state)
        train_iter.set_state(iter_state)
        rng = key_from_json(loop_meta["rng"])
        start = int(np.asarray(state.step))
        print(f"[{stage.name}] resuming from step {start} ({workdir}/checkpoints)", flush=True)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            json.dump(config_json, f, indent=2, sort_keys=True)
    state = sharding.replicate(state, mesh)
    writer = MetricWriter(workdir)
    bookkeeping = loop_meta["bookkeeping"]
    stop = bool(loop_meta.get("early_stopped", False))
    bar = progress_bar(num_steps, start, stage.name, enabled=config.get("progress_bar", True))
    sums, count, t_log = None, 0, time.perf_counter()
    step = start
    try:
        while step < num_steps and not stop:
            batch = shard(next(train_iter), mesh)
            state, metrics = stage.train_step(state, batch, rng)
            metrics = jax.device_get(metrics)
            finite = np.asarray(metrics.pop("finite", 1.0))
            if not np.all(finite) or not all(np.all(np.isfinite(v)) for v in metrics.values()):
                bad = sorted(k for k, v in metrics.items() if not np.all(np.isfinite(v)))
                where = ""
                if seeds is not None:
                    ok = finite.astype(bool) & np.all(
                        [np.isfinite(v) for v in metrics.values()], axis=0
                    )
                    where = f" in seed(s) {[s for s, g in zip(seeds, ok, strict=True) if not g]}"
                mngr.wait_until_finished()
                last = mngr.latest_step()
                raise TrainingDivergedError(
                    f"[{stage.name}] non-finite loss at step {step + 1} ({', '.join(bad)})"
                    f"{where}; stopping without saving. The last good checkpoint is "
                    + (f"step {last} in {workdir}/checkpoints" if last is not None else "none")
                )
            step += 1
            bar.update(1)
            sums = sum_metrics(sums, metrics)
            count += 1
            if step % log_every == 0 or step == num_steps:
                now = time.perf_counter()
                steps_per_second = count / max(now - t_log, 1e-9)
                rates = {
                    "steps_per_second": steps_per_second,
                    "examples_per_second": steps_per_second * config.batch_size * num_seeds,
                    "epoch": step / steps_per_epoch,
                }
                if seeds is None:
                    means = {k: float(v) / count for k, v in sums.items()}
                    means.update(rates)
                    writer.write_scalars(step, means, "train")
                else:
                    per = per_seed({k: np.asarray(v) / count for k, v in sums.items()}, seeds)
                    means = {**per.pop(""), **rates}
                    writer.write_scalars(step, means, "train")
                    for name, values in per.items():
                        writer.write_scalars(step, values, f"train/{name}")
                bar.set_postfix(progress_postfix(means), refresh=False)
                sums, count, t_log = None, 0, now
            if stage.evaluate is not None and eval_every and (
                step % eval_every == 0 or step == num_steps
            ):
                eval_metrics = stage.evaluate(state, step)
                _write(writer, step, eval_metrics, "eval", seeds)
                if stage.after_evaluation is not None:
                    stop = bool(stage.after_evaluation(state, step, eval_metrics, bookkeeping))
            if stage.write_samples is not None and samples_every and step % samples_every == 0:
                stage.write_samples(state, step)
            if (ckpt_every and step % ckpt_every == 0) or step == num_steps or stop:
                loop_meta["early_stopped"] = stop
                _save(mngr, step, state, train_iter, loop_meta, config_json)
        if stop and step < num_steps:
            print(f"[{stage.name}] early stop at step {step}", flush=True)
        if mngr.latest_step() != step:
            _save(mngr, step, state, train_iter, loop_meta, config_json)
        mngr.wait_until_finished()
        if stage.write_samples is not None:
            stage.write_samples(state, step)
        final = stage.finalize(state, bookkeeping) if stage.finalize is not None else {}
        final = {"step": step, **final}
        writer.write_scalars(
            step, {k: v for k, v in final.items() if isinstance(v, int | float)}, "final"
        )
        for name, values in (final.get("per_seed") or {}).items():
            writer.write_scalars(
                step, {k: v for k, v in values.items() if isinstance(v, int | float)},
                f"final/{name}",
            )
        if jax.process_index() == 0:
            with open(os.path.join(workdir, "final_metrics.json"), "w") as f:
                json.dump(final, f, indent=2, sort_keys=True)
        return final
    finally:
        bar.close()
        writer.close()
        mngr.wait_until_finished()
        mngr.close()
        train_iter.close()
