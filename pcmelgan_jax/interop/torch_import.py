"""Import of the original PyTorch weights (state dicts and ``.pt`` files) into Flax variables.

The conversion itself needs only numpy: a state dict is a mapping from the original
module's keys (``dconv_down1.0.weight_v``, ``model.3.weight_g``, ``features.0.weight`` ...)
to arrays. ``convert_state_dict`` maps every key to its Flax variable, transposes kernels to
channels-last, and fails with a list of the unknown, missing and mis-shaped keys. Reading
``.pt`` files needs torch (its CPU wheel: the README's Install section) and always uses
``weights_only=True``: a checkpoint never runs code.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from pcmelgan_jax.models.registry import NETWORKS, variable_shapes


class StateDictError(ValueError):
    """A state dict that does not match the network; the message lists every problem."""


# --------------------------------------------------------------------------------------
# Flax module path -> PyTorch module prefix, per network.


def _unet_prefix(path: tuple[str, ...]) -> str:
    name = path[0]
    if name in ("project_noise", "project_cond", "embed_condition"):
        return name
    if name == "conv_last":
        return "dconv_up1"
    match = re.fullmatch(r"(down|up)(\d)", name)
    if not match or len(path) != 2:
        raise KeyError(path)
    layer = {"conv0": 0, "bn0": 1, "conv1": 3, "bn1": 4}[path[1]]
    return f"dconv_{match[1]}{match[2]}.{layer}"


_ALEXNET = {
    "conv1": "features.0",
    "conv2": "features.3",
    "conv3": "features.6",
    "conv4": "features.8",
    "conv5": "features.10",
    "fc1": "classifier.1",
    "fc2": "classifier.4",
    "fc3": "classifier.6",
}


def _alexnet_prefix(path: tuple[str, ...]) -> str:
    return _ALEXNET[path[0]]


def _audionet_prefix(path: tuple[str, ...]) -> str:
    return path[0] if path[0] == "fc3" else f"{path[0]}.0"


def _melgan_generator_prefix(
    path: tuple[str, ...], n_residual_layers: int = 3, n_ratios: int = 4
) -> str:
    name = path[0]
    step = 2 + n_residual_layers  # LeakyReLU, ConvTranspose, residual blocks
    if name == "conv_in":
        return "model.1"  # after the ReflectionPad1d
    if name == "conv_out":
        return f"model.{4 + step * n_ratios}"  # after LeakyReLU and ReflectionPad1d
    if match := re.fullmatch(r"upsample(\d+)", name):
        return f"model.{3 + step * int(match[1])}"
    if match := re.fullmatch(r"res(\d+)_(\d+)", name):
        index = 4 + step * int(match[1]) + int(match[2])
        inner = {"conv_dilated": "block.2", "conv_out": "block.4", "shortcut": "shortcut"}
        return f"model.{index}.{inner[path[1]]}"
    raise KeyError(path)


def _melgan_discriminator_prefix(path: tuple[str, ...], n_layers: int = 4) -> str:
    scale, layer = path
    index = int(layer.split("_")[1])
    if index == 0:
        suffix = ".1"  # after the ReflectionPad1d
    elif index <= n_layers + 1:
        suffix = ".0"  # before the LeakyReLU
    else:
        suffix = ""  # the last conv has no Sequential around it
    return f"model.{scale}.model.{layer}{suffix}"


_PREFIX = {
    "unet_filter": _unet_prefix,
    "unet_generator": _unet_prefix,
    "alexnet": _alexnet_prefix,
    "audionet": _audionet_prefix,
    "melgan_generator": _melgan_generator_prefix,
    "melgan_discriminator": _melgan_discriminator_prefix,
}


def _leaf_rule(network: str, collection: str, path: tuple[str, ...], leaf: str, module_leaves):
    """(torch key suffix, kind) of one Flax leaf. kind selects the layout transform."""
    if collection == "batch_stats":
        return {"mean": "running_mean", "var": "running_var"}[leaf], "vector"
    is_norm_layer = path[-1].startswith("bn")
    weight_normed = "scale" in module_leaves and not is_norm_layer
    transposed = network == "melgan_generator" and path[0].startswith("upsample")
    if leaf == "kernel":
        kind = "conv_transpose" if transposed else "kernel"
        return ("weight_v" if weight_normed else "weight"), kind
    if leaf == "scale":
        return ("weight" if is_norm_layer else "weight_g"), ("vector" if is_norm_layer else "gain")
    if leaf == "bias":
        return "bias", "vector"
    if leaf == "embedding":
        return "weight", "embedding"
    raise KeyError(leaf)


def _to_flax(array: np.ndarray, kind: str) -> np.ndarray:
    if kind == "kernel":
        if array.ndim == 2:  # Linear (out, in) -> (in, out)
            return array.T
        return np.transpose(array, (*range(2, array.ndim), 1, 0))  # (O, I, *k) -> (*k, I, O)
    if kind == "conv_transpose":
        return np.transpose(array, (2, 0, 1))  # (I, O, k) -> (k, I, O)
    if kind == "gain":
        return array.reshape(-1)
    return array


def _to_torch(array: np.ndarray, kind: str, torch_shape: tuple[int, ...] | None = None):
    if kind == "kernel":
        if array.ndim == 2:
            return array.T
        nd = array.ndim - 2
        return np.transpose(array, (nd + 1, nd, *range(nd)))  # (*k, I, O) -> (O, I, *k)
    if kind == "conv_transpose":
        return np.transpose(array, (1, 2, 0))  # (k, I, O) -> (I, O, k)
    if kind == "gain":
        return array.reshape(torch_shape)
    return array


def key_map(network: str, **arch: Any) -> dict[str, tuple[str, tuple[str, ...], str, tuple]]:
    """torch key -> (collection, Flax path incl. leaf, kind, Flax shape) for ``network``."""
    if network not in _PREFIX:
        raise ValueError(f"unknown network {network!r}; expected one of {', '.join(NETWORKS)}")
    prefix_fn = _PREFIX[network]
    if network == "melgan_generator":
        n_res = arch.get("n_residual_layers", 3)
        n_ratios = len(arch.get("ratios", (8, 8, 2, 2)))
        prefix_fn = lambda path: _melgan_generator_prefix(path, n_res, n_ratios)
    if network == "melgan_discriminator" and "n_layers" in arch:
        n = arch["n_layers"]
        prefix_fn = lambda path: _melgan_discriminator_prefix(path, n)
    shapes = variable_shapes(network, **arch)
    mapping = {}
    for collection, tree in shapes.items():
        modules: dict[tuple[str, ...], dict[str, Any]] = {}

        def walk(node, path, modules=modules):
            for name, child in node.items():
                if isinstance(child, Mapping):
                    walk(child, (*path, name))
                else:
                    modules.setdefault(path, {})[name] = child

        walk(tree, ())
        for path, leaves in modules.items():
            for leaf, shape in leaves.items():
                suffix, kind = _leaf_rule(network, collection, path, leaf, leaves)
                key = f"{prefix_fn(path)}.{suffix}"
                mapping[key] = (collection, (*path, leaf), kind, tuple(shape.shape))
    return mapping


def ignored_keys(network: str, state_dict: Mapping[str, Any]) -> set[str]:
    """Keys that are known but carry nothing to convert (BatchNorm counters, F's unused layers)."""
    ignored = {k for k in state_dict if k.endswith("num_batches_tracked")}
    if network == "unet_filter":
        ignored |= {k for k in state_dict if k.split(".")[0] in ("embed_condition", "project_cond")}
    return ignored


def _strip_prefix(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Removes DataParallel's ``module.`` prefix when every key has it."""
    keys = list(state_dict)
    if keys and all(k.startswith("module.") for k in keys):
        return {k[len("module.") :]: v for k, v in state_dict.items()}
    return dict(state_dict)


def convert_state_dict(
    network: str, state_dict: Mapping[str, Any], source: str = "state dict", **arch: Any
) -> dict[str, dict]:
    """Original PyTorch state dict -> Flax variables ``{'params': ..., 'batch_stats': ...}``.

    Values may be numpy arrays or torch tensors; they are converted to float32. ``arch``
    are the network's architecture arguments (e.g. ``num_classes`` for the classifiers).
    Raises ``StateDictError`` listing unknown, missing and mis-shaped keys.
    """
    state_dict = _strip_prefix(state_dict)
    mapping = key_map(network, **arch)
    ignored = ignored_keys(network, state_dict)
    unknown = sorted(set(state_dict) - set(mapping) - ignored)
    missing = sorted(set(mapping) - set(state_dict))
    variables: dict[str, dict] = {}
    wrong_shape = []
    for key, (collection, path, kind, shape) in mapping.items():
        if key not in state_dict:
            continue
        value = state_dict[key]
        if hasattr(value, "detach"):  # a torch tensor
            value = value.detach().cpu().float().numpy()
        array = _to_flax(np.asarray(value, dtype=np.float32), kind)
        if array.shape != shape:
            wrong_shape.append(
                f"{key}: got {tuple(np.shape(value))}, expected a tensor "
                f"that maps to Flax shape {shape}"
            )
            continue
        node = variables.setdefault(collection, {})
        for name in path[:-1]:
            node = node.setdefault(name, {})
        node[path[-1]] = array
    problems = []
    if unknown:
        problems.append(f"unknown keys ({len(unknown)}): {', '.join(unknown)}")
    if missing:
        problems.append(f"missing keys ({len(missing)}): {', '.join(missing)}")
    if wrong_shape:
        problems.append(f"mis-shaped keys ({len(wrong_shape)}): " + "; ".join(wrong_shape))
    if problems:
        raise StateDictError(
            f"{source} does not match {network} {arch or ''}: " + " | ".join(problems)
        )
    return variables


def export_state_dict(
    network: str, variables: Mapping[str, Any], **arch: Any
) -> dict[str, np.ndarray]:
    """Flax variables -> a PyTorch state dict (numpy arrays) with the original's keys.

    The inverse of ``convert_state_dict`` (BatchNorm's ``num_batches_tracked`` is set to 0).
    """
    mapping = key_map(network, **arch)
    state_dict = {}
    for key, (collection, path, kind, _) in mapping.items():
        array = np.asarray(_lookup(variables[collection], path), dtype=np.float32)
        torch_shape = None
        if kind == "gain":  # PyTorch keeps the gain with the kernel's rank: (n, 1, ..., 1)
            kernel_rank = np.ndim(_lookup(variables[collection], (*path[:-1], "kernel")))
            torch_shape = (array.size,) + (1,) * (kernel_rank - 1)
        state_dict[key] = _to_torch(array, kind, torch_shape)
        if collection == "batch_stats" and key.endswith("running_mean"):
            state_dict[key[: -len("running_mean")] + "num_batches_tracked"] = np.array(0, np.int64)
    return state_dict


def _lookup(tree: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    for name in path:
        tree = tree[name]
    return tree


# --------------------------------------------------------------------------------------
# Recognising a state dict and reading .pt files.


def infer_network(state_dict: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """Guesses (network, architecture kwargs) from a state dict's keys and shapes."""
    sd = _strip_prefix(state_dict)
    shape = lambda k: tuple(np.shape(sd[k])) if not hasattr(sd[k], "shape") else tuple(sd[k].shape)
    if "dconv_up5.0.weight_v" in sd and "project_noise.weight" in sd:
        in_channels = shape("dconv_up5.0.weight_v")[1]
        noise_dim = shape("project_noise.weight")[1]
        arch = {} if noise_dim == 10 else {"noise_dim": noise_dim}
        # The generator's bottleneck carries one extra (condition) channel.
        return ("unet_generator" if in_channels % 2 else "unet_filter"), arch
    if "features.0.weight" in sd and "classifier.6.weight" in sd:
        return "alexnet", {"num_classes": shape("classifier.6.weight")[0]}
    if "conv1.0.weight" in sd and "fc3.weight" in sd:
        return "audionet", {"num_classes": shape("fc3.weight")[0]}
    if "model.1.weight_v" in sd and "model.3.weight_v" in sd:
        return "melgan_generator", {}
    scales = {k.split(".")[1] for k in sd if k.startswith("model.disc_")}
    if scales:
        return "melgan_discriminator", {"num_scales": len(scales)}
    raise StateDictError(
        "cannot tell which network this state dict belongs to (first keys: "
        + ", ".join(list(sd)[:5])
        + ")"
    )


def load_torch_state_dict(path: str | os.PathLike) -> dict[str, Any]:
    """Reads a ``.pt`` file with ``torch.load(weights_only=True)`` and returns its state dict.

    Accepts a bare state dict or a dict holding one under ``state_dict``,
    ``model_state_dict``, ``model`` or ``netG``. A file that stores a pickled module (which
    would need code execution) is refused with an explanation.
    """
    path = os.fspath(path)
    try:
        import torch
    except ImportError:
        raise ImportError(
            "reading .pt files needs torch: pip install torch --index-url "
            "https://download.pytorch.org/whl/cpu"
        ) from None
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise StateDictError(
            f"{path}: cannot be loaded with weights_only=True ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}). If it stores a whole pickled "
            "module, re-save its state_dict() from the original code."
        ) from None
    if isinstance(obj, Mapping):
        for wrapper in ("state_dict", "model_state_dict", "model", "netG"):
            inner = obj.get(wrapper)
            if (
                isinstance(inner, Mapping)
                and inner
                and all(hasattr(v, "shape") for v in inner.values())
            ):
                return dict(inner)
        tensors = {k: v for k, v in obj.items() if hasattr(v, "shape")}
        if tensors and len(tensors) == len(obj):
            return tensors
    raise StateDictError(f"{path}: holds a {type(obj).__name__}, not a state dict of tensors")


def import_torch_checkpoint(
    pt_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    network: str | None = None,
    overwrite: bool = False,
    **arch: Any,
) -> dict[str, Any]:
    """Converts one original ``.pt`` file into a model checkpoint at ``out_dir``.

    ``network`` and ``arch`` are inferred from the keys when not given. Returns a summary.
    """
    from pcmelgan_jax.checkpointing import save_model

    state_dict = load_torch_state_dict(pt_path)
    if network is None:
        network, inferred = infer_network(state_dict)
        arch = {**inferred, **arch}
    variables = convert_state_dict(network, state_dict, source=os.fspath(pt_path), **arch)
    save_model(
        out_dir,
        network,
        variables,
        arch=arch,
        extra={"source": os.path.abspath(pt_path), "converted_from": "pytorch"},
        overwrite=overwrite,
    )
    count = sum(int(np.size(v)) for v in jax.tree.leaves(variables.get("params", {})))
    return {
        "source": os.fspath(pt_path),
        "out": os.fspath(out_dir),
        "network": network,
        "arch": arch,
        "parameters": count,
    }


def default_output_name(pt_path: str) -> str:
    return re.sub(r"\.(pt|pth|ckpt)$", "", os.path.basename(pt_path))


def _run(args: argparse.Namespace) -> int:
    os.makedirs(args.out, exist_ok=True)
    arch = {"num_classes": args.num_classes} if args.num_classes else {}
    failures = 0
    for pt_path in args.files:
        out_dir = os.path.join(os.path.abspath(args.out), default_output_name(pt_path))
        try:
            summary = import_torch_checkpoint(
                pt_path, out_dir, network=args.network, overwrite=args.overwrite, **arch
            )
        except (StateDictError, FileNotFoundError, FileExistsError, ImportError) as e:
            failures += 1
            print(f"error: {e}")
            continue
        print(
            f"{summary['source']} -> {summary['out']}: {summary['network']} "
            f"{summary['arch'] or ''} ({summary['parameters']:,} parameters)"
        )
    if failures:
        print(f"{failures} of {len(args.files)} files failed")
    return 1 if failures else 0


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "import-torch",
        help="convert original PyTorch .pt checkpoints into this project's Orbax checkpoints",
        description=(
            "Converts the original PCMelGAN/MelGAN .pt files (netF_*.pt, netG_*.pt, "
            "netFD_*.pt, netGD_*.pt, best_netG_epoch_*.pt, classifier checkpoints) into model "
            "checkpoints OUT/<file stem>/. The network is recognised from the keys. Files are "
            "read with torch.load(weights_only=True)."
        ),
    )
    parser.add_argument("files", nargs="+", help=".pt files holding state dicts")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--network", choices=list(_PREFIX),
                        help="override the recognised network")
    parser.add_argument("--num-classes", type=int, help="classes of a classifier (else inferred)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.set_defaults(func=_run)
