"""Train states: every trained network has its own params, optax state and batch statistics.

A stage's state is a ``TrainState``: the step counter and a dict ``networks`` of
``NetworkState`` by name (e.g. ``"filter"``, ``"generator"``). Optimisers (optax
transformations) are static and live beside the state, keyed by the same names.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from pcmelgan_jax.models import registry


@flax.struct.dataclass
class NetworkState:
    """One network's trainable state. ``batch_stats`` is ``{}`` for networks without BatchNorm."""

    params: Any
    opt_state: Any
    batch_stats: Any

    def variables(self, params: Any | None = None) -> dict[str, Any]:
        """The ``variables`` dict for ``module.apply`` (optionally with other ``params``)."""
        out = {"params": self.params if params is None else params}
        if self.batch_stats:
            out["batch_stats"] = self.batch_stats
        return out


@flax.struct.dataclass
class TrainState:
    """A stage's state: ``step`` (int32 scalar) and ``networks`` {name: NetworkState}."""

    step: jax.Array
    networks: dict[str, NetworkState]


def adam(
    learning_rate: float, b1: float = 0.5, b2: float = 0.9, warmup_steps: int = 0
) -> optax.GradientTransformation:
    """Adam with the papers' betas (0.5, 0.9). ``warmup_steps`` > 0: the learning rate of
    update n (0-based) is ``learning_rate * min(1, (n + 1) / warmup_steps)``."""
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, not {warmup_steps}")
    if warmup_steps:
        peak = learning_rate

        def learning_rate(count):
            return peak * jnp.minimum(1.0, (count + 1) / warmup_steps)

    return optax.adam(learning_rate, b1=b1, b2=b2)


def init_variables(network: str, arch: Mapping[str, Any], key: jax.Array) -> dict[str, Any]:
    """Initialised variables of ``network`` built with ``arch`` (``registry.init_variables``)."""
    return registry.init_variables(network, key, **dict(arch))


def network_state(variables: Mapping[str, Any], tx: optax.GradientTransformation) -> NetworkState:
    """A fresh NetworkState from ``variables`` ({'params'[, 'batch_stats']})."""
    params = variables["params"]
    return NetworkState(
        params=params, opt_state=tx.init(params), batch_stats=variables.get("batch_stats", {})
    )


def apply_gradients(
    net: NetworkState, grads: Any, tx: optax.GradientTransformation, batch_stats: Any = None
) -> NetworkState:
    """One optimiser update of ``net`` (and new ``batch_stats`` when given)."""
    updates, opt_state = tx.update(grads, net.opt_state, net.params)
    return NetworkState(
        params=optax.apply_updates(net.params, updates),
        opt_state=opt_state,
        batch_stats=net.batch_stats if batch_stats is None else batch_stats,
    )


def new_train_state(networks: Mapping[str, NetworkState]) -> TrainState:
    """A TrainState at step 0."""
    return TrainState(step=jnp.zeros((), jnp.int32), networks=dict(networks))
