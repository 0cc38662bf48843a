"""Flax modules: parameter counts, layer semantics, train/eval behaviour."""

from functools import partial

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pcmelgan_jax.models import (
    AlexNet,
    AudioNet,
    BatchNorm,
    ConvTranspose1d,
    MelGANDiscriminator,
    MelGANGenerator,
    UNet,
)
from pcmelgan_jax.models.layers import adaptive_pool_matrix, avg_pool1d_exclude_pad
from pcmelgan_jax.models.registry import init_variables, variable_shapes


def count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize(
    "network, arch, expected",
    [
        ("unet_filter", {}, 581_211 - 202),  # SPEC: F without its unused conditioning layers
        ("unet_generator", {}, 581_787),
        ("alexnet", {"num_classes": 2}, 12_937_922),
        ("alexnet", {"num_classes": 3}, 12_938_947),
        ("alexnet", {"num_classes": 10}, 12_946_122),
        ("audionet", {"num_classes": 10}, 9_087_130),
        # width 0.25 (small CPU configs), counted by hand: convs 16-48-96-64-64, hidden 256
        ("alexnet", {"num_classes": 2, "width": 0.25}, 809_906),
        # convs 25-16-32-32-32-16 (features 16 x 128), hidden 256, 128
        ("audionet", {"num_classes": 10, "width": 0.25}, 569_374),
        ("melgan_generator", {}, 4_266_050),
        ("melgan_discriminator", {}, 16_924_086),
    ],
)
def test_parameter_counts_match_spec(network, arch, expected):
    assert count(variable_shapes(network, **arch)["params"]) == expected


def test_filter_has_no_conditioning_parameters():
    params = variable_shapes("unet_filter")["params"]
    assert "embed_condition" not in params and "project_cond" not in params


@pytest.mark.parametrize("stride", [2, 3, 5, 8])  # 3-tap polyphase (2), two_tap_phases
def test_polyphase_upsampling_equals_transposed_convolution(stride):
    x = jax.random.normal(jax.random.key(0), (2, 7, 6))
    poly = ConvTranspose1d(5, stride, implementation="polyphase")
    direct = ConvTranspose1d(5, stride, implementation="direct")
    variables = poly.init(jax.random.key(1), x)
    y_poly = poly.apply(variables, x)
    y_direct = direct.apply(variables, x)
    chex.assert_shape(y_poly, (2, 7 * stride, 5))
    np.testing.assert_allclose(y_poly, y_direct, atol=1e-5)

    def loss(module, v, x):
        return jnp.sum(jnp.sin(module.apply(v, x)))

    g_poly = jax.grad(partial(loss, poly), (0, 1))(variables, x)
    g_direct = jax.grad(partial(loss, direct), (0, 1))(variables, x)
    chex.assert_trees_all_close(g_poly, g_direct, atol=1e-4)


def test_two_tap_phases_rejects_other_kernels():
    from pcmelgan_jax.models.layers import two_tap_phases

    x = jnp.zeros((1, 4, 2))
    with pytest.raises(ValueError, match="kernel 2\\*stride"):
        two_tap_phases(x, jnp.zeros((6, 2, 3)), 2)
    with pytest.raises(ValueError, match="stride >= 2"):
        two_tap_phases(x, jnp.zeros((2, 2, 3)), 1)


def test_transposed_weight_norm_gain_is_per_input_channel():
    x = jax.random.normal(jax.random.key(0), (1, 4, 6))
    layer = ConvTranspose1d(3, 2)
    variables = layer.init(jax.random.key(1), x)
    chex.assert_shape(variables["params"]["scale"], (6,))  # input channels
    chex.assert_shape(variables["params"]["kernel"], (4, 6, 3))
    # Initialised so that the effective weight equals v (PyTorch's weight_norm init).
    v = variables["params"]["kernel"]
    np.testing.assert_allclose(
        variables["params"]["scale"], np.sqrt((np.asarray(v) ** 2).sum(axis=(0, 2))), rtol=1e-6
    )
    # Doubling input channel 0's gain doubles exactly its contribution.
    x0 = x.at[..., 1:].set(0.0)
    bias_out = layer.apply(variables, jnp.zeros_like(x))
    base = layer.apply(variables, x0) - bias_out
    doubled = jax.tree.map(lambda a: a, variables)
    doubled["params"]["scale"] = variables["params"]["scale"].at[0].multiply(2.0)
    np.testing.assert_allclose(layer.apply(doubled, x0) - bias_out, 2 * base, atol=1e-5)


def test_batchnorm_matches_pytorch_semantics():
    x = jax.random.normal(jax.random.key(0), (4, 3, 5, 2)) * 3 + 1
    bn = BatchNorm()
    variables = bn.init(jax.random.key(1), x, train=True)
    np.testing.assert_array_equal(variables["batch_stats"]["mean"], 0.0)  # init does not update
    y, updates = bn.apply(variables, x, train=True, mutable=["batch_stats"])
    xn = np.asarray(x).reshape(-1, 2)
    mean, var_biased, var_unbiased = xn.mean(0), xn.var(0), xn.var(0, ddof=1)
    np.testing.assert_allclose(
        np.asarray(y).reshape(-1, 2), (xn - mean) / np.sqrt(var_biased + 1e-5), atol=1e-5
    )
    np.testing.assert_allclose(updates["batch_stats"]["mean"], 0.1 * mean, rtol=1e-5)
    np.testing.assert_allclose(updates["batch_stats"]["var"], 0.9 + 0.1 * var_unbiased, rtol=1e-5)
    y_eval = bn.apply({**variables, **updates}, x, train=False)
    stats = updates["batch_stats"]
    np.testing.assert_allclose(
        y_eval, (x - stats["mean"]) / np.sqrt(stats["var"] + 1e-5), atol=1e-5
    )


def test_adaptive_pool_bins_follow_pytorch():
    m = adaptive_pool_matrix(9, 6)  # overlapping bins [0,2) [1,3) [3,5) [4,6) [6,8) [7,9)
    starts = [int(np.argmax(row > 0)) for row in m]
    widths = [int((row > 0).sum()) for row in m]
    assert starts == [0, 1, 3, 4, 6, 7] and widths == [2] * 6
    np.testing.assert_array_equal(adaptive_pool_matrix(3, 6), np.repeat(np.eye(3), 2, axis=0))


def test_avg_pool_excludes_padding():
    x = jnp.arange(1.0, 9.0).reshape(1, 8, 1)
    y = avg_pool1d_exclude_pad(x)[0, :, 0]
    np.testing.assert_allclose(
        y, [(1 + 2 + 3) / 3, (2 + 3 + 4 + 5) / 4, (4 + 5 + 6 + 7) / 4, (6 + 7 + 8) / 3]
    )


def test_unet_modes_and_shapes():
    key = jax.random.key(0)
    x = jax.random.uniform(key, (3, 80, 32, 1), minval=-1, maxval=1)
    z = jax.random.normal(key, (3, 10))
    cond = jnp.array([0, 1, 1])
    g = UNet(conditional=True)
    apply = jax.jit(g.apply, static_argnames=("train", "mutable"))
    variables = init_variables("unet_generator", jax.random.key(1))
    out, updates = apply(variables, x, z, cond, train=True, mutable=("batch_stats",))
    chex.assert_shape(out, (3, 80, 32, 1))
    assert float(jnp.max(jnp.abs(out))) < 1.0
    changed = jax.tree.map(
        lambda a, b: bool(jnp.any(a != b)), variables["batch_stats"], updates["batch_stats"]
    )
    assert all(jax.tree.leaves(changed))
    # The condition changes the output; the filter ignores a missing condition.
    other = apply(variables, x, z, 1 - cond, train=False)
    assert float(jnp.max(jnp.abs(other - apply(variables, x, z, cond, train=False)))) > 0
    with pytest.raises(ValueError, match="needs cond"):
        g.apply(variables, x, z, None)
    f_vars = init_variables("unet_filter", jax.random.key(2))
    chex.assert_shape(jax.jit(UNet().apply)(f_vars, x, z), (3, 80, 32, 1))


def test_classifier_dropout_only_in_training():
    x = jax.random.normal(jax.random.key(0), (2, 80, 32, 1))
    net = AlexNet(num_classes=3)
    apply = jax.jit(net.apply, static_argnames="train")
    variables = init_variables("alexnet", jax.random.key(1), num_classes=3)
    eval_a = apply(variables, x)
    np.testing.assert_array_equal(eval_a, apply(variables, x))
    t1 = apply(variables, x, train=True, rngs={"dropout": jax.random.key(2)})
    t2 = apply(variables, x, train=True, rngs={"dropout": jax.random.key(3)})
    assert float(jnp.max(jnp.abs(t1 - t2))) > 0
    audio = jax.random.normal(jax.random.key(0), (2, 8192))
    audionet = AudioNet(num_classes=10)
    audionet_vars = init_variables("audionet", jax.random.key(1), num_classes=10)
    logits, features = jax.jit(audionet.apply)(audionet_vars, audio)
    chex.assert_shape((logits, features), ((2, 10), (2, 128, 64)))


def test_melgan_shapes():
    mel = jax.random.normal(jax.random.key(0), (2, 80, 32))
    gen = MelGANGenerator()
    wav = jax.jit(gen.apply)(init_variables("melgan_generator", jax.random.key(1)), mel)
    chex.assert_shape(wav, (2, 8192))
    disc = MelGANDiscriminator(num_scales=3)
    disc_vars = init_variables("melgan_discriminator", jax.random.key(2))
    outs = jax.jit(disc.apply)(disc_vars, wav)
    assert len(outs) == 3 and all(len(o) == 7 for o in outs)
    chex.assert_shape([o[-1] for o in outs], [(2, 32, 1), (2, 16, 1), (2, 8, 1)])


def test_invalid_discriminator_configuration_is_refused():
    with pytest.raises(ValueError, match="last two widths"):
        MelGANDiscriminator(num_scales=1, n_layers=2).init(jax.random.key(0), jnp.zeros((1, 8192)))


def test_grouped_conv_as_matmul_equals_xla_grouped_conv():
    from pcmelgan_jax.models import Conv

    x = jax.random.normal(jax.random.key(0), (2, 64, 16))
    as_matmul = Conv(32, (41,), strides=4, padding=20, groups=4, grouped_as_matmul=True)
    xla = Conv(32, (41,), strides=4, padding=20, groups=4, grouped_as_matmul=False)
    variables = xla.init(jax.random.key(1), x)
    np.testing.assert_allclose(as_matmul.apply(variables, x), xla.apply(variables, x), atol=1e-5)
    grads = [
        jax.grad(lambda v, m=m: jnp.sum(jnp.sin(m.apply(v, x))))(variables)
        for m in (as_matmul, xla)
    ]
    chex.assert_trees_all_close(grads[0], grads[1], atol=1e-4)


GROUPED_CONV_CASES = [  # (groups, c_in, c_out, kernel, stride, padding, length)
    (4, 16, 64, 41, 4, 20, 66),  # the discriminator's layers
    (8, 32, 16, 41, 4, 20, 67),
    (2, 4, 6, 5, 3, 1, 25),
    (3, 6, 9, 4, 4, 0, 7),  # the last 3 samples reach no window
    (2, 4, 4, 3, 1, 2, 9),
    (16, 64, 32, 41, 4, 20, 50),  # many groups, output not a multiple of q = 4
    (3, 6, 6, 7, 1, 3, 11),  # stride 1: q = 3 outputs per block
    (16, 64, 64, 41, 4, 20, 40),  # the 1024 -> 1024 layer's shape, narrower
]


def test_grouped_conv1d_blocks_chooses_the_smaller_matmul_form():
    """The discriminator's grouped layers at every scale (input lengths 8192, 4096, 2048):
    input patches where the output has 4x the channels, shifted outputs for 1024 -> 1024;
    and ``GROUPED_CONV_CASES`` test both forms."""
    from pcmelgan_jax.models.layers import _grouped_blocks_form

    for length in (8192, 4096, 2048):
        forms = [
            _grouped_blocks_form(length // 4**n, c_in, c_out, 41, 4, 20)
            for n, (c_in, c_out) in enumerate([(16, 64), (64, 256), (256, 1024), (1024, 1024)])
        ]
        assert forms == ["patches", "patches", "patches", "shifted"]
    cases = {_grouped_blocks_form(t, i, o, k, s, p) for _, i, o, k, s, p, t in GROUPED_CONV_CASES}
    assert cases == {"patches", "shifted"}


@pytest.mark.parametrize(
    "groups, c_in, c_out, kernel, stride, padding, length", GROUPED_CONV_CASES
)
@pytest.mark.parametrize("impl", ["grouped_conv1d_blocks", "grouped_conv1d_polyphase"])
def test_grouped_conv1d_equals_xla_grouped_conv(
    impl, groups, c_in, c_out, kernel, stride, padding, length
):
    """Value, input and kernel gradients of both forms of ``grouped_conv1d`` (batched
    matmuls, CPU; polyphase, elsewhere) vs XLA's grouped conv."""
    from pcmelgan_jax.models import layers

    grouped_conv1d = getattr(layers, impl)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, length, c_in), np.float32)
    w = rng.standard_normal((kernel, c_in // groups, c_out), np.float32)

    def xla(x, w):
        return jax.lax.conv_general_dilated(
            x,
            w,
            (stride,),
            [(padding, padding)],
            dimension_numbers=("NWC", "WIO", "NWC"),
            feature_group_count=groups,
        )

    def ours(x, w):
        return grouped_conv1d(x, w, stride, padding, groups)

    dy = rng.standard_normal(jax.eval_shape(xla, x, w).shape, np.float32)

    @jax.jit  # one compilation: op-by-op dispatch compiles every op
    def value_and_grads(x, w, dy):
        (y, vjp), (y_ref, vjp_ref) = jax.vjp(ours, x, w), jax.vjp(xla, x, w)
        return (y, *vjp(dy)), (y_ref, *vjp_ref(dy))

    for a, b in zip(*value_and_grads(x, w, dy), strict=True):
        chex.assert_trees_all_close(a, b, rtol=1e-5, atol=1e-5 * float(jnp.abs(b).max()))


def test_grouped_conv1d_runs_batched_matmuls_on_cpu():
    """On CPU the compiled grouped conv has no convolution left: XLA:CPU would run one small
    convolution per group (see ``layers.grouped_conv1d_blocks``)."""
    from pcmelgan_jax.models.layers import grouped_conv1d

    x = jnp.zeros((2, 64, 16))
    w = jnp.zeros((41, 4, 32))

    def hlo(fun):
        return jax.jit(fun).lower(x, w).compile().as_text()

    assert "convolution" not in hlo(lambda x, w: grouped_conv1d(x, w, 4, 20, 4))
    assert "convolution" not in hlo(
        jax.grad(lambda x, w: jnp.sum(grouped_conv1d(x, w, 4, 20, 4) ** 2), (0, 1))
    )
    assert "convolution" in hlo(  # the check sees XLA's grouped conv
        lambda x, w: jax.lax.conv_general_dilated(
            x, w, (4,), [(20, 20)], dimension_numbers=("NWC", "WIO", "NWC"),
            feature_group_count=4)
    )


def test_grouped_conv1d_computes_in_bfloat16():
    from pcmelgan_jax.models import Conv

    x = jax.random.normal(jax.random.key(0), (2, 64, 16))
    conv = Conv(32, (41,), strides=4, padding=20, groups=4, grouped_as_matmul=True)
    variables = conv.init(jax.random.key(1), x)
    bf16 = conv.clone(dtype=jnp.bfloat16)
    y = bf16.apply(variables, x)
    chex.assert_type(y, jnp.bfloat16)
    chex.assert_trees_all_close(y.astype(jnp.float32), conv.apply(variables, x), atol=0.1)
    grads = jax.grad(lambda v: jnp.sum(bf16.apply(v, x).astype(jnp.float32) ** 2))(variables)
    chex.assert_tree_all_finite(grads)


def _assert_same_values_and_grads(ours, ref, x, kernels, rng):
    """``ours(x, w)`` equals ``ref(x, w)`` in value, VJP (input and kernel) and, vmapped over
    ``kernels`` (as when training many seeds), value and gradients; one jit compilation.
    Each array's tolerance: 1e-5 of its reference's largest magnitude."""
    dy = rng.standard_normal(jax.eval_shape(ref, x, kernels[0]).shape, np.float32)

    @jax.jit  # one compilation: op-by-op dispatch compiles every op
    def value_and_grads(x, w, dy):
        (y, vjp), (y_ref, vjp_ref) = jax.vjp(ours, x, w[0]), jax.vjp(ref, x, w[0])
        batched = [
            jax.vmap(
                jax.value_and_grad(lambda x, w, f=f: jnp.sum(jnp.sin(f(x, w))), (0, 1)), (None, 0)
            )(x, w)
            for f in (ours, ref)
        ]
        return (y, *vjp(dy), batched[0]), (y_ref, *vjp_ref(dy), batched[1])

    got, want = value_and_grads(x, kernels, dy)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        chex.assert_trees_all_close(a, b, rtol=1e-5, atol=1e-5 * float(jnp.abs(b).max()))


@pytest.mark.parametrize(
    "x_shape, window, strides, padding, dilation",
    [
        ((2, 9, 7, 3), (3, 3), (1, 1), (1, 1), (1, 1)),  # the U-Net / AlexNet 3x3 form
        ((2, 11, 8, 4), (5, 5), (1, 1), (2, 2), (1, 1)),  # AlexNet's 5x5
        ((3, 11, 8, 2), (5, 3), (2, 3), (2, 0), (1, 1)),  # strides, odd sizes, unequal padding
        ((2, 12, 11, 3), (3, 2), (3, 2), (0, 2), (2, 3)),  # dilation
        ((2, 13, 5), (3,), (2,), (1,), (1,)),  # 1-d
        ((2, 6, 8), (5,), (1,), (2,), (1,)),  # the MelGAN discriminator's kernel-5 layer
    ],
)
@pytest.mark.parametrize("impl", ["conv_matmul_grads", "conv_patches_matmul"])
def test_matmul_conv_forms_equal_xla_conv(impl, x_shape, window, strides, padding, dilation):
    """Value, input and kernel gradients of the per-tap-matmul gradient conv and of the
    patch-matmul conv vs XLA's autodiff, also under vmap over the kernel (as when training
    many seeds)."""
    from pcmelgan_jax.models import layers

    conv = getattr(layers, impl)

    rng = np.random.default_rng(0)
    x = rng.standard_normal(x_shape, np.float32)
    w = rng.standard_normal((2, *window, x_shape[-1], 5), np.float32)  # two kernels to vmap

    def xla(x, w):
        spatial = "DHW"[3 - len(window) :]
        return jax.lax.conv_general_dilated(
            x,
            w,
            strides,
            [(p, p) for p in padding],
            rhs_dilation=dilation,
            dimension_numbers=(f"N{spatial}C", f"{spatial}IO", f"N{spatial}C"),
        )

    def ours(x, w):
        return conv(x, w, strides, padding, dilation)

    _assert_same_values_and_grads(ours, xla, x, w, rng)


@pytest.mark.parametrize(
    "x_shape, window, strides, padding, dilation",
    [
        ((2, 9, 7, 3), (3, 3), (1, 1), (1, 1), (1, 1)),  # the U-Net / AlexNet 3x3 form
        ((3, 11, 8, 2), (5, 3), (2, 3), (2, 0), (1, 1)),  # strides, odd sizes, unequal padding
        ((2, 12, 11, 3), (3, 2), (3, 2), (0, 2), (2, 3)),  # dilation
        ((2, 13, 5), (3,), (2,), (1,), (1,)),  # 1-d
        ((2, 6, 5, 4), (1, 1), (1, 1), (0, 0), (1, 1)),  # 1x1 (pointwise_conv's forward)
    ],
)
@pytest.mark.parametrize("x_axis, kernel_axis", [(0, 0), (None, 0), (0, None)])
def test_conv_nd_vmapped_over_kernels_is_patch_matmuls(
    x_shape, window, strides, padding, dilation, x_axis, kernel_axis, conv_groups
):
    """Under vmap (3 seeds) ``conv_nd`` equals XLA's convolution and its autodiff in value,
    input and kernel gradients, whichever of input and kernel is batched; with batched
    kernels the program has no convolution left (patches and batched matmuls), with one
    shared kernel the forward is one ungrouped convolution over the folded batch."""
    from pcmelgan_jax.models.layers import conv_nd

    rng = np.random.default_rng(3)
    n = 3
    x = rng.standard_normal((n, *x_shape), np.float32)
    w = rng.standard_normal((n, *window, x_shape[-1], 4), np.float32)
    x_in = x if x_axis == 0 else x[0]
    w_in = w if kernel_axis == 0 else w[0]
    spatial = "DHW"[3 - len(window) :]

    def xla(x, w):
        return jax.lax.conv_general_dilated(
            x, w, strides, [(p, p) for p in padding], rhs_dilation=dilation,
            dimension_numbers=(f"N{spatial}C", f"{spatial}IO", f"N{spatial}C"),
        )

    def ours(x, w):
        return conv_nd(x, w, strides, padding, dilation)

    y_shape = jax.eval_shape(jax.vmap(xla, (x_axis, kernel_axis)), x_in, w_in).shape
    dy = rng.standard_normal(y_shape, np.float32)

    def value_and_vjp(f):
        def one(x, w, dy):
            y, vjp = jax.vjp(f, x, w)
            return y, *vjp(dy)

        return jax.jit(jax.vmap(one, (x_axis, kernel_axis, 0)))

    got, want = value_and_vjp(ours)(x_in, w_in, dy), value_and_vjp(xla)(x_in, w_in, dy)
    for name, a, b in zip(("y", "dx", "dkernel"), got, want, strict=True):
        assert a.shape == b.shape, name
        chex.assert_trees_all_close(a, b, rtol=1e-5, atol=1e-5 * float(jnp.abs(b).max()))

    convs = conv_groups(value_and_vjp(ours), x_in, w_in, dy)
    if kernel_axis == 0:
        assert convs == []
    else:
        assert convs and all(g == (1, 1) for g in convs)


@pytest.mark.parametrize(
    "x_shape, window, padding",
    [
        ((2, 9, 7, 1), (3, 3), (1, 1)),  # the U-Net's first convolution
        ((2, 9, 7, 3), (3, 3), (1, 1)),
        ((3, 11, 8, 2), (5, 3), (2, 0)),  # unequal window and padding
        ((2, 13, 1), (3,), (1,)),  # 1-d
    ],
)
def test_conv_taps_forward_equals_xla_conv(x_shape, window, padding):
    """Value and gradients of the per-tap forward conv vs XLA's convolution and its autodiff,
    under jit and under vmap over the kernel (as when training many seeds)."""
    from pcmelgan_jax.models.layers import conv_nd, conv_taps_forward

    rng = np.random.default_rng(0)
    x = rng.standard_normal(x_shape, np.float32)
    w = rng.standard_normal((2, *window, x_shape[-1], 5), np.float32)  # two kernels to vmap
    ones = (1,) * len(window)

    def xla(x, w):
        return conv_nd(x, w, ones, padding, ones)

    def ours(x, w):
        return conv_taps_forward(x, w, padding)

    _assert_same_values_and_grads(ours, xla, x, w, rng)


@pytest.mark.parametrize("x_shape", [(2, 13, 6), (2, 5, 4, 3), (1, 1, 8)])
def test_pointwise_conv_equals_xla_conv(x_shape, monkeypatch):
    """Value and matmul gradients of the 1x1 convolution vs XLA's convolution and its
    autodiff, under jit and under vmap over the kernel, 1-d and 2-d; Conv with a 1x1 kernel
    uses it (same parameters and outputs as XLA's convolution, also in bfloat16)."""
    from pcmelgan_jax.models import layers
    from pcmelgan_jax.models.layers import Conv, conv_nd, pointwise_conv

    rng = np.random.default_rng(1)
    x = rng.standard_normal(x_shape, np.float32)
    w = rng.standard_normal((2, x_shape[-1], 5), np.float32)
    nd = len(x_shape) - 2

    def xla(x, w):
        return conv_nd(x, w.reshape((1,) * nd + w.shape), (1,) * nd, (0,) * nd, (1,) * nd)

    _assert_same_values_and_grads(pointwise_conv, xla, x, w, rng)

    used = []
    monkeypatch.setattr(layers, "pointwise_conv", lambda *a: used.append(1) or pointwise_conv(*a))
    module = Conv(5, (1,) * nd)
    variables = module.init(jax.random.key(0), x)
    assert used
    kernel = variables["params"]["kernel"]
    chex.assert_shape(kernel, (*(1,) * nd, x_shape[-1], 5))
    gain = variables["params"]["scale"] / jnp.sqrt(jnp.sum(kernel**2, axis=range(nd + 1)))
    want = xla(x, (kernel * gain)[(0,) * nd]) + variables["params"]["bias"]
    chex.assert_trees_all_close(module.apply(variables, x), want, rtol=1e-5, atol=1e-5)
    y16 = Conv(5, (1,) * nd, dtype=jnp.bfloat16).apply(variables, x)
    assert y16.dtype == jnp.bfloat16
    chex.assert_trees_all_close(y16.astype(jnp.float32), want, rtol=0.05, atol=0.05)


def _batch_norm_relu_reference(x, scale, bias, epsilon=1e-5):
    """relu(BatchNorm(x)) in training mode as plain jnp (differentiated by XLA's autodiff)."""
    axes = tuple(range(x.ndim - 1))
    xf = x.astype(jnp.float32)
    mean = xf.mean(axes)
    var = jnp.square(xf - mean).mean(axes)
    y = jax.nn.relu((xf - mean) * (jax.lax.rsqrt(var + epsilon) * scale) + bias)
    return y.astype(x.dtype), mean, var


def test_batch_norm_relu_equals_autodiff():
    """Values and the hand-written gradient (also of the statistics outputs) vs autodiff of the
    plain composition, under jit and under vmap (per-seed parameters and activations)."""
    from pcmelgan_jax.models.layers import batch_norm_relu

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 6, 5, 3), np.float32) * 2 + 0.5  # 2 seeds
    scale = rng.uniform(0.5, 1.5, (2, 3)).astype(np.float32)
    bias = rng.uniform(-0.5, 0.5, (2, 3)).astype(np.float32)
    cot = (
        rng.standard_normal(x.shape[1:], np.float32),
        rng.standard_normal(3).astype(np.float32),
        rng.standard_normal(3).astype(np.float32),
    )
    ours = lambda x, s, b: batch_norm_relu(x, s, b, 1e-5, jnp.dtype(jnp.float32))  # noqa: E731

    @jax.jit
    def run(x, scale, bias):
        (out, vjp), (out_ref, vjp_ref) = (
            jax.vjp(f, x[0], scale[0], bias[0]) for f in (ours, _batch_norm_relu_reference)
        )
        batched = [
            jax.vmap(
                jax.value_and_grad(lambda x, s, b, f=f: jnp.sum(jnp.sin(f(x, s, b)[0])), (0, 1, 2))
            )(x, scale, bias)
            for f in (ours, _batch_norm_relu_reference)
        ]
        return (out, vjp(cot), batched[0]), (out_ref, vjp_ref(cot), batched[1])

    got, want = run(x, scale, bias)
    chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-5)


def test_batchnorm_relu_option_matches_relu_of_batchnorm():
    """BatchNorm(relu=True): same outputs, running statistics and parameter gradients as
    relu(BatchNorm()) in both modes, float32 and bfloat16."""
    x = jax.random.normal(jax.random.key(0), (4, 3, 5, 2)) * 3 + 1
    for dtype in (jnp.float32, jnp.bfloat16):
        fused, plain = BatchNorm(relu=True, dtype=dtype), BatchNorm(dtype=dtype)
        variables = plain.init(jax.random.key(1), x, train=True)
        variables["params"]["scale"] = jnp.array([0.7, 1.3])
        variables["params"]["bias"] = jnp.array([0.2, -0.1])

        def run(bn, relu, variables=variables):
            def loss(params):
                y, upd = bn.apply(
                    {**variables, "params": params}, x, train=True, mutable=["batch_stats"]
                )
                y = jax.nn.relu(y) if relu else y
                return jnp.sum(jnp.sin(y.astype(jnp.float32))), (y, upd)

            (_, (y, upd)), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(
                variables["params"]
            )
            y_eval = bn.apply({**variables, **upd}, x, train=False)
            return y, upd, grads, jax.nn.relu(y_eval) if relu else y_eval

        got, want = run(fused, False), run(plain, True)
        chex.assert_type(got[0], dtype)
        tol = 1e-5 if dtype == jnp.float32 else 1e-2
        chex.assert_trees_all_close(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize(
    "option, c_in", [("taps_forward", 1), ("grads_as_matmul", 3), ("patches_matmul", 3)]
)
def test_conv_option_keeps_parameters_and_bfloat16(option, c_in):
    """``Conv(taps_forward=True)``, ``Conv(grads_as_matmul=True)`` and
    ``Conv(patches_matmul=True)``: the same parameters and gradients as the plain ``Conv``, in
    float32 and bfloat16."""
    from pcmelgan_jax.models import Conv

    x = jax.random.normal(jax.random.key(0), (2, 9, 7, c_in))
    ours = Conv(4, (3, 3), padding=1, **{option: True})
    xla = Conv(4, (3, 3), padding=1)
    variables = jax.jit(xla.init)(jax.random.key(1), x)
    chex.assert_trees_all_equal_structs(jax.eval_shape(ours.init, jax.random.key(1), x), variables)

    def grads(conv):
        loss = lambda v: jnp.sum(jnp.sin(conv.apply(v, x).astype(jnp.float32)))  # noqa: E731
        return jax.jit(jax.grad(loss))(variables)

    chex.assert_trees_all_close(grads(ours), grads(xla), rtol=1e-5, atol=1e-6)
    bf16 = ours.clone(dtype=jnp.bfloat16)
    chex.assert_type(jax.eval_shape(bf16.apply, variables, x), jnp.bfloat16)
    chex.assert_trees_all_close(grads(bf16), grads(xla.clone(dtype=jnp.bfloat16)), atol=0.05)


@pytest.mark.parametrize("h, w, c_in, c_out", [(5, 2, 9, 4), (4, 3, 3, 5), (1, 1, 2, 2)])
def test_upsampled_conv3x3_equals_conv_of_upsampled_input(h, w, c_in, c_out):
    """Values and full VJP of the low-resolution form against XLA's convolution of the
    nearest-upsampled input and its autodiff, under jit and vmap (odd sizes, one pixel)."""
    from pcmelgan_jax.models.layers import conv_nd, upsample_nearest2d, upsampled_conv3x3

    kx, kk, kd = jax.random.split(jax.random.key(3), 3)
    x = jax.random.normal(kx, (3, h, w, c_in))
    kernel = jax.random.normal(kk, (3, 3, c_in, c_out))
    dy = jax.random.normal(kd, (3, 2 * h, 2 * w, c_out))

    def reference(x, kernel):
        return conv_nd(upsample_nearest2d(x), kernel, (1, 1), (1, 1), (1, 1))

    def value_and_vjp(f):
        def run(x, kernel, dy):
            y, vjp = jax.vjp(f, x, kernel)
            return (y, *vjp(dy))
        return jax.jit(run)

    want = value_and_vjp(reference)(x, kernel, dy)
    got = value_and_vjp(upsampled_conv3x3)(x, kernel, dy)
    chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-5)
    # per-example kernels (the vmapped seeds' case)
    kernels = jnp.stack([kernel, 2 * kernel, -kernel])
    want = jax.vmap(value_and_vjp(reference))(x[:, None], kernels, dy[:, None])
    got = jax.vmap(value_and_vjp(upsampled_conv3x3))(x[:, None], kernels, dy[:, None])
    chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-5)


def test_conv_upsampled_input_keeps_parameters_gradients_and_bfloat16():
    """``Conv(x, upsampled=u)`` is ``Conv(concat([x, upsample(u)]))``: same parameters (the
    kernel's input channels: x's first), outputs and gradients, float32 and bfloat16."""
    from pcmelgan_jax.models import Conv
    from pcmelgan_jax.models.layers import upsample_nearest2d

    kx, ku = jax.random.split(jax.random.key(4))
    x, u = jax.random.normal(kx, (2, 10, 4, 3)), jax.random.normal(ku, (2, 5, 2, 6))
    conv = Conv(4, (3, 3), padding=1)
    concat = lambda x, u: jnp.concatenate([x, upsample_nearest2d(u)], -1)  # noqa: E731
    variables = jax.jit(conv.init)(jax.random.key(1), concat(x, u))
    chex.assert_trees_all_equal_structs(
        jax.eval_shape(conv.init, jax.random.key(1), x, u), variables)

    def grads(conv, split):
        def loss(v, x, u):
            y = conv.apply(v, x, u) if split else conv.apply(v, concat(x, u))
            return jnp.sum(jnp.sin(y.astype(jnp.float32)))
        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(variables, x, u)

    chex.assert_trees_all_close(grads(conv, True), grads(conv, False), rtol=1e-5, atol=1e-5)
    bf16 = conv.clone(dtype=jnp.bfloat16)
    chex.assert_type(jax.eval_shape(bf16.apply, variables, x, u), jnp.bfloat16)
    chex.assert_trees_all_close(grads(bf16, True), grads(bf16, False), rtol=0.02, atol=0.1)
    with pytest.raises(ValueError, match="half of x"):
        conv.apply(variables, x, u[:, :4])
    with pytest.raises(ValueError, match="3x3, padding 1"):
        Conv(4, (3, 3), padding=0).init(jax.random.key(1), x, u)


@pytest.mark.parametrize(
    "x_shape, window, strides",
    [
        ((2, 11, 9, 3), (3, 3), (2, 2)),  # AlexNet's overlapping pools
        ((2, 8, 6, 3), (2, 2), (2, 2)),  # the U-Net's
        ((2, 12, 4), (2,), (2,)),  # AudioNet's
        ((1, 7, 8, 2), (3, 2), (1, 3)),  # odd sizes, unequal strides
    ],
)
def test_max_pool_gradient_equals_xla_select_and_scatter(x_shape, window, strides):
    """Integer inputs make ties: the gradient goes to the first maximum, as XLA's does."""
    import flax.linen as nn

    from pcmelgan_jax.models.layers import max_pool

    rng = np.random.default_rng(0)
    x = rng.integers(0, 3, (2, *x_shape)).astype(np.float32)

    def xla(x):
        return nn.max_pool(x, window, strides, padding="VALID")

    def ours(x):
        return max_pool(x, window, strides)

    dy = rng.standard_normal(jax.eval_shape(xla, x[0]).shape, np.float32)

    @jax.jit
    def value_and_grads(x, dy):
        (y, vjp), (y_ref, vjp_ref) = jax.vjp(ours, x[0]), jax.vjp(xla, x[0])
        batched = [
            jax.vmap(jax.grad(lambda x, f=f: jnp.sum(jnp.sin(f(x)))))(x) for f in (ours, xla)
        ]
        return (y, *vjp(dy), batched[0]), (y_ref, *vjp_ref(dy), batched[1])

    for a, b in zip(*value_and_grads(x, dy), strict=True):
        chex.assert_trees_all_close(a, b, atol=1e-6)


@pytest.mark.parametrize("window", [(3, 3), (2, 2)])
def test_max_pool_backward_reads_a_stored_index(window):
    """XLA:CPU computes the tap index once and the backward reads it from memory: the
    compiled gradient has a fused computation that takes the int8 index as a parameter.
    Left elementwise, XLA fused the comparison chain into every per-tap read instead."""
    import re

    from pcmelgan_jax.models.layers import max_pool

    x = np.random.default_rng(0).standard_normal((4, 11, 9, 8)).astype(np.float32)

    def loss(x, w):
        return jnp.sum(jnp.sin(max_pool(jax.nn.relu(x * w), window, (2, 2))))

    pooled = jax.eval_shape(lambda x: max_pool(x, window, (2, 2)), x).shape
    with jax.default_device(jax.devices("cpu")[0]):  # XLA:CPU's program, whatever the backend
        hlo = jax.jit(jax.grad(loss)).lower(x, 2.0).compile().as_text()
    shape = ",".join(map(str, pooled))
    assert re.search(rf"= s8\[{shape}\]\{{[0-9,]*\}} parameter\(", hlo), hlo[:2000]
