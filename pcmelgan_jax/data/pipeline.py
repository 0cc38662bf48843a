"""Input pipeline: ``tfds.data_source`` (array_record) -> Grain -> fixed-shape NumPy batches.

    it = make_dataset(data_dir, "audio_mnist/all", "train", batch_size=64, seed=0)
    batch = next(it)        # {"audio": (64, 8192) float32, "digit"/"gender"/"speaker": (64,)
                            #  int32, "mask": (64,) float32}
    state = it.get_state()  # JSON-serialisable dict; save it in the checkpoint
    it2 = make_dataset(...same arguments...); it2.set_state(state)  # resumes exactly

Order of operations (Grain ``MapDataset``):

1. Shard the record indices by process (contiguous ranges as in ``grain`` ``even_split``;
   default ``ShardByJaxProcess``, i.e. ``jax.process_index()`` of ``jax.process_count()``).
   Training drops the remainder so that every process has the same number of examples.
2. Training: shuffle with a seed derived from ``seed`` (a new order each epoch, Grain folds
   the epoch into the seed), then repeat ``num_epochs`` times (None = forever).
3. Per example (``prepare_clip`` of ``pcmelgan_jax.audio``): int16 -> float32 / 32768,
   peak-normalise to 0.95, first 8192 samples; a shorter clip is zero-padded at a random
   offset in training (from ``numpy.random.default_rng([seed, position])``, position = index
   in the repeated stream, so it is reproducible and differs between epochs) and centred in
   evaluation.
4. Batch. Training drops an incomplete last batch. Evaluation keeps every example: the last
   batch is padded to full size with zero audio and ``mask`` 0 (real examples have mask 1),
   and each process's shard is padded to the same length, so every process runs the same
   number of evaluation steps. Metrics must be weighted by ``mask``.
5. Records: with ``cache_records`` (the default) each record is decoded from array_record once
   per process and kept (``CachedRecords``, shared by every iterator over the same files), so
   later epochs and evaluation passes cost no TFDS decoding.
6. Prefetch: ``worker_count`` > 0 uses that many Grain worker processes (``mp_prefetch``;
   the calling script needs an ``if __name__ == "__main__":`` guard), ``worker_threads``
   reader threads per process; 0 and 0 reads synchronously in the calling thread.

Log-mel features are not computed here; use ``pcmelgan_jax.audio.mel_features`` on device.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass

import numpy as np

from pcmelgan_jax.audio import SEGMENT_LENGTH, prepare_clip

DEFAULT_DATASET = "audio_mnist/all"
STATE_VERSION = 1


@dataclass(frozen=True)
class PipelineConfig:
    """Everything that determines the batch stream (recorded in the iterator state)."""

    dataset: str
    split: str
    batch_size: int
    seed: int
    train: bool
    num_epochs: int | None
    shard_index: int
    shard_count: int
    num_records: int
    segment_length: int = SEGMENT_LENGTH

    def fingerprint(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


class PrepareExample:
    """Grain ``map_with_index`` callable: (position, record index) -> one example dict.

    A record index of -1 is a padding slot (evaluation): zero audio, labels 0, mask 0.
    """

    def __init__(self, source, train: bool, seed: int, segment_length: int = SEGMENT_LENGTH):
        self.source = source
        self.train = train
        self.seed = seed
        self.segment_length = segment_length

    def __call__(self, position: int, record_index: int) -> dict[str, np.ndarray]:
        if record_index < 0:
            return {
                "audio": np.zeros(self.segment_length, np.float32),
                "digit": np.int32(0),
                "gender": np.int32(0),
                "speaker": np.int32(0),
                "mask": np.float32(0.0),
            }
        record = self.source[int(record_index)]
        audio = np.asarray(record["audio"], dtype=np.float32) / 32768.0
        rng = np.random.default_rng([self.seed, int(position)]) if self.train else None
        return {
            "audio": prepare_clip(audio, rng, self.segment_length),
            "digit": np.int32(record["digit"]),
            "gender": np.int32(record["gender"]),
            "speaker": np.int32(record["speaker"]),
            "mask": np.float32(1.0),
        }


class CachedRecords:
    """A random-access source that decodes each record of ``source`` once and keeps the fields
    the pipeline reads (``FIELDS``; about 10 KB per AudioMNIST clip) in memory.

    Thread-safe for Grain's reader threads (a record read twice at once is decoded twice, kept
    once). Grain worker processes receive the source without the records read so far."""

    FIELDS = ("audio", "digit", "gender", "speaker")

    def __init__(self, source):
        self.source = source
        self._records: dict[int, dict] = {}

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict:
        record = self._records.get(index)
        if record is None:
            decoded = self.source[index]
            record = {k: decoded[k] for k in self.FIELDS}
            self._records[index] = record
        return record

    def __getstate__(self) -> dict:
        return {"source": self.source, "_records": {}}

    @property
    def num_cached(self) -> int:
        return len(self._records)


# (dataset directory, split) -> (its files' (name, size, mtime), CachedRecords of this process)
_CACHED_SOURCES: dict[tuple[str, str], tuple[tuple, CachedRecords]] = {}


def _split_files(folder: str, split: str) -> tuple:
    """``split``'s files in ``folder`` as (name, size, mtime): a dataset prepared again
    differs."""
    stats = []
    for name in sorted(os.listdir(folder)):
        if f"-{split}." in name:
            st = os.stat(os.path.join(folder, name))
            stats.append((name, st.st_size, st.st_mtime_ns))
    return tuple(stats)


def cached_source(source, split: str) -> CachedRecords:
    """The process-wide ``CachedRecords`` of ``source`` (a TFDS source of ``split``), created
    on first use and shared by every later iterator over the same files; files prepared
    again replace it."""
    folder = os.fspath(source.dataset_info.data_dir)
    key, files = (os.path.realpath(folder), split), _split_files(folder, split)
    held = _CACHED_SOURCES.get(key)
    if held is None or held[0] != files:
        held = _CACHED_SOURCES[key] = (files, CachedRecords(source))
    return held[1]


def load_source(data_dir: str | os.PathLike, dataset: str = DEFAULT_DATASET, split: str = "train"):
    """The TFDS random-access data source of a prepared dataset (no TensorFlow needed).

    Raises ``FileNotFoundError`` (one line) for a dataset that is not prepared in ``data_dir``;
    for ``audio_mnist`` prepared only by an older version (no validation split), its subclass
    ``audio_mnist.OutdatedDatasetError``."""
    import tensorflow_datasets as tfds

    if dataset.split("/")[0] == "audio_mnist":
        from pcmelgan_jax.data import audio_mnist  # registers the builder

        builder = tfds.builder(dataset, data_dir=os.fspath(data_dir))
        audio_mnist.require_prepared(builder, data_dir, dataset)
    else:
        builder = tfds.builder(dataset, data_dir=os.fspath(data_dir))
    if not builder.is_prepared():
        raise FileNotFoundError(
            f"{dataset} is not prepared in {data_dir}; run `pcmelgan-jax prepare "
            f"--manual-dir ... --data-dir {data_dir}` first"
        )
    if split not in builder.info.splits:
        raise ValueError(f"{dataset} has no split {split!r}; it has {list(builder.info.splits)}")
    return builder.as_data_source(split=split)


def shard_range(num_records: int, shard_index: int, shard_count: int, drop_remainder: bool):
    """[start, end) of this shard (Grain's ``even_split`` arithmetic)."""
    per_shard = num_records // shard_count
    start, end = per_shard * shard_index, per_shard * (shard_index + 1)
    extra = num_records % shard_count
    if extra and not drop_remainder:
        start += min(shard_index, extra)
        end += min(shard_index + 1, extra)
    return start, end


def _ensure_absl_flags_parsed() -> None:
    """Grain 0.2.18's ``mp_prefetch`` reads an absl flag and fails with
    ``UnparsedFlagAccessError`` in programs that never parse absl flags; mark them parsed
    (with their defaults) in that case. Programs that parse flags themselves are unaffected."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _shuffle_seed(seed: int) -> int:
    # Grain's per-epoch seed is seed + epoch: derive a well-mixed seed so that user seeds s and
    # s + 1 do not share epochs.
    return int(np.random.SeedSequence([seed, 0x5EED]).generate_state(1)[0])


class DataIterator:
    """Iterator over batches with a checkpointable state.

    ``next(it)`` -> dict of NumPy arrays: ``audio`` (B, 8192) float32, ``digit``, ``gender``,
    ``speaker`` (B,) int32, ``mask`` (B,) float32. ``get_state()`` -> JSON-serialisable dict;
    ``set_state(state)`` restores it (the pipeline arguments must match).
    """

    def __init__(self, iter_dataset, config: PipelineConfig, steps_per_epoch: int | None):
        self._dataset = iter_dataset
        self._iterator = iter(iter_dataset)
        self.config = config
        self.steps_per_epoch = steps_per_epoch

    def __iter__(self) -> DataIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self._iterator)

    def get_state(self) -> dict:
        return {
            "version": STATE_VERSION,
            "fingerprint": self.config.fingerprint(),
            "config": asdict(self.config),
            "grain": self._iterator.get_state(),
        }

    def set_state(self, state: dict | str | bytes) -> None:
        if isinstance(state, str | bytes):
            state = json.loads(state)
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported pipeline state version {state.get('version')!r}")
        if state["fingerprint"] != self.config.fingerprint():
            raise ValueError(
                "the saved pipeline state belongs to a different pipeline: saved "
                f"{state['config']}, this one {asdict(self.config)}"
            )
        self._iterator.set_state(state["grain"])

    def close(self) -> None:
        close = getattr(self._iterator, "close", None)
        if close is not None:
            close()


def _shard_indices(num_records: int, shard_options, batch_size: int, train: bool) -> np.ndarray:
    """This shard's record indices; in evaluation padded with -1 to the same whole number of
    batches on every process."""
    start, end = shard_range(
        num_records, shard_options.shard_index, shard_options.shard_count, drop_remainder=train
    )
    indices = np.arange(start, end, dtype=np.int64)
    if not train:
        per_shard = -(-num_records // shard_options.shard_count)  # same steps on every process
        per_shard = -(-per_shard // batch_size) * batch_size
        indices = np.concatenate([indices, np.full(per_shard - indices.size, -1, np.int64)])
    if train and indices.size < batch_size:
        raise ValueError(
            f"shard {shard_options.shard_index} has {indices.size} examples, fewer than one "
            f"batch of {batch_size}"
        )
    return indices


def _grain_batches(
    indices: np.ndarray, prepare: PrepareExample, config: PipelineConfig, worker_count: int,
    worker_threads: int, prefetch_buffer_size: int,
):
    """The Grain pipeline over ``indices``: shuffle (training), repeat, prepare, batch, read."""
    import grain

    ds = grain.MapDataset.source(indices.tolist())
    if config.train:
        ds = ds.shuffle(seed=_shuffle_seed(config.seed))
    ds = ds.repeat(config.num_epochs)
    ds = ds.map_with_index(prepare)
    ds = ds.batch(config.batch_size, drop_remainder=config.train)
    iter_ds = ds.to_iter_dataset(
        grain.ReadOptions(
            num_threads=worker_threads,
            prefetch_buffer_size=prefetch_buffer_size if worker_threads else 0,
        )
    )
    if worker_count > 0:
        _ensure_absl_flags_parsed()
        iter_ds = iter_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    return iter_ds


def make_dataset(
    data_dir: str | os.PathLike,
    dataset: str = DEFAULT_DATASET,
    split: str = "train",
    batch_size: int = 64,
    seed: int = 0,
    train: bool = True,
    num_epochs: int | None = None,
    worker_count: int = 0,
    worker_threads: int = 0,
    prefetch_buffer_size: int = 256,
    shard_options=None,
    source=None,
    cache_records: bool = True,
) -> DataIterator:
    """Batches of prepared clips from ``tfds.data_source(dataset, split)`` through Grain.

    Args:
      data_dir: TFDS data dir given to ``pcmelgan-jax prepare``.
      dataset: ``"audio_mnist/all"`` or ``"audio_mnist/paper"``.
      split: ``"train"``, ``"validation"`` (model selection in training) or ``"test"``.
      batch_size: examples per batch (per process).
      seed: shuffling and random padding offsets; the stream is a function of the seed.
      train: shuffle, random pad offsets, drop the last incomplete batch; else ordered,
        centred, padded last batch with ``mask`` (see the module docstring).
      num_epochs: passes over the data; None = forever in training, 1 in evaluation.
      worker_count: Grain worker processes (0 = none).
      worker_threads: reader threads per process (0 = read in the consuming thread).
      prefetch_buffer_size: examples buffered by the reader threads.
      shard_options: ``grain.sharding.ShardOptions``; default ``ShardByJaxProcess``.
      source: a random-access source to use instead of ``tfds.data_source`` (tests).
      cache_records: decode each record once per process and keep it in memory
        (``CachedRecords``); False decodes every read (for data larger than the host's memory).
    Returns:
      a ``DataIterator`` (``get_state`` / ``set_state`` / ``steps_per_epoch``).
    """
    import grain

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if source is None:
        source = load_source(data_dir, dataset, split)
        if cache_records:
            source = cached_source(source, split)
    if shard_options is None:
        shard_options = grain.sharding.ShardByJaxProcess(drop_remainder=train)
    num_records = len(source)
    indices = _shard_indices(num_records, shard_options, batch_size, train)
    if not train and num_epochs is None:
        num_epochs = 1
    config = PipelineConfig(
        dataset=dataset, split=split, batch_size=batch_size, seed=seed, train=train,
        num_epochs=num_epochs, shard_index=shard_options.shard_index,
        shard_count=shard_options.shard_count, num_records=num_records,
    )
    iter_ds = _grain_batches(
        indices, PrepareExample(source, train, seed), config, worker_count, worker_threads,
        prefetch_buffer_size,
    )
    return DataIterator(iter_ds, config, indices.size // batch_size)
