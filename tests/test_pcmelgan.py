"""The PCMelGAN step (update order, 1 vs 4 devices, the active penalties) and its
stage's helpers (BatchNorm recalibration, input paths)."""

from __future__ import annotations

import dataclasses
import functools
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bench.bench_train import make_batch as _batch  # the synthetic batch the benchmarks use
from pcmelgan_jax.configs import pcmelgan as pcmelgan_config
from pcmelgan_jax.models import AlexNet, BatchNorm
from pcmelgan_jax.models.classifiers import softmax_cross_entropy
from pcmelgan_jax.models.registry import build_model
from pcmelgan_jax.models.unet import DIGIT_CLASSIFIER
from pcmelgan_jax.runtime import sharding
from pcmelgan_jax.training import classifiers as classifiers_stage
from pcmelgan_jax.training import pcmelgan, pcmelgan_stage
from pcmelgan_jax.training import seeds as seeds_lib
from pcmelgan_jax.training import stage as stage_lib
from pcmelgan_jax.training import state as st
from pcmelgan_jax.training.losses import label_mean_gap

WIDTH = 0.25  # narrow AlexNets: the same code paths, a fraction of the compile time
LAMB = 100.0
SGD_LR = 1e-4  # small: the step stays well-conditioned, so rounding differences stay small


@pytest.fixture(scope="module")
def pcm():
    """Initial PCMelGAN state (host), monitors, a batch and the 1-device step result."""
    # eps above any reachable L1 distortion keeps the distortion hinge at exactly zero: its
    # gradient, a sign, would otherwise flip with rounding for near-equal elements and make
    # 1- and 4-device updates differ legitimately. (The order test recomputes the hinge.)
    w = WIDTH
    hp = pcmelgan.PCMelGANHyper(
        eps=10.0, lamb=100.0, discriminator_width=w,
        monitor_widths=(("spec_digit", w), ("spec_gender", w)),
    )
    # SGD keeps parameter differences proportional to gradient differences (Adam's first
    # step is lr * sign(g), which flips for gradients that are zero up to rounding).
    txs = {
        n: optax.sgd(SGD_LR)
        for n in ("filter", "generator", "filter_discriminator", "generator_discriminator")
    }
    key = jax.random.key(0, impl="rbg")
    arch = {
        "filter": ("unet_filter", {}),
        "generator": ("unet_generator", {}),
        "filter_discriminator": ("alexnet", {"num_classes": 2, "width": w}),
        "generator_discriminator": ("alexnet", {"num_classes": 3, "width": w}),
    }
    nets = {
        n: st.network_state(st.init_variables(a, kw, jax.random.fold_in(key, i)), txs[n])
        for i, (n, (a, kw)) in enumerate(arch.items())
    }
    monitors = {
        n: st.init_variables("alexnet", {"num_classes": k, "width": w},
                             jax.random.fold_in(key, 10 + k))[
            "params"
        ]
        for n, k in (("spec_digit", 10), ("spec_gender", 2))
    }
    init = jax.device_get(st.new_train_state(nets))
    batch = _batch(8)
    rng = jax.random.key(42)
    step = seeds_lib.jit_step(pcmelgan.pcmelgan_step, hp=hp, txs=txs)

    def run(devices, n_steps=2):
        mesh = sharding.make_mesh(devices)
        state = sharding.replicate(init, mesh)
        mon = sharding.replicate(monitors, mesh)
        out = []
        for _ in range(n_steps):
            state, metrics = step(state, sharding.shard_batch(batch, mesh), rng, mon)
            out.append(jax.device_get(metrics))
        return jax.device_get(state), out

    one = run(jax.devices()[:1])
    return dict(hp=hp, txs=txs, init=init, monitors=monitors, batch=batch, rng=rng, run=run,
                one=one)


def test_pcmelgan_step_same_on_1_and_4_devices(pcm):
    assert len(jax.devices()) >= 4, "conftest sets jax_num_cpu_devices=4"
    state1, metrics1 = pcm["one"]
    state4, metrics4 = pcm["run"](jax.devices()[:4])
    for i, (m1, m4) in enumerate(zip(metrics1, metrics4, strict=True)):
        assert m1.keys() == m4.keys()
        for k in m1:
            np.testing.assert_allclose(m4[k], m1[k], rtol=1e-5, atol=1e-6, err_msg=f"{i} {k}")
    # Parameters: the UPDATES (state - initial state) of every network agree to 1% of that
    # network's largest update. A sharding error (per-device batch statistics, a quarter-batch
    # gradient without the all-reduce) changes them by ~100%.
    for name in state1.networks:
        leaves1 = jax.tree_util.tree_leaves_with_path(state1.networks[name].params)
        leaves4 = jax.tree.leaves(state4.networks[name].params)
        leaves0 = jax.tree.leaves(pcm["init"].networks[name].params)
        deltas = [
            (path, np.asarray(a, np.float64) - a0, np.asarray(b, np.float64) - a0, a)
            for (path, a), b, a0 in zip(leaves1, leaves4, leaves0, strict=True)
        ]
        scale = max(float(np.max(np.abs(d1))) for _, d1, _, _ in deltas)
        assert scale > 0, f"{name} was not updated"
        for path, d1, d4, a in deltas:
            atol = 1e-2 * scale + 1e-6 * float(np.max(np.abs(a)))
            np.testing.assert_allclose(
                d4, d1, rtol=0, atol=atol, err_msg=f"{name}{jax.tree_util.keystr(path)}"
            )
    for name in state1.networks:  # batch statistics: same running means and variances
        for a, b in zip(jax.tree.leaves(state1.networks[name].batch_stats),
                        jax.tree.leaves(state4.networks[name].batch_stats), strict=True):
            atol = 2e-3 * max(float(np.max(np.abs(a))), 1e-3)  # stats of the updated nets
            np.testing.assert_allclose(b, a, rtol=1e-4, atol=atol, err_msg=name)


def test_pcmelgan_step_follows_the_update_order(pcm):
    """Recomputes the four losses of the first step by hand from the initial state."""
    hp, init, batch = pcm["hp"], pcm["init"], pcm["batch"]
    state1, metrics = pcm["one"]
    m = metrics[0]
    nets, after = init.networks, state1.networks  # after = after two steps
    x = classifiers_stage.spectrogram_batch(jnp.asarray(batch["audio"]))
    s = jnp.asarray(batch["gender"])
    filt, gen = hp.filter(), hp.generator()
    fd, gd = AlexNet(2, width=0.25), AlexNet(3, width=0.25)

    @jax.jit  # one program (eager op-by-op dispatch of these networks takes a minute)
    def expected(nets, x, s, rng):
        b = x.shape[0]
        k_z1, k_z1b, k_z2, k_s, k_d1, k_d2, k_d3, _, _ = jax.random.split(rng, 9)
        out = {}
        # (1) filter loss with the initial F and FD, flipped labels, distortion vs x
        z1 = jax.random.normal(k_z1, (b, 10))
        x1, mut1 = filt.apply(nets["filter"].variables(), x, z1, None, train=True,
                              mutable=["batch_stats"])
        fd_logits = fd.apply({"params": nets["filter_discriminator"].params}, x1, train=True,
                             rngs={"dropout": k_d1})
        dist = jnp.mean(jnp.abs(x1 - x))
        out["filter/loss"] = (softmax_cross_entropy(fd_logits, 1 - s)
                              + hp.lamb * jax.nn.relu(dist - hp.eps) ** 2)

        # the updated F after step (1): one SGD step of the filter loss
        def f_loss(p):
            y, _ = filt.apply(nets["filter"].variables(p), x, z1, None, train=True,
                              mutable=["batch_stats"])
            lg = fd.apply({"params": nets["filter_discriminator"].params}, y, train=True,
                          rngs={"dropout": k_d1})
            return softmax_cross_entropy(lg, 1 - s) + hp.lamb * jax.nn.relu(
                jnp.mean(jnp.abs(y - x)) - hp.eps
            ) ** 2

        f_params = jax.tree.map(lambda p, g: p - SGD_LR * g, nets["filter"].params,
                                jax.grad(f_loss)(nets["filter"].params))
        # (2) fresh train-mode pass of the UPDATED filter; G's distortion vs the ORIGINAL x
        x1b, mut2 = filt.apply({"params": f_params, "batch_stats": mut1["batch_stats"]}, x,
                               jax.random.normal(k_z1b, (b, 10)), None, train=True,
                               mutable=["batch_stats"])
        s_sampled = jax.random.randint(k_s, (b,), 0, 2)
        x2, _ = gen.apply(nets["generator"].variables(), x1b, jax.random.normal(k_z2, (b, 10)),
                          s_sampled, train=True, mutable=["batch_stats"])
        out["generator/distortion"] = jnp.mean(jnp.abs(x2 - x))
        out["generator/gender_mean_gap"] = label_mean_gap(x2, s)  # the TRUE gender, not s'
        out["filter/gender_mean_gap"] = label_mean_gap(x1, s)
        gd_logits = gd.apply({"params": nets["generator_discriminator"].params}, x2, train=True,
                             rngs={"dropout": k_d2})
        out["generator/adversarial"] = softmax_cross_entropy(gd_logits, s_sampled)
        # (3) FD on x1 of step (2) with the true gender, FD not yet updated
        fd3 = fd.apply({"params": nets["filter_discriminator"].params}, x1b, train=True,
                       rngs={"dropout": k_d3})
        out["filter_discriminator/loss"] = softmax_cross_entropy(fd3, s)
        return out, mut2["batch_stats"]

    want, bs_after_step1 = expected(nets, x, s, jax.random.fold_in(pcm["rng"], 0))
    for k, v in want.items():  # atol: the mean gaps are differences of O(1) means, ~5e-4
        np.testing.assert_allclose(m[k], v, rtol=1e-4, atol=1e-6, err_msg=k)
    # F's running statistics moved by both training passes of the first step
    got = pcm["run"](jax.devices()[:1], n_steps=1)[0].networks["filter"].batch_stats
    for a, b_ in zip(jax.tree.leaves(got), jax.tree.leaves(bs_after_step1), strict=True):
        np.testing.assert_allclose(a, b_, rtol=1e-4, atol=1e-6)
    assert after["filter"].batch_stats is not None
    # monitoring metrics are present
    for k in ("monitor/fd_acc", "monitor/gd_real_acc", "monitor/gd_fake_acc",
              "monitor/gd_sampled_gender_acc", "monitor/generator_digit_acc",
              "monitor/generator_gender_acc", "monitor/filter_gender_acc"):
        assert 0.0 <= m[k] <= 1.0, k
    # the optional levers log only when switched on
    assert not {"filter/digit_content", "generator/digit_content",
                "generator/attacker_sampled", "monitor/attacker_acc",
                "generator/fixed_sampled_gender"} & set(m)


def test_batch_norm_recalibration_makes_evaluation_mode_match_training_mode(pcm):
    """Running statistics re-estimated on one batch (parameters frozen) make evaluation mode
    reproduce training mode on that batch, for F on x and for G on F's training-mode output;
    the initial running statistics do not. ``batch_norm_statistics`` is what a training
    pass blends into the running statistics."""
    hp, batch = pcm["hp"], pcm["batch"]
    nets = dict(pcm["init"].networks)
    filt, gen = hp.filter(), hp.generator()
    x = classifiers_stage.spectrogram_batch(jnp.asarray(batch["audio"]))
    b = x.shape[0]
    rng = jax.random.key(7)
    k_z1, k_z2, k_s = jax.random.split(rng, 3)  # as batch_norm_statistics draws them
    z1 = jax.random.normal(k_z1, (b, hp.noise_dim))
    z2 = jax.random.normal(k_z2, (b, hp.noise_dim))
    s_sampled = jax.random.randint(k_s, (b,), 0, 2)

    @jax.jit
    def outputs(nets):
        """Training-mode x1, x2; evaluation-mode F(x) and G(x1); F's blended statistics."""
        f, g = nets["filter"], nets["generator"]
        x1, f_mut = filt.apply(f.variables(), x, z1, None, train=True, mutable=["batch_stats"])
        x2, _ = gen.apply(g.variables(), x1, z2, s_sampled, train=True, mutable=["batch_stats"])
        x1_eval = filt.apply(f.variables(), x, z1, None)
        x2_eval = gen.apply(g.variables(), x1, z2, s_sampled)
        return x1, x2, x1_eval, x2_eval, f_mut["batch_stats"]

    stats = jax.jit(functools.partial(pcmelgan.batch_norm_statistics, hp=hp))(nets, batch, rng)
    assert set(stats) == {"filter", "generator"}
    x1, x2, x1_eval, x2_eval, f_blended = outputs(nets)
    m = BatchNorm.momentum
    chex.assert_trees_all_close(
        f_blended,
        jax.tree.map(lambda r, v: (1 - m) * r + m * v, nets["filter"].batch_stats,
                     stats["filter"]),
        rtol=1e-5, atol=1e-6,
    )

    def gaps(x1_eval, x2_eval):
        return [float(jnp.mean(jnp.abs(a - b))) for a, b in ((x1_eval, x1), (x2_eval, x2))]

    before = gaps(x1_eval, x2_eval)  # measured 0.27, 0.25
    recalibrated = {**nets, **{k: nets[k].replace(batch_stats=v) for k, v in stats.items()}}
    _, _, x1_eval, x2_eval, _ = outputs(recalibrated)
    after = gaps(x1_eval, x2_eval)  # measured 0.0075, 0.0059
    # what is left is the running variance's n / (n - 1) (n = 8 x 5 x 2 at the bottleneck)
    for name, gap_before, gap_after in zip(("F", "G"), before, after, strict=True):
        assert gap_before > 0.1, (name, gap_before)
        assert gap_after < 0.015, (name, gap_after)


def test_recalibrate_batch_norm_averages_the_batches_statistics(pcm):
    hp, batch = pcm["hp"], pcm["batch"]
    nets = dict(pcm["init"].networks)
    other = {**batch, "audio": np.roll(batch["audio"], 1000, axis=1)[::-1].copy()}
    rng = jax.random.key(3)
    got = pcmelgan_stage.recalibrate_batch_norm(nets, [batch, other], rng, hp)
    program = pcmelgan_stage.batch_norm_statistics_program(hp)
    a = program(nets, batch, jax.random.fold_in(rng, 0))
    b = program(nets, other, jax.random.fold_in(rng, 1))
    for name in ("filter", "generator"):
        chex.assert_trees_all_close(
            got[name].batch_stats, jax.tree.map(lambda u, v: (u + v) / 2, a[name], b[name]),
            rtol=1e-6, atol=1e-7,
        )
        chex.assert_trees_all_equal(got[name].params, nets[name].params)
        assert not np.allclose(jax.tree.leaves(a[name])[0], jax.tree.leaves(b[name])[0])
    for name in ("filter_discriminator", "generator_discriminator"):
        assert got[name] is nets[name]
    with pytest.raises(ValueError, match="at least one batch"):
        pcmelgan_stage.recalibrate_batch_norm(nets, [], rng, hp)


def test_missing_paths_are_named(tmp_path):

    config = pcmelgan_config.get_config("small")
    config.data_dir = str(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="nope"):
        stage_lib.make_train_iterator(config)
    with pytest.raises(FileNotFoundError, match="no_classifiers"):
        pcmelgan_stage.load_monitors(str(tmp_path / "no_classifiers"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty/models/spec_digit"):
        pcmelgan_stage.load_monitors(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="no_vocoder"):
        pcmelgan_stage.load_vocoder(str(tmp_path / "no_vocoder"))
    assert pcmelgan_stage.load_vocoder("") is None


def test_small_pcmelgan_config_keeps_the_papers_filter_learning_rates():
    """The small config may train G faster, not F: with F's rate near FD's, F beat FD at
    every step without hiding gender (see ``configs/pcmelgan.py``)."""
    paper, small = pcmelgan_config.get_config(), pcmelgan_config.get_config("small")
    for field in ("learning_rate_filter", "learning_rate_filter_discriminator"):
        assert small[field] == paper[field], field
    assert small.learning_rate_filter_discriminator == 4 * small.learning_rate_filter


# ----------------------------------------------------------------------------- distortion hinge


def _filter_only_networks(txs: dict) -> dict:
    """F and a narrow FD initialised from key 0, with optimizer states of ``txs``."""
    key = jax.random.key(0, impl="rbg")
    arch = {"filter": ("unet_filter", {}),
            "filter_discriminator": ("alexnet", {"num_classes": 2, "width": WIDTH})}
    return {n: st.network_state(st.init_variables(a, kw, jax.random.fold_in(key, i)), txs[n])
            for i, (n, (a, kw)) in enumerate(arch.items())}


def _step(eps: float, mean_gap_weight: float = 0.0):
    """(metrics, F's parameters after) of one filter-only step with ``eps`` and
    ``mean_gap_weight``, from one init."""
    hp = pcmelgan.PCMelGANHyper(eps=eps, lamb=LAMB, filter_only=True,
                                discriminator_width=WIDTH, mean_gap_weight=mean_gap_weight)
    txs = {"filter": optax.sgd(1e-2), "filter_discriminator": optax.sgd(1e-2)}
    nets = _filter_only_networks(txs)
    step = seeds_lib.jit_step(pcmelgan.pcmelgan_step, hp=hp, txs=txs)
    state, metrics = step(st.new_train_state(nets), _batch(8), jax.random.key(7))
    return jax.device_get(metrics), jax.device_get(state.networks["filter"].params)


@pytest.fixture(scope="module")
def inactive():
    return _step(eps=10.0)  # above any reachable distortion: the hinge is zero


def test_distortion_hinge_and_mean_gap_active_in_the_step(inactive):
    off_metrics, off_params = inactive
    distortion = float(off_metrics["filter/distortion"])
    gap = float(off_metrics["filter/gender_mean_gap"])
    np.testing.assert_allclose(off_metrics["filter/loss"], off_metrics["filter/adversarial"],
                               rtol=1e-6)
    eps, weight = 0.5 * distortion, 1e4
    metrics, params = _step(eps, mean_gap_weight=weight)  # one program for both penalties
    # the forward pass before F's update depends on neither setting
    np.testing.assert_allclose(metrics["filter/distortion"], distortion, rtol=1e-6)
    np.testing.assert_allclose(metrics["filter/gender_mean_gap"], gap, rtol=1e-6)
    penalty = float(metrics["filter/loss"]) - float(metrics["filter/adversarial"])
    want = LAMB * (distortion - eps) ** 2 + weight * gap  # = 25 * distortion^2 + 1e4 * gap
    assert LAMB * (distortion - eps) ** 2 > 1e-3 and abs(weight * gap) > 1e-3, (distortion, gap)
    np.testing.assert_allclose(penalty, want, rtol=1e-4)
    # the penalties' gradients change F's update
    change = max(float(np.max(np.abs(a - b)))
                 for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(off_params),
                                 strict=True))
    assert change > 1e-6


def test_digit_content_loss_in_the_step(inactive):
    """With ``digit_weight`` w, F's loss adds w times the fixed digit classifier's
    cross-entropy on x1 with the true digits (recomputed by hand), which changes F's update;
    without the classifier the step refuses to trace."""
    weight = 3.0
    hp = pcmelgan.PCMelGANHyper(eps=10.0, lamb=LAMB, filter_only=True, discriminator_width=WIDTH,
                                digit_weight=weight, monitor_widths=(("spec_digit", WIDTH),))
    txs = {"filter": optax.sgd(1e-2), "filter_discriminator": optax.sgd(1e-2)}
    nets = jax.device_get(_filter_only_networks(txs))  # host copies: the step donates its state
    digit_net = AlexNet(num_classes=10, width=WIDTH)
    digit_params = digit_net.init(jax.random.key(3), jnp.zeros((1, 80, 32, 1)),
                                  train=False)["params"]
    batch, rng = _batch(8), jax.random.key(7)
    step = seeds_lib.jit_step(pcmelgan.pcmelgan_step, hp=hp, txs=txs)
    state, metrics = step(st.new_train_state(nets), batch, rng, {"spec_digit": digit_params})

    x = classifiers_stage.spectrogram_batch(jnp.asarray(batch["audio"]))
    z1 = jax.random.normal(jax.random.split(jax.random.fold_in(rng, 0), 9)[0], (8, 10))
    x1, _ = hp.filter().apply(nets["filter"].variables(), x, z1, None, train=True,
                              mutable=["batch_stats"])
    want = softmax_cross_entropy(digit_net.apply({"params": digit_params}, x1, train=False),
                                 jnp.asarray(batch["digit"]))
    assert float(want) > 1.0  # an untrained classifier: the term is far from zero
    np.testing.assert_allclose(metrics["filter/digit_content"], want, rtol=1e-4)
    np.testing.assert_allclose(float(metrics["filter/loss"]) - float(metrics["filter/adversarial"]),
                               weight * float(want), rtol=1e-4)
    off_params = inactive[1]  # the same step, init and batch with digit_weight 0
    change = max(float(np.max(np.abs(a - b))) for a, b in zip(
        jax.tree.leaves(jax.device_get(state.networks["filter"].params)),
        jax.tree.leaves(off_params), strict=True))
    assert change > 1e-6
    with pytest.raises(ValueError, match="digit_weight"):
        step(st.new_train_state(nets), batch, rng, {})


@pytest.mark.parametrize("arch", ["alexnet", "linear"])
def test_gender_attacker_in_the_step(arch):
    """With ``attacker_weight`` w, G's loss adds w * CE(A(x2), s') and the attacker A learns
    the TRUE gender from x2 (recomputed by hand, F frozen so x1 is F's initial output: the
    AlexNet's two cross-entropies; the linear attacker, which starts at zero, its first SGD
    step). A is a network of its own, appended to the stage's list (the others keep their
    initialisation keys); the Filter baseline and an unknown architecture are refused."""
    weight, lr = 2.0, 1e-2
    hp = pcmelgan.PCMelGANHyper(eps=10.0, lamb=LAMB, discriminator_width=WIDTH,
                                attacker_weight=weight, attacker_arch=arch)
    assert pcmelgan_stage.network_names(hp)[-1] == "gender_attacker"
    # the paper's four networks keep the keys they had when initialised in sorted order
    assert list(pcmelgan_stage.NETWORKS)[:4] == sorted(pcmelgan_stage.network_names(
        dataclasses.replace(hp, attacker_weight=0.0)))
    with pytest.raises(ValueError, match="filter_only"):
        dataclasses.replace(hp, filter_only=True)
    with pytest.raises(ValueError, match="attacker_arch"):
        dataclasses.replace(hp, attacker_arch="mlp")
    txs = {n: optax.sgd(0.0 if n == "filter" else lr) for n in pcmelgan_stage.NETWORKS}
    key = jax.random.key(0, impl="rbg")
    nets = {}
    for i, name in enumerate(pcmelgan_stage.NETWORKS):
        network, arch = pcmelgan_stage._arch(name, hp)
        nets[name] = st.network_state(st.init_variables(network, arch, jax.random.fold_in(key, i)),
                                      txs[name])
    nets = jax.device_get(nets)  # host copies: the step donates its state
    batch, rng = _batch(8), jax.random.key(5)
    step = seeds_lib.jit_step(pcmelgan.pcmelgan_step, hp=hp, txs=txs)
    state, metrics = step(st.new_train_state(nets), batch, rng)

    x = classifiers_stage.spectrogram_batch(jnp.asarray(batch["audio"]))
    gender = jnp.asarray(batch["gender"])
    step_rng = jax.random.fold_in(rng, 0)
    _, k_z1b, k_z2, k_s = jax.random.split(step_rng, 9)[:4]
    k_a1, k_a2 = jax.random.split(jax.random.fold_in(step_rng, pcmelgan.ATTACKER_SALT))
    x1, _ = hp.filter().apply(nets["filter"].variables(), x, jax.random.normal(k_z1b, (8, 10)),
                              None, train=True, mutable=["batch_stats"])
    sampled = jax.random.randint(k_s, (8,), 0, 2)
    x2, _ = hp.generator().apply(nets["generator"].variables(), x1,
                                 jax.random.normal(k_z2, (8, 10)), sampled, train=True,
                                 mutable=["batch_stats"])
    attacker = hp.attacker()
    np.testing.assert_allclose(
        float(metrics["generator/loss"]) - float(metrics["generator/adversarial"]),
        weight * float(metrics["generator/attacker_sampled"]), rtol=1e-5)
    if arch == "linear":  # zero weights: CE log 2, gradient x2^T (1/2 - onehot(s)) / B
        np.testing.assert_allclose(metrics["gender_attacker/loss"], np.log(2.0), rtol=1e-6)
        flat = np.asarray(x2).reshape(8, -1)
        grad = flat.T @ (0.5 - np.eye(2)[np.asarray(gender)]) / 8
        np.testing.assert_allclose(state.networks["gender_attacker"].params["dense"]["kernel"],
                                   -lr * grad, rtol=1e-3, atol=1e-7)
        return

    def attacker_ce(k, labels):
        logits = attacker.apply({"params": nets["gender_attacker"].params}, x2, train=True,
                                rngs={"dropout": k})
        return float(softmax_cross_entropy(logits, labels))

    np.testing.assert_allclose(metrics["generator/attacker_sampled"], attacker_ce(k_a1, sampled),
                               rtol=1e-4)
    np.testing.assert_allclose(metrics["gender_attacker/loss"], attacker_ce(k_a2, gender),
                               rtol=1e-4)
    assert 0.0 <= float(metrics["monitor/attacker_acc"]) <= 1.0


def test_generator_input_bands_reach_the_exported_architecture():
    """``generator_input_bands`` builds G (and only G) with the bottleneck, in the step and in
    the architecture the stage initialises and exports; a count that does not divide the 80
    mel bins is refused."""
    hp = pcmelgan.PCMelGANHyper(generator_input_bands=4)
    assert hp.generator().input_bands == 4 and hp.filter().input_bands == 0
    assert pcmelgan_stage._arch("generator", hp) == ("unet_generator",
                                                      {"noise_dim": 10, "input_bands": 4})
    assert pcmelgan_stage._arch("filter", hp) == ("unet_filter", {"noise_dim": 10})
    assert pcmelgan_stage._arch("generator", pcmelgan.PCMelGANHyper())[1] == {"noise_dim": 10}
    for bad in (3, -1):
        with pytest.raises(ValueError, match="input_bands must divide the 80 mel bins"):
            dataclasses.replace(hp, generator_input_bands=bad)
    fed_x = dataclasses.replace(hp, generator_input="original")
    assert fed_x.generator().source == "original" and fed_x.filter().source == "filtered"
    assert pcmelgan_stage._arch("generator", fed_x)[1] == {"noise_dim": 10, "input_bands": 4,
                                                           "source": "original"}
    with pytest.raises(ValueError, match="generator_input must be one of"):
        dataclasses.replace(hp, generator_input="x1")
    mid = dataclasses.replace(hp, generator_input_bands=3, generator_input_bins=(10, 70))
    arch = pcmelgan_stage._arch("generator", mid)
    assert arch[1]["input_bins"] == (10, 70) and mid.generator().input_bins == (10, 70)
    exported = json.loads(json.dumps(arch[1]))  # as an export's JSON reads back: a list
    assert build_model(arch[0], **exported).input_bins == (10, 70)  # a tuple: hashable
    with pytest.raises(ValueError, match="input_bands must divide the 60 mel bins, got 7"):
        dataclasses.replace(mid, generator_input_bands=7)
    with pytest.raises(ValueError, match="generator_input_bins needs generator_input_bands"):
        dataclasses.replace(mid, generator_input_bands=0)
    masked = dataclasses.replace(mid, generator_input_mask_depth=0.3)
    arch = pcmelgan_stage._arch("generator", masked)
    assert arch[1]["input_mask_depth"] == 0.3 and "input_mask_depth" not in \
        pcmelgan_stage._arch("generator", mid)[1]
    assert build_model(arch[0], **json.loads(json.dumps(arch[1]))) == masked.generator()
    for bad in ({"generator_input_mask_depth": -0.1},
                {"generator_input_bands": 0, "generator_input_bins": (0, 80)}):
        with pytest.raises(ValueError, match="generator_input_mask_depth must be >= 0"):
            dataclasses.replace(masked, **bad)
    # the output level: exported with G only, as a tuple again after JSON
    arch = pcmelgan_stage._arch("generator", masked, (-2.5, 1.5))
    assert arch[1]["output_level"] == (-2.5, 1.5)
    assert build_model(arch[0], **json.loads(json.dumps(arch[1]))).output_level == (-2.5, 1.5)
    assert pcmelgan_stage._arch("filter", masked, (-2.5, 1.5))[1] == {"noise_dim": 10}
    assert "output_level" not in pcmelgan_stage._arch("generator", masked)[1]
    with pytest.raises(ValueError, match="generator_output_level must be one of"):
        dataclasses.replace(hp, generator_output_level="speaker")
    with pytest.raises(ValueError, match="generator_output_level acts on G"):
        dataclasses.replace(hp, generator_output_level="training", filter_only=True)


def test_generator_fed_the_original_ignores_the_filter(pcm):
    """With ``generator_input`` "original" G reads x itself: after one step from the same
    G, GD and batch, G's and GD's weights and G's BatchNorm statistics are the same whatever
    F's weights (F's output, the paper's input, would differ by a factor of two here)."""
    hp = dataclasses.replace(pcm["hp"], generator_input="original")
    init, batch, rng = pcm["init"], pcm["batch"], pcm["rng"]
    halved = init.networks["filter"].replace(
        params=jax.tree.map(lambda p: 0.5 * p, init.networks["filter"].params))
    step = seeds_lib.jit_step(pcmelgan.pcmelgan_step, hp=hp, txs=pcm["txs"])
    statistics = jax.jit(functools.partial(pcmelgan.batch_norm_statistics, hp=hp))
    results = []
    for state in (init, st.TrainState(init.step, {**init.networks, "filter": halved})):
        stats = statistics(state.networks, batch, rng)
        after, _ = step(state, batch, rng, pcm["monitors"])
        results.append(jax.device_get(
            (after.networks["generator"], after.networks["generator_discriminator"].params,
             stats["generator"], after.networks["filter"].params, stats["filter"])))
    chex.assert_trees_all_equal(results[0][:3], results[1][:3])
    assert not np.allclose(jax.tree.leaves(results[0][3:])[0], jax.tree.leaves(results[1][3:])[0])


def test_sampled_gender_loss_in_the_step(pcm):
    """With ``sampled_gender_weight`` w, G's loss adds w times the fixed gender classifier's
    cross-entropy on x2 against the SAMPLED gender (recomputed by hand: G fed the original,
    so x2 does not depend on F's update), which changes G's update; without the classifier
    the step refuses to trace, and the Filter baseline refuses the setting."""
    weight = 2.0
    base = dataclasses.replace(pcm["hp"], generator_input="original")
    hp = dataclasses.replace(base, sampled_gender_weight=weight)
    with pytest.raises(ValueError, match="sampled_gender_weight"):
        dataclasses.replace(hp, filter_only=True)
    init, batch, rng, monitors = pcm["init"], pcm["batch"], pcm["rng"], pcm["monitors"]
    after = {}
    for h in (base, hp):
        step = seeds_lib.jit_step(pcmelgan.pcmelgan_step, hp=h, txs=pcm["txs"])
        state, metrics = step(init, batch, rng, monitors)
        after[h.sampled_gender_weight] = jax.device_get((state.networks["generator"].params,
                                                         metrics))
    params_on, m = after[weight]
    params_off, m_off = after[0.0]
    assert "generator/fixed_sampled_gender" not in m_off

    x = classifiers_stage.spectrogram_batch(jnp.asarray(batch["audio"]))
    _, _, k_z2, k_s = jax.random.split(jax.random.fold_in(rng, 0), 9)[:4]
    sampled = jax.random.randint(k_s, (8,), 0, 2)
    x2, _ = hp.generator().apply(init.networks["generator"].variables(), x,
                                 jax.random.normal(k_z2, (8, 10)), sampled, train=True,
                                 mutable=["batch_stats"])
    logits = AlexNet(2, width=WIDTH).apply({"params": monitors["spec_gender"]}, x2, train=False)
    want = float(softmax_cross_entropy(logits, sampled))
    assert want > 0.1  # an untrained classifier: the term is far from zero
    np.testing.assert_allclose(m["generator/fixed_sampled_gender"], want, rtol=1e-4)
    # eps is above any distortion and the other levers are off: the rest is GD's term
    np.testing.assert_allclose(
        float(m["generator/loss"]) - float(m["generator/adversarial"]), weight * want,
        rtol=1e-4)
    change = max(float(np.max(np.abs(a - b))) for a, b in zip(
        jax.tree.leaves(params_on), jax.tree.leaves(params_off), strict=True))
    assert change > 1e-7
    step = seeds_lib.jit_step(pcmelgan.pcmelgan_step, hp=hp, txs=pcm["txs"])
    with pytest.raises(ValueError, match="sampled_gender_weight"):
        step(init, batch, rng, {"spec_digit": monitors["spec_digit"]})


def test_digit_conditioned_generator_in_the_step(pcm):
    """With ``generator_digit_condition`` G is built with the fixed digit classifier's
    architecture (exported with it), starts from its weights, and keeps them through a step
    under Adam while the rest of G trains; the Filter baseline refuses the setting and a
    classifier of another shape is refused."""
    hp = dataclasses.replace(pcm["hp"], generator_input="original",
                             generator_digit_condition=True)
    with pytest.raises(ValueError, match="generator_digit_condition"):
        dataclasses.replace(hp, filter_only=True)
    network, arch = pcmelgan_stage._arch("generator", hp)
    assert arch == {"noise_dim": 10, "source": "original", "digit_classes": 10,
                    "digit_classifier_width": WIDTH}
    assert build_model(network, **json.loads(json.dumps(arch))) == hp.generator()
    assert "digit_classes" not in pcmelgan_stage._arch("generator", pcm["hp"])[1]
    monitors = pcm["monitors"]
    fresh = st.init_variables(network, arch, jax.random.key(3))
    assert not np.allclose(fresh["params"][DIGIT_CLASSIFIER]["fc3"]["kernel"],
                           monitors["spec_digit"]["fc3"]["kernel"])
    variables = pcmelgan_stage.with_digit_classifier(fresh, monitors["spec_digit"])
    chex.assert_trees_all_equal(variables["params"][DIGIT_CLASSIFIER], monitors["spec_digit"])
    with pytest.raises(ValueError, match="does not fit G's digit classifier"):
        pcmelgan_stage.with_digit_classifier(fresh, monitors["spec_gender"])
    txs = {**pcm["txs"], "generator": optax.adam(1e-2)}
    init = st.TrainState(pcm["init"].step, {**pcm["init"].networks,
                                            "generator": st.network_state(variables,
                                                                          txs["generator"])})
    before = jax.device_get(variables["params"])  # the step donates the state
    step = seeds_lib.jit_step(pcmelgan.pcmelgan_step, hp=hp, txs=txs)
    state, _ = step(init, pcm["batch"], pcm["rng"], monitors)
    params = jax.device_get(state.networks["generator"].params)
    chex.assert_trees_all_equal(params[DIGIT_CLASSIFIER], monitors["spec_digit"])
    for name in ("embed_digit", "project_digit", "up2"):
        assert not np.allclose(jax.tree.leaves(params[name])[0],
                               jax.tree.leaves(before[name])[0])


def test_filter_discriminator_restarts_every_n_steps():
    """With ``fd_reset_every`` 2, FD after step 1 is the trained one; after step 2 it is a fresh
    init from ``reset_key`` (optimizer state zeroed) while F keeps training; 0 never resets."""
    txs = {"filter": optax.adam(1e-3), "filter_discriminator": optax.adam(1e-3)}
    nets = _filter_only_networks(txs)
    rng, batch = jax.random.key(7), _batch(8)

    def run(every: int):
        hp = pcmelgan.PCMelGANHyper(filter_only=True, discriminator_width=WIDTH,
                                    fd_reset_every=every)
        step = jax.jit(functools.partial(pcmelgan.pcmelgan_step, hp=hp, txs=txs))
        state = st.new_train_state(nets)
        states = []
        for _ in range(2):
            state, _ = step(state, batch, rng)
            states.append(jax.device_get(state))
        return hp, states

    hp, (one, two) = run(2)
    _, (plain_one, plain_two) = run(0)
    chex.assert_trees_all_close(one.networks["filter_discriminator"].params,
                                plain_one.networks["filter_discriminator"].params)
    fd = hp.discriminators()[0]
    fresh = fd.init({"params": pcmelgan.reset_key(rng, jnp.int32(1))},
                    jnp.zeros((1, 80, 32, 1)), train=False)["params"]
    chex.assert_trees_all_close(two.networks["filter_discriminator"].params, fresh)
    assert int(jax.tree.leaves(two.networks["filter_discriminator"].opt_state)[0]) == 0
    chex.assert_trees_all_close(two.networks["filter"].params,
                                plain_two.networks["filter"].params)
    changed = jax.tree.leaves(jax.tree.map(
        lambda a, b: np.max(np.abs(a - b)), plain_two.networks["filter_discriminator"].params,
        fresh))
    assert max(changed) > 1e-3


# ----------------------------------------------------------------------------- samples


@pytest.fixture(scope="module")
def sample_inputs(tmp_path_factory, tiny_data) -> dict:
    """Tiny prepared data, random monitors and a random ngf-4 vocoder (no XLA init)."""
    from pcmelgan_jax.checkpointing import save_model
    from pcmelgan_jax.models.registry import numpy_random_variables

    root = tmp_path_factory.mktemp("pcmelgan_samples")
    for name, k, seed in (("spec_digit", 10, 1), ("spec_gender", 2, 2)):
        arch = {"num_classes": k, "width": WIDTH}
        save_model(root / "cls" / "models" / name, "alexnet",
                   numpy_random_variables("alexnet", seed, **arch), arch=arch)
    save_model(root / "voc" / "models" / "generator", "melgan_generator",
               numpy_random_variables("melgan_generator", 3, ngf=4), arch={"ngf": 4})
    return {"data_dir": tiny_data, "classifiers_workdir": str(root / "cls"),
            "vocoder_workdir": str(root / "voc")}


def test_samples_go_to_tensorboard(sample_inputs, tmp_path):
    """``write_samples`` of 2 seeds: each seed's panel and wavs in its samples/ and in
    TensorBoard under ``samples/seed<S>/`` (``samples/`` for a single run: the vocoder test),
    the audio at 8 kHz."""
    import os

    from pcmelgan_jax import workdir as run_layout
    from pcmelgan_jax.audio import SAMPLE_RATE
    from pcmelgan_jax.logging_utils import MetricWriter, read_summaries
    from pcmelgan_jax.models.registry import numpy_random_variables

    config = pcmelgan_config.get_config("small")
    config.update(sample_inputs)
    config.update(eval_batch_size=8, num_samples=2, discriminator_width=WIDTH, seed=3,
                  num_seeds=2, worker_threads=0)
    workdir = str(tmp_path / "run")
    mesh = sharding.make_mesh(jax.devices()[:1])
    stage = pcmelgan_stage.PCMelGANStage(config, workdir, mesh)

    def random_network(name: str, seed: int) -> st.NetworkState:  # NumPy: no init compile
        network, arch = pcmelgan_stage._arch(name, stage.hp)
        return st.network_state(numpy_random_variables(network, seed, **arch), optax.sgd(0.0))

    # F and G are all that write_samples uses
    state = seeds_lib.stack_seeds([
        st.new_train_state({n: random_network(n, s) for n in ("filter", "generator")})
        for s in stage.seeds])
    writer = MetricWriter(workdir, enabled=True)
    stage.write_samples(sharding.replicate(state, mesh), 5, writer)
    writer.close()

    kinds = [f"{i}_{k}" for i in range(2)
             for k in ("original", "filtered", "sampled_male", "sampled_female")]
    for run_dir in stage.run_dirs:
        folder = os.path.join(run_dir, run_layout.SAMPLES)
        assert os.path.isfile(os.path.join(folder, "step_0000005.png"))
        assert sorted(os.listdir(os.path.join(folder, "step_0000005"))) == sorted(
            f"{k}.wav" for k in kinds)
    got = read_summaries(os.path.join(workdir, "tensorboard"))
    assert {step for step, _ in got} == {5}
    assert sorted(v.tag for _, v in got if v.HasField("image")) == [
        "samples/seed3/panel", "samples/seed4/panel"]
    audio = [v for _, v in got if v.HasField("audio")]
    assert sorted(v.tag for v in audio) == sorted(
        f"samples/seed{s}/audio/{k}" for s in (3, 4) for k in kinds)
    assert {v.audio.sample_rate for v in audio} == {SAMPLE_RATE}
