"""The jitted forward programs of the evaluation: log-mels, F and G, classifiers, vocoders.

They apply the modules themselves (the parity-checked path); ``anonymize`` runs the folded
forms of F, G and the vocoder in ``models.inference``."""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from pcmelgan_jax import audio as audio_lib
from pcmelgan_jax import griffin_lim as griffin_lim_lib
from pcmelgan_jax.runtime import compilation

# A vocoder of the evaluation: normalised log-mels (B, 80, 32) with their utterances' mean and
# std (B,) -> audio (B, 8192).
Vocoder = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
VOCODERS = ("melgan", "griffin_lim")

_mel_features_jit = compilation.jit(audio_lib.mel_features, "inference")


def mel_features(audio: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Jitted ``audio.mel_features``: (B, 8192) -> normalised (B, 80, 32), mean (B,), std (B,)."""
    return _mel_features_jit(audio)


@functools.partial(compilation.jit, kind="inference", static_argnums=0)
def unet_apply(model, variables, x: jax.Array, z: jax.Array, cond: jax.Array | None):
    """F or G in evaluation mode: (B, 80, 32), (B, noise_dim), (B,) or None -> (B, 80, 32)."""
    return model.apply(variables, x[..., None], z, cond, train=False)[..., 0]


@functools.partial(compilation.jit, kind="inference", static_argnums=0)
def spec_predict(model, variables, x: jax.Array) -> jax.Array:
    """AlexNet class predictions of normalised log-mels (B, 80, 32) -> (B,) int32."""
    return jnp.argmax(model.apply(variables, x[..., None]), axis=-1).astype(jnp.int32)


@functools.partial(compilation.jit, kind="inference", static_argnums=0)
def audio_predict(model, variables, audio: jax.Array) -> tuple[jax.Array, jax.Array]:
    """AudioNet: (B, 8192) -> predictions (B,) int32 and features (B, 8192) float32."""
    logits, features = model.apply(variables, audio)
    return (
        jnp.argmax(logits, axis=-1).astype(jnp.int32),
        features.reshape(features.shape[0], -1),
    )


@functools.partial(compilation.jit, kind="inference", static_argnums=0)
def vocode(model, variables, x: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
    """De-normalise (B, 80, 32) with the input's mean/std (B,) and vocode -> (B, 8192)."""
    return model.apply(variables, audio_lib.denormalize(x, mean, std))


@functools.partial(compilation.jit, kind="inference", static_argnums=0)
def _griffin_lim(iterations: int, x: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
    return griffin_lim_lib.vocode(audio_lib.denormalize(x, mean, std), iterations)


def melgan_vocoder(model, variables) -> Vocoder:
    """A trained MelGAN generator (module, variables) as a ``Vocoder``."""
    return functools.partial(vocode, model, variables)


def griffin_lim_vocoder(iterations: int = griffin_lim_lib.DEFAULT_ITERATIONS) -> Vocoder:
    """The training-free Griffin-Lim inversion (``griffin_lim``) as a ``Vocoder``."""
    if iterations < 1:
        raise ValueError(f"griffin_lim_iterations must be >= 1, got {iterations}")
    return functools.partial(_griffin_lim, int(iterations))


def batch_noise(
    seed: int, index: int, batch_size: int, noise_dim: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """z1, z2 (B, noise_dim) standard normal and s' (B,) in {0, 1} for batch ``index``."""
    key = jax.random.fold_in(jax.random.key(seed), index)
    k1, k2, k3 = jax.random.split(key, 3)
    return (
        np.asarray(jax.random.normal(k1, (batch_size, noise_dim))),
        np.asarray(jax.random.normal(k2, (batch_size, noise_dim))),
        np.asarray(jax.random.randint(k3, (batch_size,), 0, 2), np.int32),
    )

