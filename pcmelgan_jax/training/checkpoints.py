"""Checkpoints of a training run: an Orbax ``CheckpointManager`` in ``WORKDIR/checkpoints``.

Each checkpoint holds four items: ``state`` (the train state), ``data_iter`` (every
process's data-iterator state, one JSON file per process), ``loop`` (the loop's JSON
bookkeeping: the RNG key, the stage's bookkeeping, the early-stop flag, the seeds) and
``config``. The preservation policy keeps the latest ``keep_checkpoints``, plus every
``keep_period`` steps when set.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from pcmelgan_jax import workdir as run_layout


def checkpoint_manager(workdir: str, config: Any) -> ocp.CheckpointManager:
    """The CheckpointManager of ``WORKDIR/checkpoints`` with ``config``'s preservation policy."""
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
        os.path.join(os.path.abspath(workdir), run_layout.CHECKPOINTS),
        options=options,
        item_names=("state", "data_iter", "loop", "config"),
        item_handlers={"data_iter": data_iter},
    )


def data_iter_filename() -> str:
    """This process's data-iterator file in a checkpoint's ``data_iter/`` folder."""
    return f"process_{jax.process_index()}-of-{jax.process_count()}.json"


def save(mngr, step: int, state: Any, train_iter: Any, loop_meta: dict, config_json: dict) -> None:
    """Saves the four items at ``step`` (replacing a checkpoint of that step)."""
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


def restore(mngr, step: int, target_state: Any) -> tuple[Any, dict, dict]:
    """(state shaped like ``target_state``, this process's data-iterator state, loop
    bookkeeping) of the checkpoint at ``step``."""
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


def check_seeds(mngr, step: int, seeds: list[int] | None) -> None:
    """Raises ValueError when the checkpoint at ``step`` holds other seeds than this run's
    (``seeds`` None: a single seed)."""
    meta = mngr.restore(step, args=ocp.args.Composite(loop=ocp.args.JsonRestore()))["loop"]
    saved = meta.get("seeds")
    if saved != seeds:
        def what(s):
            return f"the seeds {s}" if s else "a single seed"

        raise ValueError(
            f"{mngr.directory} (step {step}) holds {what(saved)}, this run trains "
            f"{what(seeds)}: use the same --config.seed and --config.num_seeds, or another "
            "workdir"
        )


def key_to_json(key: jax.Array) -> list:
    """A key as a JSON list of its uint32 words; (N,) keys as N such lists."""
    data = np.asarray(jax.random.key_data(key))
    return data.ravel().tolist() if key.ndim == 0 else data.reshape(key.shape[0], -1).tolist()


def key_from_json(data: list, impl: str = "threefry2x32") -> jax.Array:
    """The inverse of ``key_to_json`` (a key, or (N,) keys from N lists)."""
    return jax.random.wrap_key_data(np.asarray(data, np.uint32), impl=impl)
