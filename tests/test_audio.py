"""Audio front-end: loading, normalisation, cropping, log-mel, bad input."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile as sf

from pcmelgan_jax import audio


def tone(freq=440.0, seconds=1.0, sr=8000, amp=0.5):
    t = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_load_resamples_and_mixes_stereo(tmp_path):
    sig = tone(440.0, 0.5, 44100)
    stereo = np.stack([sig, sig], axis=1)
    path = tmp_path / "stereo.flac"
    sf.write(path, stereo, 44100)
    loaded = audio.load_audio(path)
    assert loaded.dtype == np.float32
    assert abs(loaded.shape[0] - 4000) <= 1
    # Still a 440 Hz tone after resampling: the spectrum peaks at 440 Hz.
    spectrum = np.abs(np.fft.rfft(loaded))
    peak_hz = np.argmax(spectrum) * 8000 / loaded.shape[0]
    assert abs(peak_hz - 440) < 4


def test_peak_normalize_and_silence():
    x = np.array([0.1, -0.5, 0.25], np.float32)
    np.testing.assert_allclose(audio.peak_normalize(x), 0.95 * x / 0.5, rtol=1e-6)
    np.testing.assert_array_equal(audio.peak_normalize(np.zeros(5, np.float32)), np.zeros(5))


def test_fit_length_crop_pad_center_and_random():
    x = np.arange(1, 11, dtype=np.float32)
    np.testing.assert_array_equal(audio.fit_length(x, 4), [1, 2, 3, 4])  # first samples
    centred = audio.fit_length(x, 16)
    np.testing.assert_array_equal(centred[3:13], x)
    assert centred[:3].sum() == 0 and centred[13:].sum() == 0
    offsets = set()
    for seed in range(20):
        padded = audio.fit_length(x, 16, np.random.default_rng(seed))
        offsets.add(int(np.argmax(padded > 0)))
        assert padded.sum() == x.sum()
    assert len(offsets) > 3 and max(offsets) <= 6
    a = audio.fit_length(x, 16, jax.random.key(3))
    b = audio.fit_length(x, 16, jax.random.key(3))
    np.testing.assert_array_equal(a, b)


def test_log_mel_shapes_jit_and_grad():
    batch = np.stack([tone(300.0), tone(1200.0)])[:, :8192]
    batch = np.pad(batch, [(0, 0), (0, 8192 - batch.shape[1])])
    mel = jax.jit(audio.log_mel)(batch)
    chex.assert_shape(mel, (2, 80, 32))
    # the 300 Hz tone has its energy in lower mel bands than the 1200 Hz tone
    assert jnp.argmax(mel[0].mean(-1)) < jnp.argmax(mel[1].mean(-1))
    grad = jax.grad(lambda a: audio.mel_features(a)[0].sum())(jnp.asarray(batch))
    chex.assert_tree_all_finite(grad)
    chex.assert_shape(grad, (2, 8192))


def test_mel_basis_is_librosa_slaney():
    import librosa

    basis = audio.mel_basis()
    assert basis.shape == (80, 513)
    ref = librosa.filters.mel(sr=8000, n_fft=1024, n_mels=80, htk=False, norm="slaney")
    np.testing.assert_allclose(basis, ref, rtol=1e-6)


def test_normalize_roundtrip_and_silence_is_finite():
    rng = np.random.default_rng(0)
    spec = rng.normal(-2.0, 0.5, (3, 80, 32)).astype(np.float32)
    x, mean, std = audio.normalize(spec)
    np.testing.assert_allclose(mean, spec.reshape(3, -1).mean(-1), rtol=1e-5)
    np.testing.assert_allclose(std, spec.reshape(3, -1).std(-1, ddof=1), rtol=1e-5)
    inside = np.abs(np.asarray(x)) < 1  # unclipped values invert exactly
    back = audio.denormalize(x, mean, std)
    np.testing.assert_allclose(np.asarray(back)[inside], spec[inside], atol=1e-4)
    x0, m0, s0 = audio.mel_features(np.zeros((2, 8192), np.float32))
    chex.assert_tree_all_finite((x0, m0, s0))
    np.testing.assert_array_equal(x0, 0.0)
    np.testing.assert_allclose(m0, -5.0)  # log10 of the 1e-5 floor


def test_bad_files_name_the_file(tmp_path):
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros((0,), np.float32), 8000)
    with pytest.raises(audio.AudioError, match="empty.wav.*empty"):
        audio.load_audio(empty)

    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk")
    with pytest.raises(audio.AudioError, match="corrupt.wav.*cannot read"):
        audio.load_audio(corrupt)

    with pytest.raises(audio.AudioError, match="missing.wav.*no such file"):
        audio.load_audio(tmp_path / "missing.wav")

    nan = tmp_path / "nan.wav"
    data = tone(200.0, 0.1)
    data[10] = np.nan
    sf.write(nan, data, 8000, subtype="FLOAT")
    with pytest.raises(audio.AudioError, match="nan.wav.*NaN"):
        audio.load_audio(nan)

    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(800, np.float32), 8000)
    clip = audio.prepare_clip(audio.load_audio(silent))
    np.testing.assert_array_equal(clip, np.zeros(8192, np.float32))


def test_write_audio_is_atomic_and_readable(tmp_path):
    path = tmp_path / "out" / "x.wav"
    audio.write_audio(path, tone(250.0, 0.2))
    data, sr = sf.read(path)
    assert sr == 8000 and data.shape == (1600,)
    assert [p.name for p in path.parent.iterdir()] == ["x.wav"]
