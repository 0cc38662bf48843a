"""The PyTorch reference modules in ``bench/torch_reference.py`` against the golden vectors.

Each parity file's ``param/*`` entries must load with ``strict=True`` and the module must
reproduce ``output/*`` from ``input/*``. Parity directory: env var
``PCMELGAN_PARITY_DIR``, default ``../shared/parity`` relative to the repository root.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("librosa")

from bench import torch_reference as tr  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PARITY_DIR = Path(os.environ.get("PCMELGAN_PARITY_DIR", ROOT.parent / "shared" / "parity"))


def _load(name: str) -> dict[str, np.ndarray]:
    path = PARITY_DIR / f"{name}.npz"
    if not path.is_file():
        pytest.skip(f"no parity file {path}")
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def _inputs(npz: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {
        k[len("input/") :]: torch.from_numpy(v) for k, v in npz.items() if k.startswith("input/")
    }


def _loaded(module: torch.nn.Module, npz: dict[str, np.ndarray]) -> torch.nn.Module:
    state = tr.load_parity_state_dict(npz)
    module.load_state_dict(state, strict=True)
    for key, value in module.state_dict().items():
        assert value.dtype == state[key].dtype, key
    return module


def _max_err(got: torch.Tensor, want: np.ndarray) -> float:
    got = got.detach().numpy()
    assert got.shape == want.shape
    return float(np.max(np.abs(got - want)))


def _assert_rel(got: torch.Tensor, want: np.ndarray, rel: float = 1e-3) -> None:
    err = _max_err(got, want)
    scale = float(np.max(np.abs(want)))
    assert err <= rel * scale, f"max abs error {err:.3g} > {rel} * {scale:.3g}"


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


def test_audio2mel() -> None:
    npz = _load("audio2mel")
    audio = torch.from_numpy(npz["input/audio"])
    log_mel = tr.Audio2Mel()(audio)
    assert _max_err(log_mel, npz["output/log_mel"]) <= 1e-4
    normalized, mean, std = tr.normalize_mel(log_mel)
    assert _max_err(normalized, npz["output/normalized"]) <= 1e-4
    assert _max_err(mean, npz["output/mean"]) <= 1e-4
    assert _max_err(std, npz["output/std"]) <= 1e-4


@pytest.mark.parametrize("name,conditional", [("unet_filter", False), ("unet_generator", True)])
def test_unet(name: str, conditional: bool) -> None:
    npz = _load(name)
    inp = _inputs(npz)
    model = _loaded(tr.UNet(conditional=conditional), npz)
    model.eval()
    out = model(inp["x"], inp["z"], inp["cond"])
    assert _max_err(out, npz["output/eval_mode"]) <= 1e-4
    model.train()
    out = model(inp["x"], inp["z"], inp["cond"])
    assert _max_err(out, npz["output/train_mode"]) <= 1e-4


def test_unet_parameter_counts() -> None:
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert count(tr.UNet(conditional=False)) == 581_211
    assert count(tr.UNet(conditional=True)) == 581_787


def test_alexnet() -> None:
    npz = _load("alexnet_k3")
    model = _loaded(tr.AlexNet(3), npz).eval()
    _assert_rel(model(_inputs(npz)["x"]), npz["output/logits"])


def test_audionet() -> None:
    npz = _load("audionet_k2")
    model = _loaded(tr.AudioNet(2), npz).eval()
    logits, features = model(_inputs(npz)["audio"])
    _assert_rel(logits, npz["output/logits"])
    _assert_rel(features, npz["output/features"])


def test_melgan_generator() -> None:
    npz = _load("melgan_generator")
    model = _loaded(tr.MelGANGenerator(), npz).eval()
    _assert_rel(model(_inputs(npz)["log_mel"]), npz["output/audio"])


def test_melgan_discriminator() -> None:
    npz = _load("melgan_discriminator_2scales")
    model = _loaded(tr.MelGANDiscriminator(num_D=2), npz).eval()
    outs = model(_inputs(npz)["audio"])
    assert len(outs) == 2
    for i, scale in enumerate(outs):
        assert len(scale) == 7
        for j, layer in enumerate(scale):
            _assert_rel(layer, npz[f"output/scale{i}/layer{j}"])


@pytest.mark.parametrize("name", tr.NETWORKS)
def test_train_step_runs(name: str) -> None:
    """One tiny Adam step per network: finite loss, parameters move."""
    with torch.enable_grad():
        model = tr.build_network(name)
        b = 2
        g = torch.Generator().manual_seed(0)
        inputs = {
            "x": torch.rand(b, 1, 80, 32, generator=g) * 2 - 1,
            "z": torch.randn(b, 10, generator=g),
            "cond": torch.tensor([0, 1]),
            "label": torch.tensor([0, 1]),
            "mel": torch.randn(b, 80, 32, generator=g),
            "audio": torch.rand(b, 1, 8192, generator=g) * 2 - 1,
        }
        inputs["target"] = (
            torch.zeros(b, 1, 8192) if name == "melgan_generator" else torch.zeros(b, 1, 80, 32)
        )
        before = [p.detach().clone() for p in model.parameters()]
        loss = tr.make_train_step(name, model)(inputs)
        assert torch.isfinite(loss)
        moved = sum(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
        assert moved > 0


def test_bench_naive_conv_transpose_matches_torch() -> None:
    """The benchmark's naive Flax transposed conv computes PyTorch's ConvTranspose1d."""
    pytest.importorskip("jax")
    from bench import bench_models

    err = bench_models._check_naive_against_torch()
    assert err is not None and err < 1e-5


def test_bench_grouped_conv_formulations_agree() -> None:
    """The benchmark's three grouped convs (XLA's, the model's, PyTorch's Conv1d holding the
    same kernel) compute the same function."""
    jax = pytest.importorskip("jax")
    from bench import bench_models

    rng = np.random.default_rng(0)
    x_np = rng.standard_normal((2, 64, 16)).astype(np.float32)
    w_np = rng.standard_normal((41, 4, 8)).astype(np.float32)
    x, w = jax.numpy.asarray(x_np), jax.numpy.asarray(w_np)
    a = bench_models.grouped_conv_lax(w, x, 4)
    b = bench_models.grouped_conv_model(w, x, 4)
    assert a.shape == b.shape == (2, 16, 8)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4)
    with torch.no_grad():
        c = bench_models.torch_grouped_conv(w_np, 4)(torch.from_numpy(x_np.transpose(0, 2, 1)))
    np.testing.assert_allclose(c.numpy().transpose(0, 2, 1), np.asarray(b), atol=1e-4)
