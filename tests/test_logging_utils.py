"""Sample images and audio in TensorBoard (``MetricWriter``), read back without tensorboard."""

from __future__ import annotations

import io

import matplotlib.image
import numpy as np
import soundfile as sf

from pcmelgan_jax.audio import SAMPLE_RATE
from pcmelgan_jax.logging_utils import MetricWriter, read_summaries, spectrogram_panel


def test_panel_image_and_audio_round_trip(tmp_path):
    """The panel's PNG holds the returned image; TensorBoard gets it and a wav at 8 kHz."""
    rng = np.random.default_rng(0)
    rows = [[rng.uniform(-1, 1, (80, 32)) for _ in range(2)] for _ in range(2)]
    image = spectrogram_panel(tmp_path / "panel.png", rows, ["original", "filtered"],
                              ["female digit 1", "male digit 2"])
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    png = matplotlib.image.imread(tmp_path / "panel.png")
    np.testing.assert_array_equal(np.round(png[..., :3] * 255).astype(np.uint8), image)

    wav = 0.5 * np.sin(np.linspace(0, 100, 800, dtype=np.float32))
    writer = MetricWriter(tmp_path / "run", enabled=True)
    writer.write_image(3, "samples/panel", image)
    writer.write_audio(3, "samples/audio/0_real", wav[None])  # (1, T) is flattened
    writer.close()
    got = {v.tag: (step, v) for step, v in read_summaries(tmp_path / "run" / "tensorboard")}
    assert set(got) == {"samples/panel", "samples/audio/0_real"}
    step, panel = got["samples/panel"]
    assert step == 3 and (panel.image.height, panel.image.width) == image.shape[:2]
    np.testing.assert_array_equal(matplotlib.image.imread(
        io.BytesIO(panel.image.encoded_image_string), format="png")[..., :3] * 255, image)
    step, audio = got["samples/audio/0_real"]
    assert step == 3 and audio.audio.sample_rate == SAMPLE_RATE == 8000
    assert audio.audio.num_channels == 1 and audio.audio.length_frames == 800
    decoded, rate = sf.read(io.BytesIO(audio.audio.encoded_audio_string), dtype="float32")
    assert rate == SAMPLE_RATE
    np.testing.assert_allclose(decoded, wav, atol=1e-4)


def test_disabled_writer_writes_nothing(tmp_path):
    """Processes other than 0 get a no-op writer."""
    writer = MetricWriter(tmp_path / "run", enabled=False)
    writer.write_image(1, "samples/panel", np.zeros((4, 4, 3), np.uint8))
    writer.write_audio(1, "samples/audio/0_real", np.zeros(8, np.float32))
    writer.close()
    assert not (tmp_path / "run").exists()
