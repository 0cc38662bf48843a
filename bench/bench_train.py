"""Train-step throughput (examples/s) of each stage, JAX next to PyTorch, in the same run.

    .venv/bin/python -m bench.bench_train [--batch-sizes 16,128] [--repeats 3] [--only pcmelgan]

Stages: ``classifier`` (one spectrogram AlexNet, K=10, with the log-mel front-end),
``vocoder`` (MelGAN D then G update), ``pcmelgan`` (the four SPEC-6 updates plus the fixed
classifiers' monitoring). The JAX side runs the project's jitted steps
(``pcmelgan_jax.training.steps``) on the default device; the PyTorch side runs
``bench/torch_train_reference.py`` on CPU. Writes ``bench/results/train.json`` and prints a
markdown table. Timings exclude compilation (first call) and report the median of
``repeats`` calls.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import jax
import numpy as np

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


def jax_step(stage: str):
    """(step, state, extra args) of a stage, freshly initialised."""
    from pcmelgan_jax.training import state as st
    from pcmelgan_jax.training import steps

    key = jax.random.key(0, impl="rbg")

    def net(name, arch, tx, i):
        return st.network_state(st.init_variables(name, arch, jax.random.fold_in(key, i)), tx)

    if stage == "classifier":
        txs = {"spec_digit": st.adam(1e-4)}
        nets = {"spec_digit": net("alexnet", {"num_classes": 10}, txs["spec_digit"], 0)}
        return steps.jit_step(steps.classifier_step, txs=txs), st.new_train_state(nets), ()
    if stage == "vocoder":
        hp = steps.VocoderHyper()
        txs = {"generator": st.adam(1e-4), "discriminator": st.adam(1e-4)}
        nets = {
            "generator": net("melgan_generator", {}, txs["generator"], 0),
            "discriminator": net("melgan_discriminator", {}, txs["discriminator"], 1),
        }
        return steps.jit_step(steps.vocoder_step, hp=hp, txs=txs), st.new_train_state(nets), ()
    hp = steps.PCMelGANHyper()
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
    return steps.jit_step(steps.pcmelgan_step, hp=hp, txs=txs), st.new_train_state(nets), (
        monitors,
    )


def time_jax(stage: str, b: int, repeats: int) -> dict:
    step, state, extra = jax_step(stage)
    batch = {k: jax.device_put(v) for k, v in make_batch(b).items()}
    rng = jax.random.key(0)
    t0 = time.perf_counter()
    state, metrics = step(state, batch, rng, *extra)
    jax.block_until_ready(metrics)
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        state, metrics = step(state, batch, rng, *extra)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {"first_s": round(first, 3), "median_s": round(med, 4),
            "all_s": [round(t, 4) for t in times], "examples_per_s": round(b / med, 2)}


def time_torch(stage: str, b: int, repeats: int) -> dict:
    import torch

    from bench import torch_train_reference as ref

    torch.manual_seed(0)
    step = ref.STEPS[stage]()
    batch = make_batch(b)
    audio = torch.from_numpy(batch["audio"])
    digit = torch.from_numpy(batch["digit"]).long()
    gender = torch.from_numpy(batch["gender"]).long()
    t0 = time.perf_counter()
    step(audio, digit, gender)
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step(audio, digit, gender)
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {"first_s": round(first, 3), "median_s": round(med, 4),
            "all_s": [round(t, 4) for t in times], "examples_per_s": round(b / med, 2)}


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
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "train.json"))
    args = p.parse_args(argv)
    if not args.no_torch:
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
    results = []
    for stage in args.only.split(","):
        for b in (int(x) for x in args.batch_sizes.split(",")):
            # few repeats for the heavy cases on CPU
            repeats = args.repeats if b <= 32 or stage == "classifier" else max(1, args.repeats - 1)
            row = {"stage": stage, "batch_size": b, "repeats": repeats}
            row["jax"] = time_jax(stage, b, repeats)
            if not args.no_torch:
                row["torch"] = time_torch(stage, b, repeats)
            print(json.dumps(row), flush=True)
            results.append(row)
    out = {
        "environment": {
            "platform": platform.platform(),
            "cores": os.cpu_count(),
            "jax": jax.__version__,
            "jax_device": str(jax.devices()[0]),
            "load_average": list(os.getloadavg()),
        },
        "note": "median per-step wall time after one compile/warm-up call; ex/s = batch / step",
        "results": results,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    print(markdown(results))


if __name__ == "__main__":
    main()
