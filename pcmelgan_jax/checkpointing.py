"""Model checkpoints: one network's variables (Orbax) plus a ``model.json`` that says what it is.

Layout of a model checkpoint directory::

    DIR/model.json     {"format": 1, "network": "melgan_generator", "arch": {...}, ...}
    DIR/variables/     Orbax PyTree checkpoint of {'params': ..., 'batch_stats': ...}

A directory is written under a temporary name and renamed into place, so a crash never
leaves a half-written checkpoint where a good one was.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from pcmelgan_jax.models.registry import build_model, variable_shapes

FORMAT_VERSION = 1
MODEL_JSON = "model.json"
VARIABLES_DIR = "variables"


def _checkpointer():
    import orbax.checkpoint as ocp

    return ocp.StandardCheckpointer()


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
    after the new one is complete.
    """
    directory = os.path.abspath(os.fspath(directory))
    if os.path.exists(directory) and not overwrite:
        raise FileExistsError(f"{directory}: already exists (pass overwrite=True to replace it)")
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(directory)}.tmp-{uuid.uuid4().hex[:8]}")
    os.makedirs(tmp)
    try:
        tree = jax.tree.map(np.asarray, dict(variables))
        checkpointer = _checkpointer()
        checkpointer.save(os.path.join(tmp, VARIABLES_DIR), tree)
        checkpointer.wait_until_finished()
        meta = {
            "format": FORMAT_VERSION,
            "network": network,
            "arch": dict(arch or {}),
            **dict(extra or {}),
        }
        with open(os.path.join(tmp, MODEL_JSON), "w") as f:
            json.dump(meta, f, indent=2, sort_keys=True)
        if os.path.exists(directory):
            old = f"{tmp}.old"
            os.replace(directory, old)
            os.replace(tmp, directory)
            shutil.rmtree(old)
        else:
            os.replace(tmp, directory)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
    return directory


def read_model_info(directory: str | os.PathLike) -> dict[str, Any]:
    """The ``model.json`` of a model checkpoint."""
    path = os.path.join(os.fspath(directory), MODEL_JSON)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{directory}: not a model checkpoint (no {MODEL_JSON})")
    with open(path) as f:
        info = json.load(f)
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
