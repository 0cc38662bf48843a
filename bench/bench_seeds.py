"""N PCMelGAN seeds in one program (vmapped, or lax.map) vs N sequential single-seed steps.

    .venv/bin/python -m bench.bench_seeds [--num-seeds 4] [--batch-size 16[,128]]
        [--repeats 3] [--strategies vmap,map,unroll] [--discriminator-width 1.0]
        [--filter-only] [--out bench/results/seeds.json]

The one-program sides run ``seeds.jit_step(pcmelgan_step, "vmap" | "map")`` (what
``--config.num_seeds=N`` trains with; ``seeds_strategy=auto`` picks map on CPU) on (N, B)
batches; the sequential side runs the single-seed jitted
``pcmelgan_step`` N times, one per seed, each on its own state, batch and key. Both take Adam
with the paper's learning rates and the fixed monitor classifiers, on the default device.
Timings exclude compilation (first call) and are the median over ``repeats`` of one vmapped
step and of N sequential steps; examples/s = N * B / that time. Writes
``bench/results/seeds.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import jax
import numpy as np

from bench.common import environment, timed
from pcmelgan_jax.workdir import write_json_atomic

ROOT = Path(__file__).resolve().parents[1]


def make_batch(b: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A synthetic batch: ``audio`` (B, 8192) tones plus noise, labels and mask (B,)."""
    rs = np.random.RandomState(seed)
    t = np.arange(8192) / 8000.0
    audio = 0.5 * np.sin(2 * np.pi * rs.uniform(100, 1500, (b, 1)) * t) + 0.05 * rs.randn(b, 8192)
    return {
        "audio": audio.astype(np.float32),
        "digit": rs.randint(0, 10, b).astype(np.int32),
        "gender": rs.randint(0, 2, b).astype(np.int32),
        "speaker": np.zeros(b, np.int32),
        "mask": np.ones(b, np.float32),
    }


def setup(num_seeds: int, width: float, filter_only: bool) -> dict:
    """Hyper-parameters, optimisers, monitors and N freshly initialised single-seed states."""
    from pcmelgan_jax.training import pcmelgan
    from pcmelgan_jax.training import state as st

    hp = pcmelgan.PCMelGANHyper(discriminator_width=width, filter_only=filter_only)
    disc = {} if width == 1.0 else {"width": width}
    archs = {  # name: (network, arch, learning rate)
        "filter": ("unet_filter", {"noise_dim": hp.noise_dim}, 1e-4),
        "filter_discriminator": ("alexnet", {"num_classes": 2, **disc}, 4e-4),
    }
    if not filter_only:
        archs["generator"] = ("unet_generator", {"noise_dim": hp.noise_dim}, 1e-4)
        archs["generator_discriminator"] = ("alexnet", {"num_classes": 3, **disc}, 4e-4)
    txs = {name: st.adam(lr) for name, (_, _, lr) in archs.items()}

    def init(seed: int):
        key = jax.random.key(seed, impl="rbg")
        return st.new_train_state({
            name: st.network_state(
                st.init_variables(network, arch, jax.random.fold_in(key, i)), txs[name])
            for i, (name, (network, arch, _)) in enumerate(sorted(archs.items()))
        })

    key = jax.random.key(100, impl="rbg")
    monitors = {
        "spec_digit": st.init_variables("alexnet", {"num_classes": 10}, key)["params"],
        "spec_gender": st.init_variables("alexnet", {"num_classes": 2},
                                         jax.random.fold_in(key, 1))["params"],
    }
    return {"hp": hp, "txs": txs, "monitors": monitors,
            "states": [jax.device_get(init(s)) for s in range(num_seeds)]}


def time_seeds(s: dict, b: int, repeats: int, strategy: str = "vmap") -> dict:
    """One step over the N seeds in one program (``strategy`` "vmap" or "map"): batch
    (N, B, ...), keys (N,)."""
    from pcmelgan_jax.runtime import sharding
    from pcmelgan_jax.training import pcmelgan, seeds

    n = len(s["states"])
    step = seeds.jit_step(pcmelgan.pcmelgan_step, strategy, hp=s["hp"], txs=s["txs"])
    box = {"state": jax.device_put(seeds.stack_seeds(s["states"]))}
    batch = jax.device_put(sharding.stack_seed_batches([make_batch(b, i) for i in range(n)]))
    rngs = seeds.seed_keys(list(range(n)))
    monitors = jax.device_put(s["monitors"])

    def call():
        box["state"], metrics = step(box["state"], batch, rngs, monitors)
        return metrics

    return timed(call, repeats)


def time_sequential(s: dict, b: int, repeats: int) -> dict:
    """N single-seed steps one after another, each on its own state, batch and key."""
    from pcmelgan_jax.training import pcmelgan
    from pcmelgan_jax.training.seeds import jit_step

    n = len(s["states"])
    step = jit_step(pcmelgan.pcmelgan_step, hp=s["hp"], txs=s["txs"])
    states = [jax.device_put(x) for x in s["states"]]
    batches = [jax.device_put(make_batch(b, i)) for i in range(n)]
    rngs = [jax.random.key(i) for i in range(n)]
    monitors = jax.device_put(s["monitors"])

    def call():
        out = []
        for i in range(n):
            states[i], metrics = step(states[i], batches[i], rngs[i], monitors)
            out.append(metrics)
        return out

    return timed(call, repeats)


STRATEGIES = {"vmap": "vmapped", "map": "mapped", "unroll": "unrolled"}  # flag -> JSON key


def markdown(results: list[dict]) -> str:
    """The results as a markdown table (examples/s = N * B / median time)."""
    lines = [
        "| seeds | batch | strategy | ex/s | step (s) | sequential ex/s | speed-up |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        q = r["sequential"]
        for name, key in (("vmap", "vmapped"), ("lax.map", "mapped"), ("unroll", "unrolled")):
            v = r.get(key)
            if v is None:
                continue
            lines.append(
                f"| {r['num_seeds']} | {r['batch_size']} | {name} | {v['examples_per_s']} | "
                f"{v['median_s']} | {q['examples_per_s']} | "
                f"{v['examples_per_s'] / q['examples_per_s']:.2f}x |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num-seeds", default="4", help="N, or several: 2,4,8")
    p.add_argument("--batch-size", default="16", help="per seed, or several: 16,128")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--strategies", default="vmap,map,unroll",
                   help="one-program strategies to time (comma-separated subset)")
    p.add_argument("--discriminator-width", type=float, default=1.0,
                   help="AlexNet width of FD and GD (1.0 = the paper's networks)")
    p.add_argument("--filter-only", action="store_true", help="the Filter baseline (F, FD)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "seeds.json"))
    args = p.parse_args(argv)
    strategies = [x.strip() for x in args.strategies.split(",") if x.strip()]
    unknown = sorted(set(strategies) - set(STRATEGIES))
    if unknown or not strategies:
        p.error(f"--strategies: unknown {unknown}; choose from {', '.join(STRATEGIES)}")
    env = environment()
    results = []
    for n in (int(x) for x in args.num_seeds.split(",")):
        s = setup(n, args.discriminator_width, args.filter_only)
        for b in (int(x) for x in args.batch_size.split(",")):
            row = {"stage": "pcmelgan-filter" if args.filter_only else "pcmelgan",
                   "num_seeds": n, "batch_size": b, "repeats": args.repeats,
                   "discriminator_width": args.discriminator_width}
            for strategy in strategies:
                t = time_seeds(s, b, args.repeats, strategy=strategy)
                row[STRATEGIES[strategy]] = {"examples_per_s": round(n * b / t["median_s"], 2),
                                             **t}
            t = time_sequential(s, b, args.repeats)
            row["sequential"] = {"examples_per_s": round(n * b / t["median_s"], 2), **t}
            seq = row["sequential"]["examples_per_s"]
            for key, name in (("vmapped", "speedup"), ("mapped", "map_speedup"),
                              ("unrolled", "unroll_speedup")):
                if key in row:
                    row[name] = round(row[key]["examples_per_s"] / seq, 3)
            print(json.dumps(row), flush=True)
            results.append(row)
    out = {
        "device": env["jax_device"],
        "environment": {**env, "load_average_end": list(os.getloadavg())},
        "note": "median wall time of one step over N seeds in one program vs N sequential "
                "single-seed steps, after one compile/warm-up call; ex/s = N * batch / time",
        "results": results,
    }
    write_json_atomic(args.out, out, indent=1)
    print(markdown(results))


if __name__ == "__main__":
    from pcmelgan_jax.runtime.host_memory import reexec_with_hugepages

    reexec_with_hugepages()  # glibc malloc's huge pages, as the entry points do
    main()
