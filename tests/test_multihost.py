"""Two processes (``jax.distributed`` on CPU, gloo collectives) train, checkpoint, resume,
export models and write samples; ``maybe_initialize_distributed``'s arguments.

In the default suite: a 2-process run of a model-free probe stage through ``loop.train``
(each process runs this file as a script). Slow (``train.py`` runs of two processes each,
real stages compiled in both): ``pytest -m slow``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _write_config(path: Path, stage: str, **fields) -> Path:
    """A ``train.py`` config file: ``configs/<stage>.py:small`` with ``fields`` set
    (``"a.b"`` keys for nested fields) and the settings every 2-process run here shares."""
    fields = {"eval_batch_size": 8, "worker_threads": 0, "progress_bar": False, **fields}
    lines = [f"    c.{key} = {value!r}" for key, value in fields.items()]
    path.write_text("\n".join([
        f"from pcmelgan_jax.configs import {stage}", "", "",
        "def get_config():", f"    c = {stage}.get_config('small')", *lines, "    return c", "",
    ]))
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _train_two_processes(config: Path, workdir: Path) -> None:
    """``python train.py`` as processes 0 and 1 of a 2-process ``jax.distributed`` job."""
    port = _free_port()
    _run_two_processes([
        [sys.executable, str(ROOT / "train.py"), f"--config={config}",
         f"--workdir={workdir}", "--config.distributed.enabled=True",
         f"--config.distributed.coordinator_address=localhost:{port}",
         "--config.distributed.num_processes=2", f"--config.distributed.process_id={i}"]
        for i in range(2)
    ], timeout=900)


# A cluster launcher's variables would make jax.distributed.initialize auto-detect it.
_CLUSTER_ENV = ("SLURM_", "OMPI_", "PMI_", "PMIX_", "KUBERNETES_SERVICE_HOST", "TPU_",
                "JAX_COORDINATOR_", "JAX_LOCAL_DEVICE_IDS")


def _run_two_processes(commands: list[list[str]], timeout: float) -> list[str]:
    """Runs the two commands at once on CPU; their outputs (asserting both exited with 0).
    When one fails the other is stopped (it would wait for its peer until JAX's timeouts)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_CLUSTER_ENV)}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    logs = [tempfile.TemporaryFile("w+") for _ in commands]
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                              text=True) for cmd, log in zip(commands, logs, strict=True)]
    deadline, stopped = time.monotonic() + timeout, set()
    try:
        while any(p.poll() is None for p in procs):
            if any(p.returncode for p in procs) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    finally:
        for i, p in enumerate(procs):
            if p.poll() is None:
                p.kill()
                p.wait()
                stopped.add(i)
    outputs = []
    for log in logs:
        log.seek(0)
        outputs.append(log.read())
        log.close()
    failed = [
        f"process {i} " + (f"stopped after {timeout} s or its peer's failure" if i in stopped
                           else f"exited with {p.returncode}") + f":\n{out[-4000:]}"
        for i, (p, out) in enumerate(zip(procs, outputs, strict=True)) if p.returncode
    ]
    assert not failed, "\n".join(failed)
    return outputs


def _state_tree(checkpoints: Path, step: int) -> dict:
    """The ``state`` item of a checkpoint as nested dicts of host arrays."""
    import jax
    import orbax.checkpoint as ocp

    path = checkpoints / str(step) / "state"
    checkpointer = ocp.PyTreeCheckpointer()  # as host arrays (saved on 2 processes' devices)
    meta = checkpointer.metadata(path)
    tree = getattr(meta, "item_metadata", meta)
    tree = getattr(tree, "tree", tree)
    args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    return checkpointer.restore(path, restore_args=args)


def _state(checkpoints: Path, step: int) -> list[np.ndarray]:
    import jax

    return jax.tree.leaves(_state_tree(checkpoints, step))


@pytest.fixture(scope="module")
def data_dir(tiny_data) -> str:
    return tiny_data  # 1 F + 1 M speaker per split (conftest)


def _distributed_config(**fields: Any) -> Any:
    from pcmelgan_jax.configs import common

    config = common.stage_config("classifiers")
    config.distributed.update(fields)
    return config


@pytest.fixture
def initialize_calls(monkeypatch) -> list:
    """The (args, kwargs) of every ``jax.distributed.initialize`` call (none really made)."""
    import jax

    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: calls.append((a, k)))
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: bool(calls))
    return calls


def test_enabled_alone_initializes_without_arguments(initialize_calls):
    """No coordinator, count or id: ``initialize()`` bare, so that JAX detects the cluster
    (SLURM, Open MPI, TPU pods)."""
    from pcmelgan_jax.runtime.sharding import maybe_initialize_distributed

    assert maybe_initialize_distributed(_distributed_config(enabled=True))
    assert initialize_calls == [((), {})]


@pytest.mark.parametrize("fields", [
    {"coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 3},
    {"process_id": 1},  # the rest auto-detected
])
def test_set_fields_are_passed_and_unset_ones_left_out(initialize_calls, fields):
    from pcmelgan_jax.runtime.sharding import maybe_initialize_distributed

    assert maybe_initialize_distributed(_distributed_config(enabled=True, **fields))
    assert initialize_calls == [((), fields)]


def test_not_enabled_or_already_initialized_does_not_initialize(initialize_calls):
    import ml_collections

    from pcmelgan_jax.runtime.sharding import maybe_initialize_distributed

    assert not maybe_initialize_distributed(_distributed_config(process_id=1))
    assert not maybe_initialize_distributed(ml_collections.ConfigDict({"stage": "vocoder"}))
    assert initialize_calls == []
    config = _distributed_config(enabled=True)
    assert maybe_initialize_distributed(config)
    assert not maybe_initialize_distributed(config)  # a second run in the same process
    assert len(initialize_calls) == 1


# The probe: a stage without a model, so that a 2-process run costs little more than start-up.
PROBE_STEPS = (2, 4)  # a run of 2 steps, then the same command resumed to 4
PROBE_BATCH = 8  # global; 4 per process, 2 per device (2 CPU devices per process)
PROBE_STRIDE = 512  # every 512th sample of a clip: 16 values that tell the clips apart


def _probe_stage(config: Any, workdir: str, mesh: Any) -> Any:
    """A stage whose state records every step's global batch (clip samples, labels) in row
    ``step``: the saved state shows which examples each process fed, in which order."""
    import jax
    import jax.numpy as jnp

    from pcmelgan_jax.runtime import sharding
    from pcmelgan_jax.training.stage import Stage
    from pcmelgan_jax.training.state import TrainState

    rows, width = PROBE_STEPS[-1], 8192 // PROBE_STRIDE

    def step(state, batch, rng):
        seen = state.networks["seen"].at[state.step].set(batch["audio"][:, ::PROBE_STRIDE])
        labels = state.networks["labels"].at[state.step].set(
            batch["speaker"] * 10 + batch["digit"])
        # the sum over the global batch is a cross-process all-reduce
        metrics = {"examples": jnp.sum(batch["mask"])}
        return TrainState(step=state.step + 1,
                          networks={"seen": seen, "labels": labels}), metrics

    state = TrainState(step=jnp.int32(0), networks={
        "seen": jnp.zeros((rows, config.batch_size, width), jnp.float32),
        "labels": jnp.zeros((rows, config.batch_size), jnp.int32)})
    return Stage(name="probe", state=sharding.replicate(state, mesh),
                 train_step=jax.jit(step, out_shardings=sharding.replicated(mesh)))


def _probe_worker(process_id: int, port: int, workdir: str, data_dir: str) -> None:
    """One process of the probe run: ``python tests/test_multihost.py ID PORT WORKDIR DATA``."""
    sys.modules["torch"] = None  # tensorboardX (process 0's logs) then skips importing torch
    import jax

    jax.config.update("jax_num_cpu_devices", 2)
    from pcmelgan_jax.configs import common
    from pcmelgan_jax.training import loop

    loop.STAGES["probe"] = _probe_stage
    config = common.stage_config("probe")
    config.update(data_dir=data_dir, batch_size=PROBE_BATCH, eval_every_steps=-1,
                  checkpoint_every_steps=PROBE_STEPS[0], log_every_steps=PROBE_STEPS[0],
                  async_checkpointing=False, worker_threads=0, progress_bar=False)
    config.distributed.update(enabled=True, coordinator_address=f"localhost:{port}",
                              num_processes=2, process_id=process_id)
    for steps in PROBE_STEPS:  # the second train() resumes; the first one initialised JAX
        config.num_train_steps = steps
        loop.train(config, workdir)
    assert jax.process_count() == 2 and jax.device_count() == 4, jax.devices()


def _shard_batches(data_dir: str, index: int, count: int, steps: int) -> list[dict]:
    """The first ``steps`` training batches of shard ``index`` of ``count`` (the probe's)."""
    import grain

    from pcmelgan_jax.data.pipeline import make_dataset

    shard = grain.sharding.ShardOptions(shard_index=index, shard_count=count,
                                        drop_remainder=True)
    it = make_dataset(data_dir, "audio_mnist/all", "train", batch_size=PROBE_BATCH // count,
                      seed=0, train=True, shard_options=shard)
    try:
        return [next(it) for _ in range(steps)]
    finally:
        it.close()


def test_two_processes_feed_their_shards_checkpoint_and_resume(data_dir, tmp_path):
    """``jax.distributed`` with 2 CPU processes of 2 devices each, through ``loop.train``: a
    2-step run, then the same command resumed to step 4. Every step's global batch is process
    0's shard batch followed by process 1's, continuing across the resume; each process
    saves its own iterator position."""
    port, workdir = _free_port(), tmp_path / "run"
    outputs = _run_two_processes([
        [sys.executable, __file__, str(i), str(port), str(workdir), data_dir] for i in range(2)
    ], timeout=300)
    assert all("resuming from step 2" in out for out in outputs), outputs[0][-2000:]

    ckpts = workdir / "checkpoints"
    assert sorted(os.listdir(ckpts), key=int) == ["2", "4"]
    for step in PROBE_STEPS:
        for i in range(2):
            path = ckpts / str(step) / "data_iter" / f"process_{i}-of-2.json"
            saved = json.loads(path.read_text())["config"]
            assert (saved["shard_index"], saved["shard_count"]) == (i, 2)
            assert saved["batch_size"] == PROBE_BATCH // 2
    assert json.loads((workdir / "final_metrics.json").read_text())["step"] == 4
    logged = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    train = [line for line in logged if line["split"] == "train"]
    assert [(line["step"], line["examples"]) for line in train] == [(2, 8.0), (4, 8.0)]

    state = _state_tree(ckpts, 4)
    assert int(state["step"]) == 4
    shards = [_shard_batches(data_dir, i, 2, PROBE_STEPS[-1]) for i in range(2)]
    for t in range(PROBE_STEPS[-1]):
        batches = [shard[t] for shard in shards]
        expected = np.concatenate([b["audio"][:, ::PROBE_STRIDE] for b in batches])
        np.testing.assert_array_equal(state["networks"]["seen"][t], expected)
        labels = np.concatenate([b["speaker"] * 10 + b["digit"] for b in batches])
        np.testing.assert_array_equal(state["networks"]["labels"][t], labels)
    clips = state["networks"]["seen"].reshape(-1, 8192 // PROBE_STRIDE)
    assert len({clip.tobytes() for clip in clips}) > PROBE_BATCH  # not a constant


@pytest.mark.slow
def test_two_process_resume_equals_uninterrupted_run(data_dir, tmp_path):
    config = _write_config(
        tmp_path / "tiny.py", "classifiers", data_dir=data_dir, classifiers=("spec_gender",),
        batch_size=8, num_train_steps=6, eval_every_steps=3, checkpoint_every_steps=2,
        keep_checkpoints=5, log_every_steps=1,
    )  # batch 4 per process

    straight = tmp_path / "straight"
    _train_two_processes(config, straight)
    ckpts = straight / "checkpoints"
    assert sorted(os.listdir(ckpts), key=int) == ["2", "4", "6"]
    for step in (2, 4, 6):  # each process saved its own shard's iterator position
        files = set(os.listdir(ckpts / str(step) / "data_iter"))
        assert {"process_0-of-2.json", "process_1-of-2.json"} <= files, files

    # a run stopped after its step-2 checkpoint: resume it with the same command
    resumed = tmp_path / "resumed"
    shutil.copytree(ckpts / "2", resumed / "checkpoints" / "2")
    shutil.copy(straight / "config.json", resumed / "config.json")
    _train_two_processes(config, resumed)
    assert sorted(os.listdir(resumed / "checkpoints"), key=int) == ["2", "4", "6"]

    expected, got = _state(ckpts, 6), _state(resumed / "checkpoints", 6)
    assert len(got) == len(expected)
    for x, y in zip(got, expected, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not all(np.array_equal(x, y) for x, y in zip(_state(ckpts, 2), expected, strict=True))


@pytest.mark.slow
def test_two_process_vocoder_exports_and_writes_samples(data_dir, tmp_path):
    """Model export (every process takes part in the save, process 0 renames) and samples
    (every process computes, process 0 writes) in a 2-process job."""
    from pcmelgan_jax.checkpointing import load_model

    config = _write_config(
        tmp_path / "vocoder.py", "vocoder", data_dir=data_dir,
        **{"generator.ngf": 4, "discriminator.num_scales": 1}, batch_size=4, num_train_steps=2,
        discriminator_start_step=1, eval_every_steps=2, samples_every_steps=2, num_samples=2,
    )  # batch 2 per process
    _train_two_processes(config, tmp_path / "run")
    model, variables = load_model(tmp_path / "run" / "models" / "generator")
    assert model.ngf == 4 and "params" in variables
    samples = tmp_path / "run" / "samples" / "step_0000002"
    assert sorted(os.listdir(samples)) == ["0_real.wav", "0_vocoded.wav", "1_real.wav",
                                           "1_vocoded.wav"]
    assert not [p for p in os.listdir(tmp_path / "run" / "models") if ".tmp-" in p]


@pytest.mark.slow
def test_two_process_pcmelgan_exports_and_writes_samples(data_dir, tmp_path):
    """The PCMelGAN stage in a 2-process job: monitors loaded on every process, sample
    panels and wavs, exported filter and generator."""
    from pcmelgan_jax.checkpointing import save_model
    from pcmelgan_jax.models.registry import numpy_random_variables

    for name, k, seed in (("spec_digit", 10, 1), ("spec_gender", 2, 2)):
        arch = {"num_classes": k, "width": 0.25}
        save_model(tmp_path / "cls" / "models" / name, "alexnet",
                   numpy_random_variables("alexnet", seed, **arch), arch=arch)
    arch = {"ngf": 4}
    save_model(tmp_path / "voc" / "models" / "generator", "melgan_generator",
               numpy_random_variables("melgan_generator", 3, **arch), arch=arch)
    config = _write_config(
        tmp_path / "pcmelgan.py", "pcmelgan", data_dir=data_dir,
        classifiers_workdir=str(tmp_path / "cls"), vocoder_workdir=str(tmp_path / "voc"),
        discriminator_width=0.25, batch_size=4, num_train_steps=2, eval_every_steps=2,
        samples_every_steps=2, checkpoint_every_steps=1,
    )  # batch 2 per process
    _train_two_processes(config, tmp_path / "run")
    assert sorted(os.listdir(tmp_path / "run" / "models")) == ["filter", "filter_discriminator",
                                                               "generator",
                                                               "generator_discriminator"]
    samples = tmp_path / "run" / "samples"
    assert "step_0000002.png" in os.listdir(samples)
    assert len(os.listdir(samples / "step_0000002")) == 2 * 4  # 2 examples x 4 kinds


if __name__ == "__main__":
    _probe_worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
