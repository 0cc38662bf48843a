"""Several PCMelGAN seeds in one vmapped program (``--config.num_seeds=N``): seed i equals a
single run of seed ``seed + i``, stop-and-resume is exact, and the per-seed run folders are
found by the evaluation."""

from __future__ import annotations

import dataclasses
import functools
import json
import os

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from pcmelgan_jax import evaluation
from pcmelgan_jax import workdir as run_layout
from pcmelgan_jax.checkpointing import load_model, read_model_info, save_model
from pcmelgan_jax.configs import pcmelgan as pcmelgan_config
from pcmelgan_jax.evaluation.data import load_split
from pcmelgan_jax.models.registry import numpy_random_variables
from pcmelgan_jax.runtime import sharding
from pcmelgan_jax.training import checkpoints, loop, pcmelgan, pcmelgan_stage
from pcmelgan_jax.training import seeds as seeds_lib
from pcmelgan_jax.training import stage as stage_lib
from pcmelgan_jax.training import state as st

SPEAKERS, REPS = 6, 2  # per gender 1 train / 1 validation / 1 test speaker; 40 utterances each
SEED = 3  # the vmapped run trains seeds 3 and 4
STEPS = 2
NETWORKS = ("filter", "filter_discriminator", "generator", "generator_discriminator")
# Plain SGD with a small learning rate (as in test_pcmelgan's 1-vs-4-device test): parameter
# differences stay proportional to gradient differences, and the second step's gradients stay
# close to the first's. Adam's first update is lr * sign(g), which flips for gradient entries
# that are zero up to rounding (e.g. conv biases before BatchNorm): Adam would turn
# rounding-level differences into differences of 2 * lr.
SGD_LR = 1e-4
TXS = {name: optax.sgd(SGD_LR) for name in NETWORKS}  # the same objects: compiled once




@pytest.fixture(scope="module")
def classifiers(tmp_path_factory) -> str:
    """A classifiers workdir with random width-0.25 spectrogram AlexNets (the monitors)."""
    root = tmp_path_factory.mktemp("seeds_classifiers")
    for name, k, seed in (("spec_digit", 10, 1), ("spec_gender", 2, 2)):
        arch = {"num_classes": k, "width": 0.25}
        save_model(root / "models" / name, "alexnet",
                   numpy_random_variables("alexnet", seed, **arch), arch=arch)
    return str(root)


def _config(data_dir: str, classifiers_dir: str, **overrides):
    c = pcmelgan_config.get_config("small")
    c.data_dir = data_dir
    c.classifiers_workdir = classifiers_dir
    c.seed = SEED
    c.batch_size = 4
    c.eval_batch_size = 40
    c.num_train_steps = STEPS
    c.eval_every_steps = 1
    c.checkpoint_every_steps = 1
    c.samples_every_steps = -1
    c.log_every_steps = 1
    c.discriminator_width = 0.25
    # eps above any reachable L1 distortion keeps the distortion hinge at exactly zero: its
    # gradient is a sign that would flip with rounding for near-equal elements
    c.eps = 10.0
    # the paper's losses and G input: the small config's digit and s' losses, gradients
    # through the fixed AlexNets, amplify the vmapped convolutions' rounding in G's update
    # past this test's tolerance while the logged losses still agree (docs/measurements.md)
    c.digit_weight = c.sampled_gender_weight = 0.0
    c.generator_input, c.generator_input_bands, c.generator_input_bins = "filtered", 0, (0, 80)
    c.generator_digit_condition = False
    c.generator_input_mask_depth = 0.0
    c.bn_recalibration_batches = 2  # the exported F and G: statistics of 2 training batches
    c.worker_threads = 0
    c.async_checkpointing = False
    c.progress_bar = False
    for k, v in overrides.items():
        c[k] = v
    return c


def _train(config, workdir: str, wrap=None) -> tuple[st.TrainState, dict]:
    """Builds the stage (SGD) and runs it; returns (initial state on the host, final)."""
    mesh = sharding.make_mesh(jax.devices()[:1])
    stage = pcmelgan_stage.build_stage(config, workdir, mesh, txs=TXS)
    initial = jax.device_get(stage.state)  # before the first step donates it
    if wrap is not None:
        stage = dataclasses.replace(stage, train_step=wrap(stage.train_step))
    return initial, loop.run(config, workdir, stage, mesh)


def _jsonl(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _variables(run_dir: str, name: str) -> dict:
    return load_model(os.path.join(run_dir, "models", name))[1]


@pytest.fixture(scope="module")
def runs(tiny_data, classifiers, tmp_path_factory):
    """An N=2 vmapped run (seeds 3, 4) and the single runs of seeds 3 and 4.

    The multi-seed run names ``seeds_strategy="vmap"``: ``auto`` would unroll on CPU, and the
    vmapped program (an accelerator's ``auto``) is the one whose equality needs checking."""
    root = tmp_path_factory.mktemp("seeds_runs")
    out = {}
    multi = {"num_seeds": 2, "seeds_strategy": "vmap"}
    for tag, overrides in (("multi", multi), (3, {"seed": 3}), (4, {"seed": 4})):
        workdir = str(root / str(tag))
        config = _config(tiny_data, classifiers, **overrides)
        initial, final = _train(config, workdir)
        out[tag] = {"workdir": workdir, "initial": initial, "final": final, "config": config}
    return out


def _check_updates(name: str, seed: int, got: dict, want: dict, init: dict) -> float:
    """Parameter UPDATES (final - initial) of the vmapped and the single run agree: the L2
    norm of their difference is below 10% of the L2 norm of the update. Returns that ratio.

    vmap turns the convolutions into batched matmuls of input patches (``conv_nd``) that
    round differently (outputs differ by ~1e-5), and the gradients of these tiny untrained
    networks are sensitive to that (train-mode BatchNorm over 4 examples): perturbing G's
    input by 1e-6 (relative), which changes its output by ~1e-5, changes its parameter
    gradients by ~2% (measured). Measured here after two steps: F <= 2%, FD <= 0.02%,
    GD <= 0.3%, G <= 5.1%. Another data order, key or initialisation gives uncorrelated
    updates (ratio ~1 or more).
    """
    def update(params):
        return np.concatenate([
            np.ravel(np.asarray(a, np.float64) - p0)
            for a, p0 in zip(jax.tree.leaves(params), jax.tree.leaves(init), strict=True)
        ])

    d_got, d_want = update(got["params"]), update(want["params"])
    assert np.linalg.norm(d_want) > 0, f"{name} was not updated"
    rel = float(np.linalg.norm(d_got - d_want) / np.linalg.norm(d_want))
    assert rel < 0.1, f"seed {seed} {name}: the updates differ by {rel:.1%} (L2)"
    return rel


def _check_recalibrated(run_dir: str, config) -> None:
    """The exported F's and G's ``batch_stats`` equal ``recalibrate_batch_norm`` of their
    exported parameters over the first ``bn_recalibration_batches`` batches of the seed."""
    config = ml_collections.ConfigDict(config)
    _, widths = pcmelgan_stage.load_monitors(config.classifiers_workdir)
    hp = pcmelgan.hyper(config, widths)
    exported = {name: _variables(run_dir, name) for name in ("filter", "generator")}
    # (recalibration zeroes the running statistics: their values do not enter)
    nets = {name: st.NetworkState(params=v["params"], opt_state=None,
                                  batch_stats=v["batch_stats"])
            for name, v in exported.items()}
    mesh = sharding.make_mesh(jax.devices()[:1])
    it = stage_lib.make_train_iterator(config, config.seed)
    try:
        batches = [sharding.shard_batch(next(it), mesh)
                   for _ in range(config.bn_recalibration_batches)]
    finally:
        it.close()
    key = jax.random.fold_in(jax.random.key(config.seed), pcmelgan_stage.BN_RECALIBRATION_STREAM)
    want = pcmelgan_stage.recalibrate_batch_norm(nets, batches, key, hp)
    for name, v in exported.items():
        chex.assert_trees_all_close(v["batch_stats"], want[name].batch_stats, rtol=1e-5,
                                    atol=1e-6)


def test_seed_i_equals_a_single_run_of_seed_plus_i(runs):
    multi = runs["multi"]
    assert multi["final"]["seeds"] == [3, 4] and multi["final"]["num_seeds"] == 2
    lines = _jsonl(multi["workdir"])
    for i, seed in enumerate((3, 4)):
        single = runs[seed]
        # same initialisation, bit for bit
        for a, b in zip(jax.tree.leaves(seeds_lib.seed_state(multi["initial"], i)),
                        jax.tree.leaves(single["initial"]), strict=True):
            np.testing.assert_array_equal(a, b)
        run_dir = run_layout.seed_dir(multi["workdir"], seed)
        for name in NETWORKS:
            got, want = _variables(run_dir, name), _variables(single["workdir"], name)
            _check_updates(name, seed, got, want, single["initial"].networks[name].params)
            # BatchNorm running statistics (F, G): moved by the same batches through slightly
            # different parameters (see _check_updates); within 1% of their largest value
            for a, b in zip(jax.tree.leaves(got.get("batch_stats", {})),
                            jax.tree.leaves(want.get("batch_stats", {})), strict=True):
                np.testing.assert_allclose(a, b, rtol=0, atol=1e-2 * np.max(np.abs(b)),
                                           err_msg=f"seed {seed} {name} batch_stats")
        # per-step losses logged per seed equal the single run's (split train/seed<S>)
        got_lines = [m for m in lines if m["split"] == f"train/seed{seed}"]
        want_lines = [m for m in _jsonl(single["workdir"]) if m["split"] == "train"]
        assert [m["step"] for m in got_lines] == [m["step"] for m in want_lines] == [1, 2]
        for g, w in zip(got_lines, want_lines, strict=True):
            for k in ("filter/loss", "generator/loss", "filter_discriminator/loss",
                      "generator_discriminator/loss", "filter/distortion"):
                np.testing.assert_allclose(g[k], w[k], rtol=1e-4,
                                           err_msg=f"{seed} {g['step']} {k}")
        # periodic evaluation per seed
        evals = [m for m in lines if m["split"] == f"eval/seed{seed}"]
        want_evals = [m for m in _jsonl(single["workdir"]) if m["split"] == "eval"]
        assert [m["step"] for m in evals] == [m["step"] for m in want_evals] == [1, 2]
        np.testing.assert_allclose([m["filter_distortion"] for m in evals],
                                   [m["filter_distortion"] for m in want_evals], rtol=1e-3)
    # the exported running statistics are F's and G's recalibrated on the seed's own first
    # training batches, as a single run's
    assert multi["final"]["bn_recalibration_batches"] == 2
    for run_dir, config in ((run_layout.seed_dir(multi["workdir"], 3), multi["config"]),
                            (runs[3]["workdir"], runs[3]["config"])):
        _check_recalibrated(run_dir, dict(config, seed=3))
    # the mean lines are the means over the seeds
    mean = next(m for m in lines if m["split"] == "train" and m["step"] == 1)
    per = [next(m for m in lines if m["split"] == f"train/seed{s}" and m["step"] == 1)
           for s in (3, 4)]
    np.testing.assert_allclose(mean["filter/loss"], np.mean([p["filter/loss"] for p in per]),
                               rtol=1e-6)
    assert mean["examples_per_second"] > 0 and "steps_per_second" not in per[0]


def test_stop_and_resume_equals_the_uninterrupted_run(runs, tiny_data, classifiers, tmp_path):
    multi = runs["multi"]
    config = multi["config"]
    workdir = str(tmp_path / "resumed")

    class Interrupt(Exception):
        pass

    def stop_after_checkpoint(step_fn):  # a checkpoint every step: stop after the first
        def wrapped(state, batch, rng):
            if int(jax.device_get(state.step)) == 1:
                raise Interrupt
            return step_fn(state, batch, rng)

        return wrapped

    with pytest.raises(Interrupt):
        _train(config, workdir, stop_after_checkpoint)
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["1"]
    # another number of seeds cannot resume this checkpoint
    with pytest.raises(ValueError, match=r"holds the seeds \[3, 4\].*seeds \[3, 4, 5\]"):
        _train(_config(tiny_data, classifiers, num_seeds=3), workdir)
    _, final = _train(config, workdir)
    assert final["step"] == STEPS
    for seed in (3, 4):
        for name in NETWORKS:
            got = _variables(run_layout.seed_dir(workdir, seed), name)
            want = _variables(run_layout.seed_dir(multi["workdir"], seed), name)
            for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
                np.testing.assert_array_equal(a, b, err_msg=f"seed {seed} {name}")
    for key in ("filter_gender_acc", "generator_digit_acc", "filter_distortion"):
        assert final[key] == multi["final"][key]


def test_seed_runs_are_found_by_the_evaluation(runs, tmp_path):
    multi = runs["multi"]
    workdir = multi["workdir"]
    # the workdir also holds checkpoints/, tensorboard/, metrics.jsonl, config.json ...
    assert {"checkpoints", "tensorboard", "metrics.jsonl", "config.json",
            "final_metrics.json"} <= set(os.listdir(workdir))
    assert not evaluation.is_run_dir(workdir)
    expected = [run_layout.seed_dir(workdir, s) for s in (3, 4)]
    assert evaluation.find_runs("", workdir) == expected  # eval.py --workdir DIR
    train = load_split(multi["config"].data_dir, multi["config"].dataset, "train", 8)
    level = [float(train.mean.mean()), float(train.std.mean())]
    assert evaluation.find_runs(workdir, tmp_path) == expected  # --config.runs=DIR
    vocoder = tmp_path / "vocoder"  # resolve_run needs one; this training had none
    vocoder.mkdir()
    for seed, path in zip((3, 4), expected, strict=True):
        run = evaluation.resolve_run(path, workdir, {"vocoder_workdir": str(vocoder)})
        assert run.seed == seed and run.eps == 10.0 and not run.filter_only
        assert run.classifiers_workdir == os.path.abspath(multi["config"].classifiers_workdir)
        assert run.data_dir == os.path.abspath(multi["config"].data_dir)
        cfg = json.load(open(os.path.join(path, "config.json")))
        assert cfg["seed"] == seed and cfg["num_seeds"] == 1
        final = json.load(open(os.path.join(path, "final_metrics.json")))
        assert final["seed"] == seed and final["step"] == STEPS
        assert final["filter_distortion"] == multi["final"]["per_seed"][f"seed{seed}"][
            "filter_distortion"]
        info = read_model_info(os.path.join(path, "models", "generator"))
        assert info["seed"] == seed
        # the small config's G is heard at the training speakers' average level
        assert info["arch"]["output_level"] == pytest.approx(level, rel=1e-5)
        assert os.path.isfile(os.path.join(path, "samples", f"step_{STEPS:07d}.png"))
    top = json.load(open(os.path.join(workdir, "final_metrics.json")))
    assert top["runs"] == expected and top["seeds"] == [3, 4]
    np.testing.assert_allclose(
        top["filter_distortion"],
        np.mean([top["per_seed"][f"seed{s}"]["filter_distortion"] for s in (3, 4)]), rtol=1e-6)


def test_shard_seed_batch_splits_the_batch_axis_over_data():
    """(N, B, ...) batches: the seed axis replicated, B split over the mesh's data axis."""
    mesh = sharding.make_mesh(jax.devices()[:4])
    batches = [{"audio": np.full((8, 3), i, np.float32), "gender": np.arange(8)} for i in (0, 1)]
    batch = sharding.shard_seed_batch(sharding.stack_seed_batches(batches), mesh)
    assert batch["audio"].shape == (2, 8, 3) and batch["gender"].shape == (2, 8)
    assert batch["audio"].sharding.spec == jax.sharding.PartitionSpec(None, "data")
    assert {s.data.shape for s in batch["audio"].addressable_shards} == {(2, 2, 3)}
    np.testing.assert_array_equal(batch["audio"][1], 1.0)
    with pytest.raises(ValueError, match="not divisible by the 4 devices"):
        sharding.shard_seed_batch({"audio": np.zeros((2, 6, 3), np.float32)}, mesh)
    # (N,) keys survive the checkpoint's JSON
    keys = seeds_lib.seed_keys([3, 4])
    back = checkpoints.key_from_json(json.loads(json.dumps(checkpoints.key_to_json(keys))))
    np.testing.assert_array_equal(jax.random.key_data(back), jax.random.key_data(keys))
    np.testing.assert_array_equal(jax.random.key_data(back[1]),
                                  jax.random.key_data(jax.random.key(4)))


@pytest.mark.parametrize("strategy", ["vmap", "map", "unroll"])
def test_seeds_step_strategies_equal_the_unbatched_step(strategy):
    from pcmelgan_jax.training.state import TrainState

    def toy_step(state, batch, rng, scale):
        w = state.networks["w"] * scale + batch.sum(0) + jax.random.normal(rng, (3,))
        return TrainState(step=state.step + 1, networks={"w": w}), {"loss": w.sum()}

    n = 3
    state = TrainState(step=jnp.asarray(5), networks={"w": jnp.arange(n * 3.0).reshape(n, 3)})
    batch = jnp.arange(n * 2 * 3.0).reshape(n, 2, 3)
    rngs = jax.vmap(jax.random.key)(jnp.arange(n))
    new, metrics = jax.jit(seeds_lib.seeds_step(toy_step, strategy))(state, batch, rngs, 2.0)
    assert int(new.step) == 6 and metrics["loss"].shape == (n,)
    for i in range(n):
        one, m = toy_step(TrainState(step=state.step, networks={"w": state.networks["w"][i]}),
                          batch[i], rngs[i], 2.0)
        np.testing.assert_allclose(new.networks["w"][i], one.networks["w"], rtol=1e-6)
        np.testing.assert_allclose(metrics["loss"][i], m["loss"], rtol=1e-6)


def test_seed_strategy_auto_and_checked(monkeypatch):

    assert seeds_lib.resolve_seed_strategy("auto") == "unroll"  # the tests run on CPU
    assert seeds_lib.resolve_seed_strategy("auto", 8) == "unroll"
    assert seeds_lib.resolve_seed_strategy("vmap") == "vmap"
    monkeypatch.setattr(seeds_lib.jax, "default_backend", lambda: "gpu")
    assert seeds_lib.resolve_seed_strategy("auto", 16) == "vmap"
    assert seeds_lib.resolve_seed_strategy("auto", seeds_lib.VMAP_MAX_BATCH) == "vmap"
    assert seeds_lib.resolve_seed_strategy("auto", 128) == "unroll"
    assert seeds_lib.resolve_seed_strategy("auto") == "vmap"
    assert seeds_lib.resolve_seed_strategy("map", 128) == "map"
    with pytest.raises(ValueError, match="seeds_strategy"):
        seeds_lib.resolve_seed_strategy("pmap")


def test_vmapped_step_has_no_grouped_convolutions(conv_groups):
    """Vmapping the PCMelGAN step over per-seed networks leaves no grouped (per-seed kernel)
    convolution in the program: every seed-batched convolution is ``conv_nd``'s batched
    matmuls of patches (grouped convolutions are slow on cuDNN, ``layers.conv_nd``)."""
    from pcmelgan_jax.models import registry

    n, b, width = 2, 4, 0.25
    hp = pcmelgan.PCMelGANHyper(discriminator_width=width,
                             monitor_widths=(("spec_digit", width), ("spec_gender", width)))
    archs = {"filter": ("unet_filter", {}), "generator": ("unet_generator", {}),
             "filter_discriminator": ("alexnet", {"num_classes": 2, "width": width}),
             "generator_discriminator": ("alexnet", {"num_classes": 3, "width": width})}

    def seeds(tree):
        return jax.tree.map(lambda a: jax.ShapeDtypeStruct((n, *a.shape), a.dtype), tree)

    networks = {name: seeds(jax.eval_shape(lambda v, tx=TXS[name]: st.network_state(v, tx),
                                           registry.variable_shapes(net, **kw)))
                for name, (net, kw) in archs.items()}
    state = st.TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), networks=networks)
    batch = seeds({"audio": jax.ShapeDtypeStruct((b, 8192), jnp.float32),
                   "mask": jax.ShapeDtypeStruct((b,), jnp.float32),
                   **{k: jax.ShapeDtypeStruct((b,), jnp.int32)
                      for k in ("digit", "gender", "speaker")}})
    monitors = {name: registry.variable_shapes("alexnet", num_classes=k, width=width)["params"]
                for name, k in (("spec_digit", 10), ("spec_gender", 2))}
    rngs = jax.eval_shape(lambda: seeds_lib.seed_keys(list(range(n))))
    step = seeds_lib.seeds_step(functools.partial(pcmelgan.pcmelgan_step, hp=hp, txs=TXS), "vmap")
    groups = conv_groups(step, state, batch, rngs, monitors)
    assert groups, "no convolution found: the walk missed the networks"
    assert set(groups) == {(1, 1)}, f"grouped convolutions in the vmapped step: {set(groups)}"
