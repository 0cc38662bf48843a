"""What a stage plugs into the loop (``Stage``), and the data and config helpers stages share."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterator
from typing import Any

import jax

from pcmelgan_jax.runtime import sharding
from pcmelgan_jax.training.state import TrainState


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
      write_samples: ``(state, step, writer) -> None``: samples/ and, through the run's
        ``MetricWriter`` (a no-op on processes other than 0), TensorBoard; or None.
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


def config_to_json(config: Any) -> dict:
    """The config as a JSON-able dict."""
    if hasattr(config, "to_json_best_effort"):
        return json.loads(config.to_json_best_effort())
    return dict(config)


def require_path(path: str, what: str) -> str:
    """``path`` made absolute; raises FileNotFoundError naming it (and ``what``) if missing."""
    if not path:
        raise ValueError(f"no {what} configured")
    path = os.path.abspath(os.path.expanduser(os.fspath(path)))
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


def _data_dir(config: Any) -> str:
    return require_path(config.data_dir, "data_dir (the prepared TFDS data)")


def make_train_iterator(config: Any, seed: int | None = None):
    """The training batch iterator of ``config`` (per-process batch), shuffled with ``seed``
    (default ``config.seed``)."""
    from pcmelgan_jax.data.pipeline import make_dataset

    return make_dataset(
        _data_dir(config),
        config.dataset,
        "train",
        batch_size=config.batch_size // jax.process_count(),
        seed=config.seed if seed is None else seed,
        train=True,
        worker_count=config.get("worker_count", 0),
        worker_threads=config.get("worker_threads", 0),
        cache_records=config.get("cache_records", True),
    )


def eval_batches(config: Any, mesh, split: str | None = None) -> Iterator[dict]:
    """Global, sharded evaluation batches of ``split`` (default ``config.eval_split``, the
    validation split in every stage's config), padded, with ``mask``."""
    from pcmelgan_jax.data.pipeline import make_dataset

    it = make_dataset(
        _data_dir(config),
        config.dataset,
        split or config.eval_split,
        batch_size=config.eval_batch_size // jax.process_count(),
        seed=config.seed,
        train=False,
        cache_records=config.get("cache_records", True),
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
