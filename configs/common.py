"""Fields every training stage shares, and ``parse_arg`` for the variants after a config's ``:``.

    python train.py --config configs/pcmelgan.py:small,filter_only --workdir DIR

Training selects models on ``eval_split`` = ``validation`` (speaker-disjoint from train and
test); the test split is for the evaluation (``eval.py``) only.
"""

from __future__ import annotations

from typing import Any

import ml_collections


def parse_arg(arg: str | None, **spec: Any) -> ml_collections.ConfigDict:
    """The variants in ``arg`` (``"small,filter_only"`` or ``"name=value,..."``) over ``spec``.

    ``spec`` maps each variant name to its default; a bare name sets a bool variant to True,
    ``name=value`` converts ``value`` by the default's type. An unknown name is a ValueError.
    """
    values = ml_collections.ConfigDict(spec)
    for item in filter(None, (part.strip() for part in (arg or "").split(","))):
        name, has_value, text = item.partition("=")
        if name not in spec:
            raise ValueError(f"unknown config variant {name!r}; expected one of {sorted(spec)}")
        default = spec[name]
        if not has_value:
            text = "true" if isinstance(default, bool) else ""
        values[name] = _convert(text, default, name)
    return values


def _convert(text: str, default: Any, name: str) -> Any:
    """``text`` as the type of ``default`` (strict booleans: true / false)."""
    if isinstance(default, bool):
        if text.lower() not in ("true", "false"):
            raise ValueError(f"config variant {name}={text!r}: expected true or false")
        return text.lower() == "true"
    try:
        return type(default)(text)
    except ValueError:
        kind = type(default).__name__
        raise ValueError(f"config variant {name}={text!r}: expected a {kind}") from None


def stage_config(stage: str) -> ml_collections.ConfigDict:
    """The fields of every training stage (``stage``: classifiers, vocoder or pcmelgan)."""
    c = ml_collections.ConfigDict()
    c.stage = stage
    c.data_dir = ""  # TFDS data_dir given to `pcmelgan-jax prepare`
    c.dataset = "audio_mnist/all"
    c.seed = 0
    c.batch_size = 64  # global batch (split over processes and devices)
    c.eval_batch_size = 128
    c.eval_split = "validation"  # model selection and training metrics; never "test"
    c.num_epochs = 1000
    c.num_train_steps = -1  # > 0 overrides num_epochs
    c.b1 = 0.5  # Adam's betas, as the original
    c.b2 = 0.9
    c.log_every_steps = 50
    c.eval_every_steps = 0  # 0 = every epoch, < 0 = never
    c.checkpoint_every_steps = 0  # 0 = every epoch
    c.samples_every_steps = -1  # 0 = every epoch, < 0 = only at the end
    c.keep_checkpoints = 2  # preservation policy: the latest N ...
    c.keep_period = 0  # ... plus every N-th step when > 0
    c.async_checkpointing = True
    c.num_samples = 2
    c.worker_count = 0  # Grain worker processes
    c.worker_threads = 2  # Grain reader threads
    c.cache_records = True  # decoded clips kept in memory (~10 KB each); False: decode every read
    c.progress_bar = True
    # typed placeholders (None until set) so that --config.distributed.x=... overrides them
    placeholder = ml_collections.config_dict.placeholder
    c.distributed = ml_collections.ConfigDict({
        "enabled": False, "coordinator_address": placeholder(str),
        "num_processes": placeholder(int), "process_id": placeholder(int),
    })
    return c
