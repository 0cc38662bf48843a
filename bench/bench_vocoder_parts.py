"""The MelGAN vocoder stage's train step by part, JAX vs PyTorch, on the default device.

    python -m bench.bench_vocoder_parts [--batch-size B] [--repeats 10] [--only a,b]
        [--no-torch] [--profile DIR] [--profile-part step] [--out FILE]

Made for a GPU, where the vocoder stage is the one that misses its target (``bench_train``);
it runs anywhere (batch 128 on an accelerator, 16 on CPU unless ``--batch-size``). Parts,
each one jitted program (JAX) or the original modules (PyTorch on the same kind of device,
as ``bench_train``), timed in interleaved rounds (``bench.common.time_interleaved``),
median ms:

- ``step``: ``training.vocoder.vocoder_step`` (D update, then G update); ``step_d_strided`` with
  the discriminator's grouped convolutions as XLA's strided grouped convolution
  (``grouped_as_matmul=False``); ``step_g_direct`` with the generator's upsampling as XLA's
  transposed convolution (``upsample_implementation="direct"``).
- ``generator`` / ``generator_direct``: G forward and the gradient of its parameters
  (loss sum(G(s) * w), s the log-mel of the batch, w fixed noise).
- ``discriminator`` / ``discriminator_strided``: D forward and the gradients of its
  parameters and input (loss: the sum of every feature map's mean).
- ``log_mel``: the front-end's forward and input gradient.
- ``torch_step``, ``torch_generator``, ``torch_discriminator``: the same for PyTorch.

``--profile DIR`` then traces 3 calls of ``--profile-part`` with ``jax.profiler`` (DIR/jax)
and tabulates the time per HLO operation of that program (kernel time on an accelerator,
XLA:CPU's thread time on CPU) with the source operation XLA recorded for it (the optimised
HLO's ``op_name``), and PyTorch's profiler table of 3 ``torch_step`` calls
(DIR/torch_step.txt). Writes ``bench/results/vocoder_parts.json`` (atomically) and prints
markdown tables.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

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
JAX_PARTS = ("step", "step_d_strided", "step_g_direct", "generator", "generator_direct",
             "discriminator", "discriminator_strided", "log_mel")
TORCH_PARTS = ("torch_step", "torch_generator", "torch_discriminator")
PARTS = JAX_PARTS + TORCH_PARTS
GENERATOR_ARCH = {"direct": (("upsample_implementation", "direct"),)}
DISCRIMINATOR_ARCH = {"strided": (("grouped_as_matmul", False),)}
# (JAX part, PyTorch part) pairs of the comparison table
PAIRS = (("step", "torch_step"), ("generator", "torch_generator"),
         ("discriminator", "torch_discriminator"))


def _variant(part: str, prefix: str) -> str:
    return part[len(prefix) + 1:] if part.startswith(prefix + "_") else ""


def jax_part(part: str, batch: dict[str, jax.Array]) -> tuple[Callable[[], Any], Any]:
    """(call, compiled program) of a JAX part on ``batch``; each call waits for its result."""
    from pcmelgan_jax.audio import log_mel
    from pcmelgan_jax.runtime.compilation import compiler_options
    from pcmelgan_jax.training import state as st
    from pcmelgan_jax.training.vocoder import VocoderHyper

    def jit(fn: Callable) -> Any:  # the train steps' compiler options (XLA:CPU reads them)
        return jax.jit(fn, compiler_options=compiler_options("train"))

    key = jax.random.key(0, impl="rbg")
    audio = batch["audio"]
    if part.startswith("step"):  # bench_train's vocoder stage, with the part's variant
        from bench.bench_train import jax_step

        step, state, _ = jax_step(
            "vocoder", generator_arch=GENERATOR_ARCH.get(_variant(part, "step_g"), ()),
            discriminator_arch=DISCRIMINATOR_ARCH.get(_variant(part, "step_d"), ()))
        box = {"state": state}
        rng = jax.random.key(0)
        exe = step.lower(state, batch, rng).compile()

        def call():
            box["state"], metrics = exe(box["state"], batch, rng)
            return jax.block_until_ready(metrics)

        return call, exe
    if part.startswith("generator"):
        g_arch = GENERATOR_ARCH.get(_variant(part, "generator"), ())
        gen = VocoderHyper(generator_arch=g_arch).generator()
        params = st.init_variables("melgan_generator", dict(g_arch), key)["params"]
        mel = jax.jit(log_mel)(audio)
        shape = jax.eval_shape(lambda p: gen.apply({"params": p}, mel), params).shape
        noise = jax.random.normal(jax.random.key(1), shape)
        fn = jit(jax.grad(lambda p: jnp.sum(gen.apply({"params": p}, mel) * noise)))
        exe = fn.lower(params).compile()
        return (lambda: jax.block_until_ready(exe(params))), exe
    if part.startswith("discriminator"):
        d_arch = DISCRIMINATOR_ARCH.get(_variant(part, "discriminator"), ())
        disc = VocoderHyper(discriminator_arch=d_arch).discriminator()
        params = st.init_variables("melgan_discriminator", dict(d_arch), key)["params"]

        def loss(p, a):
            return sum(jnp.mean(f) for scale in disc.apply({"params": p}, a) for f in scale)

        exe = jit(jax.grad(loss, argnums=(0, 1))).lower(params, audio).compile()
        return (lambda: jax.block_until_ready(exe(params, audio))), exe
    if part == "log_mel":
        exe = jit(jax.grad(lambda a: jnp.sum(log_mel(a)))).lower(audio).compile()
        return (lambda: jax.block_until_ready(exe(audio))), exe
    raise ValueError(f"unknown part {part!r}")


def torch_parts(parts: tuple[str, ...], audio_np, device: str) -> dict[str, Callable[[], Any]]:
    """The PyTorch parts among ``parts`` (the original modules, train mode)."""
    import torch

    from bench import torch_reference as tr
    from bench import torch_train_reference as ref

    configure_torch(device)
    wait = torch_wait(device)
    audio = torch.from_numpy(audio_np).to(device)
    calls: dict[str, Callable[[], Any]] = {}
    if "torch_step" in parts:
        torch.manual_seed(0)
        step = ref.STEPS["vocoder"](device)
        labels = torch.zeros(audio.shape[0], dtype=torch.long, device=device)
        calls["torch_step"] = lambda: wait(step(audio, labels, labels))
    if "torch_generator" in parts:
        with torch.device(device):
            gen = tr.build_network("melgan_generator").train()
            with torch.no_grad():
                mel = tr.Audio2Mel().to(device)(audio)
            noise = torch.randn_like(gen(mel))

        def generator():
            gen.zero_grad(set_to_none=True)
            (gen(mel) * noise).sum().backward()
            return wait(None)

        calls["torch_generator"] = generator
    if "torch_discriminator" in parts:
        with torch.device(device):
            disc = tr.build_network("melgan_discriminator").train()
        x = audio[:, None].clone().requires_grad_(True)

        def discriminator():
            disc.zero_grad(set_to_none=True)
            x.grad = None
            sum(f.mean() for scale in disc(x) for f in scale).backward()
            return wait(None)

        calls["torch_discriminator"] = discriminator
    return calls


_HLO_OP = re.compile(r'^\s*(?:ROOT\s+)?%?([\w.\-]+) = .*?metadata=\{[^}]*?op_name="([^"]*)"')


def hlo_op_names(hlo_text: str) -> dict[str, str]:
    """{HLO instruction name: its source ``op_name``} from an optimised HLO module's text."""
    names = {}
    for line in hlo_text.splitlines():
        m = _HLO_OP.match(line)
        if m:
            names.setdefault(m.group(1), m.group(2))
    return names


def device_time_by_op(trace: dict, calls: int, op_names: dict[str, str], module: str = "",
                      top: int = 30) -> list[dict[str, Any]]:
    """Time (ms per call) and launches per call of each HLO op of ``module`` (any module if
    empty) in a perfetto trace, largest first: kernel time on the ``/device:`` processes where
    the trace has any (a GPU), else the host threads' time per op (XLA:CPU)."""
    events = trace.get("traceEvents", [])
    devices = {e["pid"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"
               and str(e.get("args", {}).get("name", "")).startswith("/device:")}

    def counted(e: dict) -> bool:
        a = e.get("args", {})
        return (e.get("ph") == "X" and bool(a.get("hlo_op"))
                and (not devices or e.get("pid") in devices)
                and (not module or a.get("hlo_module") == module))

    time_us: collections.Counter = collections.Counter()
    launches: collections.Counter = collections.Counter()
    kernels: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for e in filter(counted, events):
        op = e["args"]["hlo_op"]
        time_us[op] += e.get("dur", 0)
        launches[op] += 1
        kernels[op][e.get("name", "")[:80]] += e.get("dur", 0)
    return [
        {"hlo_op": op, "ms_per_call": round(us / calls / 1e3, 3),
         "launches_per_call": round(launches[op] / calls, 1),
         "op_name": op_names.get(op, ""), "top_kernel": kernels[op].most_common(1)[0][0]}
        for op, us in time_us.most_common(top)
    ]


def profile(calls: dict[str, Callable[[], Any]], programs: dict[str, Any], part: str,
            out_dir: Path) -> dict[str, Any]:
    """Traces 3 calls of ``part`` (and PyTorch's profiler over 3 ``torch_step`` calls)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"part": part, "dir": str(out_dir)}
    call = calls[part]
    call()
    trace_dir = out_dir / "jax"
    with jax.profiler.trace(str(trace_dir), create_perfetto_trace=True):
        for _ in range(3):
            call()
    traces = sorted(trace_dir.rglob("perfetto_trace.json.gz"))
    if traces:
        with gzip.open(traces[-1], "rt") as f:
            trace = json.load(f)
        hlo = programs[part].as_text()
        module = re.match(r"HloModule ([^\s,]+)", hlo)
        ops = device_time_by_op(trace, 3, hlo_op_names(hlo), module.group(1) if module else "")
        result.update(trace=str(traces[-1]), device_ops=ops)
    if "torch_step" in calls:
        import torch
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        cuda = torch.cuda.is_available() and jax.default_backend() == "gpu"
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        calls["torch_step"]()
        with torch_profile(activities=activities) as prof:
            for _ in range(3):
                calls["torch_step"]()
        sort = "device_time_total" if cuda else "cpu_time_total"
        table_path = out_dir / "torch_step.txt"
        table_path.write_text(prof.key_averages().table(sort_by=sort, row_limit=40))
        result["torch_table"] = str(table_path)
    return result


def markdown(results: dict[str, Any]) -> str:
    parts = results["parts"]
    lines = [
        f"batch {results['batch_size']}, {results['environment']['jax_device']}, median ms of "
        f"{results['repeats']} interleaved rounds",
        "",
        "| part | JAX ms | PyTorch ms | JAX speed-up |",
        "|---|---|---|---|",
    ]
    for name in JAX_PARTS:
        if name not in parts:
            continue
        pair = dict(PAIRS).get(name)
        ref = parts.get(pair, {}).get("median_ms") if pair else None
        jax_ms = parts[name]["median_ms"]
        ratio = f"{ref / jax_ms:.2f}x" if ref else "-"
        ref_ms = f"{ref:.2f}" if ref else "-"
        lines.append(f"| {name} | {jax_ms:.2f} | {ref_ms} | {ratio} |")
    paired = {t for j, t in PAIRS if j in parts}
    for name in TORCH_PARTS:
        if name in parts and name not in paired:
            lines.append(f"| {name} | - | {parts[name]['median_ms']:.2f} | - |")
    ops = results.get("profile", {}).get("device_ops")
    if ops:
        lines += ["", f"Time per HLO op of `{results['profile']['part']}` (ms per call; kernel "
                  "time on an accelerator, XLA:CPU's thread time on CPU):",
                  "", "| ms | launches | HLO op | source op | kernel |", "|---|---|---|---|---|"]
        for o in ops[:20]:
            lines.append(f"| {o['ms_per_call']} | {o['launches_per_call']} | {o['hlo_op']} | "
                         f"{o['op_name'][-90:]} | {o['top_kernel'][:60]} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=None,
                   help="default: 128 (the paper's) on an accelerator, 16 on CPU")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--only", default="", help=f"comma-separated subset of {','.join(PARTS)}")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch parts")
    p.add_argument("--torch-device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--profile", default="", help="directory for the profiles (none: skip)")
    p.add_argument("--profile-part", default="step", choices=JAX_PARTS)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "vocoder_parts.json"))
    args = p.parse_args(argv)
    parts = parse_subset(p, args.only, PARTS)
    if args.no_torch:
        parts = tuple(x for x in parts if x not in TORCH_PARTS)
    if args.profile and args.profile_part not in parts:
        p.error(f"--profile-part {args.profile_part} is not among the parts timed")
    if args.batch_size is None:
        args.batch_size = 16 if jax.default_backend() == "cpu" else 128
    if args.batch_size < 1 or args.repeats < 1:
        p.error("--batch-size and --repeats must be >= 1")

    from bench.bench_train import make_batch

    batch_np = make_batch(args.batch_size)
    batch = {k: jax.device_put(v) for k, v in batch_np.items()}
    calls: dict[str, Callable[[], Any]] = {}
    programs: dict[str, Any] = {}
    for part in (x for x in parts if x in JAX_PARTS):
        print(f"compiling {part} ...", file=sys.stderr, flush=True)
        calls[part], programs[part] = jax_part(part, batch)
    device = torch_device(args.torch_device)
    calls.update(torch_parts(parts, batch_np["audio"], device))
    timings = time_interleaved(calls, args.repeats, warmup=2)
    results: dict[str, Any] = {
        "environment": environment(),
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "torch_device": device if any(x in TORCH_PARTS for x in parts) else None,
        "parts": {k: {"median_ms": round(t["median_ms"], 3), "min_ms": round(t["min_ms"], 3),
                      "first_ms": round(t["first_ms"], 1), "all_ms": t["all_ms"]}
                  for k, t in timings.items()},
    }
    results["speedup"] = {j: round(results["parts"][t]["median_ms"]
                                   / results["parts"][j]["median_ms"], 3)
                          for j, t in PAIRS if j in calls and t in calls}
    if args.profile:
        results["profile"] = profile(calls, programs, args.profile_part, Path(args.profile))
    write_json_atomic(args.out, results)
    print(markdown(results))
    return results


if __name__ == "__main__":
    main()
