"""Files of any length through the fixed-window models: windows, the log-mel crossfade, the
vocoder chunks of long files, and the runner that batches them.

A file is cut into windows of 8192 samples with 50 % overlap; each window's transformed log-mel
is crossfaded into one log-mel of the whole file (``frame_weights``), which is vocoded whole
(one window) or in chunks of ``CHUNK_FRAMES`` frames with ``CONTEXT_FRAMES`` of context on each
side (``vocoder_chunks``, ``chunk_audio``), or, for a vocoder whose output must not be cut into
chunks (``WindowModels.whole_file_vocoder``: Griffin-Lim), whole, padded with silence to a
multiple of ``WHOLE_FILE_FRAMES`` (``whole_file_mel``). ``Runner`` does this for many files at
once; the models come in as a ``WindowModels`` (``anonymize.Anonymizer``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

import numpy as np

from pcmelgan_jax import audio as audio_lib

WINDOW = audio_lib.SEGMENT_LENGTH
HOP = WINDOW // 2

FRAMES = audio_lib.N_FRAMES  # 32 frames per window
# vocoder chunk of a long file (frames kept per chunk): 120 + 2 x 8 context frames per call,
# the fastest chunk length per frame on CPU (docs/measurements.md)
CHUNK_FRAMES = 120
CONTEXT_FRAMES = 8  # frames of context on each side of a chunk (cut off after vocoding)
MAX_VOCODER_QUEUE = 8  # vocoder calls queued for the worker thread before the reader waits
# a file vocoded whole is padded to a multiple of this many frames: one compiled program per
# 2 s of audio instead of one per length
WHOLE_FILE_FRAMES = 64
SILENT_LOG_MEL = float(np.log10(audio_lib.LOG_FLOOR))  # the log-mel of silence, every bin


def window_starts(length: int, window: int = WINDOW, hop: int = HOP) -> tuple[list[int], int]:
    """Window start offsets covering ``length`` samples, and the padded length they span."""
    if length <= window:
        return [0], window
    count = -(-(length - window) // hop) + 1
    return [k * hop for k in range(count)], (count - 1) * hop + window


def frame_weights(frames: int = FRAMES) -> np.ndarray:
    """Crossfade weights of a window's frames: sin^2(pi (t + 1/2) / frames), (frames,).

    Positive everywhere and small at the window's edges, where the analysis saw padding;
    overlapping windows are blended by the weighted mean."""
    t = np.arange(frames)
    return np.sin(np.pi * (t + 0.5) / frames) ** 2


def vocoder_chunks(
    mel: np.ndarray, chunk: int = CHUNK_FRAMES, context: int = CONTEXT_FRAMES
) -> np.ndarray:
    """Splits a log-mel (80, F) into chunks (n, 80, chunk + 2 context) whose centres tile it.

    The mel is reflected by ``context`` frames at the start and padded by reflection at the
    end up to a whole number of chunks. Vocode them and keep ``chunk_audio`` of the outputs.
    """
    n = -(-mel.shape[1] // chunk)
    padded = np.pad(mel, [(0, 0), (context, n * chunk - mel.shape[1] + context)], mode="reflect")
    return np.stack([padded[:, j * chunk : j * chunk + chunk + 2 * context] for j in range(n)])


def whole_file_mel(mel: np.ndarray, multiple: int = WHOLE_FILE_FRAMES) -> np.ndarray:
    """A log-mel (80, F) padded at the end with the log-mel of silence to a multiple of
    ``multiple`` frames; vocode it and keep the audio of the first F frames."""
    extra = -mel.shape[1] % multiple
    return np.pad(mel, [(0, 0), (0, extra)], constant_values=SILENT_LOG_MEL)


def chunk_audio(audio: np.ndarray, frames: int, context: int = CONTEXT_FRAMES) -> np.ndarray:
    """Vocoded chunks (n, 256 (chunk + 2 context)) -> the audio of the first ``frames`` frames."""
    hop = audio_lib.HOP_LENGTH
    kept = audio[:, context * hop : audio.shape[1] - context * hop]
    return kept.reshape(-1)[: frames * hop]


@dataclasses.dataclass
class Job:
    """One file in flight: padded peak-normalised audio, the mel being blended, the output."""

    in_path: str
    out_path: str
    length: int  # samples at 8 kHz
    offset: int  # where the audio starts in ``padded`` (centred when shorter than a window)
    scale: float  # peak / 0.95: restores the input level
    padded: np.ndarray
    starts: list[int]
    z1: np.ndarray
    z2: np.ndarray
    cond: int
    mel_sum: np.ndarray  # (80, frames) weighted sum of the windows' log-mels
    mel_weight: np.ndarray  # (frames,)
    pending: deque[int] = dataclasses.field(default_factory=deque)  # windows not yet blended
    chunks: np.ndarray | None = None  # vocoded chunks without their context (n, 256 chunk)
    chunks_queued: int = 0
    chunks_left: int = 0

    @property
    def frames(self) -> int:
        return self.padded.size // audio_lib.HOP_LENGTH

    def add_mel(self, k: int, mel: np.ndarray) -> None:
        f = self.starts[k] // audio_lib.HOP_LENGTH
        w = frame_weights()
        self.mel_sum[:, f : f + FRAMES] += w * mel
        self.mel_weight[f : f + FRAMES] += w

    def blended_frames(self) -> int:
        """Frames whose blend is complete: those before the first pending window (windows
        are blended in order)."""
        return self.starts[self.pending[0]] // audio_lib.HOP_LENGTH if self.pending else self.frames

    def mel(self, frames: int | None = None) -> np.ndarray:
        """The blended log-mel (80, frames) of the first ``frames`` frames (default: all)."""
        f = self.frames if frames is None else frames
        return (self.mel_sum[:, :f] / self.mel_weight[:f]).astype(np.float32)

    def result(self, audio: np.ndarray) -> np.ndarray:
        """Vocoded padded-length audio -> the output (input length, input level)."""
        return (audio[self.offset : self.offset + self.length] * self.scale).astype(np.float32)


def make_job(
    audio: np.ndarray, in_path: str, out_path: str, z1: np.ndarray, z2: np.ndarray, cond: int
) -> Job:
    """A file's job: its audio (8 kHz mono) peak-normalised and padded to whole windows (centred
    in one window when shorter), with the file's noise draws and gender."""
    n = audio.shape[0]
    peak = float(np.max(np.abs(audio))) if n else 0.0
    starts, padded_len = window_starts(n)
    offset = (WINDOW - n) // 2 if n < WINDOW else 0
    padded = np.zeros(padded_len, np.float32)
    if peak > 0:
        padded[offset : offset + n] = audio * (audio_lib.PEAK / peak)
    frames = padded_len // audio_lib.HOP_LENGTH
    return Job(in_path, out_path, n, offset, peak / audio_lib.PEAK if peak > 0 else 0.0,
               padded, starts, z1, z2, cond, np.zeros((audio_lib.N_MELS, frames)),
               np.zeros(frames))


class WindowModels(Protocol):
    """What ``Runner`` needs of the models (``anonymize.Anonymizer``)."""

    batch_size: int  # windows per U-Net batch
    vocoder_batch_size: int  # one-window files per vocoder batch
    vocoder_thread: bool  # vocode on a worker thread

    @property
    def whole_file_vocoder(self) -> bool:
        """Vocode a longer file in one call once all of it is blended (else in chunks)."""
        ...

    @property
    def noise_dim(self) -> int: ...

    def transform_mels(self, windows: np.ndarray, z1: np.ndarray, z2: np.ndarray,
                       cond: np.ndarray) -> np.ndarray: ...

    def vocode(self, mels: np.ndarray, context: int = 0) -> np.ndarray: ...


class _Inline:
    """The worker's interface, running each call at once in the calling thread."""

    def submit(self, fn: Callable, *args: Any) -> Future:
        future: Future = Future()
        future.set_result(fn(*args))
        return future

    def shutdown(self, **kwargs: Any) -> None:
        pass


class Runner:
    """Feeds windows of many files through fixed-size U-Net batches (in this thread), blends
    each file's log-mels and vocodes on a worker thread (XLA:CPU runs the U-Net and the
    vocoder programs at once, which keeps both cores busier than either alone): one-window
    files whole, in fixed-size batches shared between files; longer files in chunks, one per
    call, each queued as soon as the frames it spans are blended, or, with a
    ``whole_file_vocoder``, in one call once all their frames are. Vocoder results are taken,
    and files written, in this thread in submission order, so the output does not depend on
    timing. ``flush`` finishes all work, ``close`` ends the worker."""

    def __init__(self, model: WindowModels, on_done: Callable[[Job, str | None], None]):
        self.model = model
        self.windows: deque[tuple[Job, int]] = deque()
        self.singles: deque[tuple[Job, np.ndarray]] = deque()  # (job, mel (80, 32))
        self.vocoding: deque[tuple[Future, Callable[[np.ndarray], None]]] = deque()
        self.worker = (ThreadPoolExecutor(max_workers=1, thread_name_prefix="vocoder")
                       if model.vocoder_thread else _Inline())
        self.on_done = on_done
        self.windows_processed = 0
        self.vocoded_frames = 0

    def submit(self, job: Job) -> None:
        if job.scale == 0.0:  # all-zero input: silence out, no model call
            self._finish(job, np.zeros(job.padded.size, np.float32))
            return
        for k, s in enumerate(job.starts):
            if np.any(job.padded[s : s + WINDOW]):
                self.windows.append((job, k))
                job.pending.append(k)
            else:  # a silent window: the log-mel of silence
                job.add_mel(k, np.full((audio_lib.N_MELS, FRAMES), SILENT_LOG_MEL))
        self._blended(job)
        self._drain(final=False)

    def flush(self) -> None:
        """Processes everything queued, waits for the vocoder and writes the last files."""
        self._drain(final=True)
        self._collect(wait=True)

    def close(self) -> None:
        """Ends the worker (queued vocoder calls that have not started are dropped)."""
        self.worker.shutdown(wait=True, cancel_futures=True)

    def _drain(self, final: bool) -> None:
        while len(self.windows) >= (1 if final else self.model.batch_size):
            self._run_windows()
        while len(self.singles) >= (1 if final else self.model.vocoder_batch_size):
            self._run_singles()
        self._collect(wait=False)

    def _run_windows(self) -> None:
        b = self.model.batch_size
        items = [self.windows.popleft() for _ in range(min(b, len(self.windows)))]
        nd = self.model.noise_dim
        windows = np.zeros((b, WINDOW), np.float32)
        z1 = np.zeros((b, nd), np.float32)
        z2 = np.zeros((b, nd), np.float32)
        cond = np.zeros(b, np.int32)
        for i, (job, k) in enumerate(items):
            s = job.starts[k]
            windows[i] = job.padded[s : s + WINDOW]
            z1[i], z2[i], cond[i] = job.z1, job.z2, job.cond
        mels = self.model.transform_mels(windows, z1, z2, cond)
        self.windows_processed += len(items)
        for i, (job, k) in enumerate(items):
            job.add_mel(k, mels[i])
            job.pending.remove(k)
        for job in {id(job): job for job, _ in items}.values():
            self._blended(job)

    def _blended(self, job: Job) -> None:
        """Queues what ``job``'s blend makes ready: a one-window file once blended, the chunks
        of a longer file whose frames are (chunk j spans frames [120 j - 8, 120 j + 128)), or
        a longer file whole once blended (``whole_file_vocoder``)."""
        if job.frames == FRAMES:
            if not job.pending:
                self.singles.append((job, job.mel()))
            return
        if self.model.whole_file_vocoder:
            if not job.pending:
                size = job.padded.size
                self._vocode(whole_file_mel(job.mel())[None],
                             lambda audio: self._finish(job, audio[0, :size]))
            return
        if job.chunks is None:
            n = -(-job.frames // CHUNK_FRAMES)
            job.chunks = np.zeros((n, CHUNK_FRAMES * audio_lib.HOP_LENGTH), np.float32)
            job.chunks_left = n
        blended = job.blended_frames()
        if blended == job.frames:  # the rest, the last one padded by reflection
            ready = vocoder_chunks(job.mel())[job.chunks_queued :]
        else:  # chunks that end before the first unblended frame: vocoder_chunks' own values
            count = (blended - CONTEXT_FRAMES) // CHUNK_FRAMES
            if count <= job.chunks_queued:
                return
            ready = vocoder_chunks(job.mel(count * CHUNK_FRAMES + CONTEXT_FRAMES))
            ready = ready[job.chunks_queued : count]
        for chunk in ready:
            self._vocode(chunk[None], functools.partial(self._chunk_done, job, job.chunks_queued),
                         CONTEXT_FRAMES)
            job.chunks_queued += 1

    def _vocode(self, mels: np.ndarray, done: Callable[[np.ndarray], None], context: int = 0
                ) -> None:
        """Vocodes ``mels`` (B, 80, frames) on the worker (``Anonymizer.vocode``);
        ``done(audio)`` runs in this thread."""
        self.vocoded_frames += mels.shape[0] * mels.shape[2]
        self.vocoding.append((self.worker.submit(self.model.vocode, mels, context), done))

    def _collect(self, wait: bool) -> None:
        """Hands finished vocoder results to their callbacks, in submission order; waits
        for all (``wait``) or while more than MAX_VOCODER_QUEUE calls are queued (bounds the
        memory of files read ahead of the vocoder)."""
        while self.vocoding and (wait or self.vocoding[0][0].done()
                                 or len(self.vocoding) > MAX_VOCODER_QUEUE):
            future, done = self.vocoding.popleft()
            done(future.result())

    def _run_singles(self) -> None:
        """Up to vocoder_batch_size one-window files in one call, padded with silence."""
        vb = self.model.vocoder_batch_size
        items = [self.singles.popleft() for _ in range(min(vb, len(self.singles)))]
        mels = np.full((vb, audio_lib.N_MELS, FRAMES), SILENT_LOG_MEL, np.float32)
        for i, (_, mel) in enumerate(items):
            mels[i] = mel

        def done(audio: np.ndarray) -> None:
            for i, (job, _) in enumerate(items):
                self._finish(job, audio[i])

        self._vocode(mels, done)

    def _chunk_done(self, job: Job, j: int, audio: np.ndarray) -> None:
        job.chunks[j] = audio[0]
        job.chunks_left -= 1
        if job.chunks_left == 0:
            self._finish(job, chunk_audio(job.chunks, job.frames, context=0))

    def _finish(self, job: Job, audio: np.ndarray) -> None:
        try:
            audio_lib.write_audio(job.out_path, job.result(audio))
        except OSError as e:
            self.on_done(job, f"cannot write {job.out_path}: {e}")
            return
        self.on_done(job, None)
