"""Training-free anonymisation baselines: McAdams-coefficient LPC warping, a pitch shift and
digit templates.

    anonymised = mcadams_batch(clips)                       # (N, L) -> (N, L)
    flipped = pitch_shift_flip_batch(clips, genders)        # male up, female down
    bank = digit_templates(x, digits, genders)              # (10, 2, 80, 32) mean log-mels
    resynthesised = bank[predicted_digit, sampled_gender]   # the digit_template baseline

``digit_templates`` is the content bottleneck taken to its end: every utterance is replaced
by the training speakers' mean log-mel of its recognised digit in an independently sampled
gender, so the output depends on the input only through the recognised digit. It bounds
what an anonymiser that keeps the digit and nothing else can reach against every attacker.

``mcadams`` follows the VoicePrivacy Challenge baseline B2: short frames (Hann, overlap-add),
an LPC all-pole model per frame, the residual by inverse filtering, then every complex pole's
angle phi (radians) replaced by ``phi ** coefficient`` (magnitude kept, conjugate pairs stay
conjugate, real poles untouched) and the residual filtered by the warped all-pole filter. With
``coefficient`` < 1 low formants move up and high ones down; the excitation (hence F0) is kept.
The output is rescaled to the input's peak.

Implementation (our own, vectorised over all frames of a batch): sqrt-Hann analysis and
synthesis windows normalised by their overlap-added square (exact reconstruction at
``coefficient=1``); LPC by the autocorrelation method (Levinson-Durbin, so the filters are
minimum phase and stay stable after the warp, which keeps magnitudes); poles as eigenvalues of
stacked companion matrices (LAPACK: most of the run time, so frames 100 dB below the clip's
loudest are passed through unwarped); the all-pole synthesis as one recursion
over the frame's samples, for all frames at once.
"""

from __future__ import annotations

from collections.abc import Sequence

import librosa
import numpy as np

SAMPLE_RATE = 8000
CHUNK = 256  # clips per vectorised block
# Frames more than 100 dB below the clip's loudest frame (zero padding, digital silence) are
# passed through unwarped; this skips their pole computation, the costly step.
SILENT_FRAME_RATIO = 1e-10
PITCH_N_FFT = 512  # a speech-length frame at 8 kHz (librosa's 2048 default smears pitch)
PITCH_HOP = 128
NUM_DIGITS = 10
NUM_GENDERS = 2


def _frame_setup(window_seconds: float, hop_seconds: float, sample_rate: int):
    win = int(round(window_seconds * sample_rate))
    hop = int(round(hop_seconds * sample_rate))
    if win < 2 or hop < 1 or hop > win:
        raise ValueError(f"need 1 <= hop <= window, got window {win}, hop {hop} samples")
    n = np.arange(win)
    window = np.sqrt(0.5 - 0.5 * np.cos(2 * np.pi * n / win))  # sqrt of periodic Hann
    return win, hop, window


def _levinson(r: np.ndarray) -> np.ndarray:
    """LPC polynomials (F, p+1), a[:, 0] = 1, from autocorrelations r (F, p+1)."""
    frames, order = r.shape[0], r.shape[1] - 1
    a = np.zeros((frames, order + 1))
    a[:, 0] = 1.0
    err = r[:, 0].copy()
    for i in range(1, order + 1):
        acc = r[:, i] + np.einsum("fj,fj->f", a[:, 1:i], r[:, i - 1 : 0 : -1])
        k = -acc / err
        a[:, 1:i] = a[:, 1:i] + k[:, None] * a[:, i - 1 : 0 : -1]
        a[:, i] = k
        err = err * (1.0 - k * k)
    return a


def _warp_poles(a: np.ndarray, coefficient: float) -> np.ndarray:
    """Polynomials (F, p+1) whose complex roots have their angles raised to ``coefficient``."""
    frames, order = a.shape[0], a.shape[1] - 1
    companion = np.zeros((frames, order, order))
    companion[:, 0, :] = -a[:, 1:]
    companion[:, np.arange(1, order), np.arange(order - 1)] = 1.0
    poles = np.linalg.eigvals(companion)  # (F, p)
    angle = np.angle(poles)
    is_complex = np.abs(poles.imag) > 1e-12 * np.maximum(np.abs(poles), 1e-300)
    new_angle = np.where(is_complex, np.sign(angle) * np.abs(angle) ** coefficient, angle)
    poles = np.where(is_complex, np.abs(poles) * np.exp(1j * new_angle), poles)
    poly = np.zeros((frames, order + 1), complex)
    poly[:, 0] = 1.0
    for j in range(order):
        poly[:, 1:] -= poles[:, j : j + 1] * poly[:, :-1]
    return poly.real


def _mcadams_chunk(
    clips: np.ndarray,
    coefficient: float,
    win: int,
    hop: int,
    window: np.ndarray,
    lp_order: int,
) -> np.ndarray:
    n, length = clips.shape
    num_frames = int(np.ceil((length + win) / hop)) + 1
    padded = np.zeros((n, (num_frames - 1) * hop + win))
    padded[:, win : win + length] = clips  # `win` zeros on the left: full OLA coverage
    starts = np.arange(num_frames) * hop
    frames = padded[:, starts[:, None] + np.arange(win)] * window  # (N, F, win)
    x = frames.reshape(-1, win)

    # LPC by the autocorrelation method (a tiny white-noise floor keeps silent frames finite).
    r = np.stack([np.einsum("fn,fn->f", x[:, : win - k], x[:, k:]) for k in range(lp_order + 1)], 1)
    energy = r[:, 0].reshape(n, num_frames)
    loud = (energy > SILENT_FRAME_RATIO * energy.max(axis=1, keepdims=True)).reshape(-1)
    r[:, 0] = r[:, 0] * (1.0 + 1e-9) + 1e-12
    a = _levinson(r)
    residual = x.copy()
    for k in range(1, lp_order + 1):
        residual[:, k:] += a[:, k : k + 1] * x[:, :-k]

    warped = a.copy()  # near-silent frames keep their filter: they come back unchanged
    if loud.any():
        warped[loud] = _warp_poles(a[loud], coefficient)
    b = warped[:, :0:-1]  # a'_p ... a'_1, to dot with past outputs
    y = np.zeros((x.shape[0], lp_order + win))
    for t in range(win):
        y[:, lp_order + t] = residual[:, t] - np.einsum("fk,fk->f", b, y[:, t : t + lp_order])
    y = y[:, lp_order:] * window

    out = np.zeros((n, padded.shape[1]))
    norm = np.zeros(padded.shape[1])
    y = y.reshape(n, num_frames, win)
    for i, s in enumerate(starts):
        out[:, s : s + win] += y[:, i]
        norm[s : s + win] += window**2
    out = out[:, win : win + length] / np.maximum(norm[win : win + length], 1e-12)

    peak_in = np.abs(clips).max(axis=1, keepdims=True)
    peak_out = np.abs(out).max(axis=1, keepdims=True)
    return np.where(peak_out > 0, out * (peak_in / np.maximum(peak_out, 1e-300)), 0.0)


def mcadams_batch(
    clips: np.ndarray,
    sample_rate: int = SAMPLE_RATE,
    coefficient: float = 0.8,
    window_seconds: float = 0.02,
    hop_seconds: float = 0.01,
    lp_order: int = 20,
) -> np.ndarray:
    """McAdams-coefficient anonymisation of (N, L) clips, vectorised over all frames; same
    shape out, same dtype for floating input (else float64); computed in float64."""
    x = np.asarray(clips)
    if x.ndim != 2:
        raise ValueError(f"clips must be (N, L), got shape {x.shape}")
    if lp_order < 1:
        raise ValueError(f"lp_order must be >= 1, got {lp_order}")
    if not coefficient > 0:
        raise ValueError(f"coefficient must be positive, got {coefficient}")
    win, hop, window = _frame_setup(window_seconds, hop_seconds, sample_rate)
    if lp_order >= win:
        raise ValueError(f"lp_order {lp_order} must be below the window length {win}")
    dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64
    out = np.empty(x.shape, dtype)
    for i in range(0, x.shape[0], CHUNK):
        block = np.asarray(x[i : i + CHUNK], np.float64)
        out[i : i + CHUNK] = _mcadams_chunk(block, coefficient, win, hop, window, lp_order)
    return out


def mcadams(
    audio: np.ndarray,
    sample_rate: int = SAMPLE_RATE,
    coefficient: float = 0.8,
    window_seconds: float = 0.02,
    hop_seconds: float = 0.01,
    lp_order: int = 20,
) -> np.ndarray:
    """McAdams-coefficient anonymisation (VoicePrivacy B2) of one (L,) clip; see the module
    docstring. Same shape and dtype out, peak matched to the input's."""
    return _one_clip(audio)(mcadams_batch, sample_rate, coefficient, window_seconds,
                            hop_seconds, lp_order)


def _one_clip(audio: np.ndarray):
    """``call(batch_fn, *args)``: ``batch_fn`` applied to the (L,) clip as a batch of one."""
    x = np.asarray(audio)
    if x.ndim != 1:
        raise ValueError(f"audio must be (L,), got shape {x.shape}")
    return lambda batch_fn, *args: batch_fn(x[None], *args)[0]


def _shift(x: np.ndarray, steps: float, sample_rate: int) -> np.ndarray:
    y = librosa.effects.pitch_shift(
        np.asarray(x, np.float32),
        sr=sample_rate,
        n_steps=steps,
        n_fft=PITCH_N_FFT,
        hop_length=PITCH_HOP,
    )
    return np.nan_to_num(y[..., : x.shape[-1]])


def pitch_shift_flip(
    audio: np.ndarray, gender: int, sample_rate: int = SAMPLE_RATE, semitones: float = 4.0
) -> np.ndarray:
    """Gender-flipping pitch shift of one (L,) clip: male (1) up by ``semitones``, female (0)
    down (librosa phase vocoder + resampling). Same length and dtype out."""
    return _one_clip(audio)(pitch_shift_flip_batch, [gender], sample_rate, semitones)


def pitch_shift_flip_batch(
    clips: np.ndarray,
    genders: Sequence[int] | np.ndarray,
    sample_rate: int = SAMPLE_RATE,
    semitones: float = 4.0,
) -> np.ndarray:
    """``pitch_shift_flip`` of (N, L) clips with (N,) genders (0 female, 1 male), one
    multichannel librosa call per gender."""
    x = np.asarray(clips)
    g = np.asarray(genders).reshape(-1)
    if x.ndim != 2 or g.shape[0] != x.shape[0]:
        raise ValueError(f"need clips (N, L) and genders (N,), got {x.shape} and {g.shape}")
    if not np.isin(g, (0, 1)).all():
        raise ValueError("genders must be 0 (female) or 1 (male)")
    dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64
    out = np.empty(x.shape, dtype)
    for value, steps in ((1, semitones), (0, -semitones)):
        idx = np.flatnonzero(g == value)
        for i in range(0, idx.size, CHUNK):
            part = idx[i : i + CHUNK]
            out[part] = _shift(x[part], steps, sample_rate)
    return out


def digit_templates(x: np.ndarray, digit: np.ndarray, gender: np.ndarray) -> np.ndarray:
    """Mean spectrogram per (digit, gender) of ``x`` (N, ...) -> (10, 2, ...); a cell no
    utterance fills takes its digit's mean over both genders, else the mean of all."""
    x, digit, gender = np.asarray(x, np.float64), np.asarray(digit), np.asarray(gender)
    if not (len(x) == len(digit) == len(gender)) or len(x) == 0:
        raise ValueError(f"need as many digits and genders as spectrograms (> 0), got "
                         f"{len(x)}, {len(digit)}, {len(gender)}")
    bank = np.empty((NUM_DIGITS, NUM_GENDERS, *x.shape[1:]))
    for d in range(NUM_DIGITS):
        of_digit = digit == d
        fallback = x[of_digit].mean(0) if of_digit.any() else x.mean(0)
        for g in range(NUM_GENDERS):
            cell = of_digit & (gender == g)
            bank[d, g] = x[cell].mean(0) if cell.any() else fallback
    return bank.astype(np.float32)
