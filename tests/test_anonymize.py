"""Anonymisation of whole files: the blend and levels, durations, stereo / 44.1 kHz / short /
long inputs, folders, error handling and the CLI, on untrained (random) models in the workdir
layout."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import types
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pcmelgan_jax import anonymize, griffin_lim, streaming
from pcmelgan_jax.anonymize import AnonymizeError, Anonymizer, anonymize_file, anonymize_path
from pcmelgan_jax.checkpointing import save_model
from pcmelgan_jax.cli import main as cli_main
from pcmelgan_jax.models.registry import numpy_random_variables

BATCH = 4  # windows per jitted batch in these tests


random_variables = numpy_random_variables


def save_converted(directory, network: str, seed: int, **arch) -> None:
    """Random variables through the PyTorch state-dict round trip, as import-torch saves them."""
    from pcmelgan_jax.interop.torch_import import convert_state_dict, export_state_dict

    sd = export_state_dict(network, random_variables(network, seed, **arch), **arch)
    save_model(directory, network, convert_state_dict(network, sd, **arch), arch=arch,
               extra={"converted_from": "pytorch"})


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    """Quickstart layout: pcmelgan/models/{filter, generator}, vocoder/models/generator, and a
    filter-only run elsewhere whose config.json names the vocoder."""
    root = tmp_path_factory.mktemp("anon")
    save_converted(root / "pcmelgan" / "models" / "filter", "unet_filter", 1)
    save_converted(root / "pcmelgan" / "models" / "generator", "unet_generator", 2)
    save_converted(root / "vocoder" / "models" / "generator", "melgan_generator", 3, ngf=8)
    fo = root / "runs" / "filter_only"
    save_converted(fo / "models" / "filter", "unet_filter", 4)
    (fo / "config.json").write_text(json.dumps(
        {"eps": 0.05, "filter_only": True, "vocoder_workdir": str(root / "vocoder")}))
    return root


@pytest.fixture(scope="session")
def model(workdir) -> Anonymizer:
    return Anonymizer.from_workdir(workdir, batch_size=BATCH, vocoder_batch_size=BATCH)


def tone(seconds: float, sr: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    """A voiced-like test signal: 150 Hz harmonics with a slow envelope, plus a little noise."""
    t = np.arange(int(round(seconds * sr))) / sr
    x = sum(np.sin(2 * np.pi * 150 * k * t) / k for k in range(1, 6))
    x = 0.3 * x * (0.6 + 0.4 * np.sin(2 * np.pi * 2 * t))
    x += 0.01 * np.random.default_rng(seed).standard_normal(t.size)
    if channels > 1:
        x = np.stack([x * (1 - 0.3 * c) for c in range(channels)], axis=1)
    return x.astype(np.float32)


def write(path: Path, audio: np.ndarray, sr: int, fmt: str = "WAV") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, audio, sr, format=fmt, subtype="PCM_16")
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------ windowing (no models)


class SampleHold(Anonymizer):
    """A fake model: the "log-mel" of a window holds, in every band, the sample at each frame's
    centre, and the "vocoder" repeats each frame's value for its 256 samples. Overlapping
    windows then agree exactly, so the output must equal the input sampled at the frame
    centres: this checks window and frame alignment, the blend, chunking, the centring of
    short clips and the level restoration, without a network. ``vocoder_kind`` griffin-lim:
    longer files are vocoded whole (padded to WHOLE_FILE_FRAMES), as Griffin-Lim needs."""

    def __init__(self, batch_size: int = 3, vocoder_batch_size: int = 2,
                 vocoder_kind: str = "melgan"):
        module = types.SimpleNamespace(noise_dim=10)
        super().__init__((module, None), None, (None, None), "", "", batch_size,
                         vocoder_batch_size, vocoder_kind=vocoder_kind)
        self.calls = {"windows": 0, "vocoder": 0}

    def transform_mels(self, windows, z1, z2, cond):
        self.calls["windows"] += 1
        assert windows.shape == (self.batch_size, 8192)
        centres = windows[:, 128::256]  # (B, 32)
        return np.repeat(centres[:, None, :], 80, axis=1)

    def vocode(self, mels, context=0):
        self.calls["vocoder"] += 1
        if self.whole_file_vocoder and mels.shape[2] != 32:  # a longer file in one call
            assert mels.shape[0] == 1 and context == 0
            assert mels.shape[2] % streaming.WHOLE_FILE_FRAMES == 0
        else:  # a batch of one-window files, or one chunk (context, chunk, context)
            chunk = (1, 80, streaming.CHUNK_FRAMES + 2 * streaming.CONTEXT_FRAMES)
            assert (mels.shape, context) in (((self.vocoder_batch_size, 80, 32), 0),
                                             (chunk, streaming.CONTEXT_FRAMES))
        return np.repeat(mels[:, 0, context : mels.shape[2] - context], 256, axis=1)


@pytest.mark.parametrize("vocoder_kind", ["melgan", "griffin-lim"])
@pytest.mark.parametrize("seconds", [0.05, 1.024, 1.5, 3.0, 9.3])
def test_windowing_blend_and_level_with_a_sample_and_hold_model(tmp_path, seconds, vocoder_kind):
    src = write(tmp_path / "in.wav", tone(seconds, 8000) * 0.5, 8000)
    x, _ = sf.read(src, dtype="float32")
    fake = SampleHold(vocoder_kind=vocoder_kind)
    out = anonymize_file(src, tmp_path / "out.wav", model=fake)
    y, sr = sf.read(out, dtype="float32")
    assert sr == 8000 and y.shape == x.shape
    starts, total = streaming.window_starts(x.size)
    offset = (8192 - x.size) // 2 if x.size < 8192 else 0
    padded = np.zeros(total, np.float32)
    padded[offset : offset + x.size] = x
    held = np.repeat(padded[128::256], 256)[offset : offset + x.size]
    np.testing.assert_allclose(y, held, atol=1e-4)  # 16-bit output
    assert fake.calls["windows"] == -(-len(starts) // 3)
    if vocoder_kind == "griffin-lim":  # one call for the whole file, however long
        assert fake.calls["vocoder"] == 1


def test_silence_stays_silent_without_model_calls(tmp_path):
    src = write(tmp_path / "silence.wav", np.zeros(20000, np.float32), 8000)
    fake = SampleHold()
    out = anonymize_file(src, tmp_path / "o.wav", model=fake)
    y, _ = sf.read(out)
    assert y.shape == (20000,) and not np.any(y)
    assert fake.calls == {"windows": 0, "vocoder": 0}


def test_chunked_vocoding_matches_whole_file_vocoding(model):
    """A log-mel of one chunk's length (chunk + 2 context frames) vocoded in one piece vs in
    two chunks: equal away from the ends, across the chunk boundary."""
    vocoder, variables = model.vocoder
    frames = streaming.CHUNK_FRAMES + 2 * streaming.CONTEXT_FRAMES
    mel = (np.random.default_rng(0).standard_normal((80, frames)) - 3).astype(np.float32)
    batch = np.zeros((BATCH, 80, frames), np.float32)
    batch[0] = mel
    whole = np.asarray(anonymize._vocode(vocoder, variables, batch))[0]
    chunks = streaming.vocoder_chunks(mel)
    assert chunks.shape == (2, 80, frames)
    batch[:2] = chunks
    got = streaming.chunk_audio(np.asarray(anonymize._vocode(vocoder, variables, batch))[:2],
                                frames)
    inner = slice(16 * 256, -16 * 256)
    np.testing.assert_allclose(got[inner], whole[inner], atol=2e-5)


def test_long_files_vocode_one_chunk_per_call(tmp_path, monkeypatch):
    """No silent padding of a last vocoder batch: one (1, 80, chunk + 2 context) call per chunk;
    the same files whether the reader runs ahead of the vocoder's worker, waits for it, or
    vocodes in its own thread."""
    src = tmp_path / "in"
    for i, seconds in enumerate((9.3, 0.7, 4.1, 1.0)):
        write(src / f"{i}.wav", tone(seconds, 8000, seed=i), 8000)
    fake = SampleHold(vocoder_batch_size=4)
    anonymize_path(src / "0.wav", tmp_path / "one.wav", model=fake, progress=False)
    _, total = streaming.window_starts(sf.info(src / "0.wav").frames)
    assert fake.calls["vocoder"] == -(-(total // 256) // streaming.CHUNK_FRAMES)
    anonymize_path(src, tmp_path / "ahead", model=SampleHold(), progress=False)
    inline = SampleHold()
    inline.vocoder_thread = False
    anonymize_path(src, tmp_path / "inline", model=inline, progress=False)
    monkeypatch.setattr(streaming, "MAX_VOCODER_QUEUE", 0)
    anonymize_path(src, tmp_path / "waits", model=SampleHold(), progress=False)
    for i in range(4):
        assert len({digest(tmp_path / d / f"{i}.wav") for d in ("ahead", "waits", "inline")}) == 1


# ------------------------------------------------------------------ real (random) models


def test_vocode_equals_the_vocoder_module(model):
    """Anonymizer.vocode (melgan.generate on folded weights) computes the module's function:
    on a batch of one-window files (5: split into calls of 4), and on a chunk whose context
    frames are cut off."""
    mels = (np.random.default_rng(1).standard_normal((5, 80, 32)) - 3).astype(np.float32)
    want = np.asarray(anonymize._vocode(*model.vocoder, mels))
    np.testing.assert_allclose(model.vocode(mels), want, atol=2e-5)
    context = streaming.CONTEXT_FRAMES
    frames = streaming.CHUNK_FRAMES + 2 * context
    chunk = (np.random.default_rng(2).standard_normal((1, 80, frames)) - 3).astype(np.float32)
    want = np.asarray(anonymize._vocode(*model.vocoder, chunk))[:, context * 256 : -context * 256]
    np.testing.assert_allclose(model.vocode(chunk, context=context), want, atol=2e-5)


def test_durations_stereo_rates_short_and_long(tmp_path, model):
    cases = {  # name: (seconds, sample rate, channels, format)
        "long_mono_8k.wav": (3.0, 8000, 1, "WAV"),
        "stereo_44k.wav": (1.3, 44100, 2, "WAV"),
        "short_16k.flac": (0.2, 16000, 1, "FLAC"),
    }
    src = tmp_path / "in"
    for name, (sec, sr, ch, fmt) in cases.items():
        write(src / name, tone(sec, sr, ch), sr, fmt)
    summary = anonymize_path(src, tmp_path / "out", model=model, seed=1, progress=False)
    assert summary["failed"] == [] and len(summary["written"]) == 3
    for name, (_, sr, _, _) in cases.items():
        y, out_sr = sf.read(tmp_path / "out" / (Path(name).stem + ".wav"), dtype="float32")
        assert out_sr == 8000 and y.ndim == 1
        n_in = sf.info(src / name).frames
        assert abs(y.size / 8000 - n_in / sr) <= 1 / 8000, name  # same duration
        assert np.all(np.isfinite(y)) and np.max(np.abs(y)) > 0
    assert summary["audio_seconds"] == pytest.approx(3.0 + 1.3 + 0.2, abs=1e-3)
    assert set(summary["genders"].values()) <= {"female", "male"}


def test_deterministic_and_gender_choice(tmp_path, model):
    src = write(tmp_path / "a.wav", tone(1.5, 8000), 8000)
    a = anonymize_file(src, tmp_path / "a1.wav", model=model, gender="female", seed=3)
    b = anonymize_file(src, tmp_path / "a2.wav", model=model, gender="female", seed=3)
    c = anonymize_file(src, tmp_path / "a3.wav", model=model, gender="male", seed=3)
    assert digest(Path(a)) == digest(Path(b))
    assert digest(Path(a)) != digest(Path(c))


def test_cli_folder_with_an_unreadable_file(tmp_path, workdir, capsys):
    src = tmp_path / "in"
    write(src / "x" / "one.wav", tone(0.8, 8000), 8000)
    write(src / "x" / "y" / "two.flac", tone(2.1, 22050, 2), 22050, "FLAC")
    (src / "broken.wav").write_bytes(b"RIFF....not a wav file at all")
    before = {p: digest(p) for p in src.rglob("*") if p.is_file()}
    out = tmp_path / "out"
    rc = cli_main(["anonymize", str(src), str(out), "--workdir", str(workdir),
                   "--batch-size", str(BATCH), "--seed", "0"])
    captured = capsys.readouterr()
    assert rc == 1
    assert "broken.wav" in captured.out and "cannot read audio" in captured.out
    assert "anonymized 2 of 3 file(s)" in captured.out
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.wav")) == [
        "x/one.wav", "x/y/two.wav"]
    assert {p: digest(p) for p in src.rglob("*") if p.is_file()} == before  # inputs untouched
    # again: every output exists, nothing is overwritten without --overwrite
    stamp = {p: (digest(p), p.stat().st_mtime_ns) for p in out.rglob("*.wav")}
    rc = cli_main(["anonymize", str(src), str(out), "--workdir", str(workdir),
                   "--batch-size", str(BATCH)])
    assert rc == 1
    assert "exists; not overwritten" in capsys.readouterr().out
    assert {p: (digest(p), p.stat().st_mtime_ns) for p in out.rglob("*.wav")} == stamp
    # --overwrite with another seed replaces them
    rc = cli_main(["anonymize", str(src / "x"), str(out / "x"), "--workdir", str(workdir),
                   "--batch-size", str(BATCH), "--seed", "5", "--overwrite", "--quiet"])
    assert rc == 0
    assert digest(out / "x" / "one.wav") != stamp[out / "x" / "one.wav"][0]


def test_refuses_out_inside_in_and_bad_arguments(tmp_path, workdir, capsys):
    src = tmp_path / "in"
    write(src / "a.wav", tone(0.5, 8000), 8000)
    for out in (src, src / "sub" / "out"):
        rc = cli_main(["anonymize", str(src), str(out), "--workdir", str(workdir)])
        assert rc == 2
        assert "anonymize: error: OUT" in capsys.readouterr().err
    assert sorted(p.name for p in src.rglob("*")) == ["a.wav"]  # nothing created
    with pytest.raises(AnonymizeError, match="is the input file"):
        anonymize_path(src / "a.wav", src / "a.wav", workdir)
    with pytest.raises(AnonymizeError, match="no such file"):
        anonymize_path(tmp_path / "missing.wav", tmp_path / "o.wav", workdir)
    with pytest.raises(AnonymizeError, match=".wav file or a folder"):
        anonymize_path(src / "a.wav", tmp_path / "o.mp3", workdir)
    with pytest.raises(AnonymizeError, match="no .wav or .flac"):
        (tmp_path / "empty").mkdir()
        anonymize_path(tmp_path / "empty", tmp_path / "o", workdir)
    with pytest.raises(AnonymizeError, match="neither a PCMelGAN run"):
        anonymize_path(src / "a.wav", tmp_path / "o.wav", tmp_path)
    with pytest.raises(AnonymizeError, match="--gender filter-only"):
        anonymize_path(src / "a.wav", tmp_path / "o.wav", workdir / "runs" / "filter_only")
    with pytest.raises(FileExistsError):
        write(tmp_path / "exists.wav", tone(0.1, 8000), 8000)
        anonymize_file(src / "a.wav", tmp_path / "exists.wav", workdir)
    assert os.listdir(tmp_path / "empty") == []


def test_bad_vocoder_arguments_are_one_line_errors(tmp_path, workdir, capsys):
    src = write(tmp_path / "a.wav", tone(0.5, 8000), 8000)
    rc = cli_main(["anonymize", str(src), str(tmp_path / "o.wav"), "--workdir", str(workdir),
                   "--vocoder", "griffin-lim", "--griffin-lim-iterations", "0"])
    assert rc == 2
    assert capsys.readouterr().err == (
        "anonymize: error: --griffin-lim-iterations must be a whole number >= 1, got 0\n")
    with pytest.raises(AnonymizeError, match="--vocoder must be one of melgan, griffin-lim"):
        anonymize_path(src, tmp_path / "o.wav", workdir, vocoder="wavenet")
    with pytest.raises(AnonymizeError, match="--griffin-lim-iterations"):
        Anonymizer.from_workdir(workdir, vocoder="griffin-lim", griffin_lim_iterations=-3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.wav"]  # nothing written


def test_griffin_lim_vocodes_a_long_file_whole_without_a_vocoder_folder(tmp_path, workdir,
                                                                         model):
    """``--vocoder griffin-lim`` in a workdir with F and G alone: outputs of the inputs'
    lengths, the same on a second run, and a long file's audio is Griffin-Lim on its whole
    blended log-mel (no chunk seams)."""
    run = tmp_path / "run"
    shutil.copytree(workdir / "pcmelgan", run / "pcmelgan")  # the fixture's F and G, no vocoder
    src = tmp_path / "in"
    lengths = {"long": 40000, "short": 5600}  # 9 windows (160 frames: 2 MelGAN chunks); 1
    for i, (name, n) in enumerate(lengths.items()):
        write(src / f"{name}.wav", tone(n / 8000, 8000, seed=i), 8000)
    for out in ("a", "b"):
        rc = cli_main(["anonymize", str(src), str(tmp_path / out), "--workdir", str(run),
                       "--vocoder", "griffin-lim", "--vocoder-workdir", str(tmp_path / "none"),
                       "--batch-size", str(BATCH), "--vocoder-batch-size", str(BATCH),
                       "--seed", "2", "--quiet"])
        assert rc == 0
    for name, n in lengths.items():
        y, sr = sf.read(tmp_path / "a" / f"{name}.wav", dtype="float32")
        assert sr == 8000 and y.shape == (n,) and np.max(np.abs(y)) > 0
        assert digest(tmp_path / "a" / f"{name}.wav") == digest(tmp_path / "b" / f"{name}.wav")
    with pytest.raises(AnonymizeError, match="no MelGAN vocoder found"):
        anonymize_path(src, tmp_path / "c", run)

    # the expectation, from the models' window function and griffin_lim alone
    x, _ = sf.read(src / "long.wav", dtype="float32")
    peak = np.max(np.abs(x))
    padded = np.zeros(40960, np.float32)  # 9 windows of 8192 at a hop of 4096
    padded[: x.size] = x * (0.95 / peak)
    windows = np.stack([padded[k * 4096 : k * 4096 + 8192] for k in range(9)])
    z1, z2, cond = anonymize._file_noise(2, "long.wav", model.noise_dim, "random")
    mels = []
    for i in range(0, 9, BATCH):  # the runner's batches: BATCH windows, zero rows after
        batch = np.zeros((BATCH, 8192), np.float32)
        batch[: len(windows[i : i + BATCH])] = windows[i : i + BATCH]
        mels.append(model.transform_mels(batch, np.tile(z1, (BATCH, 1)), np.tile(z2, (BATCH, 1)),
                                         np.full(BATCH, cond, np.int32)))
    mels = np.concatenate(mels)[:9]
    weight = np.sin(np.pi * (np.arange(32) + 0.5) / 32) ** 2
    total, weights = np.zeros((80, 160)), np.zeros(160)
    for k in range(9):
        total[:, 16 * k : 16 * k + 32] += weight * mels[k]
        weights[16 * k : 16 * k + 32] += weight
    mel = np.full((80, 192), np.log10(1e-5), np.float32)  # padded with silence to 3 x 64
    mel[:, :160] = total / weights
    want = np.asarray(griffin_lim.vocode(mel[None]))[0, : x.size] * (peak / 0.95)
    y, _ = sf.read(tmp_path / "a" / "long.wav", dtype="float32")
    np.testing.assert_allclose(y, want, atol=1e-4)  # 16-bit output
    # and the Anonymizer's Griffin-Lim keeps frames [context, T - context), as MelGAN's does
    gl = dataclasses.replace(model, vocoder=None, vocoder_dir=None, vocoder_kind="griffin-lim")
    short = np.asarray(griffin_lim.vocode(np.repeat(mel[None, :, :32], BATCH, axis=0)))
    np.testing.assert_array_equal(gl.vocode(np.repeat(mel[None, :, :32], BATCH, axis=0), 4),
                                  short[:, 4 * 256 : -4 * 256])


def test_filter_only_run_and_single_file_into_a_folder(tmp_path, workdir):
    src = write(tmp_path / "voice.flac", tone(1.2, 11025, 2), 11025, "FLAC")
    (tmp_path / "out").mkdir()
    summary = anonymize_path(src, tmp_path / "out", workdir / "runs" / "filter_only",
                             gender="filter-only", batch_size=BATCH, vocoder_batch_size=BATCH)
    assert summary["mode"] == "filter-only" and summary["failed"] == []
    y, sr = sf.read(tmp_path / "out" / "voice.wav")
    assert sr == 8000 and abs(y.size - round(1.2 * 8000)) <= 1
