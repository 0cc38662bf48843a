"""Reading an AudioMNIST-layout folder: file names, speaker metadata and the speaker split.

Nothing here imports TensorFlow, TFDS or JAX; the TFDS builder (``audio_mnist.py``) and the
synthetic corpus (``synth.py``) both rely on it.

Layout (that of the AudioMNIST corpus)::

    manual_dir/NN/<digit>_<NN>_<rep>.wav      NN = speaker id (two digits), rep = 0, 1, ...
    manual_dir/audioMNIST_meta.txt            JSON keyed "01".."60" (".json" also accepted)

A clone of github.com/soerenab/AudioMNIST may be given as ``manual_dir`` too: its ``data/``
sub-folder is used.

Split policy (the same one for every stage of the project): three speaker-disjoint splits,
``train``, ``validation`` (model selection during training: early stopping, best checkpoints,
periodic and final training metrics) and ``test`` (the evaluation only).

* ``all``: per gender, the sorted speaker ids are permuted with
  ``numpy.random.default_rng(SPLIT_SEED)``; the first ``n // 6`` go to ``test``, the next
  ``n // 6`` of the same permutation to ``validation``, the rest to ``train`` (each at least
  one, so that small corpora still get all three splits; for n >= 6 this is exactly
  ``n // 6``). Every gender needs at least 3 speakers. The test speakers are the same as in
  the earlier two-split rule. On the real corpus: test 2 F + 8 M, validation 2 F + 8 M.
* ``paper``: the fixed gender-balanced 24-speaker subset of the paper (Ericsson et al. 2020;
  ``PAPER_SPLIT``), whose test
  speakers are fixed; per gender ``12 // 6 = 2`` of the paper's 10 training speakers
  (a ``default_rng(SPLIT_SEED)`` permutation of the sorted ids) go to ``validation``.

Bad input is never silently dropped: every file that is left out is listed with the reason,
and a corpus where more than ``BAD_FRACTION_LIMIT`` (10%) of the .wav files are bad fails.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import numpy as np

SPLIT_SEED = 2006  # seed of the "all" split and the "paper" validation (arXiv 2006.09114); fixed
BAD_FRACTION_LIMIT = 0.10  # more bad .wav files than this fraction -> the corpus is refused
TEST_FRACTION_DIVISOR = 6  # per gender, n // 6 speakers go to test ...
VALIDATION_FRACTION_DIVISOR = 6  # ... and n // 6 to validation
SPLITS = ("train", "validation", "test")
MIN_SPEAKERS_PER_GENDER = len(SPLITS)  # one per split

FEMALE, MALE = 0, 1
GENDER_NAMES = ("female", "male")
METADATA_NAMES = ("audioMNIST_meta.txt", "audioMNIST_meta.json")
CONFIGS = ("all", "paper")

# the 12 female speakers of AudioMNIST, and the paper's 24-speaker subset with its test speakers
REAL_FEMALE_SPEAKERS = (12, 26, 28, 36, 43, 47, 52, 56, 57, 58, 59, 60)
PAPER_SPLIT: dict[str, dict[int, tuple[int, ...]]] = {
    "train": {
        FEMALE: (12, 26, 28, 43, 47, 52, 56, 57, 59, 60),
        MALE: (34, 35, 37, 38, 40, 41, 44, 46, 48, 49),
    },
    "test": {FEMALE: (36, 58), MALE: (39, 45)},
}

FILE_NAME_RE = re.compile(r"^(?P<digit>\d+)_(?P<speaker>\d+)_(?P<rep>\d+)\.wav$", re.IGNORECASE)
MIN_AGE, MAX_AGE = 1, 120

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
AudioMNIST is not downloaded automatically. Get it from
https://github.com/soerenab/AudioMNIST (the `data/` folder: 60 speaker folders 01..60 with
<digit>_<speaker>_<rep>.wav files, plus audioMNIST_meta.txt), e.g.
    git clone --depth 1 https://github.com/soerenab/AudioMNIST
and pass `AudioMNIST/data` (or the clone itself) as the manual dir:
    pcmelgan-jax prepare --manual-dir AudioMNIST/data --data-dir DATA_DIR
Without the real corpus, `pcmelgan-jax synth-data --out DIR` writes a synthetic spoken-digit
corpus in the same layout. The manual dir is only read, never modified.
"""


class CorpusError(ValueError):
    """The corpus cannot be used as a whole; the message says why and lists examples."""


@dataclass(frozen=True)
class SpeakerInfo:
    """One speaker's normalised metadata. ``age`` / ``native_speaker`` are -1 when unknown."""

    speaker: int
    gender: int  # 0 female, 1 male
    age: int
    accent: str
    native_speaker: int  # 1 yes, 0 no, -1 unknown
    origin: str
    recording_room: str
    recording_date: str


@dataclass(frozen=True)
class Utterance:
    """One usable wav file: ``path`` absolute, ``relpath`` relative to the manual dir."""

    path: str
    relpath: str
    speaker: int
    digit: int
    rep: int


@dataclass(frozen=True)
class Problem:
    """A file (or speaker folder / metadata entry) and what is wrong with it."""

    path: str
    problem: str


@dataclass
class CorpusScan:
    """What ``scan_corpus`` found. ``skipped`` are bad .wav files (they count towards the 10%
    limit); ``notes`` are everything else worth reporting (empty folders, stray files,
    normalised metadata values)."""

    manual_dir: str
    metadata_path: str
    speakers: dict[int, SpeakerInfo]
    utterances: list[Utterance]
    skipped: list[Problem] = field(default_factory=list)
    notes: list[Problem] = field(default_factory=list)
    num_wav_files: int = 0

    def speakers_with_audio(self) -> dict[int, SpeakerInfo]:
        present = {u.speaker for u in self.utterances}
        return {s: info for s, info in self.speakers.items() if s in present}


def _clean_text(value: object) -> str:
    if value is None:
        return ""
    return " ".join(str(value).split())


def _normalize_gender(value: object) -> int | None:
    text = _clean_text(value).lower()
    if text in ("male", "m", "man"):
        return MALE
    if text in ("female", "f", "woman"):
        return FEMALE
    return None


def _normalize_age(value: object) -> tuple[int, str | None]:
    """int or digit string -> age; implausible (e.g. "1234") or missing -> -1 with a note."""
    if isinstance(value, bool):
        return -1, f"age {value!r} is not a number -> unknown (-1)"
    if isinstance(value, int):
        age = value
    elif isinstance(value, float) and value.is_integer():
        age = int(value)
    else:
        text = _clean_text(value)
        if not re.fullmatch(r"\d+", text):
            return -1, f"age {value!r} is not a number -> unknown (-1)"
        age = int(text)
    if not MIN_AGE <= age <= MAX_AGE:
        return -1, f"age {value!r} is not plausible -> unknown (-1)"
    return age, None


def _normalize_yes_no(value: object) -> int:
    text = _clean_text(value).lower()
    if text in ("yes", "y", "true", "1"):
        return 1
    if text in ("no", "n", "false", "0"):
        return 0
    return -1


_ROOM_SPELLINGS = {"vr-romm": "vr-room", "vrroom": "vr-room", "vr room": "vr-room"}


def _normalize_room(value: object) -> str:
    text = _clean_text(value).lower()
    return _ROOM_SPELLINGS.get(text, text)


def normalize_speaker_metadata(key: str, raw: Mapping) -> tuple[SpeakerInfo, list[str]]:
    """One metadata entry -> (SpeakerInfo, notes about values that were changed).

    Normalisation: gender by case/whitespace-insensitive match ("Male", "male " -> 1); age from
    an int or a digit string, implausible values (outside 1..120, e.g. "1234") -> -1; accent
    lower-cased ("german" == "German"); "native speaker" yes/no -> 1/0 (else -1); recording
    room lower-cased with known typos fixed ("VR-Room", "vr-romm" -> "vr-room"). Raises
    ``ValueError`` for an entry without a usable gender (the speaker cannot be labelled).
    """
    if not re.fullmatch(r"\s*\d+\s*", str(key)):
        raise ValueError(f"metadata key {key!r} is not a speaker number")
    speaker = int(key)
    if not isinstance(raw, Mapping):
        raise ValueError(f"speaker {key!r}: metadata entry is not an object: {raw!r}")
    lowered = {_clean_text(k).lower(): v for k, v in raw.items()}
    notes: list[str] = []
    gender = _normalize_gender(lowered.get("gender"))
    if gender is None:
        raise ValueError(f"speaker {key!r}: unknown gender {lowered.get('gender')!r}")
    if _clean_text(lowered.get("gender")) != GENDER_NAMES[gender]:
        notes.append(f"gender {lowered.get('gender')!r} read as {GENDER_NAMES[gender]!r}")
    age, age_note = _normalize_age(lowered.get("age"))
    if age_note:
        notes.append(age_note)
    elif not isinstance(lowered.get("age"), str):
        notes.append(f"age {lowered.get('age')!r} given as a number, not a string")
    room = _normalize_room(lowered.get("recordingroom", lowered.get("recording room")))
    raw_room = _clean_text(lowered.get("recordingroom", lowered.get("recording room"))).lower()
    if raw_room != room:
        notes.append(f"recording room {raw_room!r} read as {room!r}")
    info = SpeakerInfo(
        speaker=speaker,
        gender=gender,
        age=age,
        accent=_clean_text(lowered.get("accent")).lower(),
        native_speaker=_normalize_yes_no(lowered.get("native speaker")),
        origin=_clean_text(lowered.get("origin")),
        recording_room=room,
        recording_date=_clean_text(lowered.get("recordingdate")),
    )
    return info, notes


def find_data_root(manual_dir: str | os.PathLike) -> str:
    """The folder holding the speaker folders and the metadata file (``manual_dir`` or its
    ``data/``). Raises ``CorpusError`` for a missing folder or missing metadata."""
    root = os.path.abspath(os.fspath(manual_dir))
    if not os.path.exists(root):
        raise CorpusError(f"manual_dir {root} does not exist.\n{MANUAL_DOWNLOAD_INSTRUCTIONS}")
    if not os.path.isdir(root):
        raise CorpusError(f"manual_dir {root} is not a directory")
    for candidate in (root, os.path.join(root, "data")):
        for name in METADATA_NAMES:
            if os.path.isfile(os.path.join(candidate, name)):
                return candidate
    raise CorpusError(
        f"{root}: no metadata file ({' or '.join(METADATA_NAMES)}) in it or in its data/ "
        f"folder; it is needed for the speakers' genders.\n{MANUAL_DOWNLOAD_INSTRUCTIONS}"
    )


def read_metadata(
    path: str | os.PathLike,
) -> tuple[dict[int, SpeakerInfo], list[Problem], dict[int, str]]:
    """Parses the metadata JSON. Returns (speakers, notes, bad_speakers: id -> problem)."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8-sig") as f:
            raw = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorpusError(f"{path}: cannot read the metadata as JSON ({e})") from None
    if not isinstance(raw, dict) or not raw:
        raise CorpusError(f"{path}: expected a non-empty JSON object keyed by speaker id")
    speakers: dict[int, SpeakerInfo] = {}
    notes: list[Problem] = []
    bad: dict[int, str] = {}
    for key, entry in raw.items():
        try:
            info, entry_notes = normalize_speaker_metadata(key, entry)
        except ValueError as e:
            if re.fullmatch(r"\s*\d+\s*", str(key)):
                bad[int(key)] = str(e)
            notes.append(Problem(path, f"{e}; entry ignored"))
            continue
        if info.speaker in speakers:
            notes.append(Problem(path, f"speaker {key!r} listed twice; first entry kept"))
            continue
        speakers[info.speaker] = info
        notes.extend(Problem(path, f"speaker {key!r}: {n}") for n in entry_notes)
    return speakers, notes, bad


def check_bad_fraction(num_bad: int, num_total: int, examples: list[Problem], where: str) -> None:
    """Raises ``CorpusError`` listing examples when more than 10% of the files are bad."""
    if num_total and num_bad / num_total > BAD_FRACTION_LIMIT:
        listing = "\n".join(f"  {p.path}: {p.problem}" for p in examples[:10])
        raise CorpusError(
            f"{where}: {num_bad} of {num_total} .wav files are unusable "
            f"({100 * num_bad / num_total:.1f}% > {100 * BAD_FRACTION_LIMIT:.0f}% limit); "
            f"examples:\n{listing}"
        )


def _check_header(path: str) -> str | None:
    import soundfile as sf

    try:
        info = sf.info(path)
    except Exception as e:  # soundfile raises several types for corrupt files
        return f"cannot read audio ({type(e).__name__}: {e})"
    if info.frames <= 0:
        return "the audio is empty (0 samples)"
    return None


def _speaker_folders(root: str, notes: list[Problem]) -> list[tuple[int, str, str]]:
    """(speaker, name, path) of each numbered folder in ``root``; notes anything else there."""
    folders = []
    for name in sorted(os.listdir(root)):
        full = os.path.join(root, name)
        if os.path.isdir(full) and re.fullmatch(r"\d+", name):
            folders.append((int(name), name, full))
        elif os.path.isdir(full):
            notes.append(Problem(full, "not a speaker folder (name is not a number); ignored"))
        elif name not in METADATA_NAMES and not name.startswith("."):
            notes.append(Problem(full, "stray file at the top level; ignored"))
    if not folders:
        raise CorpusError(
            f"{root}: no speaker folders (01, 02, ...) found.\n{MANUAL_DOWNLOAD_INSTRUCTIONS}"
        )
    return folders


def _wav_names(folder: str, folder_name: str, notes: list[Problem]) -> list[str]:
    """The .wav file names in a speaker's folder, sorted; notes other files and an empty one."""
    names = sorted(os.listdir(folder))
    wavs = [n for n in names if n.lower().endswith(".wav")]
    for n in names:
        if not n.lower().endswith(".wav") and not n.startswith("."):
            notes.append(Problem(os.path.join(folder, n), "not a .wav file; ignored"))
    if not wavs:
        notes.append(Problem(folder, f"speaker folder {folder_name} has no .wav files"))
    return wavs


def _utterance_key(
    name: str, speaker: int, folder_name: str, seen: dict[tuple[int, int, int], str]
) -> tuple[int, int, int] | str:
    """(speaker, digit, rep) of the file ``name`` in a speaker's folder, or why it is skipped."""
    m = FILE_NAME_RE.match(name)
    if m is None:
        return "file name does not parse as <digit>_<speaker>_<rep>.wav"
    digit, file_speaker, rep = (int(m[k]) for k in ("digit", "speaker", "rep"))
    if not 0 <= digit <= 9 or len(m["digit"]) != 1:
        return f"digit {m['digit']!r} is not 0-9"
    if file_speaker != speaker:
        return f"speaker {m['speaker']} in the name but in folder {folder_name}"
    key = (speaker, digit, rep)
    if key in seen:
        return f"duplicate of {seen[key]}"
    return key


def scan_corpus(manual_dir: str | os.PathLike, check_headers: bool = True) -> CorpusScan:
    """Lists the usable utterances of an AudioMNIST-layout folder and everything wrong.

    Read-only. Raises ``CorpusError`` for a missing folder or metadata, a corpus without usable
    files, or more than 10% bad .wav files. ``check_headers`` opens each file's header
    (cheap); full decoding happens when the dataset is built.
    """
    root = find_data_root(manual_dir)
    metadata_path = next(
        os.path.join(root, n) for n in METADATA_NAMES if os.path.isfile(os.path.join(root, n))
    )
    speakers, notes, bad_meta = read_metadata(metadata_path)
    utterances: list[Utterance] = []
    skipped: list[Problem] = []
    num_wav = 0
    folders = _speaker_folders(root, notes)
    seen: dict[tuple[int, int, int], str] = {}
    for speaker, folder_name, folder in sorted(folders):
        wavs = _wav_names(folder, folder_name, notes)
        if not wavs:
            continue
        num_wav += len(wavs)
        if speaker not in speakers:
            why = bad_meta.get(speaker, f"speaker {folder_name} has no entry in the metadata")
            skipped.extend(
                Problem(os.path.join(folder, n), f"{why} (gender unknown); file skipped")
                for n in wavs
            )
            continue
        for n in wavs:
            path = os.path.join(folder, n)
            found = _utterance_key(n, speaker, folder_name, seen)
            if isinstance(found, str):
                skipped.append(Problem(path, found))
                continue
            if check_headers:
                problem = _check_header(path)
                if problem is not None:
                    skipped.append(Problem(path, problem))
                    continue
            seen[found] = path
            utterances.append(Utterance(path, os.path.relpath(path, root), *found))
    for speaker in sorted(set(speakers) - {s for s, _, _ in folders}):
        notes.append(Problem(metadata_path, f"speaker {speaker:02d} has metadata but no folder"))
    if not utterances:
        listing = "\n".join(f"  {p.path}: {p.problem}" for p in skipped[:10])
        raise CorpusError(f"{root}: no usable .wav files ({num_wav} found).\n{listing}")
    check_bad_fraction(len(skipped), num_wav, skipped, root)
    return CorpusScan(root, metadata_path, speakers, utterances, skipped, notes, num_wav)


def split_count(n: int, divisor: int) -> int:
    """Speakers of a gender with ``n`` speakers that go to a held-out split: ``n // divisor``,
    at least one when ``n >= 2``."""
    count = n // divisor
    return 1 if count == 0 and n >= 2 else count


def paper_validation_speakers() -> dict[int, tuple[int, ...]]:
    """Per gender, the ``paper`` config's validation speakers: ``split_count(12, 6) = 2`` of
    the paper's training speakers, the first of a ``default_rng(SPLIT_SEED)`` permutation of
    their sorted ids (sorted)."""
    out = {}
    for gender, train_ids in PAPER_SPLIT["train"].items():
        ids = sorted(train_ids)
        total = len(ids) + len(PAPER_SPLIT["test"][gender])  # 12 per gender
        n_val = split_count(total, VALIDATION_FRACTION_DIVISOR)
        order = np.random.default_rng(SPLIT_SEED).permutation(len(ids))
        out[gender] = tuple(sorted(ids[i] for i in order[:n_val]))
    return out


def split_speakers(genders: Mapping[int, int], config: str) -> dict[str, list[int]]:
    """Deterministic speaker split. ``genders``: speaker id -> 0/1 of the speakers present.

    Returns ``{"train": [...], "validation": [...], "test": [...]}`` (sorted ids, disjoint;
    see the module docstring for the rule). ``all`` raises ``CorpusError`` when a gender has
    fewer than 3 speakers; ``paper`` raises ``CorpusError`` naming the missing speakers, or
    speakers whose gender disagrees with the paper's.
    """
    if config == "all":
        by_gender = {g: sorted(s for s, v in genders.items() if v == g) for g in (FEMALE, MALE)}
        if min(len(ids) for ids in by_gender.values()) < MIN_SPEAKERS_PER_GENDER:
            raise CorpusError(
                f"too few speakers for speaker-disjoint train/validation/test splits: "
                f"{len(by_gender[FEMALE])} female and {len(by_gender[MALE])} male; need >= "
                f"{MIN_SPEAKERS_PER_GENDER} per gender (one per split)"
            )
        split: dict[str, list[int]] = {name: [] for name in SPLITS}
        for ids in by_gender.values():
            n_test = split_count(len(ids), TEST_FRACTION_DIVISOR)
            n_val = split_count(len(ids), VALIDATION_FRACTION_DIVISOR)
            order = np.random.default_rng(SPLIT_SEED).permutation(len(ids))
            split["test"] += [ids[i] for i in order[:n_test]]
            split["validation"] += [ids[i] for i in order[n_test : n_test + n_val]]
            split["train"] += [ids[i] for i in order[n_test + n_val :]]
        return {k: sorted(v) for k, v in split.items()}
    if config == "paper":
        missing, wrong = [], []
        for part in PAPER_SPLIT.values():
            for gender, ids in part.items():
                for s in ids:
                    if s not in genders:
                        missing.append(s)
                    elif genders[s] != gender:
                        wrong.append(f"{s:02d} (metadata {GENDER_NAMES[genders[s]]})")
        if missing or wrong:
            msg = "the 'paper' config needs the paper's 24 speakers"
            if missing:
                msg += f"; missing (no usable audio or metadata): {', '.join(f'{s:02d}' for s in sorted(missing))}"  # noqa: E501
            if wrong:
                msg += f"; gender differs from the paper's: {', '.join(wrong)}"
            raise CorpusError(msg)
        validation = {s for ids in paper_validation_speakers().values() for s in ids}
        train = {s for ids in PAPER_SPLIT["train"].values() for s in ids}
        return {
            "train": sorted(train - validation),
            "validation": sorted(validation),
            "test": sorted(s for ids in PAPER_SPLIT["test"].values() for s in ids),
        }
    raise ValueError(f"unknown config {config!r}; expected one of {CONFIGS}")


def split_policy(config: str) -> str:
    """The split rule of ``config`` in words (``split_record``'s "policy")."""
    if config == "all":
        return (
            f"per gender, sorted ids permuted with numpy default_rng({SPLIT_SEED}); the first "
            f"max(n // {TEST_FRACTION_DIVISOR}, 1) to test, the next "
            f"max(n // {VALIDATION_FRACTION_DIVISOR}, 1) to validation, the rest to train "
            f"(>= {MIN_SPEAKERS_PER_GENDER} speakers per gender)"
        )
    return (
        "the paper's fixed 24-speaker subset (test fixed); per gender "
        f"12 // {VALIDATION_FRACTION_DIVISOR} of the paper's training speakers (sorted ids "
        f"permuted with numpy default_rng({SPLIT_SEED}), the first) to validation, the rest "
        "to train"
    )


def split_record(config: str, split: Mapping[str, list[int]], genders: Mapping[int, int]) -> dict:
    """The JSON-serialisable split record stored with the dataset (``split.json``)."""
    return {
        "config": config,
        "policy": split_policy(config),
        "seed": SPLIT_SEED,
        "splits": {
            name: {
                "speakers": list(ids),
                "female": [s for s in ids if genders[s] == FEMALE],
                "male": [s for s in ids if genders[s] == MALE],
            }
            for name, ids in split.items()
        },
    }


def speaker_info_dict(info: SpeakerInfo) -> dict:
    return asdict(info)
