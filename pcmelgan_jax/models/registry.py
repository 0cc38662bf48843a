"""Networks by name, so that checkpoints can record what they hold and be rebuilt."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pcmelgan_jax.audio import N_FRAMES, N_MELS, SEGMENT_LENGTH
from pcmelgan_jax.models.classifiers import AlexNet, AudioNet, LinearClassifier
from pcmelgan_jax.models.melgan import MelGANDiscriminator, MelGANGenerator
from pcmelgan_jax.models.unet import UNet

NETWORKS = (
    "unet_filter",
    "unet_generator",
    "alexnet",
    "audionet",
    "melgan_generator",
    "melgan_discriminator",
    "linear_classifier",
)


def build_model(network: str, **kwargs: Any) -> nn.Module:
    """The Flax module for ``network`` (one of NETWORKS) with architecture ``kwargs``."""
    if network in ("unet_filter", "unet_generator"):
        # pairs are lists when read back from an export's JSON; the module must stay hashable
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
        return UNet(conditional=network == "unet_generator", **kwargs)
    if network == "alexnet":
        return AlexNet(**kwargs)
    if network == "audionet":
        return AudioNet(**kwargs)
    if network == "melgan_generator":
        return MelGANGenerator(**kwargs)
    if network == "melgan_discriminator":
        return MelGANDiscriminator(**kwargs)
    if network == "linear_classifier":
        return LinearClassifier(**kwargs)
    raise ValueError(f"unknown network {network!r}; expected one of {', '.join(NETWORKS)}")


def example_inputs(network: str, batch_size: int = 1, noise_dim: int = 10) -> tuple:
    """Positional example inputs for ``init`` of ``network`` (zeros of the right shapes)."""
    spec = jnp.zeros((batch_size, N_MELS, N_FRAMES, 1), jnp.float32)
    if network in ("unet_filter", "unet_generator"):
        z = jnp.zeros((batch_size, noise_dim), jnp.float32)
        cond = jnp.zeros((batch_size,), jnp.int32)
        return (spec, z, cond if network == "unet_generator" else None)
    if network in ("alexnet", "linear_classifier"):
        return (spec,)
    if network in ("audionet", "melgan_discriminator"):
        return (jnp.zeros((batch_size, SEGMENT_LENGTH), jnp.float32),)
    if network == "melgan_generator":
        return (jnp.zeros((batch_size, N_MELS, N_FRAMES), jnp.float32),)
    raise ValueError(f"unknown network {network!r}")


# Initialisation runs once and is dominated by compiling threefry code, which XLA:CPU
# compiles several times faster without backend optimisation.
INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}


def jit_init(init_fn, *args: Any) -> Any:
    """Runs ``init_fn(*args)`` under jit, compiled without backend optimisation (fast to build)."""
    return jax.jit(init_fn).lower(*args).compile(compiler_options=INIT_COMPILER_OPTIONS)(*args)


# compiled init programs by (network, architecture, key type): several seeds or runs of the
# same network in one process (``num_seeds``, sweeps) compile its initialisation once
_INIT_PROGRAMS: dict[tuple, Any] = {}


def init_variables(network: str, key: jax.Array, **kwargs: Any) -> dict:
    """Freshly initialised variables ({'params'[, 'batch_stats']}) of ``network``."""
    try:
        cache_key = (network, tuple(sorted(kwargs.items())), key.shape, str(key.dtype))
        hash(cache_key)
    except TypeError:  # an unhashable architecture value: compile without caching
        cache_key = None
    program = _INIT_PROGRAMS.get(cache_key) if cache_key is not None else None
    if program is None:
        model = build_model(network, **kwargs)
        inputs = example_inputs(network, noise_dim=kwargs.get("noise_dim", 10))
        program = (
            jax.jit(lambda k: model.init(k, *inputs))
            .lower(key)
            .compile(compiler_options=INIT_COMPILER_OPTIONS)
        )
        if cache_key is not None:
            _INIT_PROGRAMS[cache_key] = program
    return dict(program(key))


def variable_shapes(network: str, **kwargs: Any) -> dict:
    """Shapes and dtypes of ``network``'s variables, without computing anything."""
    model = build_model(network, **kwargs)
    noise_dim = kwargs.get("noise_dim", 10)
    return dict(
        jax.eval_shape(
            lambda: model.init(jax.random.key(0), *example_inputs(network, noise_dim=noise_dim))
        )
    )


def numpy_random_variables(network: str, seed: int, **kwargs: Any) -> dict:
    """Untrained variables of ``network`` drawn with NumPy, without any XLA compile.

    Kernels N(0, 1/fan_in), weight-norm gains, BatchNorm scales and running variances 1,
    embeddings N(0, 1), everything else N(0, 0.01^2). For tests and benchmarks that need
    full-size networks quickly; training uses ``init_variables`` (PyTorch's initialisation).
    """
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        if name == "kernel":
            fan_in = int(np.prod(leaf.shape[:-1]))
            return (rng.standard_normal(leaf.shape) / np.sqrt(fan_in)).astype(np.float32)
        if name in ("scale", "var"):
            return np.ones(leaf.shape, np.float32)
        if name == "embedding":
            return rng.standard_normal(leaf.shape).astype(np.float32)
        return (0.01 * rng.standard_normal(leaf.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(fill, variable_shapes(network, **kwargs))
