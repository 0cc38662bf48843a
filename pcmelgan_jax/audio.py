"""Audio front-end: loading, peak normalisation, cropping and the log-mel transform.

Everything follows the original PCMelGAN / MelGAN front-end (``Audio2Mel``):
8 kHz audio, 8192-sample clips, a 1024-point STFT with hop 256 and 80 Slaney mel bands,
``log10(max(mel, 1e-5))`` and a per-utterance normalisation into [-1, 1].

Shapes: a clip is ``(8192,)`` samples at 8 kHz; a batch of clips ``(..., 8192)``; a
log-mel spectrogram is ``(..., 80, 32)`` (mel bands x frames, as in the original).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pcmelgan_jax.workdir import atomic_path

SAMPLE_RATE = 8000
SEGMENT_LENGTH = 8192
N_FFT = 1024
HOP_LENGTH = 256
WIN_LENGTH = 1024
N_MELS = 80
N_FRAMES = SEGMENT_LENGTH // HOP_LENGTH  # 32
PEAK = 0.95
LOG_FLOOR = 1e-5
NORM_EPS = 1e-6

AUDIO_EXTENSIONS = (".wav", ".flac")


class AudioError(ValueError):
    """A sound file that cannot be used; the message names the file and the problem."""

    def __init__(self, path: str | os.PathLike | None, problem: str):
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        where = self.path if self.path is not None else "<array>"
        super().__init__(f"{where}: {problem}")


def check_waveform(audio: np.ndarray, path: str | os.PathLike | None = None) -> np.ndarray:
    """Validates a mono waveform: non-empty, finite. Returns it as float32."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise AudioError(path, f"expected a mono waveform (1-d), got shape {audio.shape}")
    if audio.size == 0:
        raise AudioError(path, "the audio is empty (0 samples)")
    if not np.all(np.isfinite(audio)):
        bad = int(np.size(audio) - np.count_nonzero(np.isfinite(audio)))
        raise AudioError(path, f"the audio contains {bad} NaN or infinite samples")
    return audio


def to_mono(audio: np.ndarray) -> np.ndarray:
    """(samples,) or (samples, channels) -> (samples,) by averaging the channels."""
    audio = np.asarray(audio)
    return audio if audio.ndim == 1 else audio.mean(axis=1)


def resample(audio: np.ndarray, orig_sr: int, target_sr: int = SAMPLE_RATE) -> np.ndarray:
    """Band-limited resampling (librosa's default, soxr_hq). (samples,) -> (samples',)."""
    if orig_sr == target_sr:
        return np.asarray(audio, dtype=np.float32)
    import librosa

    return librosa.resample(
        np.asarray(audio, dtype=np.float32), orig_sr=orig_sr, target_sr=target_sr
    ).astype(np.float32)


def load_audio(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Reads a wav/flac file (any rate, mono or multi-channel) as mono float32 at ``sample_rate``.

    No peak normalisation or cropping is applied. Raises ``AudioError`` naming the file for
    unreadable, empty or non-finite audio. A silent file is returned as zeros (see
    ``peak_normalize`` for what happens next).
    """
    import soundfile as sf

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise AudioError(path, "no such file")
    try:
        audio, sr = sf.read(path, dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises several types for corrupt files
        raise AudioError(path, f"cannot read audio ({type(e).__name__}: {e})") from None
    if audio.shape[0] == 0:
        raise AudioError(path, "the audio is empty (0 samples)")
    audio = check_waveform(to_mono(audio), path)
    return check_waveform(resample(audio, sr, sample_rate), path)


def peak_normalize(audio: np.ndarray, peak: float = PEAK) -> np.ndarray:
    """``peak * x / max|x|`` along the last axis. A silent (all-zero) clip stays all zeros."""
    audio = np.asarray(audio, dtype=np.float32)
    top = np.max(np.abs(audio), axis=-1, keepdims=True)
    scale = np.where(top > 0, peak / np.where(top > 0, top, 1.0), 0.0)
    return (audio * scale).astype(np.float32)


def fit_length(
    audio: np.ndarray,
    length: int = SEGMENT_LENGTH,
    rng: np.random.Generator | jax.Array | None = None,
) -> np.ndarray:
    """Crops to the first ``length`` samples or zero-pads to ``length``. (n,) -> (length,).

    Padding puts the clip at a random offset when ``rng`` (a numpy Generator or a JAX PRNG
    key) is given (training), and centres it otherwise (evaluation).
    """
    audio = np.asarray(audio, dtype=np.float32)
    n = audio.shape[-1]
    if n >= length:
        return audio[..., :length]
    room = length - n
    if rng is None:
        offset = room // 2
    elif isinstance(rng, np.random.Generator):
        offset = int(rng.integers(0, room + 1))
    else:
        offset = int(jax.random.randint(rng, (), 0, room + 1))
    widths = [(0, 0)] * (audio.ndim - 1) + [(offset, room - offset)]
    return np.pad(audio, widths)


def prepare_clip(
    audio: np.ndarray,
    rng: np.random.Generator | jax.Array | None = None,
    length: int = SEGMENT_LENGTH,
) -> np.ndarray:
    """Peak-normalises then crops/pads one clip, in the original's order. (n,) -> (length,)."""
    return fit_length(peak_normalize(audio), length, rng)


@functools.cache
def mel_basis(
    sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS
) -> np.ndarray:
    """librosa's default (Slaney) mel filter bank, fmin 0, fmax sr/2. (n_mels, n_fft//2+1)."""
    import librosa

    basis = librosa.filters.mel(
        sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=0.0, fmax=sample_rate / 2
    )
    basis = basis.astype(np.float32)
    basis.setflags(write=False)
    return basis


@functools.cache
def hann_window(win_length: int = WIN_LENGTH) -> np.ndarray:
    """Periodic Hann window (``torch.hann_window`` default). (win_length,)."""
    n = np.arange(win_length, dtype=np.float64)
    window = (0.5 - 0.5 * np.cos(2.0 * np.pi * n / win_length)).astype(np.float32)
    window.setflags(write=False)
    return window


def frame_window(n_fft: int = N_FFT, win_length: int | None = None) -> np.ndarray:
    """The ``n_fft``-sample analysis window: a Hann window of ``win_length`` (default
    ``n_fft``) samples in the middle, zeros either side (as ``torch.stft``). (n_fft,)."""
    win_length = n_fft if win_length is None else win_length
    if not 0 < win_length <= n_fft:
        raise ValueError(f"stft: win_length must be in (0, n_fft={n_fft}], got {win_length}")
    left = (n_fft - win_length) // 2
    return np.pad(hann_window(win_length), (left, n_fft - win_length - left))


def frame_index(n_samples: int, n_fft: int = N_FFT, hop_length: int = HOP_LENGTH) -> np.ndarray:
    """Sample index of every frame of a padded signal of ``n_samples``. (frames, n_fft)."""
    n_frames = (n_samples - n_fft) // hop_length + 1
    return np.arange(n_frames)[:, None] * hop_length + np.arange(n_fft)[None, :]


def stft(
    audio: jax.Array, n_fft: int = N_FFT, hop_length: int = HOP_LENGTH,
    win_length: int | None = None,
) -> jax.Array:
    """Complex STFT of reflect-padded audio, no centring. (..., T) -> (..., n_fft//2+1, frames).

    The pad is (n_fft - hop) / 2 samples on each side, so T samples give T // hop frames;
    the window is ``frame_window(n_fft, win_length)``.
    """
    audio = jnp.asarray(audio, jnp.float32)
    pad = (n_fft - hop_length) // 2
    widths = [(0, 0)] * (audio.ndim - 1) + [(pad, pad)]
    padded = jnp.pad(audio, widths, mode="reflect")
    index = frame_index(padded.shape[-1], n_fft, hop_length)
    frames = padded[..., index] * jnp.asarray(frame_window(n_fft, win_length))
    return jnp.swapaxes(jnp.fft.rfft(frames, axis=-1), -1, -2)


def stft_magnitude(
    audio: jax.Array, n_fft: int = N_FFT, hop_length: int = HOP_LENGTH,
    win_length: int | None = None,
) -> jax.Array:
    """|STFT| (``stft``). (..., T) -> (..., n_fft//2+1, frames)."""
    spectrum = stft(audio, n_fft, hop_length, win_length)
    power = jnp.real(spectrum) ** 2 + jnp.imag(spectrum) ** 2
    # sqrt with a zero (not NaN) gradient where the magnitude is exactly 0
    positive = power > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, power, 1.0)), 0.0)


def log_mel(audio: jax.Array) -> jax.Array:
    """Log10 mel spectrogram (module docstring). (..., 8192) samples -> (..., 80, 32)."""
    magnitude = stft_magnitude(audio)
    mel = jnp.einsum(
        "mf,...ft->...mt", jnp.asarray(mel_basis()), magnitude, precision=jax.lax.Precision.HIGHEST
    )
    return jnp.log10(jnp.maximum(mel, LOG_FLOOR))


def normalize(log_mel_spec: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-utterance normalisation into [-1, 1]. (..., 80, 32) -> (x, mean (...), std (...)).

    ``x = clip((S - mean) / (3 std + 1e-6), -1, 1)`` with mean and unbiased std over all
    80 x 32 values of each utterance. A constant (e.g. silent) spectrogram gives x = 0.
    """
    s = jnp.asarray(log_mel_spec, jnp.float32)
    flat = s.reshape(s.shape[:-2] + (-1,))
    mean = flat.mean(axis=-1)
    std = flat.std(axis=-1, ddof=1)
    x = (s - mean[..., None, None]) / (3.0 * std[..., None, None] + NORM_EPS)
    return jnp.clip(x, -1.0, 1.0), mean, std


def denormalize(x: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
    """Inverse of ``normalize`` (without the clip): ``x * 3 std + mean``. (..., 80, 32)."""
    return x * 3.0 * jnp.asarray(std)[..., None, None] + jnp.asarray(mean)[..., None, None]


def mel_features(audio: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Audio (..., 8192) -> normalised log-mel (..., 80, 32), mean (...), std (...)."""
    return normalize(log_mel(audio))


def write_audio(path: str | os.PathLike, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Writes a mono float waveform as 16-bit PCM wav, atomically (``workdir.atomic_path``)."""
    import soundfile as sf

    audio = np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0)
    with atomic_path(path) as tmp:
        sf.write(tmp, audio, sample_rate, subtype="PCM_16", format="WAV")


def find_audio_files(root: str | os.PathLike, extensions: Sequence[str] = AUDIO_EXTENSIONS):
    """Sorted list of audio files below ``root`` (recursive)."""
    found = []
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            if name.lower().endswith(tuple(extensions)):
                found.append(os.path.join(dirpath, name))
    return sorted(found)
