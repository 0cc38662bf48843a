"""Evaluation-mode U-Net with folded constants (``unet_inference``): the module's function."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pcmelgan_jax.models.registry import jit_init
from pcmelgan_jax.models.unet import UNet
from pcmelgan_jax.models.unet_inference import prepare_unet, unet_apply


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
    expected = model.apply(variables, x, z, cond, train=False)
    got = jax.jit(lambda p, x, z, c: unet_apply(model, p, x, z, c))(
        prepare_unet(model, variables), x, z, cond)
    assert float(jnp.std(expected)) > 0.05  # not saturated or constant
    chex.assert_trees_all_close(got, expected, atol=1e-4)  # the parity tolerance


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
