"""How a train step runs: one seed, or N independent seeds in one program.

How seeds are run is one value, ``strategy``: None for a single run, else ``"vmap"``,
``"map"`` or ``"unroll"`` (``resolve_seed_strategy`` turns the config's ``"auto"`` into one
of them). With N seeds the state's network leaves, the batch, the keys and the metrics carry
a leading seed axis; seed i is the single run of seed ``config.seed + i`` (same
initialisation, key and data order) up to floating-point rounding.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from pcmelgan_jax.runtime import sharding
from pcmelgan_jax.runtime.compilation import compiler_options
from pcmelgan_jax.training.state import TrainState

SEED_STRATEGIES = ("auto", "vmap", "map", "unroll")

# the largest per-seed batch that ``auto`` vmaps on an accelerator, where vmapping the seeds
# beats running them one after another (docs/measurements.md, "Seeds in one program")
VMAP_MAX_BATCH = 32


def resolve_seed_strategy(strategy: str, batch_size: int | None = None) -> str:
    """``"vmap"``, ``"map"`` or ``"unroll"``. ``"auto"`` is ``unroll`` on CPU, where it was the
    fastest; on an accelerator ``vmap`` up to a per-seed ``batch_size`` of ``VMAP_MAX_BATCH``
    (None: unknown, vmap), else ``unroll``."""
    if strategy not in SEED_STRATEGIES:
        raise ValueError(f"seeds_strategy must be one of {SEED_STRATEGIES}, not {strategy!r}")
    if strategy == "auto":
        if jax.default_backend() == "cpu":
            return "unroll"
        return "vmap" if batch_size is None or batch_size <= VMAP_MAX_BATCH else "unroll"
    return strategy


def config_strategy(config: Any, num_seeds: int) -> str | None:
    """How ``config``'s seeds run: None for one seed, else its resolved ``seeds_strategy``."""
    if num_seeds < 1:
        raise ValueError(f"num_seeds must be >= 1, got {num_seeds}")
    if num_seeds == 1:
        return None
    return resolve_seed_strategy(str(config.get("seeds_strategy", "auto")), int(config.batch_size))


def run_seeds(config: Any, num_seeds: int) -> list[int]:
    """The seeds of a ``num_seeds`` run: ``config.seed + i``."""
    return [int(config.seed) + i for i in range(num_seeds)]


def seed_keys(seeds: Sequence[int]) -> jax.Array:
    """(N,) keys: ``jax.random.key(s)`` for each seed, stacked."""
    return jnp.stack([jax.random.key(s) for s in seeds])


def _finite(metrics: dict[str, jax.Array]) -> jax.Array:
    """True when every metric is finite."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in metrics.values()]))


def with_finite_flag(step: Callable) -> Callable:
    """Adds ``metrics["finite"]`` to a step's output: 1.0 when every metric and every updated
    parameter is finite (so a bad update is never checkpointed)."""

    @functools.wraps(step)
    def wrapped(*args, **kwargs):
        state, metrics = step(*args, **kwargs)
        params = {k: net.params for k, net in state.networks.items()}
        params_ok = jnp.isfinite(optax.global_norm(params))
        metrics["finite"] = (_finite(metrics) & params_ok).astype(jnp.float32)
        return state, metrics

    return wrapped


def seeds_step(step: Callable, strategy: str = "vmap") -> Callable:
    """``step`` over a leading seed axis, in one program.

    ``(state, batch, rng, *extra) -> (state, metrics)`` where ``state.networks`` leaves are
    (N, ...), ``state.step`` is one shared scalar, ``batch`` leaves are (N, B, ...), ``rng``
    is (N,) keys and ``extra`` (e.g. the fixed monitor classifiers) is shared by every seed;
    the metrics come back as (N,) arrays. ``"vmap"`` vectorises with ``jax.vmap`` (equal to
    the unbatched step up to rounding); ``"map"`` loops over the seeds inside the program with
    ``jax.lax.map``; ``"unroll"`` writes the N unbatched steps one after another into the
    program (the unbatched step's arithmetic; compile time grows with N).
    """
    strategy = resolve_seed_strategy(strategy)
    axes = TrainState(step=None, networks=0)  # type: ignore[arg-type]

    @functools.wraps(step)
    def vectorised(state, batch, rng, *extra):
        def one(s, b, r):
            return step(s, b, r, *extra)

        return jax.vmap(one, in_axes=(axes, 0, 0), out_axes=(axes, 0))(state, batch, rng)

    @functools.wraps(step)
    def mapped(state, batch, rng, *extra):
        def one(args):
            networks, b, r = args
            new, metrics = step(TrainState(step=state.step, networks=networks), b, r, *extra)
            return new.networks, metrics

        networks, metrics = jax.lax.map(one, (state.networks, batch, rng))
        return TrainState(step=state.step + 1, networks=networks), metrics

    @functools.wraps(step)
    def unrolled(state, batch, rng, *extra):
        outs = []
        for i in range(rng.shape[0]):
            networks = jax.tree.map(lambda x, i=i: x[i], state.networks)
            b = jax.tree.map(lambda x, i=i: x[i], batch)
            new, metrics = step(TrainState(step=state.step, networks=networks), b, rng[i], *extra)
            outs.append((new.networks, metrics))
        networks, metrics = jax.tree.map(lambda *xs: jnp.stack(xs), *outs)
        return TrainState(step=state.step + 1, networks=networks), metrics

    return {"vmap": vectorised, "map": mapped, "unroll": unrolled}[strategy]


def jit_step(step: Callable, strategy: str | None = None, **static: Any) -> Callable:
    """``jax.jit`` of ``step`` with its keyword settings bound, a finite flag added and the
    state donated (``compiler_options("train")``); with a seed ``strategy``, over a leading
    seed axis (``seeds_step``; ``metrics["finite"]`` is then (N,))."""
    fn = with_finite_flag(functools.partial(step, **static))
    if strategy is not None:
        fn = seeds_step(fn, strategy)
    return jax.jit(fn, donate_argnums=0, compiler_options=compiler_options("train"))


def stack_seeds(states: Sequence[TrainState]) -> TrainState:
    """N train states of the same structure (one per seed, same step) -> one state whose
    network leaves are stacked (N, ...) along a new leading seed axis; ``step`` stays scalar.
    Stacks on the host (NumPy): no compilation per leaf shape."""
    networks = jax.tree.map(
        lambda *xs: np.stack([np.asarray(x) for x in xs]), *[s.networks for s in states]
    )
    return TrainState(step=states[0].step, networks=networks)


@jax.jit
def _take_seed(tree: Any, index: jax.Array) -> Any:
    return jax.tree.map(lambda x: x[index], tree)


def seed_state(state: TrainState, index: int) -> TrainState:
    """Seed ``index`` of a seed-stacked state (network leaves (N, ...) -> (...)); one compiled
    gather for the whole tree, the result stays where the state is."""
    return TrainState(step=state.step, networks=_take_seed(state.networks, index))


def per_seed(values: dict[str, Any], seeds: Sequence[int]) -> dict[str, dict[str, float]]:
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
