"""bfloat16 compute with float32 parameters, batch statistics and optimizer state.

Error bounds. bfloat16 keeps 8 significant bits: one rounding changes a value by at most
2^-9 (about 2e-3) relatively. A bf16 network rounds its input, every weight and every
activation (sums of products are accumulated in float32 by XLA's convolutions and matmuls).
Independent roundings add roughly in quadrature, so over the ~20 layers of the U-Net (fewer
in AlexNet/AudioNet), with ~3 roundings each, the output error is expected around
sqrt(60) * 2e-3 ~ 1.5e-2 of the output's scale at worst. Hence an RMS bound of 2e-2 of the
output's RMS and a max bound of 5e-2 of its max |value| (measured, evaluation mode: RMS
0.4-0.8%, max 0.7-1.7%).

The exception is the freshly initialised U-Net in TRAINING mode: with batch statistics a
deep ReLU/BatchNorm network at initialisation amplifies input perturbations strongly with
depth (mean-field theory of BatchNorm), so there even the float32 network moves its output
by ~1% RMS when only its input (0.1% RMS change) is rounded to bf16, and bf16 compute moves
it by ~4%. That mode is bounded relative to this float32 sensitivity instead (measured
ratio: about 4.5; PyTorch's initialisation: 5-6).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bench.bench_train import make_batch as _batch  # the synthetic batch the benchmarks use
from pcmelgan_jax.models import registry
from pcmelgan_jax.training import pcmelgan
from pcmelgan_jax.training import state as st
from pcmelgan_jax.training.classifiers import spectrogram_batch
from pcmelgan_jax.training.seeds import jit_step

WIDTH = 0.25  # FD, GD and monitor AlexNets (fast)


def _rel_errors(ref, out) -> tuple[float, float]:
    """(RMS error / RMS(ref), max error / max |ref|)."""
    ref, out = np.asarray(ref, np.float64), np.asarray(out, np.float64)
    err = out - ref
    return (
        float(np.sqrt(np.mean(err**2)) / np.sqrt(np.mean(ref**2))),
        float(np.max(np.abs(err)) / np.max(np.abs(ref))),
    )


# ----------------------------------------------------------------------------- forward passes


def _compiled(fn, *args):
    """``jax.jit(fn)`` compiled without backend optimisation (quick to build), applied."""
    return jax.jit(fn).lower(*args).compile(compiler_options=registry.INIT_COMPILER_OPTIONS)(*args)


@pytest.fixture(scope="module")
def inputs():
    batch = _batch(4)
    audio = jnp.asarray(batch["audio"])
    spec = spectrogram_batch(audio)
    z = jnp.asarray(np.random.RandomState(1).randn(4, 10), jnp.float32)
    return dict(audio=audio, spec=spec, z=z, cond=jnp.array([0, 1, 0, 1]))


# The filter is the same module as the generator without the conditioning layers; it runs in
# bfloat16 in the training tests below.
@pytest.mark.parametrize(
    "network, kwargs",
    [
        ("unet_generator", {}),
        ("alexnet", {"num_classes": 10, "width": WIDTH}),
        ("audionet", {"num_classes": 10, "width": WIDTH}),
    ],
)
def test_bf16_forward_close_to_float32(inputs, network, kwargs):
    variables = registry.numpy_random_variables(network, 0, **kwargs)
    f32 = registry.build_model(network, **kwargs)
    bf16 = registry.build_model(network, dtype=jnp.bfloat16, **kwargs)
    unet = network.startswith("unet")
    if unet:
        args = (inputs["spec"], inputs["z"], inputs["cond"])
    elif network == "alexnet":
        args = (inputs["spec"],)
    else:
        args = (inputs["audio"],)

    def run(v, rounded, x, *rest):
        out = {"f32": f32.apply(v, x, *rest), "bf16": bf16.apply(v, x, *rest)}  # eval mode
        if unet:  # training mode (batch statistics)
            train = lambda m, x: m.apply(v, x, *rest, train=True, mutable=["batch_stats"])
            out["f32_train"] = train(f32, x)[0]
            out["bf16_train"], out["bf16_stats"] = train(bf16, x)
            out["f32_train_rounded_input"] = train(f32, rounded)[0]
        return out

    # The input rounded to bf16 outside the program: XLA:GPU may drop a float32 -> bf16 ->
    # float32 round trip inside one (excess precision). A float32 reference, not TF32, on GPUs.
    rounded = jnp.asarray(np.asarray(args[0]).astype(jnp.bfloat16).astype(np.float32))
    with jax.default_matmul_precision("highest"):
        out = _compiled(run, variables, rounded, *args)
    refs, outs = out["f32"], out["bf16"]
    refs, outs = (refs, outs) if isinstance(refs, tuple) else ((refs,), (outs,))
    for ref, got in zip(refs, outs, strict=True):
        assert got.dtype == jnp.float32  # outputs come back in float32 for the losses
        rms, mx = _rel_errors(ref, got)
        assert rms < 2e-2 and mx < 5e-2, (network, rms, mx)
    if unet:  # see the module doc: bounded by the float32 network's own sensitivity
        assert out["bf16_train"].dtype == jnp.float32
        for leaf in jax.tree.leaves(out["bf16_stats"]):
            assert leaf.dtype == jnp.float32
        sensitivity = _rel_errors(out["f32_train"], out["f32_train_rounded_input"])[0]
        rms = _rel_errors(out["f32_train"], out["bf16_train"])[0]
        assert 0 < sensitivity and rms < 12 * sensitivity, (network, rms, sensitivity)


def test_float32_is_the_default_and_bad_dtype_is_named():
    hp = pcmelgan.PCMelGANHyper()
    assert hp.compute_dtype == "float32" and hp.filter().dtype == jnp.float32
    hp16 = pcmelgan.PCMelGANHyper(compute_dtype="bfloat16", monitor_widths=(("spec_digit", 0.5),))
    assert hp16.generator().dtype == jnp.bfloat16
    assert all(d.dtype == jnp.bfloat16 for d in hp16.discriminators())
    assert hp16.monitor("spec_digit").dtype == jnp.bfloat16
    assert hp16.monitor("spec_digit").width == 0.5
    with pytest.raises(ValueError, match="compute_dtype.*'float16'"):
        pcmelgan.PCMelGANHyper(compute_dtype="float16")

    from pcmelgan_jax.configs import pcmelgan as pcmelgan_config

    config = pcmelgan_config.get_config("small")
    assert pcmelgan.hyper(config).compute_dtype == "float32"
    config.compute_dtype = "bfloat16"
    assert pcmelgan.hyper(config).dtype == jnp.bfloat16
    config.compute_dtype = "bf16"
    with pytest.raises(ValueError, match="compute_dtype"):
        pcmelgan.hyper(config)


# ----------------------------------------------------------------------------- training

N_STEPS = 20
NETWORKS = {
    "filter": ("unet_filter", {}),
    "generator": ("unet_generator", {}),
    "filter_discriminator": ("alexnet", {"num_classes": 2, "width": WIDTH}),
    "generator_discriminator": ("alexnet", {"num_classes": 3, "width": WIDTH}),
}
# the small config's learning rates
LR = {"filter": 3e-4, "generator": 3e-4, "filter_discriminator": 4e-4,
      "generator_discriminator": 4e-4}


@pytest.fixture(scope="module")
def setup():
    """Initial state (NumPy-drawn variables: no init compile), Adam, monitors, batch, keys."""
    txs = {n: st.adam(lr) for n, lr in LR.items()}
    nets = {
        n: st.network_state(registry.numpy_random_variables(a, i, **kw), txs[n])
        for i, (n, (a, kw)) in enumerate(NETWORKS.items())
    }
    monitors = {
        n: registry.numpy_random_variables("alexnet", 10 + k, num_classes=k, width=WIDTH)[
            "params"
        ]
        for n, k in (("spec_digit", 10), ("spec_gender", 2))
    }
    hp = pcmelgan.PCMelGANHyper(
        discriminator_width=WIDTH, monitor_widths=tuple((n, WIDTH) for n in sorted(monitors))
    )
    return dict(
        txs=txs, init=st.new_train_state(nets), monitors=monitors, hp=hp,
        batch=jax.tree.map(jnp.asarray, _batch(4)), rng=jax.random.key(42),
    )


def test_bf16_step_keeps_float32_state(setup):
    """Parameters, batch statistics and Adam moments after a bfloat16 step are float32 (the
    step's output types, from tracing it: nothing is compiled)."""
    hp = dataclasses.replace(setup["hp"], compute_dtype="bfloat16")
    step = jit_step(pcmelgan.pcmelgan_step, hp=hp, txs=setup["txs"])
    state, metrics = jax.eval_shape(
        step, setup["init"], setup["batch"], setup["rng"], setup["monitors"]
    )
    assert set(state.networks) == set(NETWORKS)
    for name, net in state.networks.items():
        for part in ("params", "batch_stats", "opt_state"):
            leaves = jax.tree_util.tree_leaves_with_path(getattr(net, part))
            assert leaves or (part == "batch_stats" and "discriminator" in name), (name, part)
            for path, leaf in leaves:
                if jnp.issubdtype(leaf.dtype, jnp.floating):
                    assert leaf.dtype == jnp.float32, (name, part, jax.tree_util.keystr(path))
        mu = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(net.opt_state)
              if "mu" in jax.tree_util.keystr(path)]
        assert mu and all(leaf.dtype == jnp.float32 for leaf in mu), name
    assert any(k.startswith("monitor/generator_digit") for k in metrics)
    for k, v in metrics.items():
        assert v.dtype == jnp.float32, k


def _rounding_perturbed(params, rng: np.random.Generator):
    """``params`` with every leaf multiplied by 1 + u, u uniform in +-2^-9."""
    return jax.tree.map(
        lambda p: p * (1 + rng.uniform(-(2.0**-9), 2.0**-9, p.shape)).astype(p.dtype), params
    )


def _train(setup, compute_dtype: str, filter_only: bool, perturbations: int = 0) -> list:
    """Metrics of N_STEPS pcmelgan_step calls on the fixed batch (same keys, so the same dropout
    masks and noise, for every dtype): one history from the initial state, then one from each
    of ``perturbations`` copies of it whose float parameters are multiplied by 1 + u, u uniform
    in +-2^-9 (one bfloat16 rounding), all with the same compiled step."""
    hp = dataclasses.replace(setup["hp"], compute_dtype=compute_dtype, filter_only=filter_only)
    init = setup["init"]
    if filter_only:
        init = init.replace(networks={k: init.networks[k] for k in TOLERANCES["filter_only"]})
    step = jit_step(pcmelgan.pcmelgan_step, hp=hp, txs=setup["txs"])
    args = (setup["batch"], setup["rng"], None)
    step = step.lower(init, *args).compile(compiler_options=registry.INIT_COMPILER_OPTIONS)
    starts = [init]
    for seed in range(perturbations):
        rng = np.random.default_rng(seed)
        starts.append(init.replace(networks={
            k: net.replace(params=_rounding_perturbed(net.params, rng))
            for k, net in init.networks.items()
        }))
    histories = []
    for start in starts:
        state = jax.tree.map(jnp.array, start)  # a copy: the step donates it
        history = []
        for _ in range(N_STEPS):
            state, metrics = step(state, *args)
            history.append(metrics)
        histories.append(jax.device_get(history))
    return histories


# relative tolerance on the last-5-step mean of each network's loss or distortion, unless
# float32 itself moves further when its start moves by one bf16 rounding (see the test)
TOLERANCES = {
    "filter_only": {"filter": ("filter/distortion", 0.05),
                    "filter_discriminator": ("filter_discriminator/loss", 0.15)},
    "full": {"filter": ("filter/distortion", 0.05),
             "generator": ("generator/distortion", 0.05),
             "filter_discriminator": ("filter_discriminator/loss", 0.15),
             "generator_discriminator": ("generator_discriminator/loss", 0.15)},
}


# The Filter baseline's step (F and FD: about half the compile time) by default; all four
# networks with -m slow.
@pytest.mark.parametrize("mode", ["filter_only", pytest.param("full", marks=pytest.mark.slow)])
def test_bf16_training_is_stable_and_tracks_float32(setup, mode):
    h32, *perturbed = _train(setup, "float32", mode == "filter_only", perturbations=3)
    (h16,) = _train(setup, "bfloat16", mode == "filter_only")
    assert all(m["finite"] == 1.0 for h in (h32, h16, *perturbed) for m in h)
    # The trajectories, as the mean of the last 5 steps. float32 and bf16 differ by the
    # forward rounding (a few % in training mode, see the module doc) fed back through the
    # Adam updates, and these 20 adversarial steps amplify any difference: float32 started from
    # parameters moved by one bf16 rounding ends up (largest of 3) 3 % away in F's distortion,
    # 2 % in FD's loss, 7 % in G's distortion and 14 % in GD's loss; bf16 differed by 2.2, 0.4,
    # 8.7 and 5.3 %. bf16 may differ by twice that spread; an unstable bf16 run (overflow, lost
    # updates) drifts by far more.
    tail = lambda h, k: float(np.mean([m[k] for m in h[-5:]]))
    for k, tol in TOLERANCES[mode].values():
        a, b = tail(h32, k), tail(h16, k)
        spread = max(abs(tail(h, k) - a) for h in perturbed)
        assert abs(b - a) <= max(tol * abs(a), 2 * spread), (k, a, b, spread)
    # and the run trained: F's distortion moved from its first value
    first = float(h16[0]["filter/distortion"])
    assert abs(tail(h16, "filter/distortion") - first) > 0.05 * first
