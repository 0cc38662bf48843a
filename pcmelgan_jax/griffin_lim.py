"""Griffin-Lim: a training-free vocoder for our log-mel spectrograms.

A log-mel (80 bands) is turned back into an STFT magnitude with the mel filter bank's
minimum-norm least-squares inverse (clipped at 0), then a phase is found by fast Griffin-Lim
(Perraudin et al. 2013, librosa's default momentum 0.99): alternately impose the magnitude and
project onto the STFTs of real signals, with our STFT (``audio.stft``: reflect-padded, not
centred, so T samples <-> T // 256 frames). Deterministic: the starting phase comes from a
fixed key, the same for every clip of a batch. Jittable and batched; one compilation per
input shape.

Against a trained MelGAN it keeps more of the content (no learned vocoder can lose what it
never learned) at a phasey, metallic sound; ``docs/method.md`` says when to pick which.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from pcmelgan_jax import audio as audio_lib

DEFAULT_ITERATIONS = 32
MOMENTUM = 0.99
_TINY = 1e-8


@functools.cache
def mel_inverse() -> np.ndarray:
    """Minimum-norm least-squares inverse of the mel filter bank. (n_fft//2+1, n_mels)."""
    inverse = np.linalg.pinv(audio_lib.mel_basis().astype(np.float64)).astype(np.float32)
    inverse.setflags(write=False)
    return inverse


def mel_to_magnitude(log_mel: jax.Array) -> jax.Array:
    """Log10 mel (..., 80, frames) -> non-negative STFT magnitude (..., 513, frames)."""
    mel = 10.0 ** jnp.asarray(log_mel, jnp.float32)
    magnitude = jnp.einsum("fm,...mt->...ft", jnp.asarray(mel_inverse()), mel,
                           precision=jax.lax.Precision.HIGHEST)
    return jnp.maximum(magnitude, 0.0)


def istft(spectrum: jax.Array, n_fft: int = audio_lib.N_FFT,
          hop_length: int = audio_lib.HOP_LENGTH) -> jax.Array:
    """Least-squares inverse of ``audio.stft``: (..., n_fft//2+1, frames) -> (..., frames * hop).

    Windowed overlap-add divided by the summed squared window, then the reflect pad cropped.
    """
    frames = jnp.fft.irfft(jnp.swapaxes(spectrum, -1, -2), n=n_fft, axis=-1)
    n_frames = frames.shape[-2]
    pad = (n_fft - hop_length) // 2
    length = (n_frames - 1) * hop_length + n_fft
    index = audio_lib.frame_index(length, n_fft, hop_length)
    window = audio_lib.frame_window(n_fft)
    summed = jnp.zeros(frames.shape[:-2] + (length,), frames.dtype)
    summed = summed.at[..., index].add(frames * jnp.asarray(window))
    norm = np.zeros(length, np.float32)
    np.add.at(norm, index, np.broadcast_to(window**2, index.shape))
    signal = summed / jnp.asarray(np.where(norm > _TINY, norm, 1.0))
    return signal[..., pad : pad + n_frames * hop_length]


@functools.partial(jax.jit, static_argnames=("iterations",))
def griffin_lim(magnitude: jax.Array, iterations: int = DEFAULT_ITERATIONS,
                seed: int = 0) -> jax.Array:
    """Audio (..., frames * 256) whose STFT magnitude approximates ``magnitude``
    (..., 513, frames): fast Griffin-Lim from a random phase drawn from ``seed``."""
    magnitude = jnp.asarray(magnitude, jnp.float32)
    # one starting phase per (bin, frame), shared by the batch: a clip's audio does not
    # depend on what it is batched with
    phase = jax.random.uniform(jax.random.key(seed), magnitude.shape[-2:], jnp.float32, 0,
                               2 * jnp.pi)
    angles = jnp.broadcast_to(jnp.exp(1j * phase).astype(jnp.complex64), magnitude.shape)

    def step(_, carry):
        angles, previous = carry
        rebuilt = audio_lib.stft(istft(magnitude * angles))
        accelerated = rebuilt - (MOMENTUM / (1.0 + MOMENTUM)) * previous
        return accelerated / (jnp.abs(accelerated) + _TINY), rebuilt

    angles, _ = jax.lax.fori_loop(0, iterations, step, (angles, jnp.zeros_like(angles)))
    return istft(magnitude * angles)


def vocode(log_mel: jax.Array, iterations: int = DEFAULT_ITERATIONS) -> jax.Array:
    """Log10 mel (..., 80, frames) -> audio (..., frames * 256), at the level the mel implies."""
    return griffin_lim(mel_to_magnitude(log_mel), iterations=iterations)
