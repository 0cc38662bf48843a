"""Model checkpoints: one network's variables (Orbax) plus a ``model.json`` that says what it is.

Layout of a model checkpoint directory::

    DIR/model.json     {"format": 1, "network": "melgan_generator", "arch": {...}, ...}
    DIR/variables/     Orbax PyTree checkpoint of {'params': ..., 'batch_stats': ...}

A directory is written under a temporary name and renamed into place, so a crash never
leaves a half-written checkpoint where a good one was. In a multi-process job (a filesystem
shared by the processes) every process calls ``save_model`` with the same arguments: they
take part in Orbax's save into one temporary directory, process 0 renames it into place, and
all return once it is there.
"""

from __future__ import annotations

import functools
import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pcmelgan_jax.models.registry import build_model, variable_shapes
from pcmelgan_jax.workdir import MODEL_JSON, read_json, write_json_atomic

FORMAT_VERSION = 1
VARIABLES_DIR = "variables"


class CheckpointError(ValueError):
    """A model checkpoint that is missing or holds another network than the one asked for."""


def _checkpointer():
    import orbax.checkpoint as ocp

    return ocp.StandardCheckpointer()


def _sync(name: str) -> None:
    """Waits for every process of a multi-process job (no-op with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _temporary_name(directory: str) -> str:
    """A fresh temporary sibling of ``directory``, the same in every process."""
    token = uuid.uuid4().int % 2**31
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        token = int(multihost_utils.broadcast_one_to_all(np.int32(token)))
    parent, name = os.path.split(directory)
    return os.path.join(parent, f".{name}.tmp-{token:08x}")


def save_model(
    directory: str | os.PathLike,
    network: str,
    variables: Mapping[str, Any],
    arch: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> str:
    """Writes ``variables`` of ``network`` (built with ``arch``) to ``directory``. Returns its path.

    Refuses an existing ``directory`` unless ``overwrite``; the old one is replaced only
    after the new one is complete. With several processes, every process must call it with
    the same arguments (module docstring).
    """
    directory = os.path.abspath(os.fspath(directory))
    primary = jax.process_index() == 0
    if os.path.exists(directory) and not overwrite:
        raise FileExistsError(f"{directory}: already exists (pass overwrite=True to replace it)")
    tmp = _temporary_name(directory)
    try:
        if primary:
            os.makedirs(os.path.dirname(tmp), exist_ok=True)
            os.makedirs(tmp)
        _sync(f"save_model:{tmp}:created")
        checkpointer = _checkpointer()  # every process takes part in Orbax's save
        checkpointer.save(os.path.join(tmp, VARIABLES_DIR), jax.tree.map(np.asarray,
                                                                           dict(variables)))
        checkpointer.wait_until_finished()
        if primary:
            meta = {"format": FORMAT_VERSION, "network": network, "arch": dict(arch or {}),
                    **dict(extra or {})}
            write_json_atomic(os.path.join(tmp, MODEL_JSON), meta)
            if os.path.exists(directory):
                old = f"{tmp}.old"
                os.replace(directory, old)
                os.replace(tmp, directory)
                shutil.rmtree(old)
            else:
                os.replace(tmp, directory)
    finally:
        if primary and os.path.exists(tmp):
            shutil.rmtree(tmp)
        _sync(f"save_model:{tmp}:done")
    return directory


def read_model_info(directory: str | os.PathLike) -> dict[str, Any]:
    """The ``model.json`` of a model checkpoint."""
    path = os.path.join(os.fspath(directory), MODEL_JSON)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{directory}: not a model checkpoint (no {MODEL_JSON})")
    info = read_json(path)
    if info.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported checkpoint format {info.get('format')!r}")
    return info


def load_model(directory: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Restores a model checkpoint: (Flax module, variables as float32 host arrays)."""
    directory = os.path.abspath(os.fspath(directory))
    info = read_model_info(directory)
    # JSON has no tuples: sequences (e.g. MelGAN ratios) come back as tuples so that the
    # module stays hashable (a jit static argument)
    arch = {k: tuple(v) if isinstance(v, list) else v for k, v in info.get("arch", {}).items()}
    model = build_model(info["network"], **arch)
    target = variable_shapes(info["network"], **arch)
    restored = _checkpointer().restore(os.path.join(directory, VARIABLES_DIR), target)
    return model, dict(restored)


@functools.lru_cache(maxsize=32)
def _load_cached(directory: str, stamp: int) -> tuple[dict[str, Any], nn.Module, dict]:
    del stamp  # part of the cache key: a re-saved checkpoint is loaded again
    if not os.path.isdir(directory):
        raise CheckpointError(f"{directory}: missing model checkpoint")
    module, variables = load_model(directory)
    return read_model_info(directory), module, jax.tree.map(jnp.asarray, variables)


def load_network(directory: str | os.PathLike, network: str | Sequence[str]
                 ) -> tuple[nn.Module, dict[str, Any]]:
    """(module, variables on the device) of a model checkpoint that must hold ``network``
    (a name or several allowed ones); cached until its ``model.json`` changes."""
    directory = os.path.abspath(os.fspath(directory))
    try:
        stamp = os.stat(os.path.join(directory, MODEL_JSON)).st_mtime_ns
    except OSError:
        stamp = 0
    info, module, variables = _load_cached(directory, stamp)
    allowed = (network,) if isinstance(network, str) else tuple(network)
    if info["network"] not in allowed:
        raise CheckpointError(
            f"{directory}: holds a {info['network']}, expected {' or '.join(allowed)}"
        )
    return module, variables
