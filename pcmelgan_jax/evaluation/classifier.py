"""Training an evaluation classifier from scratch on arrays: the informed attackers and the
speaker classifier. One compiled step per architecture and optimiser, shared by every
condition, so an attacker retrained on another anonymiser's output compiles nothing new."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pcmelgan_jax.evaluation.data import pad_rows, padded_batches
from pcmelgan_jax.runtime import compilation


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """How an evaluation classifier is trained (Adam with betas 0.5, 0.9, as the stages)."""

    steps: int
    batch_size: int
    learning_rate: float
    warmup_steps: int = 0  # linear learning-rate warm-up (AudioNet needs it at 1e-3)
    eval_every: int = 0  # validation accuracy every N steps; 0 = only at the end
    seed: int = 0


def _inputs(network: str, x: jax.Array) -> jax.Array:
    return x[..., None] if network == "alexnet" else x


def _logits(network: str, model, variables, x: jax.Array, **kwargs) -> jax.Array:
    out = model.apply(variables, _inputs(network, x), **kwargs)
    return out[0] if network == "audionet" else out


@functools.lru_cache(maxsize=16)
def _train_step(network: str, model, learning_rate: float, warmup_steps: int):
    import optax

    from pcmelgan_jax.models import softmax_cross_entropy

    schedule = (optax.linear_schedule(0.0, learning_rate, warmup_steps) if warmup_steps
                else learning_rate)
    tx = optax.adam(schedule, b1=0.5, b2=0.9)

    @functools.partial(compilation.jit, kind="train", donate_argnums=(0, 1))
    def step(params, opt_state, x, y, key):
        def loss_fn(p):
            logits = _logits(network, model, {"params": p}, x, train=True,
                             rngs={"dropout": key})
            return softmax_cross_entropy(logits, y)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return tx, step


@functools.partial(compilation.jit, kind="inference", static_argnums=(0, 1))
def _predict(network: str, model, variables, x: jax.Array) -> jax.Array:
    return jnp.argmax(_logits(network, model, variables, x), axis=-1).astype(jnp.int32)


def predict(network: str, model, variables, x: np.ndarray, batch_size: int) -> np.ndarray:
    """Class predictions (N,) of inputs (N, ...) in padded batches of ``batch_size``."""
    out = [np.zeros(0, np.int32)]
    for _, rows, n in padded_batches(len(x), batch_size):
        batch = pad_rows(np.asarray(x[rows], np.float32), batch_size)
        out.append(np.asarray(_predict(network, model, variables, batch))[:n])
    return np.concatenate(out)


def train_classifier(
    network: str,
    num_classes: int,
    width: float,
    train: tuple[np.ndarray, np.ndarray],
    settings: TrainSettings,
    validation: tuple[np.ndarray, np.ndarray] | None = None,
    eval_batch_size: int = 64,
) -> tuple[Any, dict, dict[str, Any]]:
    """An ``alexnet`` (inputs (N, 80, 32)) or ``audionet`` (inputs (N, 8192)) trained from
    scratch on ``train`` = (inputs, labels); with ``validation``, the parameters of the best
    validation accuracy (the earliest of equals) are returned, judged in batches of
    ``eval_batch_size``. Returns (module, variables, log)."""
    from pcmelgan_jax.models.registry import build_model, init_variables

    model = build_model(network, num_classes=num_classes, width=width)
    params = init_variables(network, jax.random.key(settings.seed), num_classes=num_classes,
                            width=width)["params"]
    tx, step = _train_step(network, model, float(settings.learning_rate),
                           int(settings.warmup_steps))
    opt_state = tx.init(params)
    x, y = train
    n = len(y)
    batch_size = min(settings.batch_size, n)
    rng = np.random.default_rng(settings.seed)
    order = np.zeros(0, np.int64)
    key = jax.random.key(settings.seed + 1)
    best = (-1.0, -1, None)
    history = []

    def consider(i: int, params) -> tuple:
        if validation is None:
            return best
        pred = predict(network, model, {"params": params}, validation[0], eval_batch_size)
        acc = float(np.mean(pred == validation[1]))
        history.append((i, round(acc, 4)))
        return (acc, i, jax.tree.map(np.asarray, params)) if acc > best[0] else best

    for i in range(settings.steps):
        if order.size < batch_size:
            order = np.concatenate([order, rng.permutation(n)])
        idx, order = order[:batch_size], order[batch_size:]
        params, opt_state, _ = step(params, opt_state, jnp.asarray(x[idx]),
                                    jnp.asarray(y[idx]), jax.random.fold_in(key, i))
        if settings.eval_every and (i + 1) % settings.eval_every == 0 and i + 1 < settings.steps:
            best = consider(i + 1, params)
    best = consider(settings.steps, params)
    if best[2] is not None:
        params = jax.tree.map(jnp.asarray, best[2])
    log = {"steps": settings.steps, "num_train": n, "best_step": best[1],
           "validation_accuracy": None if validation is None else best[0],
           "validation_history": history}
    return model, {"params": params}, log
