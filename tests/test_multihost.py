"""Two processes (``jax.distributed`` on CPU, gloo collectives) train, checkpoint, resume,
export models and write samples.

Slow (``train.py`` runs of two processes each, ~1 min per run on 2 cores): ``pytest -m slow``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

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
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, str(ROOT / "train.py"), f"--config={config}",
             f"--workdir={workdir}", "--config.distributed.enabled=True",
             f"--config.distributed.coordinator_address=localhost:{port}",
             "--config.distributed.num_processes=2", f"--config.distributed.process_id={i}"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=900)[0] for p in procs]
    for i, (p, out) in enumerate(zip(procs, outputs, strict=True)):
        assert p.returncode == 0, f"process {i} failed:\n{out[-4000:]}"


def _state(checkpoints: Path, step: int) -> list[np.ndarray]:
    import jax
    import orbax.checkpoint as ocp

    path = checkpoints / str(step) / "state"
    checkpointer = ocp.PyTreeCheckpointer()  # as host arrays (saved on 2 processes' devices)
    meta = checkpointer.metadata(path)
    tree = getattr(meta, "item_metadata", meta)
    tree = getattr(tree, "tree", tree)
    args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    return jax.tree.leaves(checkpointer.restore(path, restore_args=args))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    from pcmelgan_jax.data.prepare import prepare
    from pcmelgan_jax.data.synth import synthesize_corpus

    root = tmp_path_factory.mktemp("multihost_data")
    synthesize_corpus(root / "corpus", speakers=6, reps=2, seed=0)  # 1 F + 1 M per split
    prepare(root / "corpus", root / "data", "all")
    return str(root / "data")


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
