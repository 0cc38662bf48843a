"""MelGAN inference path (``melgan.prepare_generator`` + ``generate``): the module's function."""

import jax
import numpy as np
import pytest

from pcmelgan_jax.models.melgan import (
    WINOGRAD_G,
    context_margins,
    generate,
    prepare_generator,
    winograd_conv1d,
)
from pcmelgan_jax.models.registry import build_model, numpy_random_variables


@pytest.mark.parametrize("dilation", [1, 3, 9])
@pytest.mark.parametrize("length", [1, 7, 36, 50])
def test_winograd_conv1d_equals_dilated_convolution(dilation, length):
    """Every output length (tiles cut at the end) and dilation, against float64 direct sums."""
    rng = np.random.default_rng(length * 10 + dilation)
    x = rng.standard_normal((2, length + 2 * dilation, 5)).astype(np.float32)
    w = (rng.standard_normal((3, 5, 4)) / 4).astype(np.float32)
    want = sum(
        np.einsum("btc,co->bto", x[:, a * dilation : a * dilation + length].astype(np.float64),
                  w[a].astype(np.float64))
        for a in range(3)
    )
    kernel = np.einsum("na,aio->nio", WINOGRAD_G, w.astype(np.float64)).astype(np.float32)
    got = jax.jit(winograd_conv1d, static_argnums=2)(x, kernel, dilation)
    assert got.shape == (2, length, 4)
    np.testing.assert_allclose(np.asarray(got), want, atol=2e-5)


@pytest.mark.parametrize(
    "arch, frames",
    [({}, 7), ({"ngf": 8}, 40), ({"ngf": 4, "ratios": (3, 1, 2), "n_residual_layers": 2}, 5)],
)
def test_generate_equals_the_module(arch, frames):
    """Default and small architectures, odd and unit upsampling ratios (empty phase groups)."""
    model = build_model("melgan_generator", **arch)
    variables = numpy_random_variables("melgan_generator", 3, **arch)
    mel = (np.random.default_rng(0).standard_normal((2, 80, frames)) - 3).astype(np.float32)
    want = np.asarray(jax.jit(model.apply)(variables, mel))
    got = np.asarray(jax.jit(generate, static_argnums=0)(
        model, prepare_generator(model, variables), mel))
    assert got.shape == want.shape == (2, frames * int(np.prod(model.ratios)))
    np.testing.assert_allclose(got, want, atol=2e-5)


@pytest.mark.parametrize("arch, frames, context", [
    ({"ngf": 8}, 40, 8), ({"ngf": 8}, 20, 3),
    ({"ngf": 4, "ratios": (3, 1, 2), "n_residual_layers": 2}, 12, 3),
])
def test_generate_with_context_is_the_cut_module_output(arch, frames, context):
    """Skipping the context at the high-rate layers leaves the kept frames' audio unchanged."""
    model = build_model("melgan_generator", **arch)
    variables = numpy_random_variables("melgan_generator", 3, **arch)
    mel = (np.random.default_rng(1).standard_normal((1, 80, frames)) - 3).astype(np.float32)
    hop = int(np.prod(model.ratios))
    want = np.asarray(jax.jit(model.apply)(variables, mel))[:, context * hop : -context * hop]
    got = np.asarray(jax.jit(generate, static_argnums=(0, 3))(
        model, prepare_generator(model, variables), mel, context))
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=2e-5)


def test_eight_context_frames_cover_the_receptive_field():
    """anonymize's chunks (8 frames of context) vocode like the whole file: perturbing one
    frame changes the audio no further than 8 frames away. The margins' default values."""
    model = build_model("melgan_generator", ngf=4)
    variables = numpy_random_variables("melgan_generator", 3, ngf=4)
    assert context_margins(model) == [5, 6, 14, 10, 3]
    mel = (np.random.default_rng(2).standard_normal((1, 80, 24)) - 3).astype(np.float32)
    bumped = mel.copy()
    bumped[:, :, 12] += 1.0
    apply = jax.jit(model.apply)
    changed = np.nonzero(np.asarray(apply(variables, bumped) - apply(variables, mel))[0])[0]
    reach = 8  # anonymize.CONTEXT_FRAMES
    assert 12 * 256 - reach * 256 <= changed.min() and changed.max() < 13 * 256 + reach * 256
