"""Data stage: synthetic corpus, TFDS builder (all / paper), Grain pipeline, bad input."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import numpy as np
import pytest

from pcmelgan_jax.data import corpus as corpus_lib
from pcmelgan_jax.data.corpus import CorpusError
from pcmelgan_jax.data.prepare import format_report, prepare
from pcmelgan_jax.data.synth import MARKER, SynthError, synthesize_corpus

SPEAKERS, REPS = 6, 2  # 3 F (02, 04, 06) + 3 M (01, 03, 05), 120 files
# per gender 1 train, 1 validation, 1 test speaker: 40 utterances per split
SPLITS = ("train", "validation", "test")
VERSION = "2.0.0"  # AudioMnist.VERSION: the version that added the validation split


def _snapshot(root) -> dict[str, tuple[str, int]]:
    """relative path -> (sha256, mtime_ns) of every file below root."""
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = os.path.join(dirpath, n)
            with open(p, "rb") as f:
                out[os.path.relpath(p, root)] = (
                    hashlib.sha256(f.read()).hexdigest(),
                    os.stat(p).st_mtime_ns,
                )
    return out


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "corpus"
    summary = synthesize_corpus(out, speakers=SPEAKERS, reps=REPS, seed=0)
    assert summary["files"] == SPEAKERS * 10 * REPS
    return out


@pytest.fixture(scope="session")
def source_snapshot(synth_dir):
    return _snapshot(synth_dir)


@pytest.fixture(scope="session")
def built(synth_dir, source_snapshot, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds")
    report = prepare(synth_dir, data_dir, "all")
    return data_dir, report


def _records(data_dir, split, config="all"):
    from pcmelgan_jax.data.pipeline import load_source

    source = load_source(data_dir, f"audio_mnist/{config}", split)
    return [source[i] for i in range(len(source))]


def _copy_corpus(src, dst):
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(MARKER))
    return dst


# ---------------------------------------------------------------- synthetic corpus


def test_synth_layout_and_metadata(synth_dir):
    folders = sorted(d for d in os.listdir(synth_dir) if d.isdigit())
    assert folders == [f"{s:02d}" for s in range(1, SPEAKERS + 1)]
    for f in folders:
        names = sorted(os.listdir(synth_dir / f))
        assert names == sorted(f"{d}_{f}_{r}.wav" for d in range(10) for r in range(REPS))
    meta = json.loads((synth_dir / "audioMNIST_meta.txt").read_text())
    assert sorted(meta) == folders
    assert set(meta["01"]) == {
        "accent", "age", "gender", "native speaker", "origin", "recordingdate", "recordingroom",
    }  # fmt: skip
    assert [meta[f]["gender"] for f in folders] == ["male", "female"] * 3


def test_synth_gender_is_audible(synth_dir):
    import librosa
    import soundfile as sf

    meta = json.loads((synth_dir / "audioMNIST_meta.txt").read_text())
    f0 = {"female": [], "male": []}
    for spk, m in meta.items():
        for digit in (0, 3, 7):
            x, sr = sf.read(synth_dir / spk / f"{digit}_{spk}_0.wav", dtype="float32")
            y = librosa.resample(x, orig_sr=sr, target_sr=8000)
            f = librosa.yin(y, fmin=60, fmax=400, sr=8000, frame_length=512)
            rms = librosa.feature.rms(y=y, frame_length=512, hop_length=128)[0][: f.size]
            f0[m["gender"]].append(float(np.median(f[rms > 0.3 * rms.max()])))
    female, male = np.median(f0["female"]), np.median(f0["male"])
    assert female > 140 and male < 130 and female > 1.4 * male, (female, male)
    assert min(f0["female"]) > max(f0["male"])


def test_synth_deterministic_and_refuses_foreign_dir(tmp_path):
    a = synthesize_corpus(tmp_path / "a", speakers=2, reps=1, seed=3)
    first = _snapshot(tmp_path / "a")
    # a previous synthetic corpus is replaced, with identical content for the same seed
    synthesize_corpus(tmp_path / "a", speakers=2, reps=1, seed=3)
    second = _snapshot(tmp_path / "a")
    assert {k: v[0] for k, v in first.items()} == {k: v[0] for k, v in second.items()}
    assert a["female"] == 1 and a["male"] == 1 and a["files"] == 20
    other = synthesize_corpus(tmp_path / "b", speakers=2, reps=1, seed=4)
    assert other["files"] == 20
    b = _snapshot(tmp_path / "b")
    assert first["01/0_01_0.wav"][0] != b["01/0_01_0.wav"][0]
    # a non-empty folder that is not ours is never written to
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    with pytest.raises(SynthError, match="not empty"):
        synthesize_corpus(user, speakers=2, reps=1)
    assert os.listdir(user) == ["notes.txt"]


def test_synth_paper_numbering():
    from pcmelgan_jax.data.synth import plan_speakers, speaker_genders

    g = speaker_genders(60)
    assert sorted(s for s, v in g.items() if v == 0) == list(corpus_lib.REAL_FEMALE_SPEAKERS)
    g24 = speaker_genders(24)
    assert sum(1 for v in g24.values() if v == 0) == 12
    plan = plan_speakers(24, seed=0)
    assert plan == plan_speakers(24, seed=0) and plan != plan_speakers(24, seed=1)


# ---------------------------------------------------------------- builder / prepare


def test_counts_and_split(built):
    data_dir, report = built
    s = report["splits"]
    assert report["skipped"] == [] and report["version"] == VERSION
    assert list(s) == list(SPLITS)
    for name in SPLITS:
        assert s[name]["female"] == {"speakers": 1, "utterances": 20}, name
        assert s[name]["male"] == {"speakers": 1, "utterances": 20}, name
        assert s[name]["num_examples"] == 40, name
    split = report["split"]["splits"]
    ids = [set(split[name]["speakers"]) for name in SPLITS]
    assert sum(len(x) for x in ids) == len(set().union(*ids)) == SPEAKERS  # disjoint, all used
    assert split["test"]["speakers"] == [3, 4]  # as before the validation split existed
    text = format_report(report)
    assert "files skipped: 0" in text
    for line in ("train      female", "validation female", "test       female"):
        assert line in text, text
    assert "validation" in report["split"]["policy"]


def test_labels_match_files_and_metadata(built, synth_dir):
    import soundfile as sf

    data_dir, report = built
    meta = json.loads((synth_dir / "audioMNIST_meta.txt").read_text())
    for split in SPLITS:
        records = _records(data_dir, split)
        speakers = {int(r["speaker"]) for r in records}
        assert speakers == set(report["split"]["splits"][split]["speakers"])
        for r in records:
            name = os.path.basename(r["file"].decode())
            digit, spk, rep = (int(x) for x in name[:-4].split("_"))
            assert (r["digit"], r["speaker"], r["repetition"]) == (digit, spk, rep)
            assert r["gender"] == (0 if meta[f"{spk:02d}"]["gender"] == "female" else 1)
            assert r["age"] == int(meta[f"{spk:02d}"]["age"])
            assert r["audio"].dtype == np.int16 and r["audio"].shape == (r["num_samples"],)
        info = sf.info(synth_dir / records[0]["file"].decode())
        assert abs(records[0]["num_samples"] - info.frames * 8000 / info.samplerate) <= 2


def test_split_recorded_and_identical_on_rebuild(built, synth_dir, tmp_path):
    import tensorflow_datasets as tfds

    data_dir, report = built
    stored = json.loads((built[0] / f"audio_mnist/all/{VERSION}/split.json").read_text())
    assert stored == report["split"]
    builder = tfds.builder("audio_mnist/all", data_dir=os.fspath(data_dir))
    assert dict(builder.info.metadata["split"]) == stored
    again = prepare(synth_dir, tmp_path / "again", "all")
    assert again["split"] == stored and not again["reused"]
    reused = prepare(synth_dir, data_dir, "all")
    assert reused["reused"] and reused["split"] == stored
    rebuilt = prepare(synth_dir, tmp_path / "again", "all", overwrite=True)
    assert rebuilt["split"] == stored and not rebuilt["reused"]


REAL_GENDERS = {s: (0 if s in corpus_lib.REAL_FEMALE_SPEAKERS else 1) for s in range(1, 61)}
# The test speakers of the two-split rule (train / test) that came before the validation
# split, computed with that rule: the validation split must not change them.
OLD_TEST_SPEAKERS = {
    "synth24": [3, 4, 21, 22],  # synth.speaker_genders(24): odd ids male, even ids female
    "real60": [10, 18, 19, 22, 26, 29, 38, 39, 45, 59],  # the real AudioMNIST genders
}


def test_split_policy_on_real_audiomnist_genders():
    split = corpus_lib.split_speakers(REAL_GENDERS, "all")
    for name in ("test", "validation"):
        female = [s for s in split[name] if REAL_GENDERS[s] == 0]
        male = [s for s in split[name] if REAL_GENDERS[s] == 1]
        assert len(female) == 12 // 6 and len(male) == 48 // 6, name
    assert split == corpus_lib.split_speakers(dict(reversed(REAL_GENDERS.items())), "all")
    assert len(split["train"]) == 40
    assert split["test"] == OLD_TEST_SPEAKERS["real60"]
    paper = corpus_lib.split_speakers(REAL_GENDERS, "paper")
    assert paper["test"] == [36, 39, 45, 58] and len(paper["train"]) == 16


def _check_split(split, genders):
    """Speaker-disjoint, covers every speaker, per gender test = validation = max(n // 6, 1)."""
    assert list(split) == list(SPLITS)
    parts = [set(split[name]) for name in SPLITS]
    assert sum(len(p) for p in parts) == len(set().union(*parts)) == len(genders)
    assert set().union(*parts) == set(genders)
    for gender in (0, 1):
        n = sum(1 for g in genders.values() if g == gender)
        for name in ("test", "validation"):
            got = sum(1 for s in split[name] if genders[s] == gender)
            assert got == max(n // 6, 1), (name, gender, n, split)
        assert sum(1 for s in split["train"] if genders[s] == gender) >= 1


def test_all_split_is_speaker_disjoint_and_keeps_the_test_speakers():
    from pcmelgan_jax.data.synth import speaker_genders

    for n in (6, 7, 11, 12, 13, 24, 35, 36, 59, 60, 61):
        genders = speaker_genders(n)
        _check_split(corpus_lib.split_speakers(genders, "all"), genders)
    _check_split(corpus_lib.split_speakers(REAL_GENDERS, "all"), REAL_GENDERS)
    # 3 per gender is enough (one speaker per split); unbalanced genders are fine too
    genders = {1: 0, 2: 0, 3: 0, **{s: 1 for s in range(4, 20)}}
    _check_split(corpus_lib.split_speakers(genders, "all"), genders)
    assert corpus_lib.split_speakers(speaker_genders(24), "all")["test"] == (
        OLD_TEST_SPEAKERS["synth24"]
    )
    assert corpus_lib.split_speakers(REAL_GENDERS, "all")["test"] == OLD_TEST_SPEAKERS["real60"]
    # validation: the next n // 6 of the same per-gender permutation
    genders = speaker_genders(24)
    split = corpus_lib.split_speakers(genders, "all")
    for gender in (0, 1):
        ids = sorted(s for s, g in genders.items() if g == gender)
        order = np.random.default_rng(corpus_lib.SPLIT_SEED).permutation(len(ids))
        test = [s for s in split["test"] if genders[s] == gender]
        assert sorted(ids[i] for i in order[:2]) == test
        assert [s for s in split["validation"] if genders[s] == gender] == sorted(
            ids[i] for i in order[2:4]
        )


def test_too_few_speakers_per_gender_is_refused():
    for genders, counts in (
        ({1: 1, 2: 0, 3: 1, 4: 0}, "2 female and 2 male"),  # the old tests' 4 speakers
        ({1: 0, 2: 0, **{s: 1 for s in range(3, 13)}}, "2 female and 10 male"),
        ({s: 1 for s in range(1, 13)}, "0 female and 12 male"),
    ):
        with pytest.raises(CorpusError, match=f"{counts}; need >= 3 per gender") as e:
            corpus_lib.split_speakers(genders, "all")
        assert "\n" not in str(e.value) and "validation" in str(e.value)


def test_paper_validation_speakers_come_from_the_papers_train_speakers():
    paper = corpus_lib.split_speakers(REAL_GENDERS, "paper")
    _check_split(paper, {s: REAL_GENDERS[s] for ids in paper.values() for s in ids})
    train = {s for ids in corpus_lib.PAPER_SPLIT["train"].values() for s in ids}
    assert set(paper["validation"]) <= train
    assert set(paper["train"]) | set(paper["validation"]) == train
    assert paper["validation"] == [41, 46, 52, 57]  # F 52, 57; M 41, 46 (seeded, fixed)
    for gender, ids in corpus_lib.paper_validation_speakers().items():
        assert len(ids) == 12 // 6 and set(ids) <= set(corpus_lib.PAPER_SPLIT["train"][gender])
    record = corpus_lib.split_record("paper", paper, REAL_GENDERS)
    assert record["splits"]["validation"]["female"] == [52, 57]
    assert "validation" in record["policy"] and record["seed"] == corpus_lib.SPLIT_SEED


def test_metadata_normalisation_of_real_values():
    info, notes = corpus_lib.normalize_speaker_metadata(
        "01",
        {
            "accent": "german",
            "age": 30,
            "gender": "Male ",
            "native speaker": "no",
            "origin": "Europe,  Germany, Wuerzburg",
            "recordingdate": "17-06-22-11-04-28",
            "recordingroom": "Kino",
        },  # fmt: skip
    )
    assert (info.speaker, info.gender, info.age, info.accent) == (1, 1, 30, "german")
    assert info.native_speaker == 0 and info.origin == "Europe, Germany, Wuerzburg"
    assert any("number" in n for n in notes) and any("'Male '" in n for n in notes)
    info, notes = corpus_lib.normalize_speaker_metadata(
        "45", {"accent": "German", "age": "1234", "gender": "male", "recordingroom": "vr-romm"}
    )
    assert info.age == -1 and info.accent == "german" and info.recording_room == "vr-room"
    assert info.native_speaker == -1
    assert any("1234" in n for n in notes)
    info, _ = corpus_lib.normalize_speaker_metadata(
        "31", {"age": "26", "gender": "female", "recordingroom": "VR-room"}
    )
    assert (info.gender, info.age, info.recording_room) == (0, 26, "vr-room")
    with pytest.raises(ValueError, match="unknown gender"):
        corpus_lib.normalize_speaker_metadata("07", {"gender": "unknown"})


def test_bad_input_is_reported_and_skipped(synth_dir, tmp_path):
    src = _copy_corpus(synth_dir, tmp_path / "bad")
    (src / "01" / "3_01_1.wav").write_bytes(b"RIFF\x00\x00 this is not a wav file")
    shutil.copy(src / "02" / "4_02_0.wav", src / "02" / "four_02_0.wav")
    shutil.copy(src / "03" / "5_03_0.wav", src / "03" / "5_04_9.wav")  # speaker mismatch
    (src / "07").mkdir()
    shutil.copy(src / "01" / "0_01_0.wav", src / "07" / "0_07_0.wav")  # not in metadata
    (src / "08").mkdir()  # empty speaker folder
    meta = json.loads((src / "audioMNIST_meta.txt").read_text())
    meta["01"]["gender"], meta["01"]["age"] = "Male ", 30
    meta["02"]["age"], meta["02"]["recordingroom"] = "1234", "vr-romm"
    (src / "audioMNIST_meta.txt").write_text(json.dumps(meta))
    before = _snapshot(src)
    report = prepare(src, tmp_path / "tfds", "all")
    assert _snapshot(src) == before  # the source is never modified
    skipped = {os.path.relpath(p["path"], src): p["problem"] for p in report["skipped"]}
    assert set(skipped) == {"01/3_01_1.wav", "02/four_02_0.wav", "03/5_04_9.wav", "07/0_07_0.wav"}
    assert "cannot read audio" in skipped["01/3_01_1.wav"]
    assert "does not parse" in skipped["02/four_02_0.wav"]
    assert "in folder 03" in skipped["03/5_04_9.wav"]
    assert "no entry in the metadata" in skipped["07/0_07_0.wav"]
    notes = [(os.path.relpath(p["path"], src), p["problem"]) for p in report["notes"]]
    assert ("08", "speaker folder 08 has no .wav files") in notes
    assert any("'1234'" in p and "unknown" in p for _, p in notes)
    assert any("'vr-romm'" in p for _, p in notes)
    total = sum(report["splits"][s]["utterances"] for s in SPLITS)
    assert total == SPEAKERS * 10 * REPS - 1
    records = [r for s in SPLITS for r in _records(tmp_path / "tfds", s)]
    by_speaker = {int(r["speaker"]): r for r in records}
    assert by_speaker[1]["gender"] == 1 and by_speaker[1]["age"] == 30
    assert by_speaker[2]["age"] == -1 and by_speaker[2]["recording_room"] == b"vr-room"
    text = format_report(report)
    assert "files skipped: 4" in text and "3_01_1.wav" in text


def test_mostly_bad_corpus_fails(synth_dir, tmp_path):
    src = _copy_corpus(synth_dir, tmp_path / "mostly_bad")
    for digit in range(10):
        for spk in ("01", "02"):
            (src / spk / f"{digit}_{spk}_0.wav").write_bytes(b"garbage")
    with pytest.raises(CorpusError, match=r"20 of 120 .wav files are unusable") as e:
        prepare(src, tmp_path / "tfds", "all")
    assert "0_01_0.wav: cannot read audio" in str(e.value)
    assert not (tmp_path / "tfds" / "audio_mnist" / "all" / VERSION).exists()


def test_missing_or_empty_manual_dir(tmp_path):
    with pytest.raises(CorpusError, match=r"(?s)does not exist.*github.com/soerenab/AudioMNIST"):
        prepare(tmp_path / "nope", tmp_path / "tfds")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match="no metadata file"):
        prepare(tmp_path / "empty", tmp_path / "tfds")
    (tmp_path / "nofolders").mkdir()
    (tmp_path / "nofolders" / "audioMNIST_meta.json").write_text('{"01": {"gender": "male"}}')
    with pytest.raises(CorpusError, match="no speaker folders"):
        prepare(tmp_path / "nofolders", tmp_path / "tfds")


def test_paper_config_names_missing_speakers(synth_dir, tmp_path):
    with pytest.raises(CorpusError, match=r"missing.*12, 26, 28") as e:
        prepare(synth_dir, tmp_path / "tfds", "paper")
    assert "36" in str(e.value) and "49" in str(e.value)


def test_paper_config_builds(synth_dir, tmp_path):
    fake = tmp_path / "paper_corpus"
    fake.mkdir()
    meta = {}
    donors = {0: ["02", "04", "06"], 1: ["01", "03", "05"]}
    for part in corpus_lib.PAPER_SPLIT.values():
        for gender, ids in part.items():
            for k, s in enumerate(ids):
                donor = donors[gender][k % 3]
                (fake / f"{s:02d}").mkdir()
                for digit in range(10):
                    os.symlink(
                        synth_dir / donor / f"{digit}_{donor}_0.wav",
                        fake / f"{s:02d}" / f"{digit}_{s:02d}_0.wav",
                    )
                meta[f"{s:02d}"] = {"gender": ("female", "male")[gender], "age": "30"}
    (fake / "audioMNIST_meta.txt").write_text(json.dumps(meta))
    report = prepare(fake, tmp_path / "tfds", "paper")
    split = report["split"]["splits"]
    assert split["test"]["female"] == [36, 58] and split["test"]["male"] == [39, 45]
    assert split["validation"]["female"] == [52, 57] and split["validation"]["male"] == [41, 46]
    paper_train = set(corpus_lib.PAPER_SPLIT["train"][0] + corpus_lib.PAPER_SPLIT["train"][1])
    assert split["train"]["speakers"] == sorted(paper_train - {41, 46, 52, 57})
    assert report["splits"]["train"]["utterances"] == 160
    assert report["splits"]["validation"]["utterances"] == 40
    assert report["splits"]["test"]["utterances"] == 40
    assert {int(r["speaker"]) for r in _records(tmp_path / "tfds", "test", "paper")} == {
        36, 39, 45, 58,
    }  # fmt: skip
    assert {int(r["speaker"]) for r in _records(tmp_path / "tfds", "validation", "paper")} == {
        41, 46, 52, 57,
    }  # fmt: skip


def _fake_old_version(data_dir, old_dir, old_version="1.0.0"):
    """``old_dir`` holding ``audio_mnist/all`` as an older version would have left it: the
    current dataset copied to an ``old_version`` folder, its info saying that version, and
    without the validation split."""
    src = data_dir / "audio_mnist" / "all" / VERSION
    dst = old_dir / "audio_mnist" / "all" / old_version
    shutil.copytree(src, dst)
    for f in dst.glob("*-validation.*"):
        f.unlink()
    info = json.loads((dst / "dataset_info.json").read_text())
    info["version"] = old_version
    info["splits"] = [s for s in info["splits"] if s["name"] != "validation"]
    (dst / "dataset_info.json").write_text(json.dumps(info))
    return dst


def test_dataset_of_an_older_version_is_refused_then_rebuilt(built, synth_dir, tmp_path):
    from pcmelgan_jax.data import audio_mnist
    from pcmelgan_jax.data.pipeline import load_source, make_dataset

    assert str(audio_mnist.AudioMnist.VERSION) == VERSION
    assert "validation" in audio_mnist.AudioMnist.RELEASE_NOTES[VERSION]
    old = tmp_path / "old"
    _fake_old_version(built[0], old)
    (old / "audio_mnist" / "all" / "0.9.0").mkdir()  # a folder without dataset_info.json
    assert audio_mnist.older_versions(old, "all") == ["1.0.0"]
    for read in (
        lambda: load_source(old, "audio_mnist/all", "train"),
        lambda: make_dataset(old, "audio_mnist/all", "validation", train=False),
        lambda: audio_mnist.read_split(old, "all"),
    ):
        with pytest.raises(audio_mnist.OutdatedDatasetError) as e:
            read()
        message = str(e.value)
        assert isinstance(e.value, FileNotFoundError) and "\n" not in message
        assert f"in {old} was prepared by an older version (1.0.0) without a validation " in message
        assert f"re-run `pcmelgan-jax prepare --manual-dir ... --data-dir {old}`" in message
    # a data dir without any version keeps the plain "not prepared" message
    with pytest.raises(FileNotFoundError, match="is not prepared in") as e:
        load_source(tmp_path / "empty", "audio_mnist/all", "train")
    assert not isinstance(e.value, audio_mnist.OutdatedDatasetError)
    # prepare builds the current version next to the old one, then reuses it
    report = prepare(synth_dir, old, "all")
    assert report["version"] == VERSION and not report["reused"]
    assert report["split"] == built[1]["split"]
    assert (old / "audio_mnist" / "all" / "1.0.0").is_dir()
    assert len(load_source(old, "audio_mnist/all", "validation")) == 40
    assert prepare(synth_dir, old, "all")["reused"]


# ---------------------------------------------------------------- pipeline


def _take(it, n):
    return [next(it) for _ in range(n)]


def _same(a, b):
    return all(
        x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)
        for x, y in zip(a, b, strict=True)
    )


def test_batches_shapes_and_determinism(built):
    from pcmelgan_jax.data.pipeline import make_dataset

    data_dir, _ = built
    it = make_dataset(data_dir, split="train", batch_size=8, seed=0)
    assert it.steps_per_epoch == 5
    a = _take(it, 10)
    b = _take(make_dataset(data_dir, split="train", batch_size=8, seed=0), 10)
    c = _take(make_dataset(data_dir, split="train", batch_size=8, seed=1), 10)
    first = a[0]
    assert first["audio"].shape == (8, 8192) and first["audio"].dtype == np.float32
    for k in ("digit", "gender", "speaker"):
        assert first[k].shape == (8,) and first[k].dtype == np.int32
    assert np.allclose(np.abs(first["audio"]).max(axis=1), 0.95, atol=1e-5)  # peak-normalised
    assert _same(a, b) and not _same(a, c)

    # each epoch is a permutation of the 40 training examples, in a new order
    def keys(batches):
        return [
            (int(s), int(d)) for x in batches for s, d in zip(x["speaker"], x["digit"], strict=True)
        ]

    epoch1, epoch2 = keys(a[:5]), keys(a[5:])
    expected = sorted((int(r["speaker"]), int(r["digit"])) for r in _records(data_dir, "train"))
    assert sorted(epoch1) == expected and sorted(epoch2) == expected and epoch1 != epoch2


def test_resume_mid_epoch(built):
    from pcmelgan_jax.data.pipeline import make_dataset

    data_dir, _ = built
    for threads in (0, 2):
        kwargs = dict(split="train", batch_size=8, seed=5, worker_threads=threads)
        it = make_dataset(data_dir, **kwargs)
        _take(it, 3)
        state = json.loads(json.dumps(it.get_state()))  # as stored in a checkpoint
        rest = _take(it, 8)  # crosses the epoch boundaries at 5 and 10
        fresh = make_dataset(data_dir, **kwargs)
        fresh.set_state(state)
        assert _same(rest, _take(fresh, 8))
        it.close()
        fresh.close()
    other = make_dataset(data_dir, split="train", batch_size=8, seed=6)
    with pytest.raises(ValueError, match="different pipeline"):
        other.set_state(state)


def test_cached_records_decode_once_and_give_the_same_batches(built, tmp_path):
    import pickle

    from pcmelgan_jax.data import pipeline

    data_dir, _ = built
    kwargs = dict(split="train", batch_size=8, seed=3, worker_threads=0)
    decoded = _take(pipeline.make_dataset(data_dir, cache_records=False, **kwargs), 12)
    cached = pipeline.make_dataset(data_dir, **kwargs)
    assert _same(decoded, _take(cached, 12))  # 2.4 epochs: the later ones from memory
    shared = pipeline.cached_source(pipeline.load_source(data_dir, split="train"), "train")
    assert shared.num_cached == len(shared) == 40  # every record once, no more

    reads = []

    class Counting:
        def __len__(self):
            return len(shared.source)

        def __getitem__(self, i):
            reads.append(i)
            return shared.source[i]

    counted = pipeline.CachedRecords(Counting())
    for _ in range(3):
        assert counted[7]["digit"] == shared[7]["digit"]
    assert reads == [7] and set(counted[7]) == set(pipeline.CachedRecords.FIELDS)
    # a Grain worker process gets the source, not the records read so far
    assert pickle.loads(pickle.dumps(shared)).num_cached == 0
    # the same files share one cache; a copy of the dataset prepared elsewhere has its own
    again = pipeline.cached_source(pipeline.load_source(data_dir, split="train"), "train")
    assert again is shared
    copy = tmp_path / "copy"
    shutil.copytree(data_dir, copy)
    other = pipeline.cached_source(pipeline.load_source(copy, split="train"), "train")
    assert other is not shared and other.num_cached == 0


def test_eval_keeps_every_example_with_mask(built):
    from pcmelgan_jax.data.pipeline import make_dataset

    data_dir, _ = built
    batches = list(make_dataset(data_dir, split="test", batch_size=16, train=False))
    assert len(batches) == 3  # 40 examples -> 16 + 16 + 8 real, 8 padding
    mask = np.concatenate([b["mask"] for b in batches])
    assert mask.sum() == 40 and mask[:40].all() and not mask[40:].any()
    audio = np.concatenate([b["audio"] for b in batches])
    assert not np.abs(audio[40:]).any()
    # centred padding: equal silence on both sides (up to one sample) for short clips
    records = _records(data_dir, "test")
    for i in range(5):
        n = int(records[i]["num_samples"])
        if n < 8192:
            nz = np.flatnonzero(audio[i])
            left, right = nz[0], 8191 - nz[-1]
            assert abs(left - (8192 - n) // 2) <= 1 and abs(left - right) <= 2


def test_per_process_sharding(built):
    import grain

    from pcmelgan_jax.data.pipeline import make_dataset

    data_dir, _ = built

    def examples(index, train):
        it = make_dataset(
            data_dir, split="train", batch_size=4, seed=0, train=train, num_epochs=1,
            shard_options=grain.sharding.ShardOptions(index, 2, drop_remainder=train),
        )  # fmt: skip
        out = []
        for b in it:
            for k in range(len(b["mask"])):
                if b["mask"][k]:
                    out.append((int(b["speaker"][k]), int(b["digit"][k]),
                                hashlib.sha1(b["audio"][k].tobytes()).hexdigest()))  # fmt: skip
        return out

    # evaluation order: exact records, disjoint halves that cover the split
    e0, e1 = examples(0, False), examples(1, False)
    assert len(e0) == len(e1) == 20
    assert len(set(e0) | set(e1)) == 40 and not set(e0) & set(e1)
    # training (shuffled, random offsets): equal halves, together every example once
    t0, t1 = examples(0, True), examples(1, True)
    assert len(t0) == len(t1) == 20
    expected = sorted((int(r["speaker"]), int(r["digit"])) for r in _records(data_dir, "train"))
    assert sorted((s, d) for s, d, _ in t0 + t1) == expected
    assert sorted((s, d) for s, d, _ in e0 + e1) == expected


def test_source_folder_unmodified(synth_dir, source_snapshot, built):
    assert _snapshot(synth_dir) == source_snapshot
