"""The vocoder stage: model selection by mel L1 and the warm-up step."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bench.bench_train import make_batch as _batch  # the synthetic batch the benchmarks use
from pcmelgan_jax.configs import vocoder as vocoder_config
from pcmelgan_jax.runtime import sharding
from pcmelgan_jax.training import seeds as seeds_lib
from pcmelgan_jax.training import state as st
from pcmelgan_jax.training import vocoder


def test_vocoder_keeps_best_generator_by_mel_l1():
    from pcmelgan_jax.training.vocoder import update_best

    book = {"best_mel_l1": None, "best_step": None}
    improved = [
        step
        for step, value in ((1, 2.0), (2, 1.5), (3, 1.7), (4, 1.2), (5, 1.3))
        if update_best(book, step, value)
    ]
    assert improved == [1, 2, 4]
    assert book == {"best_mel_l1": 1.2, "best_step": 4}
    assert vocoder_config.get_config("small").mel_loss_weight > 0
    assert vocoder_config.get_config().mel_loss_weight == 0  # off by default, as the original
    for variant in (None, "small"):
        hp = vocoder.hyper(vocoder_config.get_config(variant))
        assert hp.stft_loss_weight == 0  # off by default
        assert hp.stft_resolutions == ((128, 32, 128), (256, 64, 256), (512, 128, 512))


def test_vocoder_warmup_step_trains_generator_on_reconstruction_losses_only():
    """G's loss is 10 x mel L1 + 2 x STFT loss (against the real audio); D is untouched."""
    from pcmelgan_jax.audio import log_mel
    from pcmelgan_jax.training.losses import multi_resolution_stft_loss

    hp = vocoder.VocoderHyper(mel_loss_weight=10.0, stft_loss_weight=2.0,
                              generator_arch=(("ngf", 8),))
    txs = {"generator": optax.adam(1e-3)}
    gen = st.network_state(
        st.init_variables("melgan_generator", {"ngf": 8}, jax.random.key(0, impl="rbg")),
        txs["generator"],
    )
    other = st.network_state({"params": {"w": jnp.ones((3,))}}, optax.adam(1e-3))
    state = st.new_train_state({"generator": gen, "discriminator": other})
    batch = {k: jnp.asarray(v) for k, v in _batch(2).items()}
    mel = jax.jit(log_mel)(batch["audio"])
    fake = jax.jit(lambda p: hp.generator().apply({"params": p}, mel))(gen.params)
    expected = float(jax.jit(lambda f: jnp.mean(jnp.abs(log_mel(f) - mel)))(fake))
    stft, sc, mag = jax.jit(multi_resolution_stft_loss)(fake, batch["audio"])
    initial = jax.device_get(gen.params)
    step = seeds_lib.jit_step(vocoder.vocoder_warmup_step, hp=hp, txs=txs)
    new, metrics = step(state, batch, jax.random.key(0))  # donates state
    np.testing.assert_allclose(metrics["mel_l1"], expected, rtol=1e-5)
    np.testing.assert_allclose(metrics["stft/spectral_convergence"], sc, rtol=1e-5)
    np.testing.assert_allclose(metrics["stft/log_magnitude"], mag, rtol=1e-5)
    np.testing.assert_allclose(sc + mag, stft, rtol=1e-6)
    np.testing.assert_allclose(
        metrics["generator/loss"],
        10.0 * metrics["mel_l1"] + 2.0 * (metrics["stft/spectral_convergence"]
                                          + metrics["stft/log_magnitude"]),
        rtol=1e-5,
    )
    assert int(new.step) == 1 and metrics["finite"] == 1.0
    assert set(metrics) == {"generator/loss", "mel_l1", "stft/spectral_convergence",
                            "stft/log_magnitude", "finite"}
    np.testing.assert_array_equal(new.networks["discriminator"].params["w"], np.ones(3))
    changed = jax.tree.map(
        lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))),
        new.networks["generator"].params, initial,
    )
    assert all(jax.tree.leaves(changed))


def test_vocoder_warmup_needs_a_reconstruction_loss(tmp_path):
    config = vocoder_config.get_config()
    config.discriminator_start_step = 10
    with pytest.raises(ValueError, match="mel_loss_weight or stft_loss_weight must be > 0"):
        vocoder.build_stage(config, str(tmp_path), sharding.make_mesh(jax.devices()[:1]))
    config.stft_loss_weight = 1.0  # the STFT loss alone is enough to warm up on
    assert vocoder._warmup_steps(config, vocoder.hyper(config)) == 10


def test_vocoder_samples_go_to_tensorboard(tiny_data, tmp_path):
    """The stage's samples: real and vocoded wavs in samples/step_<S>/ and, at 8 kHz, in
    TensorBoard under ``samples/audio/<i>_{real,vocoded}`` (the loop's calls to
    ``write_samples``: tests/test_loop.py)."""
    import os

    from pcmelgan_jax.audio import SAMPLE_RATE
    from pcmelgan_jax.logging_utils import MetricWriter, read_summaries

    c = vocoder_config.get_config("small")
    c.data_dir, c.eval_batch_size, c.num_samples = tiny_data, 8, 2
    c.generator.ngf, c.discriminator.num_scales = 4, 1
    workdir = str(tmp_path / "run")
    stage = vocoder.build_stage(c, workdir, sharding.make_mesh(jax.devices()[:1]))
    writer = MetricWriter(workdir, enabled=True)
    for step in (1, 2):
        stage.write_samples(stage.state, step, writer)
    writer.close()
    kinds = [f"{i}_{k}" for i in range(2) for k in ("real", "vocoded")]
    assert sorted(os.listdir(os.path.join(workdir, "samples", "step_0000001"))) == [
        f"{k}.wav" for k in kinds]
    audio = [(step, v) for step, v in read_summaries(os.path.join(workdir, "tensorboard"))
             if v.HasField("audio")]
    assert sorted((step, v.tag) for step, v in audio) == [
        (s, f"samples/audio/{k}") for s in (1, 2) for k in kinds]
    assert {v.audio.sample_rate for _, v in audio} == {SAMPLE_RATE}
    assert {v.audio.length_frames for _, v in audio} == {8192}
