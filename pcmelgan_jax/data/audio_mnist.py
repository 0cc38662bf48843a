"""TFDS builder ``audio_mnist`` (manual download), TensorFlow-free.

Configs: ``all`` (every speaker, speaker split stratified by gender with a fixed seed) and
``paper`` (the paper's 24-speaker subset). Splits ``train`` / ``validation`` / ``test``
(speaker-disjoint; see ``corpus``). Files are ``array_record`` (``file_format="array_record"``),
read with ``tfds.data_source``.

Version 2.0.0 added the ``validation`` split. A data dir that holds only a dataset prepared by
an older version (``audio_mnist/<config>/1.0.0``, no validation split) is refused where the
dataset is read (``require_prepared``: ``OutdatedDatasetError``); ``pcmelgan-jax prepare``
builds the current version next to it (TFDS keeps each version in its own folder).

Why no ``tfds.features.Audio``: it imports TensorFlow. The audio is a
``tfds.features.Tensor(shape=(None,), dtype=int16)``: 16-bit PCM at 8 kHz, the full
utterance (no cropping), i.e. float audio = ``audio / 32768``. AudioMNIST itself is 16-bit
PCM, so int16 loses nothing that matters and halves the size. A resampled clip whose peak
would exceed full scale is scaled down to full scale (not clipped); peak normalisation in the
pipeline makes the scale irrelevant. ``num_samples`` holds the stored length (samples, 8 kHz).

The split is recorded three ways: the ``speaker`` of every example, ``metadata.json``
(``info.metadata["split"]``) and ``split.json`` in the dataset directory. Files that were
left out, with reasons, are in ``info.metadata["skipped"]`` and ``build_report.json``.

Verified with tensorflow-datasets 4.9.10 and no TensorFlow installed: ``GeneratorBasedBuilder``
with ``file_format="array_record"`` builds in-process (no Beam), and ``tfds.data_source`` /
``builder.as_data_source()`` decode ``Tensor``, ``ClassLabel`` and ``Text`` features with
NumPy (``Text`` comes back as ``bytes``). Two workarounds: ``dataset_info_from_configs`` is not
used because it expects the builder in its own package folder (``DatasetInfo`` is built
directly), and ``code_path`` is overridden because TFDS's version touches the backport package
``importlib_resources``, which is neither installed nor needed on Python 3.11.
"""

from __future__ import annotations

import inspect
import os
import re

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from tensorflow_datasets.core import utils as tfds_utils

from pcmelgan_jax.audio import SAMPLE_RATE, AudioError, load_audio
from pcmelgan_jax.data import corpus
from pcmelgan_jax.data.corpus import (
    MANUAL_DOWNLOAD_INSTRUCTIONS,
    CorpusError,
    Problem,
    check_bad_fraction,
    scan_corpus,
    split_record,
    split_speakers,
)
from pcmelgan_jax.workdir import write_json_atomic

SPLIT_FILE = "split.json"
REPORT_FILE = "build_report.json"

_CITATION = """\
@article{becker2018interpreting,
  title={Interpreting and Explaining Deep Neural Networks for Classification of Audio Signals},
  author={Becker, S\\"oren and Ackermann, Marcel and Lapuschkin, Sebastian and
          M\\"uller, Klaus-Robert and Samek, Wojciech},
  journal={arXiv preprint arXiv:1807.03418}, year={2018}
}
"""


class AudioMnistConfig(tfds.core.BuilderConfig):
    """``name`` is the speaker-subset policy: ``all`` or ``paper``."""


def to_pcm16(audio: np.ndarray) -> np.ndarray:
    """float32 (n,) in about [-1, 1] -> int16 (n,); scaled down (not clipped) past full scale."""
    audio = np.asarray(audio, dtype=np.float32)
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    full = 32767.0 / 32768.0
    if peak > full:
        audio = audio * (full / peak)
    return np.round(audio * 32768.0).astype(np.int16)


class AudioMnist(tfds.core.GeneratorBasedBuilder):
    """AudioMNIST spoken digits (60 speakers, 48 kHz -> stored at 8 kHz), speaker split."""

    VERSION = tfds.core.Version("2.0.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release: int16 8 kHz audio, fixed speaker splits.",
        "2.0.0": "Added the speaker-disjoint validation split (test speakers unchanged).",
    }
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    BUILDER_CONFIGS = [
        AudioMnistConfig(
            name="all",
            description=(
                "All speakers; per gender n // 6 speakers (seeded) in test, the next n // 6 "
                "in validation."
            ),
        ),
        AudioMnistConfig(
            name="paper",
            description=(
                "The paper's 24-speaker gender-balanced subset; test 36, 58 (F), 39, 45 (M); "
                "validation 2 F + 2 M of the paper's training speakers (seeded)."
            ),
        ),
    ]
    DEFAULT_CONFIG_NAME = "all"

    @tfds_utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        """This file. (TFDS 4.9.10's own lookup needs ``importlib_resources`` on Python >= 3.9
        for builders that live in a package; it is not installed and not needed.)"""
        return epath.Path(inspect.getfile(cls))

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.skipped: list[Problem] = []  # filled while building
        self.notes: list[Problem] = []
        self.split: dict[str, list[int]] = {}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "AudioMNIST spoken digits 0-9, resampled to 8 kHz and stored as int16 PCM "
                "(float = audio / 32768), split by speaker."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "audio": tfds.features.Tensor(shape=(None,), dtype=np.int16),
                    "num_samples": np.int32,
                    "digit": tfds.features.ClassLabel(num_classes=10),
                    "gender": tfds.features.ClassLabel(names=list(corpus.GENDER_NAMES)),
                    "speaker": np.int32,
                    "repetition": np.int32,
                    "age": np.int32,
                    "accent": tfds.features.Text(),
                    "native_speaker": np.int32,
                    "origin": tfds.features.Text(),
                    "recording_room": tfds.features.Text(),
                    "recording_date": tfds.features.Text(),
                    "file": tfds.features.Text(),
                }
            ),
            supervised_keys=("audio", "digit"),
            homepage="https://github.com/soerenab/AudioMNIST",
            citation=_CITATION,
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        scan = scan_corpus(dl_manager.manual_dir)
        present = scan.speakers_with_audio()
        genders = {s: info.gender for s, info in present.items()}
        self.split = split_speakers(genders, self.builder_config.name)
        chosen = {s for ids in self.split.values() for s in ids}
        # "paper" uses 24 speakers: other speakers' bad files are not part of this dataset.
        self.skipped = [
            p
            for p in scan.skipped
            if self.builder_config.name == "all" or self._speaker_of(p) in (None, *chosen)
        ]
        self.notes = list(scan.notes)
        record = split_record(self.builder_config.name, self.split, genders)
        self.info.metadata["split"] = record
        self.info.metadata["speakers"] = {
            f"{s:02d}": corpus.speaker_info_dict(present[s]) for s in sorted(chosen)
        }
        self.info.metadata["source"] = {
            "manual_dir": scan.manual_dir,
            "num_wav_files": scan.num_wav_files,
            "sample_rate": SAMPLE_RATE,
            "audio_dtype": "int16 (float = audio / 32768)",
        }
        self._update_skipped_metadata()
        # self.data_dir is TFDS's temporary build dir here; it is renamed on success.
        write_json_atomic(os.path.join(self.data_dir, SPLIT_FILE), record, indent=1)
        by_split = {
            name: [u for u in scan.utterances if u.speaker in set(ids)]
            for name, ids in self.split.items()
        }
        return {
            name: self._generate_examples(utts, present, name) for name, utts in by_split.items()
        }

    @staticmethod
    def _speaker_of(problem: Problem) -> int | None:
        folder = os.path.basename(os.path.dirname(problem.path))
        return int(folder) if folder.isdigit() else None

    def _update_skipped_metadata(self) -> None:
        self.info.metadata["skipped"] = [[p.path, p.problem] for p in self.skipped]
        self.info.metadata["notes"] = [[p.path, p.problem] for p in self.notes]

    def _generate_examples(self, utterances, speakers, split_name):
        bad: list[Problem] = []
        counts: dict[str, dict[str, int]] = {}  # speaker -> {"gender", "utterances"}
        for u in utterances:
            try:
                audio = load_audio(u.path, SAMPLE_RATE)
            except AudioError as e:
                bad.append(Problem(u.path, e.problem))
                self.skipped.append(bad[-1])
                self._update_skipped_metadata()
                continue
            info = speakers[u.speaker]
            entry = counts.setdefault(f"{u.speaker:02d}", {"gender": info.gender, "utterances": 0})
            entry["utterances"] += 1
            yield (
                f"{u.speaker:02d}/{u.digit}_{u.speaker:02d}_{u.rep}",
                {
                    "audio": to_pcm16(audio),
                    "num_samples": audio.shape[0],
                    "digit": u.digit,
                    "gender": info.gender,
                    "speaker": u.speaker,
                    "repetition": u.rep,
                    "age": info.age,
                    "accent": info.accent,
                    "native_speaker": info.native_speaker,
                    "origin": info.origin,
                    "recording_room": info.recording_room,
                    "recording_date": info.recording_date,
                    "file": u.relpath,
                },
            )
        # Files that fail to decode only show up here: apply the same 10% limit per split.
        split_bad = [
            p for p in self.skipped if self._speaker_of(p) in {u.speaker for u in utterances}
        ]
        total = len(utterances) + len(split_bad) - len(bad)
        check_bad_fraction(len(split_bad), total, split_bad, f"split {split_name!r}")
        self.info.metadata.setdefault("counts", {})[split_name] = counts
        if len(bad) == len(utterances):
            raise CorpusError(f"split {split_name!r}: none of its {len(utterances)} files decode")
        write_json_atomic(
            os.path.join(self.data_dir, REPORT_FILE),
            {"skipped": self.info.metadata["skipped"], "notes": self.info.metadata["notes"]},
            indent=1,
        )


class OutdatedDatasetError(FileNotFoundError):
    """The data dir holds the dataset only as prepared by an older version of this builder."""


def older_versions(data_dir: str | os.PathLike, config: str) -> list[str]:
    """Versions older than ``AudioMnist.VERSION`` of ``audio_mnist/<config>`` that are fully
    prepared in ``data_dir`` (a version folder with ``dataset_info.json``), oldest first."""
    folder = os.path.join(os.fspath(data_dir), AudioMnist.name, config)
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    found = [
        tfds.core.Version(n)
        for n in names
        if re.fullmatch(r"\d+\.\d+\.\d+", n)
        and os.path.isfile(os.path.join(folder, n, "dataset_info.json"))
    ]
    return [str(v) for v in sorted(v for v in found if v < AudioMnist.VERSION)]


def require_prepared(builder, data_dir: str | os.PathLike, dataset: str) -> None:
    """Raises a one-line ``FileNotFoundError`` unless ``builder`` (``audio_mnist/<config>`` in
    ``data_dir``) is prepared: ``OutdatedDatasetError`` when only an older version is there."""
    if builder.is_prepared():
        return
    config = builder.builder_config.name
    prepare_cmd = (
        f"pcmelgan-jax prepare --manual-dir ... --data-dir {data_dir}"
        + ("" if config == AudioMnist.DEFAULT_CONFIG_NAME else f" --config {config}")
    )
    old = older_versions(data_dir, config)
    if old:
        raise OutdatedDatasetError(
            f"{dataset} in {data_dir} was prepared by an older version ({', '.join(old)}) "
            f"without a validation split; this version needs {AudioMnist.VERSION}: re-run "
            f"`{prepare_cmd}`"
        )
    raise FileNotFoundError(f"{dataset} is not prepared in {data_dir}; run `{prepare_cmd}` first")


def read_split(data_dir: str | os.PathLike, config: str = "all") -> dict:
    """The split record of a built dataset (``info.metadata["split"]``)."""
    builder = tfds.builder(f"audio_mnist/{config}", data_dir=os.fspath(data_dir))
    require_prepared(builder, data_dir, f"audio_mnist/{config}")
    return dict(builder.info.metadata["split"])
