"""The training loop: resume, NaN guard, model selection on the validation split, logging."""

from __future__ import annotations

import dataclasses
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pcmelgan_jax.checkpointing import load_model, read_model_info
from pcmelgan_jax.configs import classifiers as classifiers_config
from pcmelgan_jax.configs import pcmelgan as pcmelgan_config
from pcmelgan_jax.configs import vocoder as vocoder_config
from pcmelgan_jax.models import AlexNet
from pcmelgan_jax.runtime import sharding
from pcmelgan_jax.training import checkpoints, loop
from pcmelgan_jax.training import classifiers as classifiers_stage
from pcmelgan_jax.training import stage as stage_lib

SPEAKERS, REPS = 6, 2  # per gender 1 train / 1 validation / 1 test speaker; 40 utterances each


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    from pcmelgan_jax.data.prepare import prepare
    from pcmelgan_jax.data.synth import synthesize_corpus

    root = tmp_path_factory.mktemp("train_data")
    synthesize_corpus(root / "corpus", speakers=SPEAKERS, reps=REPS, seed=0)
    prepare(root / "corpus", root / "data", "all")
    return str(root / "data")


def _classifier_config(data_dir, **overrides):
    c = classifiers_config.get_config("small")
    c.data_dir = data_dir
    c.classifiers = ("spec_gender",)
    c.batch_size = 8
    c.eval_batch_size = 40
    c.num_epochs = 100
    c.num_train_steps = 6
    c.eval_every_steps = 3
    c.checkpoint_every_steps = 2
    c.log_every_steps = 1
    c.update(worker_threads=0, async_checkpointing=False, progress_bar=False, **overrides)
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
    eval_fn = jax.jit(functools.partial(classifiers_stage.classifier_eval_step, widths=widths))
    names = sorted(config.classifiers)
    models_dir = os.path.join(workdir, "models")

    def evaluate(state, step):
        sums = None
        for batch in stage_lib.eval_batches(config, mesh):
            sums = stage_lib.sum_metrics(sums, eval_fn({n: state.networks[n].params for n in names},
                                                   batch))
        sums = jax.device_get(sums)
        c = float(sums["count"])
        return {f"{n}/loss": float(sums[f"{n}/loss_sum"]) / c for n in names}

    def after_evaluation(state, step, metrics, book):
        book.setdefault("history", []).append([step, metrics["spec_gender/loss"]])
        return False

    return stage_lib.Stage("classifiers", state, train_step, evaluate, after_evaluation,
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
    mngr = checkpoints.checkpoint_manager(w, config)
    restored, _, _ = checkpoints.restore(mngr, 2, sharding.replicate(initial, mesh))
    mngr.close()
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(jax.device_get(restored)))


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

    for module in (classifiers_config, vocoder_config, pcmelgan_config):
        for variant in (None, "small"):
            assert module.get_config(variant).eval_split == "validation", module.__name__
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


@pytest.mark.parametrize("stage", ["classifiers.py:small", "vocoder.py", "pcmelgan.py"])
def test_distributed_settings_override_from_the_command_line(stage, monkeypatch):
    """Multi-host runs pass the coordinator, process count and id as flags."""
    import sys

    from absl import flags
    from ml_collections import config_flags

    path = os.path.join(os.path.dirname(__file__), "..", "configs", stage)
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
