"""Checks on an accelerator (``pytest -m gpu``; CI has none, so they are deselected there).

The PCMelGAN step on the default accelerator computes what it computes on the CPU: the same
state, batch and key (``jax.random`` draws the same bits on every backend), float32 with the
highest matmul precision (XLA's GPU default would be TF32). ``bench/gpu_suite.sh`` runs this
file together with ``tests/test_mixed_precision.py`` (bfloat16 stability) on the device.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bench.bench_train import make_batch
from pcmelgan_jax.models import registry
from pcmelgan_jax.training import pcmelgan
from pcmelgan_jax.training import state as st
from pcmelgan_jax.training.seeds import jit_step

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(jax.default_backend() == "cpu", reason="needs an accelerator"),
]

WIDTH = 0.25
NETWORKS = {
    "filter": ("unet_filter", {}),
    "generator": ("unet_generator", {}),
    "filter_discriminator": ("alexnet", {"num_classes": 2, "width": WIDTH}),
    "generator_discriminator": ("alexnet", {"num_classes": 3, "width": WIDTH}),
}
LR = {"filter": 1e-4, "generator": 1e-4, "filter_discriminator": 4e-4,
      "generator_discriminator": 4e-4}


def _run(device: jax.Device, num_steps: int) -> tuple[list[dict], dict]:
    """Metrics of ``num_steps`` pcmelgan steps on ``device`` and the final parameters."""
    txs = {n: st.adam(lr) for n, lr in LR.items()}
    nets = {n: st.network_state(registry.numpy_random_variables(a, i, **kw), txs[n])
            for i, (n, (a, kw)) in enumerate(NETWORKS.items())}
    monitors = {n: registry.numpy_random_variables("alexnet", 10 + k, num_classes=k,
                                                   width=WIDTH)["params"]
                for n, k in (("spec_digit", 10), ("spec_gender", 2))}
    hp = pcmelgan.PCMelGANHyper(discriminator_width=WIDTH,
                             monitor_widths=tuple((n, WIDTH) for n in sorted(monitors)))
    step = jit_step(pcmelgan.pcmelgan_step, hp=hp, txs=txs)
    put = lambda x: jax.device_put(jax.tree.map(jnp.asarray, x), device)
    state, batch, monitors = put(st.new_train_state(nets)), put(make_batch(8)), put(monitors)
    history = []
    with jax.default_matmul_precision("highest"):
        for i in range(num_steps):
            state, metrics = step(state, batch, jax.random.key(i), monitors)
            history.append(jax.device_get(metrics))
    params = jax.device_get({n: net.params for n, net in state.networks.items()})
    return history, params


def test_pcmelgan_step_on_accelerator_matches_cpu():
    accel = jax.devices()[0]
    assert accel.platform != "cpu"
    hist_a, params_a = _run(accel, 3)
    hist_c, params_c = _run(jax.devices("cpu")[0], 3)
    # accuracies are counts over 8 examples: a logit pair near a tie may flip; the rest are
    # losses. Step 1's filter terms come from the initial parameters (only the arithmetic
    # order differs); the later terms follow Adam updates whose first moves are +-lr wherever
    # a gradient is tiny, so they get a looser bound.
    for k, v in hist_c[0].items():
        if "acc" in k:
            assert 0 <= hist_a[0][k] <= 1, k
            continue
        rtol = 1e-3 if k.startswith("filter/") or k == "finite" else 2e-2
        np.testing.assert_allclose(hist_a[0][k], v, rtol=rtol, atol=1e-4, err_msg=k)
    for k, v in hist_c[-1].items():
        if "acc" not in k:
            np.testing.assert_allclose(hist_a[-1][k], v, rtol=5e-2, atol=1e-3, err_msg=k)
    # every parameter within a few Adam steps (lr <= 4e-4) of the CPU run's
    for (path, a), c in zip(jax.tree_util.tree_leaves_with_path(params_a),
                            jax.tree.leaves(params_c), strict=True):
        np.testing.assert_allclose(a, c, atol=5e-3, err_msg=jax.tree_util.keystr(path))
