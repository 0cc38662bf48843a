"""The windowing of ``pcmelgan_jax.streaming``: window offsets, the crossfade weights and the
vocoder chunks of long files and the whole-file padding (the runner is tested through
``anonymize`` in test_anonymize)."""

import numpy as np

from pcmelgan_jax import streaming


def test_window_starts_and_chunks():
    assert streaming.window_starts(100) == ([0], 8192)
    assert streaming.window_starts(8192) == ([0], 8192)
    assert streaming.window_starts(8193) == ([0, 4096], 12288)
    starts, total = streaming.window_starts(24000)
    assert starts == [0, 4096, 8192, 12288, 16384] and total == 24576
    mel = np.arange(80 * 200, dtype=np.float32).reshape(80, 200)
    chunks = streaming.vocoder_chunks(mel, chunk=96, context=8)
    assert chunks.shape == (3, 80, 112)
    np.testing.assert_array_equal(chunks[1, :, 8:104], mel[:, 96:192])
    np.testing.assert_array_equal(chunks[0, :, :8], mel[:, 8:0:-1])  # reflected context
    held = np.repeat(chunks[:, 0, :], 256, axis=1)  # a "vocoder" holding frame values
    np.testing.assert_array_equal(streaming.chunk_audio(held, 200, 8),
                                  np.repeat(mel[0], 256))


def test_frame_weights_fade_at_the_edges_and_sum_evenly_with_half_overlap():
    w = streaming.frame_weights()
    assert w.shape == (32,) and np.all(w > 0) and w[0] < 0.01 and w[15] > 0.99
    # sin^2 windows at half overlap add up to one away from the ends
    np.testing.assert_allclose(w[16:] + w[:16], 1.0, atol=1e-12)


def test_make_job_centres_a_short_clip_and_restores_the_level():
    audio = np.full(1000, 0.5, np.float32)
    job = streaming.make_job(audio, "in.wav", "out.wav", np.zeros(2), np.zeros(2), 1)
    assert job.starts == [0] and job.padded.size == 8192 and job.frames == 32
    assert job.offset == (8192 - 1000) // 2
    np.testing.assert_allclose(job.padded[job.offset : job.offset + 1000], 0.95)
    np.testing.assert_allclose(job.result(job.padded), audio, rtol=1e-6)


def test_whole_file_mel_pads_with_silence_to_a_multiple_of_the_bucket():
    mel = np.arange(80 * 100, dtype=np.float32).reshape(80, 100)
    padded = streaming.whole_file_mel(mel, multiple=64)
    assert padded.shape == (80, 128) and padded.dtype == np.float32
    np.testing.assert_array_equal(padded[:, :100], mel)
    np.testing.assert_allclose(padded[:, 100:], np.log10(1e-5))  # the log-mel of silence
    assert streaming.whole_file_mel(padded, multiple=64).shape == (80, 128)
