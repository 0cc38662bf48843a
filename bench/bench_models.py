"""Forward and train-step time of every network, JAX/Flax vs the original PyTorch, on CPU.

Per network (UNet filter, UNet generator, AlexNet K=2, AudioNet K=10, MelGAN generator,
MelGAN discriminator with 3 scales), at one batch size:

- forward: evaluation mode (running BatchNorm statistics, no dropout); JAX jitted, PyTorch
  under ``torch.inference_mode``;
- train step: forward in training mode + loss + backward + Adam(1e-4, betas 0.5/0.9); JAX
  one jitted function with the state donated, PyTorch ``torch.optim.Adam``.
  The JAX forward and train step are compiled with the package's options for forward passes
  and train steps (``pcmelgan_jax.runtime.compilation``).

Losses (the same on both sides): mean squared error to a random target for the U-Nets and the
MelGAN generator, cross-entropy for the classifiers, the hinge loss on real audio summed over
scales for the discriminator. Each call is waited for (``jax.block_until_ready``).

Each network's JAX and PyTorch sides run in two worker processes of their own
(``--isolation process``, the default), which time blocks of calls in ``--rounds`` rounds:
in each round every side makes ``--warmup`` untimed calls and then ``--repeats`` timed rounds
of its forward and train step, back to back, while the other side's process waits. The
sides' order alternates from round to round, so both see the background load of the whole
run (the load average is recorded). Medians and minima are over every timed call of every
round; the per-round medians and ratios are kept. ``--isolation shared`` times both sides in
this process, call by call in interleaved rounds; that penalises JAX, whose step right
after a PyTorch step is slower (docs/measurements.md). Each side timed in steady state on
its own, the other idle, is how the networks are used; a block's untimed calls also take the
first, slower call after the other side's block.

A second group ("upsampling") times the MelGAN upsampling layers forward+backward three ways:
a naive Flax ``nn.ConvTranspose`` (PyTorch-equivalent padding, weight norm per input channel),
the models' ``ConvTranspose1d(implementation="direct")`` and its polyphase form, next to
PyTorch's ``ConvTranspose1d``; and the whole MelGAN generator train step with the direct form.
A third ("grouped_conv") times the discriminator's grouped convolutions (kernel 41, stride 4,
4 input channels per group) as XLA's strided grouped convs vs the model's form
(``kernels_1d.grouped_conv1d``) vs PyTorch's ``Conv1d``. Both layer groups call their
implementations in this process, in interleaved rounds.

Usage::

    .venv/bin/python -m bench.bench_models [--batch-size 16] [--repeats 5] [--rounds 3]
        [--isolation process|shared] [--only NAME,...] [--out bench/results/models.json]

torch is optional: without it only the JAX columns are filled.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bench.common import NETWORK_LABELS, environment, parse_subset, time_interleaved
from pcmelgan_jax.runtime.compilation import compiler_options
from pcmelgan_jax.runtime.host_memory import inherited_by_children
from pcmelgan_jax.workdir import write_json_atomic

try:
    import torch
except ImportError:  # torch is optional
    torch = None

NETWORKS = (
    "unet_filter",
    "unet_generator",
    "alexnet",
    "audionet",
    "melgan_generator",
    "melgan_discriminator",
)
GROUPS = (*NETWORKS, "upsampling", "grouped_conv")
KINDS = ("forward", "train_step")
ISOLATIONS = ("process", "shared")
LR = 1e-4
BETAS = (0.5, 0.9)
# MelGAN upsampling layers: (in channels, out channels, ratio, input length) at 32 mel frames.
UPSAMPLE_LAYERS = ((512, 256, 8, 32), (256, 128, 8, 256), (128, 64, 2, 2048), (64, 32, 2, 4096))
# MelGAN discriminator grouped layers at scale 1 (kernel 41, stride 4, pad 20, groups in // 4):
# (in channels, out channels, input length).
GROUPED_LAYERS = ((16, 64, 8192), (64, 256, 2048), (256, 1024, 512), (1024, 1024, 128))
ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------
# Inputs (shared by both frameworks)
# --------------------------------------------------------------------------------------------


def make_inputs(name: str, batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Benchmark inputs, without channel axes.

    x, target (U-Nets) (B, 80, 32) in [-1, 1]; z (B, 10); cond (B,) int32; label (B,) int32;
    mel (B, 80, 32) log10 mel; audio (B, 8192) in [-1, 1]; target (generator) (B, 8192).
    """
    rng = np.random.default_rng(seed)
    b = batch_size
    uniform = lambda *shape: rng.uniform(-1, 1, shape).astype(np.float32)
    if name.startswith("unet"):
        return {
            "x": uniform(b, 80, 32),
            "z": rng.standard_normal((b, 10)).astype(np.float32),
            "cond": rng.integers(0, 2, b).astype(np.int32),
            "target": uniform(b, 80, 32),
        }
    if name == "alexnet":
        return {"x": uniform(b, 80, 32), "label": rng.integers(0, 2, b).astype(np.int32)}
    if name == "audionet":
        return {"audio": uniform(b, 8192), "label": rng.integers(0, 10, b).astype(np.int32)}
    if name == "melgan_generator":
        mel = (rng.standard_normal((b, 80, 32)) - 2.0).astype(np.float32)
        return {"mel": mel, "target": uniform(b, 8192)}
    if name == "melgan_discriminator":
        return {"audio": uniform(b, 8192)}
    raise KeyError(name)


def _strip(timings: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Drops the 'last' return values (not JSON)."""
    return {k: {f: v for f, v in t.items() if f != "last"} for k, t in timings.items()}


# --------------------------------------------------------------------------------------------
# JAX side
# --------------------------------------------------------------------------------------------


def _jax_model(name: str, **kwargs: Any):
    from pcmelgan_jax import models

    if name == "unet_filter":
        return models.UNet(conditional=False)
    if name == "unet_generator":
        return models.UNet(conditional=True)
    if name == "alexnet":
        return models.AlexNet(num_classes=2)
    if name == "audionet":
        return models.AudioNet(num_classes=10)
    if name == "melgan_generator":
        return models.MelGANGenerator(**kwargs)
    if name == "melgan_discriminator":
        return models.MelGANDiscriminator(num_scales=3)
    raise KeyError(name)


def _jax_apply(
    name: str, model, variables: dict, inp: dict[str, jax.Array], train: bool, rng: jax.Array
) -> tuple[Any, Any]:
    """Runs the model; returns (output, new batch_stats or None)."""
    if name.startswith("unet"):
        cond = inp["cond"] if model.conditional else None
        args = (inp["x"][..., None], inp["z"], cond)
        if train:
            out, updates = model.apply(variables, *args, train=True, mutable=["batch_stats"])
            return out[..., 0], updates["batch_stats"]
        return model.apply(variables, *args, train=False)[..., 0], variables.get("batch_stats")
    if name in ("alexnet", "audionet"):
        x = inp["x"][..., None] if name == "alexnet" else inp["audio"]
        rngs = {"dropout": rng} if train else None
        return model.apply(variables, x, train=train, rngs=rngs), None
    if name == "melgan_generator":
        return model.apply(variables, inp["mel"]), None
    if name == "melgan_discriminator":
        return model.apply(variables, inp["audio"]), None
    raise KeyError(name)


def _jax_loss(name: str, out: Any, inp: dict[str, jax.Array]) -> jax.Array:
    if name.startswith("unet") or name == "melgan_generator":
        return jnp.mean(jnp.square(out - inp["target"]))
    if name in ("alexnet", "audionet"):
        logits = out if name == "alexnet" else out[0]
        return optax.softmax_cross_entropy_with_integer_labels(logits, inp["label"]).mean()
    if name == "melgan_discriminator":
        return sum(jnp.mean(jax.nn.relu(1.0 - scale[-1])) for scale in out)
    raise KeyError(name)


def _init_args(name: str, inp: dict[str, jax.Array]) -> tuple:
    if name.startswith("unet"):
        return (inp["x"][..., None], inp["z"], inp["cond"] if name == "unet_generator" else None)
    if name == "alexnet":
        return (inp["x"][..., None],)
    if name in ("audionet", "melgan_discriminator"):
        return (inp["audio"],)
    return (inp["mel"],)


def prepare_jax(name: str, inputs: dict[str, np.ndarray], seed: int = 0, **kw: Any) -> dict:
    """Builds one JAX network; returns {'params': count, 'forward': call, 'train_step': call}.

    'forward' runs the jitted evaluation-mode forward; 'train_step' one jitted, donated Adam
    step and returns the loss. Both wait for their results. ``kw`` goes to the model.
    """
    model = _jax_model(name, **kw)
    inp = {k: jnp.asarray(v) for k, v in inputs.items()}
    init_kw = {"train": False} if name.startswith("unet") or name in ("alexnet", "audionet") else {}
    init_args = _init_args(name, inp)
    variables = jax.jit(lambda key: model.init(key, *init_args, **init_kw))(jax.random.key(seed))
    variables = jax.tree.map(jnp.asarray, dict(variables))
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables["params"]))

    fwd = jax.jit(
        lambda v, i: _jax_apply(name, model, v, i, False, jax.random.key(0))[0],
        compiler_options=compiler_options("inference"),
    )

    tx = optax.adam(LR, b1=BETAS[0], b2=BETAS[1])

    def loss_fn(params, batch_stats, i, rng):
        v = {"params": params}
        if batch_stats is not None:
            v["batch_stats"] = batch_stats
        out, new_stats = _jax_apply(name, model, v, i, True, rng)
        return _jax_loss(name, out, i), new_stats

    def step(state, i):
        params, batch_stats, opt_state, rng = state
        rng, sub = jax.random.split(rng)
        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, batch_stats, i, sub
        )
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return (params, batch_stats, opt_state, rng), loss

    train_step = jax.jit(step, donate_argnums=0, compiler_options=compiler_options("train"))
    eval_variables = jax.tree.map(jnp.copy, variables)  # the train state's buffers are donated
    params = variables["params"]
    state = [(params, variables.get("batch_stats"), tx.init(params), jax.random.key(seed + 1))]

    def call_train():
        state[0], loss = train_step(state[0], inp)
        return jax.block_until_ready((state[0], loss))[1]

    return {
        "params": n_params,
        "forward": lambda: jax.block_until_ready(fwd(eval_variables, inp)),
        "train_step": call_train,
    }


# --------------------------------------------------------------------------------------------
# PyTorch side
# --------------------------------------------------------------------------------------------


def _torch_inputs(name: str, inputs: dict[str, np.ndarray]) -> dict[str, Any]:
    out = {}
    for k, v in inputs.items():
        t = torch.from_numpy(v)
        if k in ("cond", "label"):
            t = t.long()
        elif k == "audio" or (k == "target" and name == "melgan_generator"):
            t = t[:, None]  # (B, 1, 8192)
        elif k in ("x", "target"):
            t = t[:, None]  # (B, 1, 80, 32)
        out[k] = t
    return out


def prepare_torch(name: str, inputs: dict[str, np.ndarray], seed: int = 0) -> dict:
    """Builds one PyTorch network twice (eval copy, train copy); returns like ``prepare_jax``."""
    from bench import torch_reference as tr

    model = tr.build_network(name, seed).eval()
    n_params = sum(p.numel() for p in model.parameters())
    inp = _torch_inputs(name, inputs)

    def call_forward():
        with torch.inference_mode():
            tr.forward(name, model, inp)

    step = tr.make_train_step(name, tr.build_network(name, seed), lr=LR)
    return {"params": n_params, "forward": call_forward, "train_step": lambda: step(inp)}


def _serve(conn: Any, name: str, side: str, batch_size: int) -> None:
    """A worker process's loop: builds one side ("jax" or "torch") of network ``name`` and
    sends {'params', 'pid'}; then for each received (repeats, warmup) times a block,
    ``time_interleaved`` over the forward and the train step, and sends its results (the
    train step's 'last' as the float 'final_loss'); None ends it. A failure is sent as
    {'error': traceback}."""
    try:
        if side == "torch":
            torch.set_num_threads(os.cpu_count() or 1)
        inputs = make_inputs(name, batch_size)
        prepared = prepare_jax(name, inputs) if side == "jax" else prepare_torch(name, inputs)
        conn.send({"params": prepared["params"], "pid": os.getpid()})
        while (request := conn.recv()) is not None:
            timings = time_interleaved({kind: prepared[kind] for kind in KINDS}, *request)
            loss = float(np.asarray(timings["train_step"]["last"]))
            conn.send({"final_loss": loss, **_strip(timings)})
    except Exception:
        conn.send({"error": traceback.format_exc()})


class SideProcess:
    """One side of one network in a worker process of its own (``_serve``); ``block(repeats,
    warmup)`` times a block of its calls there."""

    def __init__(self, name: str, side: str, batch_size: int):
        self.label = f"{side} worker for {name}"
        ctx = multiprocessing.get_context("spawn")  # a fresh interpreter, no forked threads
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(target=_serve, args=(child, name, side, batch_size),
                                    daemon=True)
        with inherited_by_children():  # the sides' allocator as in this process
            self._process.start()
        child.close()
        self.info = self._receive()

    def _receive(self) -> Any:
        try:
            message = self._conn.recv()
        except EOFError:
            self._process.join()
            raise RuntimeError(f"the {self.label} died (exit {self._process.exitcode})") from None
        if isinstance(message, dict) and "error" in message:
            raise RuntimeError(f"the {self.label} failed:\n{message['error']}")
        return message

    def block(self, repeats: int, warmup: int) -> dict[str, Any]:
        """``warmup`` untimed calls of each kind, then ``repeats`` interleaved timed rounds."""
        self._conn.send((repeats, warmup))
        return self._receive()

    def close(self) -> None:
        """Stops the worker, or ends it if it does not stop within a minute."""
        try:
            self._conn.send(None)
        except OSError:
            pass
        self._process.join(60)
        self._process.kill()


def combine_rounds(blocks: list[dict[str, Any]]) -> dict[str, Any]:
    """One side's blocks, one per round, as one entry: per kind the median and minimum over
    every timed call of every block, the calls, the per-block medians, and the first block's
    first (compiling) call; the last block's loss."""
    entry: dict[str, Any] = {"final_loss": blocks[-1]["final_loss"]}
    for kind in KINDS:
        calls = [t for b in blocks for t in b[kind]["all_ms"]]
        entry[kind] = {
            "first_ms": blocks[0][kind]["first_ms"],
            "median_ms": statistics.median(calls),
            "min_ms": min(calls),
            "all_ms": calls,
            "round_medians_ms": [b[kind]["median_ms"] for b in blocks],
        }
    return entry


def bench_network(
    name: str,
    batch_size: int,
    repeats: int,
    warmup: int,
    use_torch: bool = True,
    isolation: str = "process",
    rounds: int = 3,
) -> dict[str, Any]:
    """Forward and train-step timings of one network, JAX and (optionally) PyTorch.

    ``isolation="process"``: each side in a worker process of its own (``SideProcess``);
    ``rounds`` rounds, in each of which every side times a block (``warmup`` untimed calls,
    then ``repeats`` timed ones), the sides' order alternating from round to round.
    ``"shared"``: both sides in this process, call by call in ``repeats`` interleaved rounds
    (``rounds`` unused). Ratios are JAX / PyTorch medians, with processes also per round.
    """
    if isolation not in ISOLATIONS:
        raise ValueError(f"isolation must be one of {ISOLATIONS}, not {isolation!r}")
    sides = ("jax", "torch") if use_torch and torch is not None else ("jax",)
    entry: dict[str, Any] = {"isolation": isolation}
    if isolation == "process":
        workers: dict[str, SideProcess] = {}
        try:
            for side in sides:
                workers[side] = SideProcess(name, side, batch_size)
            blocks: dict[str, list[dict]] = {side: [] for side in sides}
            order = []
            for k in range(rounds):
                for side in sides if k % 2 == 0 else sides[::-1]:
                    blocks[side].append(workers[side].block(repeats, warmup))
                    order.append(side)
        finally:
            for w in workers.values():
                w.close()
        entry["order"] = order
        for side in sides:
            entry[side] = {"params": workers[side].info["params"],
                           "pid": workers[side].info["pid"], **combine_rounds(blocks[side])}
    else:
        inputs = make_inputs(name, batch_size)
        prepared = {"jax": prepare_jax(name, inputs)}
        if "torch" in sides:
            prepared["torch"] = prepare_torch(name, inputs)
        calls = {f"{side}/{kind}": p[kind] for side, p in prepared.items() for kind in KINDS}
        timings = time_interleaved(calls, repeats, warmup)
        for side, p in prepared.items():
            loss = float(np.asarray(timings[f"{side}/train_step"]["last"]))
            entry[side] = {"params": p["params"], "final_loss": loss}
            for kind in KINDS:
                entry[side][kind] = _strip({kind: timings[f"{side}/{kind}"]})[kind]
    if "torch" in entry:
        for kind in KINDS:
            entry[f"ratio_{kind}"] = (
                entry["jax"][kind]["median_ms"] / entry["torch"][kind]["median_ms"]
            )
        if isolation == "process":
            entry["ratio_train_step_rounds"] = [
                j / t for j, t in zip(entry["jax"]["train_step"]["round_medians_ms"],
                                      entry["torch"]["train_step"]["round_medians_ms"],
                                      strict=True)
            ]
    return entry


# --------------------------------------------------------------------------------------------
# Upsampling micro-benchmark
# --------------------------------------------------------------------------------------------


def naive_conv_transpose(features: int, stride: int):
    """Weight-normed Flax ``nn.ConvTranspose`` equal to PyTorch's MelGAN ConvTranspose1d.

    kernel 2r, stride r, padding r//2 + r%2, output_padding r%2; the Flax kernel is
    (k, out, in) = PyTorch weight (in, out, k) transposed, with ``transpose_kernel=True``;
    the weight-norm gain is per input channel (the kernel's last axis) as in PyTorch.
    (B, L, C_in) -> (B, L * r, features).
    """
    import flax.linen as nn

    k = 2 * stride
    p, op = stride // 2 + stride % 2, stride % 2
    conv = nn.ConvTranspose(
        features,
        (k,),
        strides=(stride,),
        padding=[(k - 1 - p, k - 1 - p + op)],
        transpose_kernel=True,
    )
    return nn.WeightNorm(conv, feature_axes=-1)


def _check_naive_against_torch() -> float | None:
    """Max |naive Flax - PyTorch| of one small weight-normed transposed conv (None w/o torch)."""
    if torch is None:
        return None
    worst = 0.0
    for r in (8, 2):
        layer = naive_conv_transpose(5, r)
        x = np.random.default_rng(0).standard_normal((2, 7, 6)).astype(np.float32)
        variables = layer.init(jax.random.key(0), jnp.asarray(x))
        params = variables["params"]
        kernel = np.asarray(params["layer_instance"]["kernel"])  # (k, out, in)
        scale = np.asarray(params["layer_instance/kernel/scale"])  # (in,)
        tc = torch.nn.ConvTranspose1d(
            6, 5, 2 * r, stride=r, padding=r // 2 + r % 2, output_padding=r % 2
        )
        with torch.no_grad():
            v = torch.from_numpy(kernel.transpose(2, 1, 0).copy())  # (in, out, k)
            g = torch.from_numpy(scale.copy())[:, None, None]
            tc.weight.copy_(g * v / v.norm(dim=(1, 2), keepdim=True))
            tc.bias.copy_(torch.from_numpy(np.array(params["layer_instance"]["bias"])))
            want = tc(torch.from_numpy(x.transpose(0, 2, 1))).numpy().transpose(0, 2, 1)
        got = np.asarray(layer.apply(variables, jnp.asarray(x)))
        worst = max(worst, float(np.max(np.abs(got - want))))
    return worst


def _nest(timings: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """{'impl/kind': t} -> {impl: {kind: t}} without the return values."""
    out: dict[str, dict[str, Any]] = {}
    for key, t in _strip(timings).items():
        impl, kind = key.split("/")
        out.setdefault(impl, {})[kind] = t
    return out


def torch_layer_calls(layer: Any, x: np.ndarray) -> dict[str, Callable[[], Any]]:
    """{"torch/forward", "torch/forward_backward"} timing calls of the PyTorch 1-d ``layer`` on
    the channels-last input ``x`` (B, T, C): the forward in inference mode, and the gradients
    of mean(layer(x)^2) with respect to the layer's parameters and x."""
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 2, 1), np.float32))
    xt.requires_grad_(True)

    def forward():
        with torch.inference_mode():
            return layer(xt)

    def forward_backward():
        layer.zero_grad(set_to_none=True)
        xt.grad = None
        torch.mean(torch.square(layer(xt))).backward()
        return xt.grad

    return {"torch/forward": forward, "torch/forward_backward": forward_backward}


def bench_upsampling(
    batch_size: int, repeats: int, warmup: int, use_torch: bool = True
) -> dict[str, Any]:
    """Forward and forward+backward (grads of params and input) of each MelGAN upsampling
    layer, naive Flax / models direct / models polyphase / PyTorch, and the whole generator's
    JAX train step with the direct vs the polyphase form."""
    from pcmelgan_jax.models import ConvTranspose1d

    rows = []
    for c_in, c_out, r, length in UPSAMPLE_LAYERS:
        x_np = np.random.default_rng(0).standard_normal((batch_size, length, c_in))
        x = jnp.asarray(x_np.astype(np.float32))
        impls = {
            "flax_conv_transpose": naive_conv_transpose(c_out, r),
            "direct": ConvTranspose1d(c_out, r, implementation="direct"),
            "polyphase": ConvTranspose1d(c_out, r, implementation="polyphase"),
        }
        calls: dict[str, Callable[[], Any]] = {}
        for impl, layer in impls.items():
            params = jax.jit(layer.init)(jax.random.key(0), x)

            def loss(p, xx, layer=layer):
                return jnp.mean(jnp.square(layer.apply(p, xx)))

            grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
            fwd = jax.jit(layer.apply)
            calls[f"{impl}/forward"] = lambda f=fwd, p=params, x=x: jax.block_until_ready(f(p, x))
            calls[f"{impl}/forward_backward"] = lambda g=grad, p=params, x=x: jax.block_until_ready(
                g(p, x)
            )
        if use_torch and torch is not None:
            from bench.torch_reference import weight_norm

            tc = weight_norm(
                torch.nn.ConvTranspose1d(
                    c_in, c_out, 2 * r, stride=r, padding=r // 2 + r % 2, output_padding=r % 2
                )
            )
            calls.update(torch_layer_calls(tc, x_np))
        row: dict[str, Any] = {"c_in": c_in, "c_out": c_out, "ratio": r, "length_in": length}
        row.update(_nest(time_interleaved(calls, repeats, warmup)))
        rows.append(row)
        print(f"  upsample {c_in}->{c_out} r={r} L={length}: done", file=sys.stderr)

    inputs = make_inputs("melgan_generator", batch_size)
    nets = {
        impl: prepare_jax("melgan_generator", inputs, upsample_implementation=impl)
        for impl in ("direct", "polyphase")
    }
    calls = {f"{impl}/{kind}": net[kind] for impl, net in nets.items() for kind in KINDS}
    generator = _nest(time_interleaved(calls, repeats, warmup))
    return {
        "layers": rows,
        "melgan_generator": generator,
        "naive_vs_torch_max_abs_err": _check_naive_against_torch(),
    }


# --------------------------------------------------------------------------------------------
# Grouped-convolution micro-benchmark (MelGAN discriminator)
# --------------------------------------------------------------------------------------------


def grouped_conv_lax(w: jax.Array, x: jax.Array, groups: int) -> jax.Array:
    """The discriminator's grouped conv as XLA sees it: kernel 41, stride 4, pad 20.

    x (B, T, C_in), w (41, C_in // groups, C_out) -> (B, T / 4, C_out).
    """
    return jax.lax.conv_general_dilated(
        x,
        w,
        (4,),
        [(20, 20)],
        dimension_numbers=("NWC", "WIO", "NWC"),
        feature_group_count=groups,
    )


def grouped_conv_model(w: jax.Array, x: jax.Array, groups: int) -> jax.Array:
    """The same grouped conv as the discriminator computes it (``kernels_1d.grouped_conv1d``: on
    CPU batched matmuls over the groups, elsewhere a stride-1 grouped conv of the polyphase
    input).

    x (B, T, C_in), w (41, C_in // groups, C_out) -> (B, T / 4, C_out).
    """
    from pcmelgan_jax.models.kernels_1d import grouped_conv1d

    return grouped_conv1d(x, w, 4, 20, groups)


def torch_grouped_conv(w: np.ndarray, groups: int) -> Any:
    """PyTorch's ``Conv1d(C_in, C_out, 41, stride 4, padding 20, groups)`` holding ``w``
    (41, C_in // groups, C_out), without bias: the reference for one grouped layer."""
    k, per_group, c_out = w.shape
    conv = torch.nn.Conv1d(per_group * groups, c_out, k, stride=4, padding=20, groups=groups,
                           bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(np.ascontiguousarray(w.transpose(2, 1, 0))))
    return conv


def bench_grouped_conv(
    batch_size: int, repeats: int, warmup: int, use_torch: bool = True
) -> dict[str, Any]:
    """Forward and forward+backward of each grouped discriminator layer: XLA's strided grouped
    conv, the model's form, and PyTorch's Conv1d when torch is installed. The JAX programs
    compile with the package's options (``compiler_options``: inference / train)."""
    rows = []
    for c_in, c_out, length in GROUPED_LAYERS:
        groups = c_in // 4
        rng = np.random.default_rng(0)
        x_np = rng.standard_normal((batch_size, length, c_in)).astype(np.float32)
        w_np = (0.05 * rng.standard_normal((41, 4, c_out))).astype(np.float32)
        x, w = jnp.asarray(x_np), jnp.asarray(w_np)
        row: dict[str, Any] = {"c_in": c_in, "c_out": c_out, "groups": groups, "length_in": length}
        outs = {}
        calls: dict[str, Callable[[], Any]] = {}
        for impl, fn in (("lax", grouped_conv_lax), ("model", grouped_conv_model)):
            fwd = jax.jit(lambda w, x, fn=fn, g=groups: fn(w, x, g),
                          compiler_options=compiler_options("inference"))
            grad = jax.jit(
                jax.grad(lambda w, x, fn=fn, g=groups: jnp.mean(jnp.square(fn(w, x, g))), (0, 1)),
                compiler_options=compiler_options("train"),
            )
            outs[impl] = np.asarray(fwd(w, x))
            calls[f"{impl}/forward"] = lambda f=fwd, a=(w, x): jax.block_until_ready(f(*a))
            calls[f"{impl}/forward_backward"] = lambda g=grad, a=(w, x): jax.block_until_ready(
                g(*a)
            )
        if torch is not None and use_torch:
            conv = torch_grouped_conv(w_np, groups)
            with torch.no_grad():
                xt = torch.from_numpy(np.ascontiguousarray(x_np.transpose(0, 2, 1)))
                outs["torch"] = conv(xt).numpy().transpose(0, 2, 1)
            calls.update(torch_layer_calls(conv, x_np))
        row.update(_nest(time_interleaved(calls, repeats, warmup)))
        row["max_abs_diff"] = float(np.max(np.abs(outs["lax"] - outs["model"])))
        if "torch" in outs:
            row["torch_max_abs_diff"] = float(np.max(np.abs(outs["torch"] - outs["model"])))
        rows.append(row)
        print(f"  grouped conv {c_in}->{c_out} g={groups}: done", file=sys.stderr)
    return {"layers": rows}


# --------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------


def _fmt(ms: float | None) -> str:
    if ms is None:
        return "-"
    return f"{ms:.1f}" if ms < 1000 else f"{ms:,.0f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None else f"{a / b:.2f}"


def markdown(results: dict[str, Any]) -> str:
    """The results as markdown tables (times in ms, median; ratio = JAX / PyTorch)."""
    if results.get("isolation") == "process":
        timing = (f"networks: median of {results['repeats']} calls x {results['rounds']} "
                  "rounds, each side in a worker process of its own timing blocks of calls, "
                  f"{results['warmup']} untimed per block")
    else:
        timing = (f"median of {results['repeats']} calls, both sides in one process "
                  f"(untimed warm-up calls {results['warmup']})")
    lines = [
        f"batch {results['batch_size']}, {timing}, {results['environment']['cpu']}, "
        f"{results['environment']['cores']} cores, load average at start / end "
        f"{results['environment']['load_average_start'][0]:.1f} / "
        f"{results['environment']['load_average_end'][0]:.1f}; times in ms; "
        "ratio = JAX / PyTorch",
        "",
        "| network | params | JAX fwd | torch fwd | ratio | JAX train step | torch train step"
        " | ratio | JAX compile fwd / train (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results["networks"].items():
        j, t = r["jax"], r.get("torch")
        jf, jt = j["forward"]["median_ms"], j["train_step"]["median_ms"]
        tf = t["forward"]["median_ms"] if t else None
        tt = t["train_step"]["median_ms"] if t else None
        compile_s = (
            f"{j['forward']['first_ms'] / 1e3:.1f} / {j['train_step']['first_ms'] / 1e3:.1f}"
        )
        lines.append(
            f"| {NETWORK_LABELS[name]} | {j['params']:,} | {_fmt(jf)} | {_fmt(tf)} "
            f"| {_ratio(jf, tf)} | {_fmt(jt)} | {_fmt(tt)} | {_ratio(jt, tt)} | {compile_s} |"
        )
    per_round = {name: r["ratio_train_step_rounds"] for name, r in results["networks"].items()
                 if "ratio_train_step_rounds" in r}
    if per_round:
        lines += ["", "Train-step ratio per round: " + "; ".join(
            f"{NETWORK_LABELS[name]} " + ", ".join(f"{x:.2f}" for x in ratios)
            for name, ratios in per_round.items())]
    up = results.get("upsampling")
    if up:
        lines += [
            "",
            "MelGAN upsampling layers (weight-normed ConvTranspose1d, kernel 2r, stride r), "
            "forward+backward (grads of params and input); forward in brackets:",
            "",
            "| layer (B, L, C_in) -> C_out | flax nn.ConvTranspose | models direct "
            "| models polyphase | torch | naive / polyphase |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for row in up["layers"]:
            cells = []
            for impl in ("flax_conv_transpose", "direct", "polyphase", "torch"):
                if impl in row:
                    fb = row[impl]["forward_backward"]["median_ms"]
                    fw = row[impl]["forward"]["median_ms"]
                    cells.append(f"{_fmt(fb)} ({_fmt(fw)})")
                else:
                    cells.append("-")
            naive = row["flax_conv_transpose"]["forward_backward"]["median_ms"]
            poly = row["polyphase"]["forward_backward"]["median_ms"]
            shape = f"({results['batch_size']}, {row['length_in']}, {row['c_in']})"
            lines.append(
                f"| r={row['ratio']} {shape} -> {row['c_out']} | "
                + " | ".join(cells)
                + f" | {naive / poly:.1f}x |"
            )
        gen = up["melgan_generator"]
        lines.append(
            "\nWhole MelGAN generator, JAX train step (forward): direct transposed conv "
            f"{_fmt(gen['direct']['train_step']['median_ms'])} "
            f"({_fmt(gen['direct']['forward']['median_ms'])}) ms vs polyphase "
            f"{_fmt(gen['polyphase']['train_step']['median_ms'])} "
            f"({_fmt(gen['polyphase']['forward']['median_ms'])}) ms."
        )
        err = up.get("naive_vs_torch_max_abs_err")
        if err is not None:
            lines.append(f"Naive Flax transposed conv vs PyTorch: max abs error {err:.2g}.")
    gc = results.get("grouped_conv")
    if gc:
        lines += [
            "",
            "MelGAN discriminator grouped convs (kernel 41, stride 4, groups C_in/4): "
            "XLA's strided grouped conv vs the model's (kernels_1d.grouped_conv1d) vs PyTorch's "
            "Conv1d; forward+backward (forward), ratio = model's form / PyTorch:",
            "",
            "| layer (B, T, C_in) -> C_out | groups | XLA grouped conv | model's form | torch "
            "| ratio |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for row in gc["layers"]:
            cells = [
                f"{_fmt(row[i]['forward_backward']['median_ms'])} "
                f"({_fmt(row[i]['forward']['median_ms'])})" if i in row else "-"
                for i in ("lax", "model", "torch")
            ]
            ratio = _ratio(row["model"]["forward_backward"]["median_ms"],
                           row.get("torch", {}).get("forward_backward", {}).get("median_ms"))
            shape = f"({results['batch_size']}, {row['length_in']}, {row['c_in']})"
            lines.append(
                f"| {shape} -> {row['c_out']} | {row['groups']} | " + " | ".join(cells)
                + f" | {ratio} |"
            )
    return "\n".join(lines)


def run(
    batch_size: int = 16,
    repeats: int = 5,
    warmup: int = 1,
    only: tuple[str, ...] = GROUPS,
    use_torch: bool = True,
    isolation: str = "process",
    rounds: int = 3,
) -> dict[str, Any]:
    """Runs the selected benchmarks; returns the JSON-ready results. ``isolation`` and
    ``rounds`` apply to the networks (``bench_network``); the layer groups run here."""
    if torch is not None and use_torch:
        torch.set_num_threads(os.cpu_count() or 1)
    results: dict[str, Any] = {
        "environment": environment(),
        "batch_size": batch_size,
        "repeats": repeats,
        "warmup": warmup,
        "isolation": isolation,
        "rounds": rounds,
        "losses": {
            "unet_*, melgan_generator": "mean squared error to a random target",
            "alexnet, audionet": "softmax cross-entropy, integer labels",
            "melgan_discriminator": "sum over scales of mean(relu(1 - score)) on real audio",
        },
        "optimizer": f"Adam lr {LR}, betas {BETAS}",
        "networks": {},
    }
    for name in NETWORKS:
        if name in only:
            print(f"{name} ...", file=sys.stderr)
            results["networks"][name] = bench_network(
                name, batch_size, repeats, warmup, use_torch, isolation, rounds
            )
    if "upsampling" in only:
        print("upsampling ...", file=sys.stderr)
        results["upsampling"] = bench_upsampling(batch_size, repeats, warmup, use_torch)
    if "grouped_conv" in only:
        print("grouped_conv ...", file=sys.stderr)
        results["grouped_conv"] = bench_grouped_conv(batch_size, repeats, warmup, use_torch)
    results["environment"]["load_average_end"] = os.getloadavg()
    return results


def main(argv: list[str] | None = None) -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--warmup", type=int, default=1, help="untimed calls (incl. the compiling one), >= 1"
    )
    parser.add_argument("--only", default="", help=f"comma-separated subset of {','.join(GROUPS)}")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch columns")
    parser.add_argument(
        "--isolation", choices=ISOLATIONS, default="process",
        help="networks: each side in a worker process of its own (default) or both in this one",
    )
    parser.add_argument("--rounds", type=int, default=3,
                        help="networks with --isolation process: blocks per side, alternating")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "models.json"))
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, not {args.rounds}")
    only = parse_subset(parser, args.only, GROUPS)
    if torch is None:
        print("torch is not installed: JAX timings only", file=sys.stderr)
    results = run(args.batch_size, args.repeats, max(args.warmup, 1), only, not args.no_torch,
                  args.isolation, args.rounds)
    write_json_atomic(args.out, results)
    print(markdown(results))
    print(f"\nwritten to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    from pcmelgan_jax.runtime.host_memory import reexec_with_hugepages

    reexec_with_hugepages()  # glibc malloc's huge pages, as the entry points do
    main()
