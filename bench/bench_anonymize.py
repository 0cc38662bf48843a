"""Anonymisation real-time factor: JAX next to the PyTorch reference modules, same device.

    python bench/bench_anonymize.py [--seconds 60] [--clips 40] [--repeats 3] [--no-torch]
        [--torch-device auto|cpu|cuda] [--profile]

Both frameworks run the same pipeline (``pcmelgan_jax.anonymize``: reading, resampling,
50 %-overlap windows, log-mel crossfade, chunked vocoding, writing); only the networks differ:
the Flax modules (jitted) or the PyTorch reference modules of ``bench/torch_reference.py``
(``torch.inference_mode``) holding the same weights (``torch_import.export_state_dict``).
Weights are random (full-size networks: U-Net F and G, MelGAN ngf 32); speed does not depend
on them. Inputs: one long recording (16 kHz, resampled) and a folder of 1-s clips (8 kHz,
AudioMNIST-like). Rows:

- ``anonymize``: F + G + vocoder, the ``pcmelgan-jax anonymize`` path.
- ``vocoder (copy synthesis)``: the same path with analysis + vocoder only.
- ``vocoder network``: the MelGAN forward alone on a batch of one-window log-mels (JAX:
  ``Anonymizer.vocode``, ``melgan.generate`` in calls of at most 128 frames).

Real-time factor = seconds of audio per second of wall time (median of ``--repeats`` runs
after one untimed warm-up run that compiles). Writes ``bench/results/anonymize.json`` and
prints a markdown table; ``--profile`` adds the wall time of each stage of the JAX anonymize
pipeline (reading, U-Net batches, crossfade, chunking, vocoder, writing).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import configure_torch, environment, torch_device  # noqa: E402
from pcmelgan_jax import anonymize, streaming  # noqa: E402
from pcmelgan_jax.anonymize import Anonymizer  # noqa: E402
from pcmelgan_jax.models.registry import build_model, numpy_random_variables  # noqa: E402
from pcmelgan_jax.workdir import write_json_atomic  # noqa: E402

try:
    import torch
except ImportError:  # pragma: no cover
    torch = None

TARGET_RTF = 50.0


random_variables = numpy_random_variables


def jax_anonymizer(batch_size: int, vocoder_batch_size: int) -> Anonymizer:
    def pair(network: str, seed: int) -> tuple:
        return build_model(network), jax.tree.map(np.asarray, random_variables(network, seed))

    return Anonymizer(pair("unet_filter", 1), pair("unet_generator", 2),
                      pair("melgan_generator", 3), "", "", batch_size, vocoder_batch_size)


class TorchAnonymizer(Anonymizer):
    """The anonymisation pipeline on the PyTorch reference modules (same weights)."""

    def __init__(self, source: Anonymizer, copy_synthesis: bool = False, device: str = "cpu"):
        from bench import torch_reference as tr
        from pcmelgan_jax.interop.torch_import import export_state_dict

        # vocoder_thread off: PyTorch's OpenMP pool per calling thread would oversubscribe
        super().__init__(source.filter, source.generator, source.vocoder, "", "",
                         source.batch_size, source.vocoder_batch_size, vocoder_thread=False)
        self.copy_synthesis = copy_synthesis
        self.device = device

        def load(module, network, variables, strict=True):
            sd = {k: torch.from_numpy(np.asarray(v)) for k, v in
                  export_state_dict(network, variables).items()}
            module.load_state_dict(sd, strict=strict)
            return module.eval().to(device)

        self.t_filter = load(tr.UNet(False), "unet_filter", source.filter[1], strict=False)
        self.t_generator = load(tr.UNet(True), "unet_generator", source.generator[1])
        self.t_vocoder = load(tr.MelGANGenerator(), "melgan_generator", source.vocoder[1])
        self.audio2mel = tr.Audio2Mel().eval().to(device)
        self.normalize_mel = tr.normalize_mel

    def _tensor(self, x: np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x)).to(self.device)

    def transform_mels(self, windows, z1, z2, cond):
        with torch.inference_mode():
            s = self.audio2mel(self._tensor(windows))
            if self.copy_synthesis:
                return s.cpu().numpy()
            x, mean, std = self.normalize_mel(s)
            x = self.t_filter(x[:, None], self._tensor(z1), None)
            x = self.t_generator(x, self._tensor(z2), self._tensor(cond).long())
            return (x[:, 0] * 3 * std[:, None, None] + mean[:, None, None]).cpu().numpy()

    def vocode(self, mels, context: int = 0):
        with torch.inference_mode():
            audio = self.t_vocoder(self._tensor(mels))[:, 0].cpu().numpy()
        return audio[:, context * 256 : audio.shape[1] - context * 256]


def tone(seconds: float, sr: int, seed: int) -> np.ndarray:
    """Speech-like test signal: harmonics of a gliding f0 with an envelope, plus noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f0 = 120 + 60 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6))
    phase = 2 * np.pi * np.cumsum(f0) / sr
    x = sum(np.sin(k * phase) / k for k in range(1, 8)) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    return (0.2 * x + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def make_inputs(root: Path, seconds: float, clips: int) -> dict[str, tuple[Path, float]]:
    import soundfile as sf

    long_dir = root / "long"
    long_dir.mkdir()
    sf.write(long_dir / "recording.wav", tone(seconds, 16000, 0), 16000, subtype="PCM_16")
    clip_dir = root / "clips"
    clip_dir.mkdir()
    for i in range(clips):
        sf.write(clip_dir / f"{i % 10}_01_{i}.wav", tone(1.0, 8000, i + 1), 8000,
                 subtype="PCM_16")
    warm = root / "warm"
    warm.mkdir()
    sf.write(warm / "short.wav", tone(1.0, 8000, 99), 8000, subtype="PCM_16")
    sf.write(warm / "long.wav", tone(6.0, 16000, 98), 16000, subtype="PCM_16")
    return {"long": (long_dir, seconds), "clips": (clip_dir, float(clips)), "warm": (warm, 7.0)}


def time_pipeline(model: Anonymizer, inputs: dict, out_root: Path, repeats: int) -> dict:
    """Median wall time and RTF of anonymize_path over each input (after a warm-up run)."""
    anonymize.anonymize_path(inputs["warm"][0], out_root / "warm", model=model, overwrite=True,
                             progress=False)
    result = {}
    for name in ("long", "clips"):
        path, audio_seconds = inputs[name]
        walls = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            s = anonymize.anonymize_path(path, out_root / name, model=model, overwrite=True,
                                         progress=False)
            walls.append(time.perf_counter() - t0)
            assert not s["failed"], s["failed"]
        wall = statistics.median(walls)
        result[name] = {"audio_seconds": audio_seconds, "wall_seconds": wall,
                        "all_wall_seconds": [round(w, 3) for w in walls],
                        "rtf": audio_seconds / wall}
    return result


def time_vocoder_network(model: Anonymizer, batch: int, repeats: int,
                         torch_device: str | None) -> dict:
    """The MelGAN forward alone on (batch, 80, 32) log-mels."""
    mels = (np.random.default_rng(0).standard_normal((batch, 80, 32)) - 3).astype(np.float32)
    out = {}
    runners = {"jax": model.vocode}
    if torch_device:
        runners["torch"] = TorchAnonymizer(model, device=torch_device).vocode
    for name, fn in runners.items():
        fn(mels)
        walls = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn(mels)
            walls.append(time.perf_counter() - t0)
        wall = statistics.median(walls)
        seconds = batch * 8192 / 8000
        out[name] = {"audio_seconds": seconds, "wall_seconds": wall, "rtf": seconds / wall}
    return out


WORKER = " (worker thread)"

# (label, owner, attribute): the pipeline's stages, timed by wrapping these functions
PROFILE_STAGES = (
    ("read + resample", "audio", "load_audio"),
    ("U-Net batches (log-mel, F, G)", "Anonymizer", "transform_mels"),
    ("log-mel crossfade", "Job", "add_mel"),
    ("log-mel crossfade", "Job", "mel"),
    ("vocoder chunking", "streaming", "vocoder_chunks"),
    ("vocoder chunking", "streaming", "chunk_audio"),
    ("vocoder", "Anonymizer", "vocode"),
    ("write", "audio", "write_audio"),
)


@contextlib.contextmanager
def stage_timers(spent: dict[str, float]):
    """Wraps PROFILE_STAGES' functions to add their wall time (s) to ``spent[label]``; calls
    made off the main thread (the vocoder's worker) are labelled ``label (worker thread)``."""
    owners = {"audio": anonymize.audio_lib, "streaming": streaming,
              "Anonymizer": Anonymizer, "Job": streaming.Job}
    saved = []
    for label, owner_name, attr in PROFILE_STAGES:
        owner = owners[owner_name]
        original = owner.__dict__[attr] if isinstance(owner, type) else getattr(owner, attr)
        saved.append((owner, attr, original))

        def timed_call(*args, _f=original, _label=label, **kwargs):
            t0 = time.perf_counter()
            try:
                return _f(*args, **kwargs)
            finally:
                if threading.current_thread() is not threading.main_thread():
                    _label += WORKER
                spent[_label] = spent.get(_label, 0.0) + time.perf_counter() - t0

        setattr(owner, attr, timed_call)
    try:
        yield spent
    finally:
        for owner, attr, original in reversed(saved):
            setattr(owner, attr, original)


def profile_pipeline(model: Anonymizer, inputs: dict, out_root: Path, repeats: int) -> dict:
    """Wall time per stage of anonymize_path (ms per second of audio, median of ``repeats``
    runs after the warm-up run). The main thread's stages and ``other`` (the rest of its
    time: Python, job set-up, waiting for the vocoder) add up to ``total``; stages on the
    vocoder's worker thread run concurrently with them."""
    anonymize.anonymize_path(inputs["warm"][0], out_root / "warm", model=model, overwrite=True,
                             progress=False)
    result = {}
    for name in ("long", "clips"):
        path, audio_seconds = inputs[name]
        runs = []
        for _ in range(repeats):
            with stage_timers({}) as spent:
                t0 = time.perf_counter()
                anonymize.anonymize_path(path, out_root / name, model=model, overwrite=True,
                                         progress=False)
                total = time.perf_counter() - t0
            spent["other"] = total - sum(v for k, v in spent.items() if WORKER not in k)
            spent["total"] = total
            runs.append(spent)
        result[name] = {k: 1000 * statistics.median(r.get(k, 0.0) for r in runs) / audio_seconds
                        for k in dict.fromkeys(k for r in runs for k in r)}
    return result


def profile_markdown(results: dict[str, Any]) -> str:
    prof = results["profile"]
    labels = list(dict.fromkeys(label for label, _, _ in PROFILE_STAGES))
    seen = set(prof["long"]) | set(prof["clips"])
    stages = [k for k in labels if k in seen] + ["other", "total"]
    stages += [k + WORKER for k in labels if k + WORKER in seen]
    lines = [
        f"Per-stage wall time of the JAX anonymize pipeline (ms per second of audio; median of "
        f"{results['repeats']}; main-thread stages and other add up to total, worker-thread "
        f"stages overlap them):",
        "",
        f"| stage | {results['seconds']:.0f} s recording | {results['clips']} x 1 s clips |",
        "|---|---:|---:|",
    ]
    for k in stages:
        lines.append(f"| {k} | {prof['long'].get(k, 0.0):.1f} | {prof['clips'].get(k, 0.0):.1f} |")
    lines.append(f"| real-time factor | {1000 / prof['long']['total']:.1f} "
                 f"| {1000 / prof['clips']['total']:.1f} |")
    return "\n".join(lines)


def markdown(results: dict[str, Any]) -> str:
    env = results["environment"]
    lines = [
        f"Anonymisation real-time factor (audio seconds per wall second; higher is better), "
        f"JAX on {env['jax_device']}, PyTorch on {results.get('torch_device') or '-'}; "
        f"{env['cpu']}, {env['cores']} cores, load average at start / end "
        f"{env['load_average_start'][0]:.1f} / {env['load_average_end'][0]:.1f}; median of "
        f"{results['repeats']}; U-Net batch {results['batch_size']}, vocoder batch "
        f"{results['vocoder_batch_size']}; target {TARGET_RTF:.0f}x.",
        "",
        "| pipeline | input | JAX RTF | PyTorch RTF | JAX / PyTorch | JAX wall (s) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    labels = {"long": f"{results['seconds']:.0f} s recording, 16 kHz",
              "clips": f"{results['clips']} x 1 s clips, 8 kHz"}
    for pipe, label in (("anonymize", "anonymize (F + G + vocoder)"),
                        ("copy_synthesis", "vocoder (copy synthesis)")):
        for name in ("long", "clips"):
            j = results[pipe]["jax"][name]
            t = results[pipe].get("torch", {}).get(name)
            trtf = f"{t['rtf']:.1f}" if t else "-"
            ratio = f"{j['rtf'] / t['rtf']:.2f}" if t else "-"
            lines.append(f"| {label} | {labels[name]} | {j['rtf']:.1f} | {trtf} | {ratio} "
                         f"| {j['wall_seconds']:.2f} |")
    v = results["vocoder_network"]
    t = v.get("torch")
    lines.append(
        f"| vocoder network forward | batch {results['vocoder_network_batch']} x 8192 "
        f"| {v['jax']['rtf']:.1f} | {t['rtf']:.1f} | {v['jax']['rtf'] / t['rtf']:.2f} "
        f"| {v['jax']['wall_seconds']:.2f} |" if t else
        f"| vocoder network forward | batch {results['vocoder_network_batch']} x 8192 "
        f"| {v['jax']['rtf']:.1f} | - | - | {v['jax']['wall_seconds']:.2f} |"
    )
    return "\n".join(lines)


def run(seconds: float, clips: int, repeats: int, batch_size: int, vocoder_batch_size: int,
        use_torch: bool, torch_device_name: str = "auto", profile: bool = False
        ) -> dict[str, Any]:
    """Time every pipeline; PyTorch on ``torch_device_name`` (see ``bench.common``);
    ``profile``: also the per-stage profile of the JAX anonymize pipeline."""
    device = torch_device(torch_device_name) if use_torch and torch is not None else None
    if device:
        configure_torch(device)
    results: dict[str, Any] = {
        "environment": environment(), "seconds": seconds, "clips": clips, "repeats": repeats,
        "batch_size": batch_size, "vocoder_batch_size": vocoder_batch_size,
        "target_rtf": TARGET_RTF, "torch_device": device,
        "notes": "random full-size weights; same pipeline code for both frameworks; RTF = "
                 "audio seconds / wall seconds including reading, resampling and writing",
    }
    model = jax_anonymizer(batch_size, vocoder_batch_size)
    copy = dataclasses.replace(model, filter=None, generator=None)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        inputs = make_inputs(tmp, seconds, clips)
        for pipe, m in (("anonymize", model), ("copy_synthesis", copy)):
            results[pipe] = {}
            print(f"{pipe}: JAX ...", file=sys.stderr, flush=True)
            results[pipe]["jax"] = time_pipeline(m, inputs, tmp / f"out_{pipe}_jax", repeats)
            if device:
                print(f"{pipe}: PyTorch ...", file=sys.stderr, flush=True)
                tm = TorchAnonymizer(model, copy_synthesis=pipe == "copy_synthesis",
                                     device=device)
                results[pipe]["torch"] = time_pipeline(tm, inputs, tmp / f"out_{pipe}_t",
                                                       repeats)
        if profile:
            print("profile: JAX anonymize ...", file=sys.stderr, flush=True)
            results["profile"] = profile_pipeline(model, inputs, tmp / "out_profile", repeats)
    print("vocoder network ...", file=sys.stderr, flush=True)
    results["vocoder_network_batch"] = 16
    results["vocoder_network"] = time_vocoder_network(model, 16, repeats, device)
    results["environment"]["load_average_end"] = os.getloadavg()
    results["meets_target"] = {
        name: results["anonymize"]["jax"][name]["rtf"] >= TARGET_RTF for name in ("long", "clips")
    }
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the recording")
    parser.add_argument("--clips", type=int, default=40, help="number of 1-s clips")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8, help="windows per U-Net batch")
    parser.add_argument("--vocoder-batch-size", type=int, default=4)
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch columns")
    parser.add_argument("--torch-device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="auto: CUDA when JAX runs on a GPU, else CPU")
    parser.add_argument("--profile", action="store_true",
                        help="also time each stage of the JAX anonymize pipeline")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "anonymize.json"))
    args = parser.parse_args(argv)
    results = run(args.seconds, args.clips, args.repeats, args.batch_size,
                  args.vocoder_batch_size, not args.no_torch, args.torch_device, args.profile)
    write_json_atomic(args.out, results)
    print(markdown(results))
    if "profile" in results:
        print("\n" + profile_markdown(results))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    from pcmelgan_jax.runtime.host_memory import reexec_with_hugepages

    reexec_with_hugepages()  # glibc malloc's huge pages, as the entry points do
    main()
