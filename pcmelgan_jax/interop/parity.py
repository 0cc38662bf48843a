"""Number-for-number check against golden vectors of the original PyTorch modules.

A golden file ``NAME.npz`` holds ``param/<PyTorch key>`` (float16, used as float32),
``input/<name>`` and ``output/<name>`` (SPEC section 9). ``check_parity_file`` converts the
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


def check_parity_file(path: str) -> list[Comparison]:
    """Runs the module that ``path`` (a golden ``.npz``) names and compares every output.

    Raises ``ValueError`` for a file name it does not recognise.
    """
    from pcmelgan_jax import audio
    from pcmelgan_jax.interop.torch_import import convert_state_dict
    from pcmelgan_jax.models.inference import generate, prepare_generator
    from pcmelgan_jax.models.registry import build_model

    name = os.path.basename(path)[: -len(".npz")]
    data = np.load(path)
    inputs = {k[len("input/") :]: data[k] for k in data.files if k.startswith("input/")}
    outputs = {k[len("output/") :]: data[k] for k in data.files if k.startswith("output/")}

    if name == "audio2mel":
        log_mel = compilation.jit(audio.log_mel, "inference")(inputs["audio"])
        normalized, mean, std = compilation.jit(audio.normalize, "inference")(log_mel)
        got = {"log_mel": log_mel, "normalized": normalized, "mean": mean, "std": std}
        return [_compare(k, got[k], outputs[k], ABS_TOLERANCE) for k in sorted(outputs)]

    if name in ("unet_filter", "unet_generator"):
        variables = convert_state_dict(name, _state_dict(data), source=path)
        model = build_model(name)
        x = jnp.asarray(inputs["x"]).transpose(0, 2, 3, 1)  # NCHW -> NHWC
        z = jnp.asarray(inputs["z"])
        cond = jnp.asarray(inputs["cond"], jnp.int32) if name == "unet_generator" else None
        apply = compilation.jit(model.apply, "inference", static_argnames=("train", "mutable"))
        train_out, _ = apply(variables, x, z, cond, train=True, mutable=("batch_stats",))
        eval_out = apply(variables, x, z, cond, train=False)
        got = {
            "train_mode": np.asarray(train_out).transpose(0, 3, 1, 2),
            "eval_mode": np.asarray(eval_out).transpose(0, 3, 1, 2),
        }
        return [_compare(k, got[k], outputs[k], ABS_TOLERANCE) for k in sorted(outputs)]

    if match := re.fullmatch(r"alexnet_k(\d+)", name):
        variables = convert_state_dict(
            "alexnet", _state_dict(data), source=path, num_classes=int(match[1])
        )
        model = build_model("alexnet", num_classes=int(match[1]))
        apply = compilation.jit(model.apply, "inference")
        logits = apply(variables, jnp.asarray(inputs["x"]).transpose(0, 2, 3, 1))
        return [_compare("logits", logits, outputs["logits"], _relative(outputs["logits"]))]

    if match := re.fullmatch(r"audionet_k(\d+)", name):
        variables = convert_state_dict(
            "audionet", _state_dict(data), source=path, num_classes=int(match[1])
        )
        model = build_model("audionet", num_classes=int(match[1]))
        apply = compilation.jit(model.apply, "inference")
        logits, features = apply(variables, jnp.asarray(inputs["audio"])[:, 0])
        got = {"logits": logits, "features": np.asarray(features).transpose(0, 2, 1)}
        return [_compare(k, got[k], outputs[k], _relative(outputs[k])) for k in sorted(outputs)]

    if name == "melgan_generator":
        variables = convert_state_dict(name, _state_dict(data), source=path)
        model = build_model(name)
        apply = compilation.jit(model.apply, "inference")
        audio_out = apply(variables, jnp.asarray(inputs["log_mel"]))[:, None, :]
        # the inference path (anonymize's vocoder): the same function, fewer operations
        fast = compilation.jit(generate, "inference", static_argnums=0)(
            model, prepare_generator(model, variables), inputs["log_mel"])[:, None]
        tolerance = _relative(outputs["audio"])
        return [_compare("audio", audio_out, outputs["audio"], tolerance),
                _compare("audio (generate)", fast, outputs["audio"], tolerance)]

    if match := re.fullmatch(r"melgan_discriminator_(\d+)scales", name):
        num_scales = int(match[1])
        variables = convert_state_dict(
            "melgan_discriminator", _state_dict(data), source=path, num_scales=num_scales
        )
        model = build_model("melgan_discriminator", num_scales=num_scales)
        apply = compilation.jit(model.apply, "inference")
        results = apply(variables, jnp.asarray(inputs["audio"])[:, 0])
        comparisons = []
        expected = set(outputs)
        for i, layers in enumerate(results):
            for j, layer in enumerate(layers):
                key = f"scale{i}/layer{j}"
                if key not in outputs:
                    raise ValueError(f"{path}: the model produces {key}, the file lacks it")
                expected.discard(key)
                want = outputs[key]
                comparisons.append(
                    _compare(key, np.asarray(layer).transpose(0, 2, 1), want, _relative(want))
                )
        if expected:
            raise ValueError(f"{path}: outputs the model does not produce: {sorted(expected)}")
        return comparisons

    raise ValueError(f"{path}: unrecognised parity file name {name!r} (see SPEC section 9)")


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
