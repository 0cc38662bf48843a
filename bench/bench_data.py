"""Input-pipeline throughput (examples/s) on this machine's CPU, train mode, batch 128.

    .venv/bin/python bench/bench_data.py [--data-dir DIR] [--out bench/results/data.json]
                                         [--step-examples-per-sec X]

Without ``--data-dir`` a synthetic corpus (``--speakers`` x 10 digits x ``--reps``) is written
and prepared in a temporary folder first. Configurations: no workers; reader threads; Grain
worker processes. The result is compared with what training consumes: by default the original
PyTorch PCMelGAN step rate (1.73 s per step at batch 16 = 9.25 examples/s, as reported),
or a measured JAX step rate given with ``--step-examples-per-sec``. The pipeline should deliver
at least 10x that.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time

ORIGINAL_STEP_EXAMPLES_PER_SEC = 16 / 1.73  # the original PyTorch step at batch 16
REQUIRED_RATIO = 10.0


def measure(data_dir: str, batch_size: int, batches: int, workers: int, threads: int) -> dict:
    """Examples/s over ``batches`` batches after 2 warm-up batches (which start the workers)."""
    from pcmelgan_jax.data.pipeline import make_dataset

    t_start = time.perf_counter()
    it = make_dataset(
        data_dir,
        "audio_mnist/all",
        "train",
        batch_size=batch_size,
        seed=0,
        worker_count=workers,
        worker_threads=threads,
    )
    for _ in range(2):
        next(it)
    startup = time.perf_counter() - t_start
    t0 = time.perf_counter()
    for _ in range(batches):
        batch = next(it)
        assert batch["audio"].shape == (batch_size, 8192)
    seconds = time.perf_counter() - t0
    it.close()
    return {
        "workers": workers,
        "threads": threads,
        "batch_size": batch_size,
        "batches": batches,
        "seconds": round(seconds, 3),
        "startup_seconds": round(startup, 3),
        "examples_per_sec": round(batches * batch_size / seconds, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", help="TFDS data dir with audio_mnist/all prepared")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "data.json"))
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--batches", type=int, default=30)
    p.add_argument("--speakers", type=int, default=12)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--step-examples-per-sec", type=float, default=None)
    args = p.parse_args(argv)

    tmp = None
    data_dir = args.data_dir
    corpus_info = None
    if data_dir is None:
        from pcmelgan_jax.data.prepare import prepare
        from pcmelgan_jax.data.synth import synthesize_corpus

        tmp = tempfile.TemporaryDirectory(prefix="bench_data_")
        corpus = synthesize_corpus(os.path.join(tmp.name, "corpus"), args.speakers, args.reps)
        data_dir = os.path.join(tmp.name, "tfds")
        report = prepare(corpus["out_dir"], data_dir, "all")
        corpus_info = {
            "synthetic": True,
            "files": corpus["files"],
            "train_examples": report["splits"]["train"]["num_examples"],
            "synth_seconds": corpus["wall_seconds"],
            "prepare_seconds": report["seconds"],
        }
    results = [
        measure(data_dir, args.batch_size, args.batches, workers, threads)
        for workers, threads in ((0, 0), (0, 2), (2, 0))
    ]
    consumer = args.step_examples_per_sec or ORIGINAL_STEP_EXAMPLES_PER_SEC
    source = (
        "measured (--step-examples-per-sec)"
        if args.step_examples_per_sec
        else "original PyTorch PCMelGAN step: 1.73 s at batch 16"
    )
    for r in results:
        r["ratio_to_step"] = round(r["examples_per_sec"] / consumer, 1)
        r["meets_10x"] = r["ratio_to_step"] >= REQUIRED_RATIO
    out = {
        "benchmark": "input pipeline, train mode",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "data": corpus_info or {"data_dir": data_dir},
        "step_examples_per_sec": round(consumer, 2),
        "step_source": source,
        "results": results,
    }
    from pcmelgan_jax.workdir import write_json_atomic

    write_json_atomic(args.out, out, indent=1)
    print(f"training consumes {consumer:.2f} examples/s ({source})")
    print(f"{'workers':>7} {'threads':>7} {'examples/s':>11} {'x step':>7} {'startup s':>9}")
    for r in results:
        print(
            f"{r['workers']:>7} {r['threads']:>7} {r['examples_per_sec']:>11.1f} "
            f"{r['ratio_to_step']:>7.1f} {r['startup_seconds']:>9.2f}"
        )
    print(f"wrote {args.out}")
    if tmp is not None:
        tmp.cleanup()
    return 0 if all(r["meets_10x"] for r in results) else 1


if __name__ == "__main__":
    from pcmelgan_jax.runtime.host_memory import reexec_with_hugepages

    reexec_with_hugepages()  # glibc malloc's huge pages, as the entry points do
    sys.exit(main())
