"""The training loop: resume, NaN guard, model selection on the validation split, logging."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import shutil

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


@pytest.fixture
def d2h_guard_on_cpu(monkeypatch):
    """``jax.transfer_guard_device_to_host`` that also fires on CPU.

    XLA:CPU arrays already live in host memory, so JAX's own device-to-host guard never fires
    there; while a disallowing guard is active, this one also refuses what every fetch
    (``jax.device_get``, ``np.asarray``, ``float``) goes through: ``ArrayImpl._value``.
    """
    from jax._src import array as array_lib

    real_guard, real_value = jax.transfer_guard_device_to_host, array_lib.ArrayImpl._value
    active = []

    @contextlib.contextmanager
    def guard(level):
        with real_guard(level):
            active.append(level.startswith("disallow"))
            try:
                yield
            finally:
                active.pop()

    def value(self):
        if active and active[-1]:
            raise RuntimeError(f"Disallowed device-to-host transfer: {self.aval}")
        return real_value.fget(self)

    monkeypatch.setattr(jax, "transfer_guard_device_to_host", guard)
    monkeypatch.setattr(array_lib.ArrayImpl, "_value", property(value))


def test_steps_between_host_events_fetch_nothing(cls_stage, tmp_path, d2h_guard_on_cpu):
    """Metrics stay on the device between logs, evaluations and checkpoints: the loop runs
    those steps under a guard that refuses every device-to-host transfer, explicit ones too.
    The same guard stops a step that fetches its metrics, as the loop once did."""
    config, mesh, stage, initial = cls_stage
    config = _classifier_config(config.data_dir, num_train_steps=7, log_every_steps=3,
                                eval_every_steps=-1, checkpoint_every_steps=-1)
    w = str(tmp_path / "guarded")
    final = loop.run(config, w, _light_stage(config, mesh, w, initial, stage.train_step),
                     mesh, transfer_guard="disallow_explicit")
    assert final["step"] == 7
    logged = [json.loads(x) for x in open(os.path.join(w, "metrics.jsonl"))]
    train = [m for m in logged if m["split"] == "train"]
    assert [m["step"] for m in train] == [3, 6, 7]  # every window averaged and logged
    assert all(np.isfinite(m["spec_gender/loss"]) for m in train)

    def fetching(state, batch, rng):
        state, metrics = stage.train_step(state, batch, rng)
        return state, jax.device_get(metrics)

    w = str(tmp_path / "fetching")
    with pytest.raises(Exception, match="[Dd]isallowed device-to-host transfer"):
        loop.run(config, w, _light_stage(config, mesh, w, initial, fetching), mesh,
                 transfer_guard="disallow_explicit")


def test_nan_between_host_events_is_caught_before_the_next_checkpoint(cls_stage, tmp_path,
                                                                     d2h_guard_on_cpu):
    """A NaN at step 4, between the step-3 checkpoint and the step-5 log, is found at step 5
    (the window's health is checked there), named as step 4, and nothing after step 3 is
    saved."""
    config, mesh, stage, initial = cls_stage
    config = _classifier_config(config.data_dir, num_train_steps=6, log_every_steps=5,
                                eval_every_steps=-1, checkpoint_every_steps=3)

    def poison(state, batch, rng):
        state, metrics = stage.train_step(state, batch, rng)
        nan = jnp.where(state.step == 4, jnp.nan, 0.0)  # on the device: no fetch
        return state, {**metrics, "spec_gender/loss": metrics["spec_gender/loss"] + nan}

    w = str(tmp_path / "nan")
    with pytest.raises(loop.TrainingDivergedError,
                       match=r"at step 4 \(spec_gender/loss\), found at step 5.*step 3"):
        loop.run(config, w, _light_stage(config, mesh, w, initial, poison), mesh,
                 transfer_guard="disallow_explicit")
    assert sorted(os.listdir(os.path.join(w, "checkpoints"))) == ["3"]


def _hold_lock(folder: str):
    """A second process holding ``folder``'s run lock (until killed)."""
    import subprocess
    import sys

    code = ("import sys, time\nfrom pcmelgan_jax.workdir import exclusive\n"
            "with exclusive(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(600)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, folder], stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_samples_at_their_interval_and_once_at_the_end(cls_stage, tmp_path):
    """``write_samples`` gets the run's writer at every ``samples_every_steps`` and once at
    the end (not twice when the interval divides the last step)."""
    from pcmelgan_jax.logging_utils import read_summaries

    config, mesh, stage, initial = cls_stage
    config = _classifier_config(config.data_dir, num_train_steps=4, samples_every_steps=2,
                                eval_every_steps=-1, checkpoint_every_steps=-1)
    w = str(tmp_path / "samples")
    calls = []

    def write_samples(state, step, writer):
        calls.append(step)
        writer.write_audio(step, "samples/audio/0_probe", np.zeros(80, np.float32))

    light = _light_stage(config, mesh, w, initial, stage.train_step)
    loop.run(config, w, dataclasses.replace(light, write_samples=write_samples), mesh)
    assert calls == [2, 4]
    tags = [(step, v.tag) for step, v in read_summaries(os.path.join(w, "tensorboard"))
            if v.HasField("audio")]
    assert tags == [(2, "samples/audio/0_probe"), (4, "samples/audio/0_probe")]


def test_metrics_window_averages_each_metric_over_the_steps_that_reported_it():
    """A metric that appears later (the vocoder's discriminator loss after its start step) is
    averaged over its own steps; health names the first bad step and metric."""
    window = loop.MetricsWindow()
    window.add({"g": jnp.float32(1.0), "finite": jnp.float32(1.0)}, 1)
    window.add({"g": jnp.float32(3.0), "d": jnp.float32(2.0), "finite": jnp.float32(1.0)}, 2)
    window.add({"g": jnp.float32(5.0), "d": jnp.float32(jnp.inf), "finite": jnp.float32(0.0)}, 3)
    window.add({"g": jnp.float32(jnp.nan), "d": jnp.float32(1.0), "finite": jnp.float32(0.0)}, 4)
    health = window.take_health()
    assert not health["ok"] and health["first_bad"] == 3
    assert {k: bool(v) for k, v in health["bad"].items()} == {"g": True, "d": True}
    window.add({"g": jnp.float32(2.0), "d": jnp.float32(4.0), "finite": jnp.float32(1.0)}, 5)
    assert window.take_health()["ok"]  # a new window after each check
    sums, counts, steps = window.take_sums()
    assert counts == {"g": 5, "d": 4} and steps == 5
    assert float(sums["g"]) != float(sums["g"])  # the NaN stays in the logged sum
    window.add({"g": jnp.float32(2.0), "finite": jnp.float32(1.0)}, 6)
    sums, counts, steps = window.take_sums()
    assert (float(sums["g"]), counts, steps) == (2.0, {"g": 1}, 1)


def test_second_process_on_a_run_folder_is_refused(cls_stage, tmp_path, capsys):
    """While one process trains in a folder (holds WORKDIR/.lock), another is refused at once
    with one line naming the folder and the holder (the CLI exits 2); once the holder is
    killed (SIGKILL), the folder trains again."""
    from pcmelgan_jax import cli
    from pcmelgan_jax import workdir as run_layout

    config, mesh, stage, initial = cls_stage
    w = str(tmp_path / "busy")
    holder = _hold_lock(w)
    try:
        with pytest.raises(run_layout.WorkdirBusyError,
                           match=f"{w}: already in use by pid {holder.pid} "):
            loop.run(config, w, _light_stage(config, mesh, w, initial, stage.train_step), mesh)
        spec = os.path.join(os.path.dirname(__file__), "..", "configs", "classifiers.py:small")
        assert cli.main(["train", "--config", spec, "--workdir", w,
                         f"--config.data_dir={config.data_dir}"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"pcmelgan-jax train: error: {w}: already in use by pid "
                              f"{holder.pid} ") and "\n" not in err
        assert not os.path.exists(os.path.join(w, "checkpoints"))
    finally:
        holder.kill()
        holder.wait()
    final = loop.run(config, w, _light_stage(config, mesh, w, initial, stage.train_step), mesh)
    assert final["step"] == config.num_train_steps


_KILL_DURING_SAVE = """
import os, signal, sys
import jax
from orbax.checkpoint._src.path import atomicity
from pcmelgan_jax.commands import train_stage
from pcmelgan_jax.config_files import load_config

# every item of the step-4 checkpoint is written under its temporary name; die before the
# commit that makes it a checkpoint (the rename), as a SIGKILL in the middle of a save would
finalize = atomicity.AtomicRenameTemporaryPath.finalize

async def killing_finalize(self, *args, **kwargs):
    if os.path.basename(str(self._final_path)) == "4":
        os.kill(os.getpid(), signal.SIGKILL)
    return await finalize(self, *args, **kwargs)

atomicity.AtomicRenameTemporaryPath.finalize = killing_finalize
jax.config.update("jax_num_cpu_devices", 1)
train_stage(load_config(sys.argv[1]), sys.argv[2])
"""


def test_sigkill_during_a_checkpoint_save_resumes_from_the_last_complete_one(
        cls_stage, tmp_path):
    """A run killed (SIGKILL) while its step-4 checkpoint is being written resumes from the
    step-2 one as if the half-written step-4 save had never been, and its lock did not
    outlive it."""
    import subprocess
    import sys

    from pcmelgan_jax.config_files import load_config

    config, mesh, stage, initial = cls_stage
    fields = dict(data_dir=config.data_dir, classifiers=("spec_gender",), batch_size=8,
                  eval_batch_size=40, num_train_steps=6, eval_every_steps=-1,
                  checkpoint_every_steps=2, keep_checkpoints=5, log_every_steps=2,
                  worker_threads=0, async_checkpointing=True, progress_bar=False)
    spec = tmp_path / "tiny.py"
    spec.write_text("from pcmelgan_jax.configs import classifiers\n\n\ndef get_config():\n"
                    "    c = classifiers.get_config('small')\n"
                    + "".join(f"    c.{k} = {v!r}\n" for k, v in fields.items())
                    + "    return c\n")
    killed = str(tmp_path / "killed")
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PCMELGAN_HUGEPAGES": "0"}
    child = subprocess.run([sys.executable, "-c", _KILL_DURING_SAVE, str(spec), killed],
                           env=env, capture_output=True, text=True, timeout=600)
    assert child.returncode == -9, child.stderr[-3000:]
    entries = sorted(os.listdir(os.path.join(killed, "checkpoints")))
    assert "2" in entries and "4" not in entries, entries
    assert any(e.startswith("4.") for e in entries), entries  # the save it died in
    assert open(os.path.join(killed, ".lock")).read().startswith("pid ")  # held when killed

    # the same command again, here with the tests' compiled step; the reference resumes a
    # clean copy of the step-2 checkpoint alone (one process's program, so equal bit for bit)
    config = load_config(str(spec))
    clean = str(tmp_path / "clean")
    shutil.copytree(os.path.join(killed, "checkpoints", "2"),
                    os.path.join(clean, "checkpoints", "2"))
    for run in (killed, clean):
        final = loop.run(config, run, _light_stage(config, mesh, run, initial, stage.train_step),
                         mesh)
        assert final["step"] == 6
        assert sorted(os.listdir(os.path.join(run, "checkpoints"))) == ["2", "4", "6"]
    target = sharding.replicate(initial, mesh)
    states = []
    for run in (killed, clean):
        mngr = checkpoints.checkpoint_manager(run, config)
        states.append(jax.device_get(checkpoints.restore(mngr, 6, target)[0]))
        mngr.close()
    for x, y in zip(jax.tree.leaves(states[0]), jax.tree.leaves(states[1]), strict=True):
        np.testing.assert_array_equal(x, y)
    assert not all(np.array_equal(x, y) for x, y in
                   zip(jax.tree.leaves(states[0]), jax.tree.leaves(initial), strict=True))


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
