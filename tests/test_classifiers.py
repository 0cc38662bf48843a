"""The classifiers stage: label smoothing, warm-up, initialisation and the per-classifier step."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bench.bench_train import make_batch as _batch  # the synthetic batch the benchmarks use
from pcmelgan_jax.configs import classifiers as classifiers_config
from pcmelgan_jax.models import AudioNet
from pcmelgan_jax.models.layers import he_normal_reinit
from pcmelgan_jax.runtime import sharding
from pcmelgan_jax.training import classifiers as classifiers_stage
from pcmelgan_jax.training import state as st


def test_classifier_label_smoothing_per_domain():
    """Spectrogram and audio classifiers take their own smoothing (the paper: 0 for both; the
    small config: 0.1 for the spectrogram AlexNets only); a value outside [0, 1) is refused
    by its field's name."""
    paper, small = classifiers_config.get_config(), classifiers_config.get_config("small")
    assert set(classifiers_stage.classifier_label_smoothing(paper).values()) == {0.0}
    assert classifiers_stage.classifier_label_smoothing(small) == {
        "spec_digit": 0.1, "spec_gender": 0.1, "audio_digit": 0.0, "audio_gender": 0.0}
    for field, value in (("spec_label_smoothing", 1.0), ("audio_label_smoothing", -0.1)):
        config = classifiers_config.get_config("small")
        config[field] = value
        with pytest.raises(ValueError, match=field):
            classifiers_stage.classifier_label_smoothing(config)


def test_classifier_optimizers_warm_up_per_domain():
    """The small config warms the AudioNets' rate up over 100 updates (their first update is
    1/100 of Adam's at the full rate) and not the AlexNets'; the paper's config warms up
    neither."""
    params = {"w": jnp.asarray([0.5, -1.0])}
    grads = {"w": jnp.asarray([0.2, -0.1])}

    def first_update(tx):
        return tx.update(grads, tx.init(params), params)[0]["w"]

    small, paper = classifiers_config.get_config("small"), classifiers_config.get_config()
    full = first_update(st.adam(small.learning_rate, small.b1, small.b2))
    txs = classifiers_stage.classifier_optimizers(small)
    assert sorted(txs) == sorted(small.classifiers)
    for name, tx in txs.items():
        scale = 0.01 if name.startswith("audio") else 1.0
        chex.assert_trees_all_close(first_update(tx), scale * full, rtol=1e-6)
    full = first_update(st.adam(paper.learning_rate, paper.b1, paper.b2))
    for tx in classifiers_stage.classifier_optimizers(paper).values():
        chex.assert_trees_all_close(first_update(tx), full, rtol=0)
    small.audio_warmup_steps = -1
    with pytest.raises(ValueError, match="audio_warmup_steps must be an integer >= 0"):
        classifiers_stage.classifier_optimizers(small)


def test_he_normal_reinit_draws_kernels_at_the_relu_gain_and_zeroes_biases():
    params = {"conv": {"kernel": jnp.ones((3, 50, 64)), "bias": jnp.ones(64)},
              "fc": {"kernel": jnp.ones((4000, 30)), "bias": jnp.ones(30)}}
    out = he_normal_reinit(params, jax.random.key(0))
    assert jax.tree.structure(out) == jax.tree.structure(params)
    for name, fan_in in (("conv", 150), ("fc", 4000)):
        np.testing.assert_allclose(float(jnp.std(out[name]["kernel"])), np.sqrt(2 / fan_in),
                                   rtol=0.05)
        assert abs(float(jnp.mean(out[name]["kernel"]))) < 0.05 * np.sqrt(2 / fan_in)
        assert not jnp.any(out[name]["bias"])


def test_audionet_depends_on_its_input_only_with_he_init():
    """Why the small config initialises the AudioNets with ``he``: at PyTorch's default init
    the waveform's scale shrinks through the eight layers until the logits are the biases'
    (their spread over a batch of speech-scale noise is ~1e-4, and the digit AudioNet can stay
    at chance, ln 10, for a whole run); He's init keeps it, so the logits follow the input.
    The stage applies the field per domain."""
    audio = 0.12 * jax.random.normal(jax.random.key(1), (16, 8192))
    model = AudioNet(num_classes=10, width=0.5)
    torch_init = model.init(jax.random.key(0), audio[:1])["params"]
    spread = {name: float(jnp.mean(jnp.std(model.apply({"params": p}, audio)[0], axis=0)))
              for name, p in (("torch", torch_init),
                              ("he", he_normal_reinit(torch_init, jax.random.key(2))))}
    assert spread["torch"] < 1e-3 and spread["he"] > 0.1, spread
    small, paper = classifiers_config.get_config("small"), classifiers_config.get_config()
    assert classifiers_stage.classifier_inits(small) == {
        "spec_digit": "torch", "spec_gender": "torch", "audio_digit": "he", "audio_gender": "he"}
    assert set(classifiers_stage.classifier_inits(paper).values()) == {"torch"}
    small.classifiers = ("audio_gender", "spec_gender")
    mesh = sharding.make_mesh(jax.devices()[:1])
    stage = classifiers_stage.ClassifiersStage(small, "/unused", mesh)
    params = jax.device_get(stage.initial_state().networks)
    assert not jnp.any(params["audio_gender"].params["conv1"]["bias"])  # he: zero biases
    assert jnp.all(params["spec_gender"].params["conv1"]["bias"] != 0)  # torch: uniform
    small.spec_init = "xavier"
    with pytest.raises(ValueError, match="spec_init must be one of"):
        classifiers_stage.classifier_inits(small)


def test_classifier_step_smooths_per_classifier():
    """``classifier_step``'s reported loss is each classifier's smoothed cross-entropy: with
    {spec_gender: 0.3} that loss moves, spec_digit's (no entry: 0) stays, bit for bit."""
    width = 0.25
    names = ("spec_digit", "spec_gender")
    txs = {n: optax.sgd(0.0) for n in names}
    key = jax.random.key(0, impl="rbg")
    nets = {n: st.network_state(st.init_variables(
        "alexnet", {"num_classes": k, "width": width}, jax.random.fold_in(key, k)), txs[n])
        for n, k in (("spec_digit", 10), ("spec_gender", 2))}
    state, batch = st.new_train_state(nets), _batch(8)
    widths = {n: width for n in names}
    losses = [jax.jit(functools.partial(classifiers_stage.classifier_step, txs=txs, widths=widths,
                                        label_smoothing=smoothing))(state, batch, key)[1]
              for smoothing in (None, {"spec_gender": 0.3})]
    assert float(losses[0]["spec_digit/loss"]) == float(losses[1]["spec_digit/loss"])
    assert float(losses[0]["spec_gender/loss"]) != float(losses[1]["spec_gender/loss"])


def test_adam_warmup_scales_the_first_updates():
    """With ``warmup_steps`` = 4, update n of Adam is (n + 1) / 4 of the constant-rate
    update for the same gradients up to n = 3, and equal from then on; 0 is plain Adam."""
    params = {"w": jnp.asarray([0.5, -1.0, 2.0])}
    grads = [{"w": jnp.asarray([0.1, -0.3, 0.2]) * (1 + n)} for n in range(6)]

    def updates(tx):
        state, out = tx.init(params), []
        for g in grads:
            u, state = tx.update(g, state, params)
            out.append(u["w"])
        return out

    plain, warm = updates(st.adam(1e-3)), updates(st.adam(1e-3, warmup_steps=4))
    chex.assert_trees_all_close(updates(st.adam(1e-3, warmup_steps=0)), plain, rtol=0)
    for n, (u, v) in enumerate(zip(plain, warm, strict=True)):
        chex.assert_trees_all_close(v, min(1.0, (n + 1) / 4) * u, rtol=1e-6)
    with pytest.raises(ValueError, match="warmup_steps"):
        st.adam(1e-3, warmup_steps=-1)
