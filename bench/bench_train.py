"""Train-step throughput (examples/s) of each stage, JAX next to PyTorch, in the same run.

    .venv/bin/python -m bench.bench_train [--batch-sizes 16,128] [--repeats 3] [--only pcmelgan]

Stages: ``classifier`` (one spectrogram AlexNet, K=10, with the log-mel front-end),
``vocoder`` (MelGAN D then G update), ``pcmelgan`` (the four updates F, G, FD, GD plus the fixed
classifiers' monitoring). The JAX side runs the project's jitted steps
(``pcmelgan_jax.training``) on the default device; the PyTorch side runs
``bench/torch_train_reference.py`` on the same kind of device (``--torch-device auto``: CUDA
when JAX runs on a GPU, with cuDNN autotuning and TF32 like XLA's float32 default, else CPU).
``--dtype bfloat16`` runs the JAX pcmelgan networks in bfloat16 (float32 parameters).
Writes ``bench/results/train.json`` (atomically) and prints a markdown table. Timings
exclude compilation (first call) and report the median of ``repeats`` rounds in which the
JAX and PyTorch steps alternate, so that both see the same background load.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from bench.common import (
    configure_torch,
    environment,
    parse_subset,
    time_interleaved,
    torch_device,
    torch_wait,
)
from pcmelgan_jax.workdir import write_json_atomic

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("classifier", "vocoder", "pcmelgan")


def make_batch(b: int, seed: int = 0) -> dict[str, np.ndarray]:
    rs = np.random.RandomState(seed)
    t = np.arange(8192) / 8000.0
    audio = 0.5 * np.sin(2 * np.pi * rs.uniform(100, 1500, (b, 1)) * t) + 0.05 * rs.randn(b, 8192)
    return {
        "audio": audio.astype(np.float32),
        "digit": (np.arange(b) % 10).astype(np.int32),
        "gender": (np.arange(b) % 2).astype(np.int32),
        "speaker": np.zeros(b, np.int32),
        "mask": np.ones(b, np.float32),
    }


def jax_step(stage: str, dtype: str = "float32", generator_arch: tuple = (),
             discriminator_arch: tuple = ()):
    """(step, state, extra args) of a stage, freshly initialised; ``dtype``: the PCMelGAN
    networks' computation dtype (float32 parameters and optimizer state either way);
    ``generator_arch`` / ``discriminator_arch``: the vocoder's module settings, as
    ``VocoderHyper`` takes them (e.g. ``(("upsample_implementation", "direct"),)``)."""
    from pcmelgan_jax.training import state as st
    from pcmelgan_jax.training.classifiers import classifier_step
    from pcmelgan_jax.training.pcmelgan import PCMelGANHyper, pcmelgan_step
    from pcmelgan_jax.training.seeds import jit_step
    from pcmelgan_jax.training.vocoder import VocoderHyper, vocoder_step

    key = jax.random.key(0, impl="rbg")

    def net(name, arch, tx, i):
        return st.network_state(st.init_variables(name, arch, jax.random.fold_in(key, i)), tx)

    if stage == "classifier":
        txs = {"spec_digit": st.adam(1e-4)}
        nets = {"spec_digit": net("alexnet", {"num_classes": 10}, txs["spec_digit"], 0)}
        return jit_step(classifier_step, txs=txs), st.new_train_state(nets), ()
    if stage == "vocoder":
        hp = VocoderHyper(generator_arch=generator_arch,
                                discriminator_arch=discriminator_arch)
        txs = {"generator": st.adam(1e-4), "discriminator": st.adam(1e-4)}
        nets = {
            "generator": net("melgan_generator", dict(generator_arch), txs["generator"], 0),
            "discriminator": net("melgan_discriminator", dict(discriminator_arch),
                                 txs["discriminator"], 1),
        }
        return jit_step(vocoder_step, hp=hp, txs=txs), st.new_train_state(nets), ()
    hp = PCMelGANHyper(compute_dtype=dtype)
    lr = {"filter": 1e-4, "generator": 1e-4, "filter_discriminator": 4e-4,
          "generator_discriminator": 4e-4}
    txs = {k: st.adam(v) for k, v in lr.items()}
    arch = {
        "filter": ("unet_filter", {}),
        "generator": ("unet_generator", {}),
        "filter_discriminator": ("alexnet", {"num_classes": 2}),
        "generator_discriminator": ("alexnet", {"num_classes": 3}),
    }
    nets = {k: net(a, kw, txs[k], i) for i, (k, (a, kw)) in enumerate(arch.items())}
    monitors = {
        "spec_digit": st.init_variables("alexnet", {"num_classes": 10}, key)["params"],
        "spec_gender": st.init_variables("alexnet", {"num_classes": 2}, key)["params"],
    }
    return jit_step(pcmelgan_step, hp=hp, txs=txs), st.new_train_state(nets), (
        monitors,
    )


def jax_call(stage: str, b: int, dtype: str = "float32") -> Callable[[], Any]:
    """One JAX train step of ``stage`` on a synthetic batch of ``b`` per call, waited for."""
    step, state, extra = jax_step(stage, dtype)
    batch = {k: jax.device_put(v) for k, v in make_batch(b).items()}
    rng = jax.random.key(0)
    box = {"state": state}

    def call():
        box["state"], metrics = step(box["state"], batch, rng, *extra)
        return jax.block_until_ready(metrics)

    return call


def torch_call(stage: str, b: int, device: str = "cpu") -> Callable[[], Any]:
    """One step of the PyTorch reference of ``stage`` per call, waited for."""
    import torch

    from bench import torch_train_reference as ref

    torch.manual_seed(0)
    step = ref.STEPS[stage](device)
    batch = make_batch(b)
    audio = torch.from_numpy(batch["audio"]).to(device)
    digit = torch.from_numpy(batch["digit"]).long().to(device)
    gender = torch.from_numpy(batch["gender"]).long().to(device)
    wait = torch_wait(device)
    return lambda: wait(step(audio, digit, gender))


def time_stage(
    stage: str, b: int, repeats: int, dtype: str = "float32", device: str | None = None
) -> dict[str, dict]:
    """{"jax": ..., "torch": ... (when ``device``)}: per side the first (compiling) call's
    time, the median and every timed call (s) and examples/s, from ``repeats`` rounds that
    alternate the two sides (both see the same background load)."""
    calls = {"jax": jax_call(stage, b, dtype)}
    if device:
        calls["torch"] = torch_call(stage, b, device)
    timings = time_interleaved(calls, repeats, warmup=1)
    out = {}
    for side, t in timings.items():
        median = round(t["median_ms"] / 1e3, 5)
        out[side] = {
            "first_s": round(t["first_ms"] / 1e3, 3),
            "median_s": median,
            "all_s": [round(ms / 1e3, 5) for ms in t["all_ms"]],
            "examples_per_s": round(b / median, 2),
        }
    return out


def markdown(results: list[dict]) -> str:
    lines = [
        "| stage | batch | JAX ex/s | PyTorch ex/s | JAX / PyTorch | JAX step (s) "
        "| PyTorch step (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        j, t = r.get("jax"), r.get("torch")
        ratio = f"{j['examples_per_s'] / t['examples_per_s']:.2f}x" if j and t else "-"
        lines.append(
            f"| {r['stage']} | {r['batch_size']} | {j['examples_per_s'] if j else '-'} | "
            f"{t['examples_per_s'] if t else '-'} | {ratio} | {j['median_s'] if j else '-'} | "
            f"{t['median_s'] if t else '-'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-sizes", default="16,128")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--only", default=",".join(STAGES))
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--torch-device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="auto: CUDA when JAX runs on a GPU, else CPU")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                   help="computation dtype of the JAX pcmelgan stage")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "train.json"))
    args = p.parse_args(argv)
    stages = parse_subset(p, args.only, STAGES)
    device = None if args.no_torch else torch_device(args.torch_device)
    if device:
        configure_torch(device)
    env = environment()
    on_cpu = jax.default_backend() == "cpu"
    results = []
    for stage in stages:
        for b in (int(x) for x in args.batch_sizes.split(",")):
            # few repeats for the heavy cases on CPU
            repeats = args.repeats
            if on_cpu and b > 32 and stage != "classifier":
                repeats = max(1, repeats - 1)
            row = {"stage": stage, "batch_size": b, "repeats": repeats,
                   "dtype": args.dtype if stage == "pcmelgan" else "float32"}
            row.update(time_stage(stage, b, repeats, row["dtype"], device))
            if device:
                row["torch_device"] = device
            print(json.dumps(row), flush=True)
            results.append(row)
    out = {
        "environment": {**env, "load_average_end": list(os.getloadavg())},
        "note": "median per-step wall time after one compile/warm-up call; ex/s = batch / step"
                + ("; PyTorch on CUDA with cuDNN autotuning and TF32 (XLA's float32 default)"
                   if device == "cuda" else ""),
        "results": results,
    }
    write_json_atomic(args.out, out, indent=1)
    print(markdown(results))


if __name__ == "__main__":
    from pcmelgan_jax.runtime.host_memory import reexec_with_hugepages

    reexec_with_hugepages()  # glibc malloc's huge pages, as the entry points do
    main()
