"""Evaluation-mode forward passes with folded constants (``models.inference``): the U-Net's
``unet_apply`` and the MelGAN generator's ``generate`` compute their modules' functions."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pcmelgan_jax import audio as audio_lib
from pcmelgan_jax.evaluation.conditions import (
    NOISE_OFFSETS,
    filter_and_generator,
    filter_and_generator_spectrograms,
)
from pcmelgan_jax.evaluation.data import SplitData
from pcmelgan_jax.evaluation.inference import batch_noise
from pcmelgan_jax.models.inference import (
    WINOGRAD_G,
    context_margins,
    generate,
    prepare_generator,
    prepare_unet,
    transform_mels,
    unet_apply,
    winograd_conv1d,
)
from pcmelgan_jax.models.registry import build_model, jit_init, numpy_random_variables
from pcmelgan_jax.models.unet import (
    DIGIT_CLASSIFIER,
    UNet,
    band_means,
    loudness_mask,
    output_statistics,
    recognised_digit,
)


def _trained_like(model: UNet, x, z, cond) -> dict:
    """Variables with running statistics near those of the batch (as after training) and
    BatchNorm gains and biases away from 1 and 0, so that folding them is exercised."""
    v = jit_init(model.init, jax.random.key(0), x, z, cond)
    updated = jax.jit(lambda v: model.apply(v, x, z, cond, train=True,
                                            mutable=["batch_stats"])[1]["batch_stats"])(v)
    # one update with momentum 0.1 from (mean 0, var 1): recover the batch's statistics
    stats = jax.tree.map(lambda new, old: (new - 0.9 * old) / 0.1, updated, v["batch_stats"])
    keys = iter(jax.random.split(jax.random.key(1), 1000))

    def perturb(path, a):
        name = jax.tree_util.keystr(path)
        if "bn" not in name or "'mean'" in name:
            return a
        if "'scale'" in name or "'var'" in name:
            return a * jax.random.uniform(next(keys), a.shape, minval=0.7, maxval=1.3)
        return a + 0.05 * jax.random.normal(next(keys), a.shape)  # BatchNorm bias

    return jax.tree_util.tree_map_with_path(perturb, {"params": v["params"],
                                                      "batch_stats": stats})


@pytest.mark.parametrize("conditional", [False, True])
def test_unet_apply_equals_module_in_evaluation_mode(conditional):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(-1, 1, (3, 80, 32, 1)), jnp.float32)
    z = jnp.asarray(rng.standard_normal((3, 10)), jnp.float32)
    cond = jnp.asarray([0, 1, 1], jnp.int32) if conditional else None
    model = UNet(conditional=conditional)
    variables = _trained_like(model, x, z, cond)
    # jitted: op-by-op dispatch of the whole U-Net costs more than compiling it
    expected = jax.jit(lambda v, x, z, c: model.apply(v, x, z, c, train=False))(
        variables, x, z, cond)
    got = jax.jit(lambda p, x, z, c: unet_apply(model, p, x, z, c))(
        prepare_unet(model, variables), x, z, cond)
    assert float(jnp.std(expected)) > 0.05  # not saturated or constant
    chex.assert_trees_all_close(got, expected, atol=1e-4)  # the parity tolerance


def test_band_means_by_hand():
    x = jnp.arange(8.0).reshape(1, 4, 2, 1)  # bins (0,1) (2,3) (4,5) (6,7) over 2 frames
    got = band_means(x, 2)[0, :, :, 0]
    np.testing.assert_allclose(got, [[1, 2], [1, 2], [5, 6], [5, 6]])
    np.testing.assert_allclose(band_means(x, 4), x)
    # bins 1-2 kept as one band (means 3, 4); bins 0 and 3 outside take the range's mean
    np.testing.assert_allclose(band_means(x, 1, (1, 3))[0, :, :, 0], [[3, 4]] * 4)
    # bins 0-1 as two bands of one bin each; bins 2-3 take the range's mean (1, 2)
    np.testing.assert_allclose(band_means(x, 2, (0, 2))[0, :, :, 0],
                               [[0, 1], [2, 3], [1, 2], [1, 2]])
    with pytest.raises(ValueError, match="divide the 4 mel bins, got 3"):
        band_means(x, 3)
    with pytest.raises(ValueError, match="divide the 3 mel bins, got 2"):
        band_means(x, 2, (1, 4))
    for bad in ((2, 2), (0, 5), (-1, 2)):
        with pytest.raises(ValueError, match="input_bins must satisfy"):
            band_means(x, 1, bad)


def test_generator_with_input_bands_sees_only_the_band_means():
    """G with ``input_bands`` = 2: a change within a band that keeps its mean changes
    nothing, one that moves it does; the folded ``unet_apply`` computes the same."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(-1, 1, (2, 80, 32, 1)), jnp.float32)
    z = jnp.asarray(rng.standard_normal((2, 10)), jnp.float32)
    cond = jnp.asarray([0, 1], jnp.int32)
    model = UNet(conditional=True, input_bands=2)
    variables = _trained_like(model, x, z, cond)
    run = jax.jit(lambda v, x: model.apply(v, x, z, cond, train=False))
    same_means = x.at[:, 3].add(0.5).at[:, 30].add(-0.5)  # both in band 0 (bins 0-39)
    chex.assert_trees_all_close(run(variables, same_means), run(variables, x), atol=1e-4)
    assert float(jnp.abs(run(variables, x.at[:, 50].add(0.5)) - run(variables, x)).max()) > 1e-3
    folded = jax.jit(lambda p, x: unet_apply(model, p, x, z, cond))(
        prepare_unet(model, variables), x)
    chex.assert_trees_all_close(folded, run(variables, x), atol=1e-4)


def test_loudness_mask_by_hand():
    """+1 in the frames within the depth of each bin's own peak over time, -1 elsewhere."""
    x = jnp.asarray([[0.5, 0.15, 0.35, -1.0], [-0.9, -0.5, -0.95, -0.55]]).reshape(1, 2, 4, 1)
    got = loudness_mask(x, 0.3)[0, :, :, 0]
    np.testing.assert_array_equal(got, [[1, -1, 1, -1], [-1, 1, -1, 1]])
    np.testing.assert_array_equal(loudness_mask(x, 2.0), jnp.ones_like(x))  # all within
    for bad in (0.0, -0.1):
        with pytest.raises(ValueError, match="mask depth must be > 0"):
            loudness_mask(x, bad)


def test_generator_with_a_mask_reads_only_the_loud_frames():
    """G with ``input_mask_depth``: a change of the contour's levels that keeps which frames
    lie within the depth of its peak changes nothing, moving a frame across the threshold
    does; the folded ``unet_apply`` computes the same; a mask without bands is refused."""
    rng = np.random.default_rng(1)
    loud = np.where(np.arange(32) % 8 < 4, 0.4, -0.6)  # 4 loud frames, 4 quiet, repeated
    x = jnp.asarray(loud[None, None, :, None] + rng.uniform(-0.05, 0.05, (2, 80, 32, 1)),
                    jnp.float32)
    z = jnp.asarray(rng.standard_normal((2, 10)), jnp.float32)
    cond = jnp.asarray([0, 1], jnp.int32)
    model = UNet(conditional=True, input_bands=1, input_bins=(10, 70), input_mask_depth=0.3)
    variables = _trained_like(model, x, z, cond)
    run = jax.jit(lambda v, x: model.apply(v, x, z, cond, train=False))
    louder = x * 1.5 + 0.1  # other levels, the same frames within 0.3 of the peak
    chex.assert_trees_all_close(run(variables, louder), run(variables, x), atol=1e-5)
    one_more = x.at[:, :, 4].set(0.4)  # a quiet frame made loud
    assert float(jnp.abs(run(variables, one_more) - run(variables, x)).max()) > 1e-3
    folded = jax.jit(lambda p, x: unet_apply(model, p, x, z, cond))(
        prepare_unet(model, variables), x)
    chex.assert_trees_all_close(folded, run(variables, x), atol=1e-4)
    with pytest.raises(ValueError, match="input_mask_depth needs input_bands"):
        UNet(conditional=True, input_mask_depth=0.3).init(jax.random.key(0), x, z, cond)


def _forcing_digit(v: dict, d: int) -> dict:
    """A digit-conditioned G's variables whose classifier's last bias pushes every input to
    digit ``d``."""
    fc3 = v["params"][DIGIT_CLASSIFIER]["fc3"]
    bias = fc3["bias"].at[d].add(1e4)
    return {**v, "params": {**v["params"], DIGIT_CLASSIFIER: {
        **v["params"][DIGIT_CLASSIFIER], "fc3": {**fc3, "bias": bias}}}}


def test_small_config_generator_reads_the_digit_alone():
    """The small config's G (mask depth 2: every frame of its contour loud) gives the same
    output for unrelated inputs with the same recognised digit, another for another digit."""
    from pcmelgan_jax.configs import pcmelgan as pcmelgan_config
    from pcmelgan_jax.training import pcmelgan

    model = pcmelgan.hyper(pcmelgan_config.get_config("small"), {"spec_digit": 0.25}).generator()
    assert model.input_mask_depth == 2.0 and model.digit_classes == 10
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.uniform(-1, 1, (2, 80, 32, 1)), jnp.float32)
    z = jnp.asarray(rng.standard_normal((1, 10)).repeat(2, 0), jnp.float32)
    cond = jnp.asarray([1, 1], jnp.int32)
    variables = _trained_like(model, x, z, cond)
    run = jax.jit(lambda v: model.apply(v, x, z, cond, train=False)[..., 0])
    outputs = [run(_forcing_digit(variables, d)) for d in (4, 6)]
    chex.assert_trees_all_close(outputs[0][0], outputs[0][1], atol=1e-5)  # rows round apart
    assert float(jnp.abs(outputs[0] - outputs[1]).max()) > 1e-3


def test_digit_conditioned_generator_reads_only_the_recognised_digit():
    """G with ``digit_classes``: its frozen digit classifier's argmax (``recognised_digit``)
    is the only way the digit enters: forcing the classifier's answer to d gives the output
    of a G whose digit embedding is row d for every class; two forced digits give two outputs;
    no gradient reaches the classifier; the folded ``unet_apply`` computes the same."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(-1, 1, (3, 80, 32, 1)), jnp.float32)
    z = jnp.asarray(rng.standard_normal((3, 10)), jnp.float32)
    cond = jnp.asarray([0, 1, 1], jnp.int32)
    model = UNet(conditional=True, input_bands=1, input_bins=(10, 70), digit_classes=10,
                 digit_classifier_width=0.25)
    variables = _trained_like(model, x, z, cond)
    run = jax.jit(lambda v: model.apply(v, x, z, cond, train=False))

    outputs = []
    for d in (3, 7):
        v = _forcing_digit(variables, d)
        np.testing.assert_array_equal(
            recognised_digit(model, v["params"][DIGIT_CLASSIFIER], x), [d] * 3)
        table = v["params"]["embed_digit"]["embedding"]
        row_d = {**v, "params": {**v["params"], "embed_digit": {
            "embedding": jnp.broadcast_to(table[d], table.shape)}}}
        chex.assert_trees_all_close(run(v), run(row_d), atol=1e-6)
        folded = jax.jit(lambda p: unet_apply(model, p, x, z, cond))(prepare_unet(model, v))
        chex.assert_trees_all_close(folded, run(v), atol=1e-4)
        outputs.append(run(v))
    assert float(jnp.abs(outputs[0] - outputs[1]).max()) > 1e-3
    grads = jax.grad(lambda p: model.apply({**variables, "params": p}, x, z, cond).sum())(
        variables["params"])
    assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(grads[DIGIT_CLASSIFIER]))
    assert float(jnp.abs(grads["embed_digit"]["embedding"]).max()) > 0


def test_generator_fed_the_original_reads_x_in_anonymize_and_evaluation():
    """A G whose ``source`` is "original" gets x itself, not F's output, in ``anonymize``'s
    folded forward (``transform_mels``) and in the evaluation's F -> G pass: its output equals
    G on x whatever F's weights."""
    rng = np.random.default_rng(0)
    audio = jnp.asarray(rng.uniform(-0.5, 0.5, (4, 8192)), jnp.float32)
    z = jnp.asarray(rng.standard_normal((4, 10)), jnp.float32)
    cond = jnp.asarray([0, 1, 1, 0], jnp.int32)
    x, mean, std = audio_lib.mel_features(audio)
    filt, gen = UNet(), UNet(conditional=True, source="original")
    g_vars = _trained_like(gen, x[..., None], z, cond)
    f_vars = _trained_like(filt, x[..., None], z, None)
    halved = jax.tree.map(lambda a: 0.5 * a, f_vars)
    expected = jax.jit(lambda v: gen.apply(v, x[..., None], z, cond)[..., 0])(g_vars)
    split = SplitData("test", np.asarray(audio), np.asarray(x), np.asarray(mean),
                      np.asarray(std), *(np.zeros(4, np.int32),) * 4)
    firsts = []
    for f in (f_vars, halved):
        got = transform_mels(filt, gen, prepare_unet(filt, f), prepare_unet(gen, g_vars), audio,
                             z, z, cond)
        chex.assert_trees_all_close(got, audio_lib.denormalize(expected, mean, std), atol=1e-3)
        x1, x2, sampled = filter_and_generator_spectrograms((filt, f), (gen, g_vars), 0, 4, split)
        want = jax.jit(lambda v, z, s: gen.apply(v, x[..., None], z, s)[..., 0])(
            g_vars, batch_noise(0, NOISE_OFFSETS["test"], 4, 10)[1], sampled)
        chex.assert_trees_all_close(x2, want, atol=1e-4)
        firsts.append(x1)
    assert not np.allclose(firsts[0], firsts[1])  # F's output did change


def test_output_statistics_by_hand():
    mean, std = np.array([-2.0, -3.0], np.float32), np.array([1.0, 2.0], np.float32)
    assert output_statistics(None, mean, std) == (mean, std)
    got = output_statistics((-2.5, 1.5), mean, std)
    for g, want in zip(got, (-2.5, 1.5), strict=True):
        assert g.dtype == np.float32
        np.testing.assert_array_equal(g, [want, want])


def test_generator_output_level_in_anonymize_and_evaluation():
    """A G with an ``output_level`` has its output de-normalised at that level, not the
    window's own, in ``anonymize``'s folded forward and in the evaluation's vocoding; F's
    output keeps each utterance's statistics."""
    rng = np.random.default_rng(1)
    # four windows of different loudness: their own statistics differ
    audio = jnp.asarray(rng.uniform(-0.5, 0.5, (4, 8192)) * np.array([[1.0], [0.5], [0.1],
                                                                       [0.02]]), jnp.float32)
    z = jnp.asarray(rng.standard_normal((4, 10)), jnp.float32)
    cond = jnp.asarray([0, 1, 1, 0], jnp.int32)
    x, mean, std = audio_lib.mel_features(audio)
    filt = UNet()
    gen = UNet(conditional=True, source="original", output_level=(-2.5, 1.5))
    g_vars = _trained_like(gen, x[..., None], z, cond)
    f_vars = _trained_like(filt, x[..., None], z, None)
    y = jax.jit(lambda v: gen.apply(v, x[..., None], z, cond)[..., 0])(g_vars)
    got = transform_mels(filt, gen, prepare_unet(filt, f_vars), prepare_unet(gen, g_vars),
                         audio, z, z, cond)
    chex.assert_trees_all_close(got, y * 4.5 - 2.5, atol=1e-3)  # x * 3 std + mean
    assert float(jnp.std(mean)) > 0.1  # the windows' own levels would have differed
    split = SplitData("test", np.asarray(audio), np.asarray(x), np.asarray(mean),
                      np.asarray(std), *(np.zeros(4, np.int32),) * 4)
    seen = []

    def vocoder(spec, m, s):  # records its statistics, returns a clip a log-mel can read
        seen.append((np.asarray(m), np.asarray(s)))
        return jnp.sin(jnp.arange(8192.0) * 0.3)[None] * (1.0 + spec[:, :1, 0])

    filter_and_generator((filt, f_vars), (gen, g_vars), vocoder, 0, 4, split)
    np.testing.assert_array_equal(seen[0][0], split.mean)  # F's output: its own
    np.testing.assert_array_equal(seen[1][0], np.full(4, -2.5, np.float32))  # G's: the level
    np.testing.assert_array_equal(seen[1][1], np.full(4, 1.5, np.float32))


def test_unet_apply_errors():
    model = UNet(conditional=True)
    x = jnp.zeros((1, 80, 32, 1))
    variables = jit_init(model.init, jax.random.key(0), x, jnp.zeros((1, 10)),
                         jnp.zeros((1,), jnp.int32))
    prepared = prepare_unet(model, variables)
    with pytest.raises(ValueError, match="needs cond"):
        unet_apply(model, prepared, x, jnp.zeros((1, 10)))
    with pytest.raises(ValueError, match="80, 32"):
        unet_apply(model, prepared, jnp.zeros((1, 64, 32, 1)), jnp.zeros((1, 10)), jnp.zeros(1))
    with pytest.raises(TypeError, match="UNet"):
        prepare_unet(object(), variables)


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
