"""Data parallelism: a 1-d device mesh with a ``data`` axis, batch sharding, multi-host setup.

Parameters and optimiser states are replicated (``P()``); batches are split along their
leading axis over every device of the mesh (``P("data")``). Each process feeds its own
host-local batch; ``shard_batch`` assembles the global array. Several seeds trained in one
program (``num_seeds``) stack their batches as (N, B, ...): ``shard_seed_batch`` splits B over
``data`` and replicates the seed axis N (``P(None, "data")``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def maybe_initialize_distributed(config: Any) -> bool:
    """Calls ``jax.distributed.initialize`` when ``config.distributed`` asks for it.

    ``config.distributed`` (optional ConfigDict): ``enabled`` (bool), and optionally
    ``coordinator_address``, ``num_processes``, ``process_id``. Only the fields that are set
    are passed: with none, ``initialize()`` gets no arguments and JAX detects the cluster
    (SLURM, Open MPI, Cloud TPU, Kubernetes). Returns True when it initialised; False when
    not asked or when this process is already initialised (several runs in one process, as
    in a sweep). Call it before any other JAX computation.
    """
    dist = config.get("distributed") if hasattr(config, "get") else None
    if not dist or not dist.get("enabled", False):
        return False
    if jax.distributed.is_initialized():
        return False
    kwargs = {
        k: dist.get(k)
        for k in ("coordinator_address", "num_processes", "process_id")
        if dist.get(k) is not None
    }
    jax.distributed.initialize(**kwargs)
    return True


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh with one ``data`` axis over ``devices`` (default: every device of every process).

    The axis type is ``Auto``: with jax's default (Explicit) a reshape of a batch-sharded
    array inside a model raises a sharding type error.
    """
    auto = (jax.sharding.AxisType.Auto,)
    if devices is None:
        return jax.make_mesh((jax.device_count(),), (DATA_AXIS,), axis_types=auto)
    devices = list(devices)
    return Mesh(np.asarray(devices), (DATA_AXIS,), axis_types=auto)


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding of a fully replicated array (parameters, optimiser state, keys)."""
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """Sharding of an array split along its leading (batch) axis over ``data``."""
    return NamedSharding(mesh, P(DATA_AXIS))


def seed_batch_sharded(mesh: Mesh) -> NamedSharding:
    """Sharding of a seed-stacked batch (N, B, ...): N replicated, B split over ``data``."""
    return NamedSharding(mesh, P(None, DATA_AXIS))


def to_host(tree: Any) -> Any:
    """Every leaf as a host numpy array of its global value: ``jax.device_get`` in one
    process; with several, gathered from all processes (every process must call it)."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return jax.tree.map(
        lambda x: np.asarray(x) if getattr(x, "is_fully_replicated", True)
        else multihost_utils.process_allgather(x, tiled=True), tree)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places every leaf of ``tree`` replicated on ``mesh``."""
    return jax.device_put(tree, replicated(mesh))


def shard_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Host-local batch (per process, leading axis B_local) -> global batch-sharded arrays.

    The global batch is B_local * process_count; it must divide the number of mesh devices.
    """
    sharding = batch_sharded(mesh)
    size = mesh.devices.size
    out = {}
    for key, value in batch.items():
        value = np.asarray(value)
        _check_divisible(value.shape[0] * jax.process_count(), size)
        out[key] = jax.make_array_from_process_local_data(sharding, value)
    return out


def shard_seed_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Host-local seed-stacked batch (N, B_local, ...) -> global (N, B_local * process_count,
    ...) arrays, the seed axis replicated and the batch axis split over ``data``."""
    sharding = seed_batch_sharded(mesh)
    size = mesh.devices.size
    out = {}
    for key, value in batch.items():
        value = np.asarray(value)
        if value.ndim < 2:
            raise ValueError(f"{key}: a seed-stacked batch is (N, B, ...), got {value.shape}")
        _check_divisible(value.shape[1] * jax.process_count(), size)
        global_shape = (value.shape[0], value.shape[1] * jax.process_count(), *value.shape[2:])
        out[key] = jax.make_array_from_process_local_data(sharding, value, global_shape)
    return out


def stack_seed_batches(batches: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """N per-seed batches {name: (B, ...)} -> one {name: (N, B, ...)}."""
    return {key: np.stack([np.asarray(b[key]) for b in batches]) for key in batches[0]}


def _check_divisible(global_batch: int, size: int) -> None:
    if global_batch % size:
        raise ValueError(
            f"the global batch ({global_batch}) is not divisible by the {size} devices of "
            "the mesh; choose a batch size that is a multiple of the device count"
        )
