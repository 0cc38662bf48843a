"""Training: SPEC-6 step order and losses, 1 vs 4 devices, resume, NaN guard, model selection."""

from __future__ import annotations

import dataclasses
import functools
import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bench.bench_train import make_batch as _batch  # the synthetic batch the benchmarks use
from pcmelgan_jax.checkpointing import load_model, read_model_info
from pcmelgan_jax.models import AlexNet, BatchNorm
from pcmelgan_jax.models.classifiers import softmax_cross_entropy
from pcmelgan_jax.runtime import sharding
from pcmelgan_jax.training import classifiers as classifiers_stage
from pcmelgan_jax.training import configs, loop, pcmelgan, steps
from pcmelgan_jax.training import state as st

SPEAKERS, REPS = 6, 2  # per gender 1 train / 1 validation / 1 test speaker; 40 utterances each
SGD_LR = 1e-4  # small: the step stays well-conditioned, so rounding differences stay small


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    from pcmelgan_jax.data.prepare import prepare
    from pcmelgan_jax.data.synth import synthesize_corpus

    root = tmp_path_factory.mktemp("train_data")
    synthesize_corpus(root / "corpus", speakers=SPEAKERS, reps=REPS, seed=0)
    prepare(root / "corpus", root / "data", "all")
    return str(root / "data")


# ----------------------------------------------------------------------------- PCMelGAN step


@pytest.fixture(scope="module")
def pcm():
    """Initial PCMelGAN state (host), monitors, a batch and the 1-device step result."""
    # eps above any reachable L1 distortion keeps the distortion hinge at exactly zero: its
    # gradient, a sign, would otherwise flip with rounding for near-equal elements and make
    # 1- and 4-device updates differ legitimately. (The order test recomputes the hinge.)
    w = 0.25  # narrow AlexNets: the same code paths, a fraction of the compile and run time
    hp = steps.PCMelGANHyper(
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
    step = steps.jit_step(steps.pcmelgan_step, hp=hp, txs=txs)

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


def test_pcmelgan_step_follows_spec6_order(pcm):
    """Recomputes the four losses of the first step by hand from the initial state."""
    hp, init, batch = pcm["hp"], pcm["init"], pcm["batch"]
    state1, metrics = pcm["one"]
    m = metrics[0]
    nets, after = init.networks, state1.networks  # after = after two steps
    x = steps.spectrogram_batch(jnp.asarray(batch["audio"]))
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
        gd_logits = gd.apply({"params": nets["generator_discriminator"].params}, x2, train=True,
                             rngs={"dropout": k_d2})
        out["generator/adversarial"] = softmax_cross_entropy(gd_logits, s_sampled)
        # (3) FD on x1 of step (2) with the true gender, FD not yet updated
        fd3 = fd.apply({"params": nets["filter_discriminator"].params}, x1b, train=True,
                       rngs={"dropout": k_d3})
        out["filter_discriminator/loss"] = softmax_cross_entropy(fd3, s)
        return out, mut2["batch_stats"]

    want, bs_after_step1 = expected(nets, x, s, jax.random.fold_in(pcm["rng"], 0))
    for k, v in want.items():
        np.testing.assert_allclose(m[k], v, rtol=1e-4, err_msg=k)
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


def test_batch_norm_recalibration_makes_evaluation_mode_match_training_mode(pcm):
    """Running statistics re-estimated on one batch (parameters frozen) make evaluation mode
    reproduce training mode on that batch, for F on x and for G on F's training-mode output;
    the initial running statistics do not. ``batch_norm_statistics`` is what a training
    pass blends into the running statistics."""
    hp, batch = pcm["hp"], pcm["batch"]
    nets = dict(pcm["init"].networks)
    filt, gen = hp.filter(), hp.generator()
    x = steps.spectrogram_batch(jnp.asarray(batch["audio"]))
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

    stats = jax.jit(functools.partial(steps.batch_norm_statistics, hp=hp))(nets, batch, rng)
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
    got = pcmelgan.recalibrate_batch_norm(nets, [batch, other], rng, hp)
    program = pcmelgan.batch_norm_statistics_program(hp)
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
        pcmelgan.recalibrate_batch_norm(nets, [], rng, hp)


def test_distortion_penalty_is_squared_hinge_on_mean_l1():
    x = jnp.zeros((2, 80, 32, 1))
    y = jnp.full((2, 80, 32, 1), 0.3)
    penalty, distortion = steps.distortion_penalty(y, x, eps=0.1, lamb=100.0)
    np.testing.assert_allclose(distortion, 0.3, rtol=1e-6)
    np.testing.assert_allclose(penalty, 100.0 * 0.2**2, rtol=1e-5)
    penalty, _ = steps.distortion_penalty(y, x, eps=0.5, lamb=100.0)
    assert float(penalty) == 0.0


def test_entropy_loss_maximises_fd_entropy():
    gender = jnp.array([0, 1, 0, 1])
    confident = jnp.array([[5.0, -5.0], [-5.0, 5.0], [5.0, -5.0], [-5.0, 5.0]])
    uniform = jnp.zeros((4, 2))
    loss_confident = steps.filter_adversarial_loss(confident, gender, entropy=True)
    loss_uniform = steps.filter_adversarial_loss(uniform, gender, entropy=True)
    assert loss_uniform < loss_confident  # F's loss decreases as FD goes to uniform
    np.testing.assert_allclose(loss_uniform, -np.log(2.0), rtol=1e-6)
    # the gradient step on the logits moves FD towards uniform (entropy up)
    g = jax.grad(lambda lg: steps.filter_adversarial_loss(lg, gender, True))(confident * 0.1)
    moved = confident * 0.1 - 10.0 * g
    assert steps.mean_entropy(moved) > steps.mean_entropy(confident * 0.1)


# ----------------------------------------------------------------------------- loop


def _classifier_config(data_dir, **overrides):
    c = configs.classifiers(small=True)
    c.data_dir = data_dir
    c.classifiers = ("spec_gender",)
    c.batch_size = 8
    c.eval_batch_size = 40
    c.num_epochs = 100
    c.num_train_steps = 6
    c.eval_every_steps = 3
    c.checkpoint_every_steps = 2
    c.log_every_steps = 1
    c.worker_threads = 0
    c.async_checkpointing = False
    c.progress_bar = False
    for k, v in overrides.items():
        c[k] = v
    return c


@pytest.fixture(scope="module")
def cls_stage(tiny_data, tmp_path_factory):
    """A classifiers stage (spec_gender) whose jitted step the loop tests share."""
    mesh = sharding.make_mesh(jax.devices()[:1])
    config = _classifier_config(tiny_data)
    workdir = str(tmp_path_factory.mktemp("cls_template"))
    stage = classifiers_stage.build_stage(config, workdir, mesh)
    initial = jax.device_get(stage.state)
    return config, mesh, stage, initial


def _light_stage(config, mesh, workdir, initial, train_step):
    """A classifiers-like stage reusing ``train_step`` (compiled once for all loop tests)."""
    state = sharding.replicate(initial, mesh)
    widths = classifiers_stage.classifier_widths(config)
    eval_fn = jax.jit(functools.partial(steps.classifier_eval_step, widths=widths))
    names = sorted(config.classifiers)
    models_dir = os.path.join(workdir, "models")

    def evaluate(state, step):
        sums = None
        for batch in loop.eval_batches(config, mesh):
            sums = loop.sum_metrics(sums, eval_fn({n: state.networks[n].params for n in names},
                                                   batch))
        sums = jax.device_get(sums)
        c = float(sums["count"])
        return {f"{n}/loss": float(sums[f"{n}/loss_sum"]) / c for n in names}

    def after_evaluation(state, step, metrics, book):
        book.setdefault("history", []).append([step, metrics["spec_gender/loss"]])
        return False

    return loop.Stage("classifiers", state, train_step, evaluate, after_evaluation,
                      finalize=lambda s, b: {"models_dir": models_dir})


def test_resume_equals_uninterrupted_run(cls_stage, tmp_path):
    config, mesh, stage, initial = cls_stage

    class Interrupt(Exception):
        pass

    def stop_at(k):
        def wrap(step_fn):
            def wrapped(state, batch, rng):
                if int(jax.device_get(state.step)) == k:
                    raise Interrupt
                return step_fn(state, batch, rng)

            return wrapped

        return wrap

    straight = _light_stage(config, mesh, str(tmp_path / "a"), initial, stage.train_step)
    captured = {}

    def capture(step_fn):
        def wrapped(state, batch, rng):
            state, metrics = step_fn(state, batch, rng)
            captured["state"] = jax.device_get(state)
            return state, metrics

        return wrapped

    straight = dataclasses.replace(straight, train_step=capture(straight.train_step))
    loop.run(config, str(tmp_path / "a"), straight, mesh)
    reference = captured.pop("state")

    b = str(tmp_path / "b")
    first = _light_stage(config, mesh, b, initial, stop_at(3)(stage.train_step))
    with pytest.raises(Interrupt):
        loop.run(config, b, first, mesh)
    assert sorted(os.listdir(os.path.join(b, "checkpoints"))) == ["2"]
    # each process keeps its own data-iterator state; a checkpoint of an earlier version
    # (one process, Orbax's default file name) still resumes
    data_iter = os.path.join(b, "checkpoints", "2", "data_iter")
    assert "process_0-of-1.json" in os.listdir(data_iter)
    os.rename(os.path.join(data_iter, "process_0-of-1.json"), os.path.join(data_iter, "metadata"))
    resumed = _light_stage(config, mesh, b, initial, capture(stage.train_step))
    loop.run(config, b, resumed, mesh)
    got = captured.pop("state")
    assert int(got.step) == int(reference.step) == 6
    for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(reference), strict=True):
        np.testing.assert_array_equal(x, y)
    # keep policy: latest 2 checkpoints; config saved beside
    assert sorted(os.listdir(os.path.join(b, "checkpoints"))) == ["4", "6"]
    assert json.load(open(os.path.join(b, "config.json")))["stage"] == "classifiers"
    lines = [json.loads(x) for x in open(os.path.join(b, "metrics.jsonl"))]
    assert any(x["split"] == "eval" for x in lines)
    assert os.path.isdir(os.path.join(b, "tensorboard"))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(cls_stage, tmp_path):
    config, mesh, stage, initial = cls_stage

    def poison(step_fn):
        def wrapped(state, batch, rng):
            if int(jax.device_get(state.step)) == 3:  # a diverged network: NaN logits
                net = state.networks["spec_gender"]
                params = jax.tree.map(lambda p: p, net.params)
                params["fc3"]["bias"] = params["fc3"]["bias"] * jnp.nan
                state = state.replace(networks={"spec_gender": net.replace(params=params)})
            return step_fn(state, batch, rng)

        return wrapped

    w = str(tmp_path / "nan")
    bad = _light_stage(config, mesh, w, initial, poison(stage.train_step))
    with pytest.raises(loop.TrainingDivergedError, match=r"non-finite loss at step 4.*step 2"):
        loop.run(config, w, bad, mesh)
    assert sorted(os.listdir(os.path.join(w, "checkpoints"))) == ["2"]
    mngr = loop.checkpoint_manager(os.path.join(w, "checkpoints"), config)
    restored, _, _ = loop._restore(mngr, 2, sharding.replicate(initial, mesh))
    mngr.close()
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(jax.device_get(restored)))


def test_label_smoothing_is_optax_smoothed_cross_entropy():
    """``softmax_cross_entropy(..., a)`` is the cross-entropy against one-hot labels smoothed
    by a (optax.smooth_labels); a = 0 is the plain cross-entropy."""
    rng = np.random.default_rng(0)
    logits = jnp.asarray(3 * rng.standard_normal((6, 10)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 10, 6))
    for a in (0.0, 0.1, 0.3):
        want = optax.softmax_cross_entropy(
            logits, optax.smooth_labels(jax.nn.one_hot(labels, 10), a)).mean()
        np.testing.assert_allclose(softmax_cross_entropy(logits, labels, a), want, rtol=1e-6)
    assert float(softmax_cross_entropy(logits, labels, 0.1)) != float(
        softmax_cross_entropy(logits, labels))


def test_classifier_label_smoothing_per_domain():
    """Spectrogram and audio classifiers take their own smoothing (the paper: 0 for both; the
    small config: 0.1 for the spectrogram AlexNets only); a value outside [0, 1) is refused
    by its field's name."""
    paper, small = configs.classifiers(small=False), configs.classifiers(small=True)
    assert set(classifiers_stage.classifier_label_smoothing(paper).values()) == {0.0}
    assert classifiers_stage.classifier_label_smoothing(small) == {
        "spec_digit": 0.1, "spec_gender": 0.1, "audio_digit": 0.0, "audio_gender": 0.0}
    for field, value in (("spec_label_smoothing", 1.0), ("audio_label_smoothing", -0.1)):
        config = configs.classifiers(small=True)
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

    small, paper = configs.classifiers(small=True), configs.classifiers(small=False)
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
    losses = [jax.jit(functools.partial(steps.classifier_step, txs=txs, widths=widths,
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


def test_small_pcmelgan_config_keeps_the_papers_filter_learning_rates():
    """The small config may train G faster, not F: with F's rate near FD's, F beat FD at
    every step without hiding gender (see ``configs.pcmelgan``)."""
    paper, small = configs.pcmelgan(small=False), configs.pcmelgan(small=True)
    for field in ("learning_rate_filter", "learning_rate_filter_discriminator"):
        assert small[field] == paper[field], field
    assert small.learning_rate_filter_discriminator == 4 * small.learning_rate_filter


def test_classifiers_early_stopping_and_best_export(tiny_data, tmp_path):
    """Real stage: stops once validation loss has not improved for `patience` evaluations,
    and models/<name> holds the best network."""
    config = _classifier_config(tiny_data, num_train_steps=40, eval_every_steps=1, patience=2,
                                checkpoint_every_steps=-1, learning_rate=1e-2, spec_width=0.25)
    w = str(tmp_path / "cls")
    mesh = sharding.make_mesh(jax.devices()[:1])
    stage = classifiers_stage.build_stage(config, w, mesh)
    # a huge learning rate quickly makes validation worse: early stop well before 40 steps
    final = loop.run(config, w, stage, mesh)
    assert final["step"] < 40
    evals = [m for m in (json.loads(x) for x in open(os.path.join(w, "metrics.jsonl")))
             if m["split"] == "eval"]
    losses = [m["spec_gender/loss"] for m in evals]
    best = int(np.argmin(losses))
    assert len(losses) - 1 - best == config.patience  # stopped after `patience` stale evals
    info = read_model_info(os.path.join(w, "models", "spec_gender"))
    assert info["step"] == evals[best]["step"]
    np.testing.assert_allclose(info["validation_loss"], losses[best], rtol=1e-6)
    module, variables = load_model(os.path.join(w, "models", "spec_gender"))
    assert isinstance(module, AlexNet) and module.num_classes == 2 and module.width == 0.25
    assert variables["params"]["conv1"]["kernel"].shape[-1] == 16  # 64 x 0.25


def test_training_selects_on_the_validation_split(cls_stage, tiny_data, monkeypatch):
    """Every stage evaluates (early stopping, best export, final metrics) on validation, never
    test: the classifiers stage's evaluation reads exactly the validation examples."""
    from pcmelgan_jax.data import pipeline
    from pcmelgan_jax.data.audio_mnist import read_split

    for make in (configs.classifiers, configs.vocoder, configs.pcmelgan):
        for small in (False, True):
            assert make(small=small).eval_split == "validation", make.__name__
    config, mesh, stage, _ = cls_stage
    real, seen = pipeline.make_dataset, []

    def spy(data_dir, dataset, split, *args, **kwargs):
        it = real(data_dir, dataset, split, *args, **kwargs)
        seen.append([split, kwargs.get("train"), []])

        class Recorded:  # the batches as the stage sees them, speakers of real examples kept
            def __iter__(self):
                for batch in it:
                    seen[-1][2] += batch["speaker"][batch["mask"] > 0].tolist()
                    yield batch

            def close(self):
                it.close()

        return Recorded()

    monkeypatch.setattr(pipeline, "make_dataset", spy)
    metrics = stage.evaluate(stage.state, 0)
    assert set(metrics) == {"spec_gender/loss", "spec_gender/accuracy"}
    assert [(split, train) for split, train, _ in seen] == [("validation", False)]
    speakers = seen[0][2]
    validation = read_split(tiny_data)["splits"]["validation"]["speakers"]
    assert len(speakers) == len(pipeline.load_source(tiny_data, split="validation")) == 40
    assert sorted(set(speakers)) == validation


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
    assert configs.vocoder(small=True).mel_loss_weight > 0
    assert configs.vocoder().mel_loss_weight == 0  # off by default (the original's losses)


def test_missing_paths_are_named(tmp_path):
    from pcmelgan_jax.training import pcmelgan

    config = configs.pcmelgan(small=True)
    config.data_dir = str(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="nope"):
        loop.make_train_iterator(config)
    with pytest.raises(FileNotFoundError, match="no_classifiers"):
        pcmelgan.load_monitors(str(tmp_path / "no_classifiers"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty/models/spec_digit"):
        pcmelgan.load_monitors(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="no_vocoder"):
        pcmelgan.load_vocoder(str(tmp_path / "no_vocoder"))
    assert pcmelgan.load_vocoder("") is None


def test_vocoder_warmup_step_trains_generator_on_mel_loss_only():
    from pcmelgan_jax.audio import log_mel

    hp = steps.VocoderHyper(mel_loss_weight=10.0, generator_arch=(("ngf", 8),))
    txs = {"generator": optax.adam(1e-3)}
    gen = st.network_state(
        st.init_variables("melgan_generator", {"ngf": 8}, jax.random.key(0, impl="rbg")),
        txs["generator"],
    )
    other = st.network_state({"params": {"w": jnp.ones((3,))}}, optax.adam(1e-3))
    state = st.new_train_state({"generator": gen, "discriminator": other})
    batch = {k: jnp.asarray(v) for k, v in _batch(2).items()}
    mel = jax.jit(log_mel)(batch["audio"])
    expected = float(jax.jit(lambda p: jnp.mean(jnp.abs(log_mel(hp.generator().apply(
        {"params": p}, mel)) - mel)))(gen.params))
    initial = jax.device_get(gen.params)
    step = steps.jit_step(steps.vocoder_warmup_step, hp=hp, txs=txs)
    new, metrics = step(state, batch, jax.random.key(0))  # donates state
    np.testing.assert_allclose(metrics["mel_l1"], expected, rtol=1e-5)
    np.testing.assert_allclose(metrics["generator/loss"], 10.0 * expected, rtol=1e-5)
    assert int(new.step) == 1 and metrics["finite"] == 1.0
    assert set(metrics) == {"generator/loss", "mel_l1", "finite"}
    np.testing.assert_array_equal(new.networks["discriminator"].params["w"], np.ones(3))
    changed = jax.tree.map(
        lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))),
        new.networks["generator"].params, initial,
    )
    assert all(jax.tree.leaves(changed))


def test_vocoder_warmup_needs_the_mel_loss(tmp_path):
    from pcmelgan_jax.training import vocoder

    config = configs.vocoder()
    config.discriminator_start_step = 10
    with pytest.raises(ValueError, match="mel_loss_weight must be > 0"):
        vocoder.build_stage(config, str(tmp_path), sharding.make_mesh(jax.devices()[:1]))


def test_progress_postfix_keeps_metric_names_apart():
    """The progress bar shows short names, the full key where two would collide."""
    from pcmelgan_jax.logging_utils import progress_postfix

    m = {"filter/loss": 1.23456, "generator/loss": 2.0, "filter/distortion": 0.5, "x/y": 9.0}
    assert progress_postfix(m) == {"filter/loss": "1.23", "generator/loss": "2",
                                   "distortion": "0.5"}
    assert progress_postfix({"a/loss": 1.0}, limit=3) == {"loss": "1"}


def test_metric_writer_keeps_integers(tmp_path):
    """Steps and counts are logged as integers, everything else as floats."""
    import json

    from pcmelgan_jax.logging_utils import MetricWriter

    writer = MetricWriter(tmp_path, enabled=True)
    writer.write_scalars(7, {"best_step": 3, "count": np.int32(2), "loss": np.float32(0.5),
                             "bad": float("nan")}, "final")
    writer.flush()
    line = (tmp_path / "metrics.jsonl").read_text().strip()
    assert '"best_step": 3,' in line and '"count": 2,' in line
    assert json.loads(line) == {"step": 7, "split": "final", "time": json.loads(line)["time"],
                                "best_step": 3, "count": 2, "loss": 0.5, "bad": "nan"}


@pytest.mark.parametrize("stage", ["classifiers_small", "vocoder", "pcmelgan"])
def test_distributed_settings_override_from_the_command_line(stage, monkeypatch):
    """Multi-host runs pass the coordinator, process count and id as flags."""
    import sys

    from absl import flags
    from ml_collections import config_flags

    path = os.path.join(os.path.dirname(__file__), "..", "configs", f"{stage}.py")
    argv = ["train.py", f"--config={path}", "--config.distributed.enabled=True",
            "--config.distributed.coordinator_address=10.0.0.1:1234",
            "--config.distributed.num_processes=4", "--config.distributed.process_id=3"]
    monkeypatch.setattr(sys, "argv", argv)  # config_flags reads its overrides from sys.argv
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, flag_values=fv, lock_config=True)
    fv(argv)
    d = fv.config.distributed
    assert (d.enabled, d.coordinator_address, d.num_processes, d.process_id) == (
        True, "10.0.0.1:1234", 4, 3)
