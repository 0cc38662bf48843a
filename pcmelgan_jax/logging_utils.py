"""Training logs without TensorFlow: TensorBoard event files (tensorboardX), ``metrics.jsonl``
(one JSON object per logged step; TensorBoard also gets sample images and audio), a tqdm
progress bar with rate and ETA, and sample panels.

Only process 0 writes; other processes get no-op writers.
"""

from __future__ import annotations

import json
import math
import os
import struct
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from pcmelgan_jax.audio import SAMPLE_RATE
from pcmelgan_jax.workdir import METRICS_JSONL, atomic_path


def _scalar(value: Any) -> float | int:
    """A number for the logs: integers (steps, counts) stay ints, the rest become floats."""
    value = np.asarray(value)
    return int(value) if np.issubdtype(value.dtype, np.integer) else float(value)


class MetricWriter:
    """Writes scalars to ``WORKDIR/tensorboard/`` and appends lines to ``WORKDIR/metrics.jsonl``.

    A line: ``{"step": int, "split": "train"|"eval"|..., "time": unix seconds, name: value}``.
    """

    def __init__(self, workdir: str | os.PathLike, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.workdir = os.fspath(workdir)
        self._tb = None
        if self.enabled:
            from tensorboardX import SummaryWriter

            os.makedirs(self.workdir, exist_ok=True)
            self._tb = SummaryWriter(os.path.join(self.workdir, "tensorboard"))
            self._jsonl = open(os.path.join(self.workdir, METRICS_JSONL), "a")  # noqa: SIM115

    def write_scalars(self, step: int, scalars: Mapping[str, Any], split: str = "train") -> None:
        """Logs ``scalars`` (name -> number) at ``step`` under ``split/``."""
        if not self.enabled:
            return
        values = {k: _scalar(v) for k, v in scalars.items()}
        for name, value in values.items():
            if math.isfinite(value):
                self._tb.add_scalar(f"{split}/{name}", value, step)
        line = {"step": int(step), "split": split, "time": round(time.time(), 3)}
        line.update({k: (v if math.isfinite(v) else str(v)) for k, v in values.items()})
        self._jsonl.write(json.dumps(line) + "\n")
        self._jsonl.flush()

    def write_image(self, step: int, tag: str, image: np.ndarray) -> None:
        """Adds an (H, W, 3) image (uint8, or floats in [0, 1]; a 4th channel is dropped)."""
        if not self.enabled:
            return
        self._tb.add_image(tag, np.asarray(image)[..., :3], step, dataformats="HWC")

    def write_audio(self, step: int, tag: str, audio: np.ndarray,
                    sample_rate: int = SAMPLE_RATE) -> None:
        """Adds a mono float waveform (clipped to [-1, 1]) as a wav clip."""
        if not self.enabled:
            return
        audio = np.clip(np.asarray(audio, np.float32).reshape(-1), -1.0, 1.0)
        self._tb.add_audio(tag, audio, step, sample_rate=sample_rate)

    def flush(self) -> None:
        if self.enabled:
            self._tb.flush()
            self._jsonl.flush()

    def close(self) -> None:
        if self.enabled:
            self._tb.close()
            self._jsonl.close()
            self.enabled = False


def read_summaries(logdir: str | os.PathLike) -> list[tuple[int, Any]]:
    """(step, ``Summary.Value``) of every summary in the TensorBoard event files of
    ``logdir``, in file and write order; reads with tensorboardX's protos (no tensorboard)."""
    from tensorboardX.proto.event_pb2 import Event

    found = []
    for name in sorted(os.listdir(logdir)):
        if not name.startswith("events.out.tfevents"):
            continue
        with open(os.path.join(logdir, name), "rb") as f:
            data = f.read()
        pos = 0
        while pos + 12 <= len(data):  # records: length, its CRC, the event, its CRC
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = Event.FromString(data[pos + 12:pos + 12 + length])
            found.extend((int(event.step), v) for v in event.summary.value)
            pos += 12 + length + 4
    return found


def progress_bar(total: int, initial: int, description: str, enabled: bool = True):
    """A tqdm bar (steps, rate, ETA); disabled on processes other than 0."""
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        desc=description,
        unit="step",
        dynamic_ncols=True,
        disable=not enabled or jax.process_index() != 0,
        mininterval=2.0,
    )


def progress_postfix(metrics: dict[str, float], limit: int = 3) -> dict[str, str]:
    """The first ``limit`` metrics for a progress bar, keyed by their last path component
    (``filter/loss`` -> ``loss``) unless two of them would share it (then the full key)."""
    keys = list(metrics)[:limit]
    short = [k.rsplit("/", 1)[-1] for k in keys]
    return {(s if short.count(s) == 1 else k): f"{metrics[k]:.3g}"
            for k, s in zip(keys, short, strict=True)}


def spectrogram_panel(
    path: str | os.PathLike,
    rows: Sequence[Sequence[np.ndarray]],
    titles: Sequence[str],
    row_labels: Sequence[str] | None = None,
) -> np.ndarray:
    """Draws a grid of spectrograms (each (80, 32), mel x frames), saves it as a PNG at
    ``path`` and returns the image, (H, W, 3) uint8 (e.g. for ``MetricWriter.write_image``).

    ``rows[i][j]`` is drawn in row i, column j; ``titles`` name the columns (e.g. original,
    filtered, sampled male, sampled female).
    """
    import matplotlib.image
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n_rows, n_cols = len(rows), len(titles)
    fig = Figure(figsize=(2.6 * n_cols, 2.4 * n_rows), dpi=80)  # no pyplot: no global state
    canvas = FigureCanvasAgg(fig)
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for i, row in enumerate(rows):
        for j, spec in enumerate(row):
            ax = axes[i][j]
            ax.imshow(np.asarray(spec), origin="lower", aspect="auto", vmin=-1, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(titles[j], fontsize=9)
            if j == 0 and row_labels:
                ax.set_ylabel(row_labels[i], fontsize=8)
    fig.tight_layout()
    canvas.draw()
    image = np.array(canvas.buffer_rgba())[..., :3]
    with atomic_path(os.fspath(path)) as tmp:
        matplotlib.image.imsave(tmp, image, format="png")
    return image
