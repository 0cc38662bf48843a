"""Hand-made acoustic features for the non-neural attacker.

    feats = acoustic_features(clips)  # (N, L) audio at 8 kHz -> (N, len(FEATURE_NAMES))

Per clip: the log of the median F0 over voiced, energetic frames (YIN, 60-400 Hz), the mean and
standard deviation over energetic frames of 20 MFCCs, the mean spectral centroid of those
frames, and the fraction of frames that are voiced. These are the classic cues for speaker and
gender recognition; an anonymiser that hides gender only from a neural classifier but leaves
F0 or the formant envelope alone is caught by a linear model on them.

Frames: 128-sample hop (16 ms at 8 kHz), centred with zero padding; YIN uses 512-sample frames,
the MFCCs and centroid 256-sample (32 ms) frames, both giving ``1 + L // 128`` frames.
A frame is energetic when its RMS exceeds ``ENERGY_FRACTION`` of the clip's loudest frame (and
``ABS_RMS_FLOOR``); it is voiced when, in addition, the normalised correlation of the YIN frame
with itself shifted by the YIN period is at least ``VOICING_THRESHOLD`` (YIN always returns a
period, so this rejects noise and unvoiced frames). A clip without voiced frames (silence,
noise, whispers) gets ``log(F0_FALLBACK_HZ)``, a neutral value between typical male and female
F0, and ``voiced_fraction`` 0; without energetic frames the statistics use all frames.
"""

from __future__ import annotations

import librosa
import numpy as np

SAMPLE_RATE = 8000
F0_MIN_HZ = 60.0
F0_MAX_HZ = 400.0
F0_FALLBACK_HZ = 150.0
HOP = 128
YIN_FRAME = 512
FFT_FRAME = 256
N_MFCC = 20
N_MELS = 40
ENERGY_FRACTION = 0.1  # -20 dB below the clip's loudest frame
ABS_RMS_FLOOR = 1e-4
VOICING_THRESHOLD = 0.5
CHUNK = 256  # clips per vectorised block (bounds the memory of the framed arrays)

FEATURE_NAMES: tuple[str, ...] = (
    "log_f0",
    *(f"mfcc_mean_{i}" for i in range(N_MFCC)),
    *(f"mfcc_std_{i}" for i in range(N_MFCC)),
    "spectral_centroid_hz",
    "voiced_fraction",
)


def _frames(clips: np.ndarray, frame_length: int) -> np.ndarray:
    """(N, F, frame_length) centred, zero-padded frames with hop ``HOP``."""
    half = frame_length // 2
    padded = np.pad(clips, ((0, 0), (half, half)))
    return np.swapaxes(librosa.util.frame(padded, frame_length=frame_length, hop_length=HOP), 1, 2)


def _masked_mean_std(values: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std over the last axis of ``values`` (N, K, F) where ``mask`` (N, F)."""
    w = mask[:, None, :].astype(np.float64)
    count = w.sum(-1)
    mean = (values * w).sum(-1) / count
    var = (((values - mean[..., None]) ** 2) * w).sum(-1) / count
    return mean, np.sqrt(var)


def _chunk_features(clips: np.ndarray, sample_rate: int) -> np.ndarray:
    n = clips.shape[0]
    # Energy per frame on the spectral frames (the MFCC / centroid frames).
    spec_frames = _frames(clips, FFT_FRAME)
    rms = np.sqrt(np.mean(spec_frames**2, axis=-1))  # (N, F)
    energetic = (rms > ENERGY_FRACTION * rms.max(-1, keepdims=True)) & (rms > ABS_RMS_FLOOR)
    stats_mask = np.where(energetic.any(-1, keepdims=True), energetic, True)

    # F0: YIN, then a voicing check by the normalised correlation at the YIN period.
    f0 = librosa.yin(
        clips,
        fmin=F0_MIN_HZ,
        fmax=F0_MAX_HZ,
        sr=sample_rate,
        frame_length=YIN_FRAME,
        hop_length=HOP,
    )  # (N, F)
    yin_frames = _frames(clips, YIN_FRAME)
    max_period = int(np.ceil(sample_rate / F0_MIN_HZ))
    width = YIN_FRAME - max_period
    period = np.clip(np.rint(sample_rate / f0), 1, max_period).astype(np.int64)
    head = yin_frames[..., :width]
    shifted = np.take_along_axis(yin_frames, period[..., None] + np.arange(width), axis=-1)
    denom = np.sqrt(np.sum(head**2, -1) * np.sum(shifted**2, -1))
    ncc = np.sum(head * shifted, -1) / np.maximum(denom, 1e-20)
    voiced = energetic & (ncc >= VOICING_THRESHOLD)
    log_f0 = np.full(n, np.log(F0_FALLBACK_HZ))
    for i in np.flatnonzero(voiced.any(-1)):
        log_f0[i] = np.log(np.median(f0[i, voiced[i]]))

    # MFCCs and the spectral centroid from one STFT.
    spectrum = np.abs(
        librosa.stft(
            clips, n_fft=FFT_FRAME, hop_length=HOP, window="hann", center=True, pad_mode="constant"
        )
    )  # (N, bins, F)
    mel = librosa.feature.melspectrogram(
        S=spectrum**2, sr=sample_rate, n_fft=FFT_FRAME, n_mels=N_MELS, fmax=sample_rate / 2
    )
    mfcc = librosa.feature.mfcc(S=librosa.power_to_db(mel), n_mfcc=N_MFCC)  # (N, 20, F)
    mfcc_mean, mfcc_std = _masked_mean_std(mfcc, stats_mask)
    freqs = librosa.fft_frequencies(sr=sample_rate, n_fft=FFT_FRAME)
    total = spectrum.sum(1)
    centroid = np.where(total > 0, (freqs[:, None] * spectrum).sum(1) / np.maximum(total, 1e-20), 0)
    centroid_mean, _ = _masked_mean_std(centroid[:, None, :], stats_mask)

    return np.concatenate(
        [log_f0[:, None], mfcc_mean, mfcc_std, centroid_mean, voiced.mean(-1, keepdims=True)],
        axis=1,
    )


def acoustic_features(clips: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """(N, len(FEATURE_NAMES)) float64 features of (N, L) clips (a single (L,) clip gives
    (1, D)); see the module docstring for the definitions. Deterministic."""
    x = np.asarray(clips, dtype=np.float64)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2 or x.shape[1] < YIN_FRAME:
        raise ValueError(f"clips must be (N, L) with L >= {YIN_FRAME}, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("clips contain NaN or inf")
    if x.shape[0] == 0:
        return np.zeros((0, len(FEATURE_NAMES)))
    return np.concatenate(
        [_chunk_features(x[i : i + CHUNK], sample_rate) for i in range(0, x.shape[0], CHUNK)]
    )
