"""Number-for-number check against golden vectors of the original PyTorch modules.

A golden file ``NAME.npz`` holds ``param/<PyTorch key>`` (float16, used as float32),
``input/<name>`` and ``output/<name>``. ``check_parity_file`` converts the
parameters with ``torch_import.convert_state_dict``, runs the matching Flax module compiled
as the package's forward passes are (``compilation.jit(..., "inference")``: one program,
not an XLA compile per operation) and reports the error of every output against its
tolerance: max abs error <= 1e-4 for ``audio2mel`` and the U-Nets, <= 1e-3 x max |output|
for the larger networks.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pcmelgan_jax.runtime import compilation

ABS_TOLERANCE = 1e-4
REL_TOLERANCE = 1e-3

DEFAULT_PARITY_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "parity")


@dataclasses.dataclass
class Comparison:
    output: str
    max_abs_error: float
    tolerance: float

    @property
    def passed(self) -> bool:
        return bool(self.max_abs_error <= self.tolerance)


def parity_dir() -> str:
    """``$PCMELGAN_PARITY_DIR`` or ``../shared/parity`` relative to the repository root."""
    return os.path.abspath(os.environ.get("PCMELGAN_PARITY_DIR", DEFAULT_PARITY_DIR))


def parity_files(directory: str | None = None) -> list[str]:
    directory = directory or parity_dir()
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{directory}: parity directory not found")
    return sorted(os.path.join(directory, f) for f in os.listdir(directory) if f.endswith(".npz"))


def _relative(reference: np.ndarray) -> float:
    return REL_TOLERANCE * float(np.max(np.abs(reference)))


def _compare(name, got, want, tolerance) -> Comparison:
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    if got.shape != want.shape:
        raise ValueError(f"output {name}: shape {got.shape} != golden {want.shape}")
    return Comparison(name, float(np.max(np.abs(got - want))), tolerance)


def _state_dict(data) -> dict[str, np.ndarray]:
    return {k[len("param/") :]: data[k] for k in data.files if k.startswith("param/")}


@dataclasses.dataclass
class _Golden:
    """One golden file: its path, its name (less ``.npz``), the npz and its inputs and outputs."""

    path: str
    name: str
    data: Any
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]

    def load(self, network: str, **arch) -> tuple[Any, Any]:
        """(Flax module, variables converted from the file's PyTorch parameters)."""
        from pcmelgan_jax.interop.torch_import import convert_state_dict
        from pcmelgan_jax.models.registry import build_model

        variables = convert_state_dict(network, _state_dict(self.data), source=self.path, **arch)
        return build_model(network, **arch), variables


def _check_audio2mel(g: _Golden, match: re.Match) -> list[Comparison]:
    from pcmelgan_jax import audio

    log_mel = compilation.jit(audio.log_mel, "inference")(g.inputs["audio"])
    normalized, mean, std = compilation.jit(audio.normalize, "inference")(log_mel)
    got = {"log_mel": log_mel, "normalized": normalized, "mean": mean, "std": std}
    return [_compare(k, got[k], g.outputs[k], ABS_TOLERANCE) for k in sorted(g.outputs)]


def _check_unet(g: _Golden, match: re.Match) -> list[Comparison]:
    model, variables = g.load(g.name)
    x = jnp.asarray(g.inputs["x"]).transpose(0, 2, 3, 1)  # NCHW -> NHWC
    z = jnp.asarray(g.inputs["z"])
    cond = jnp.asarray(g.inputs["cond"], jnp.int32) if g.name == "unet_generator" else None
    apply = compilation.jit(model.apply, "inference", static_argnames=("train", "mutable"))
    train_out, _ = apply(variables, x, z, cond, train=True, mutable=("batch_stats",))
    eval_out = apply(variables, x, z, cond, train=False)
    got = {
        "train_mode": np.asarray(train_out).transpose(0, 3, 1, 2),
        "eval_mode": np.asarray(eval_out).transpose(0, 3, 1, 2),
    }
    return [_compare(k, got[k], g.outputs[k], ABS_TOLERANCE) for k in sorted(g.outputs)]


def _check_alexnet(g: _Golden, match: re.Match) -> list[Comparison]:
    model, variables = g.load("alexnet", num_classes=int(match[1]))
    apply = compilation.jit(model.apply, "inference")
    logits = apply(variables, jnp.asarray(g.inputs["x"]).transpose(0, 2, 3, 1))
    return [_compare("logits", logits, g.outputs["logits"], _relative(g.outputs["logits"]))]


def _check_audionet(g: _Golden, match: re.Match) -> list[Comparison]:
    model, variables = g.load("audionet", num_classes=int(match[1]))
    apply = compilation.jit(model.apply, "inference")
    logits, features = apply(variables, jnp.asarray(g.inputs["audio"])[:, 0])
    got = {"logits": logits, "features": np.asarray(features).transpose(0, 2, 1)}
    return [_compare(k, got[k], g.outputs[k], _relative(g.outputs[k])) for k in sorted(g.outputs)]


def _check_melgan_generator(g: _Golden, match: re.Match) -> list[Comparison]:
    from pcmelgan_jax.models.inference import generate, prepare_generator

    model, variables = g.load(g.name)
    apply = compilation.jit(model.apply, "inference")
    audio_out = apply(variables, jnp.asarray(g.inputs["log_mel"]))[:, None, :]
    # the inference path (anonymize's vocoder): the same function, fewer operations
    fast = compilation.jit(generate, "inference", static_argnums=0)(
        model, prepare_generator(model, variables), g.inputs["log_mel"])[:, None]
    tolerance = _relative(g.outputs["audio"])
    return [_compare("audio", audio_out, g.outputs["audio"], tolerance),
            _compare("audio (generate)", fast, g.outputs["audio"], tolerance)]


def _check_melgan_discriminator(g: _Golden, match: re.Match) -> list[Comparison]:
    model, variables = g.load("melgan_discriminator", num_scales=int(match[1]))
    apply = compilation.jit(model.apply, "inference")
    results = apply(variables, jnp.asarray(g.inputs["audio"])[:, 0])
    comparisons = []
    expected = set(g.outputs)
    for i, layers in enumerate(results):
        for j, layer in enumerate(layers):
            key = f"scale{i}/layer{j}"
            if key not in g.outputs:
                raise ValueError(f"{g.path}: the model produces {key}, the file lacks it")
            expected.discard(key)
            want = g.outputs[key]
            comparisons.append(
                _compare(key, np.asarray(layer).transpose(0, 2, 1), want, _relative(want))
            )
    if expected:
        raise ValueError(f"{g.path}: outputs the model does not produce: {sorted(expected)}")
    return comparisons


# golden file name pattern -> its check
_CHECKS = (
    (r"audio2mel", _check_audio2mel),
    (r"unet_filter|unet_generator", _check_unet),
    (r"alexnet_k(\d+)", _check_alexnet),
    (r"audionet_k(\d+)", _check_audionet),
    (r"melgan_generator", _check_melgan_generator),
    (r"melgan_discriminator_(\d+)scales", _check_melgan_discriminator),
)


def check_parity_file(path: str) -> list[Comparison]:
    """Runs the module that ``path`` (a golden ``.npz``) names and compares every output.

    Raises ``ValueError`` for a file name it does not recognise.
    """
    name = os.path.basename(path)[: -len(".npz")]
    data = np.load(path)
    inputs = {k[len("input/") :]: data[k] for k in data.files if k.startswith("input/")}
    outputs = {k[len("output/") :]: data[k] for k in data.files if k.startswith("output/")}
    golden = _Golden(path, name, data, inputs, outputs)
    for pattern, check in _CHECKS:
        if match := re.fullmatch(pattern, name):
            return check(golden, match)
    known = ", ".join(pattern for pattern, _ in _CHECKS)
    raise ValueError(f"{path}: unrecognised parity file name {name!r} (known: {known})")


def _run(args: argparse.Namespace) -> int:
    jax.config.update("jax_platforms", "cpu")
    files = parity_files(args.dir)
    if not files:
        print(f"no .npz files in {args.dir or parity_dir()}")
        return 1
    failed = 0
    print(f"{'file':34s} {'output':18s} {'max abs err':>12s} {'tolerance':>11s}  ok")
    for path in files:
        try:
            comparisons = check_parity_file(path)
        except Exception as e:  # report and continue with the other files
            failed += 1
            print(f"{os.path.basename(path):34s} ERROR: {e}")
            continue
        for c in comparisons:
            failed += not c.passed
            print(
                f"{os.path.basename(path):34s} {c.output:18s} {c.max_abs_error:12.3e} "
                f"{c.tolerance:11.3e}  {'yes' if c.passed else 'NO'}"
            )
    print("parity: all outputs match the original" if not failed else f"parity: {failed} failures")
    return 1 if failed else 0


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "parity",
        help="check every model against the original PyTorch golden vectors",
        description="Runs every network on the golden inputs in DIR and compares the outputs.",
    )
    parser.add_argument(
        "--dir",
        default=None,
        help="golden .npz folder (default: $PCMELGAN_PARITY_DIR or ../shared/parity)",
    )
    parser.set_defaults(func=_run)
