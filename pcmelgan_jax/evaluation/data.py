"""The evaluation's data: every split of the prepared dataset as arrays, in source order."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from pcmelgan_jax import audio as audio_lib
from pcmelgan_jax.evaluation.inference import mel_features

SPLITS = ("train", "validation", "test")


@dataclasses.dataclass(frozen=True)
class SplitData:
    """One split's utterances: prepared clips, their normalised log-mels and labels."""

    name: str
    clips: np.ndarray  # (N, 8192) float32, peak-normalised, centred
    x: np.ndarray  # (N, 80, 32) normalised log-mel
    mean: np.ndarray  # (N,) the log-mel's normalisation statistics
    std: np.ndarray  # (N,)
    digit: np.ndarray  # (N,) int32
    gender: np.ndarray  # (N,) int32
    speaker: np.ndarray  # (N,) int32
    repetition: np.ndarray  # (N,) int32

    def __len__(self) -> int:
        return len(self.digit)

    def subset(self, index: np.ndarray) -> SplitData:
        """The utterances at ``index`` (a boolean mask or integer indices)."""
        return dataclasses.replace(self, **{
            f.name: getattr(self, f.name)[index]
            for f in dataclasses.fields(self) if f.name != "name"
        })

    @classmethod
    def joined(cls, name: str, splits: Sequence[SplitData]) -> SplitData:
        """The utterances of ``splits``, in order, as one split called ``name``."""
        return cls(name, **{
            f.name: np.concatenate([getattr(s, f.name) for s in splits])
            for f in dataclasses.fields(cls) if f.name != "name"
        })


def padded_batches(n: int, batch_size: int) -> Iterator[tuple[int, slice, int]]:
    """(batch index, slice of the n items, number of real rows) of fixed-size batches."""
    for i, start in enumerate(range(0, n, batch_size)):
        stop = min(start + batch_size, n)
        yield i, slice(start, stop), stop - start


def pad_rows(array: np.ndarray, batch_size: int) -> np.ndarray:
    """``array`` (n, ...) padded with zero rows to (batch_size, ...)."""
    if len(array) == batch_size:
        return array
    out = np.zeros((batch_size, *array.shape[1:]), array.dtype)
    out[: len(array)] = array
    return out


def log_mels(clips: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normalised log-mels (N, 80, 32) and their mean and std (N,) of clips (N, 8192)."""
    xs, means, stds = [], [], []
    for _, rows, n in padded_batches(len(clips), batch_size):
        x, mean, std = mel_features(pad_rows(np.asarray(clips[rows], np.float32), batch_size))
        xs.append(np.asarray(x)[:n])
        means.append(np.asarray(mean)[:n])
        stds.append(np.asarray(std)[:n])
    if not xs:
        empty = np.zeros((0,), np.float32)
        return np.zeros((0, audio_lib.N_MELS, audio_lib.N_FRAMES), np.float32), empty, empty
    return np.concatenate(xs), np.concatenate(means), np.concatenate(stds)


@functools.lru_cache(maxsize=6)
def load_split(data_dir: str, dataset: str, split: str, batch_size: int) -> SplitData:
    """A whole split as arrays (``batch_size`` only sets the log-mel program's shape)."""
    from pcmelgan_jax.data.pipeline import load_source

    source = load_source(data_dir, dataset, split)
    records = [source[i] for i in range(len(source))]
    clips = np.stack([
        audio_lib.prepare_clip(np.asarray(r["audio"], np.float32) / 32768.0) for r in records
    ]) if records else np.zeros((0, audio_lib.SEGMENT_LENGTH), np.float32)
    x, mean, std = log_mels(clips, batch_size)

    def labels(key: str) -> np.ndarray:
        return np.asarray([int(r[key]) for r in records], np.int32)

    return SplitData(split, clips, x, mean, std, labels("digit"), labels("gender"),
                     labels("speaker"), labels("repetition"))


def heldout_repetitions(reps: Iterable[int], fraction: float) -> list[int]:
    """The repetitions of one speaker held out: the last max(1, round(fraction * n)) of the
    sorted distinct repetitions, none when the speaker has fewer than two."""
    distinct = sorted(set(int(r) for r in reps))
    if len(distinct) < 2 or fraction <= 0:
        return []
    k = min(len(distinct) - 1, max(1, int(round(fraction * len(distinct)))))
    return distinct[-k:]


def heldout_mask(split: SplitData, fraction: float) -> np.ndarray:
    """True for the utterances whose repetition is held out (``heldout_repetitions``)."""
    held = {
        s: set(heldout_repetitions(split.repetition[split.speaker == s], fraction))
        for s in np.unique(split.speaker)
    }
    return np.asarray([int(r) in held[int(s)] for s, r in zip(split.speaker, split.repetition,
                                                                strict=True)], bool)
