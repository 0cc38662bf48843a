"""The networks (``unet``, ``melgan``, ``classifiers``, ``registry``): parameter counts,
shapes, train/evaluation behaviour."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pcmelgan_jax.models import AlexNet, AudioNet, MelGANDiscriminator, MelGANGenerator, UNet
from pcmelgan_jax.models.registry import init_variables, variable_shapes


def count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize(
    "network, arch, expected",
    [
        ("unet_filter", {}, 581_211 - 202),  # F without its unused conditioning layers
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
def test_parameter_counts_match_the_original(network, arch, expected):
    assert count(variable_shapes(network, **arch)["params"]) == expected


def test_filter_has_no_conditioning_parameters():
    params = variable_shapes("unet_filter")["params"]
    assert "embed_condition" not in params and "project_cond" not in params


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
