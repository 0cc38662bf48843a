"""``runtime.job_devices``: the device kind, and the machine split between ``--jobs``' child
processes, read from the environment without starting a JAX backend."""

import pytest

from pcmelgan_jax.runtime import job_devices


def test_device_kind_from_the_environment(monkeypatch):
    assert job_devices.device_kind({"JAX_PLATFORMS": "cpu"}) == "cpu"
    monkeypatch.setattr("pcmelgan_jax.runtime.host_memory.runs_on_cpu", lambda env: False)
    assert job_devices.device_kind({"JAX_PLATFORMS": "cuda,cpu"}) == "gpu"
    assert job_devices.device_kind({"JAX_PLATFORMS": "tpu"}) == "tpu"
    with pytest.raises(job_devices.DeviceSplitError, match="JAX_PLATFORMS=rocm"):
        job_devices.device_kind({"JAX_PLATFORMS": "rocm"})


def test_job_slots_split_the_devices(monkeypatch):
    """Disjoint GPUs / TPU chips / cores per job; more jobs than GPUs share them, each with
    a share of the memory; no JAX backend is started to find them."""
    gpus = {"CUDA_VISIBLE_DEVICES": "0,1,2,3"}
    kind, slots = job_devices.job_slots(2, "gpu", gpus)
    assert kind == "gpu" and [s.env for s in slots] == [{"CUDA_VISIBLE_DEVICES": "0,1"},
                                                        {"CUDA_VISIBLE_DEVICES": "2,3"}]
    # equal power-of-two groups: a batch splits evenly over each job's GPUs
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in job_devices.job_slots(3, "gpu", gpus)[1]] == [
        "0", "1", "2"]
    shared = job_devices.job_slots(4, "gpu", {"CUDA_VISIBLE_DEVICES": "5,7"})[1]
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in shared] == ["5", "7", "5", "7"]
    assert {s.env["XLA_PYTHON_CLIENT_MEM_FRACTION"] for s in shared} == {"0.45"}
    assert job_devices.visible_gpus({"CUDA_VISIBLE_DEVICES": "1,-1,2"}) == ["1"]
    with pytest.raises(job_devices.DeviceSplitError, match="no GPU"):
        job_devices.job_slots(2, "gpu", {"CUDA_VISIBLE_DEVICES": ""})

    kind, slots = job_devices.job_slots(2, "tpu", {"TPU_VISIBLE_CHIPS": "0,1,2,3"})
    assert [s.env["TPU_VISIBLE_CHIPS"] for s in slots] == ["0,1", "2,3"]
    env = slots[0].env
    assert env["TPU_VISIBLE_DEVICES"] == "0,1" and env["TPU_PROCESS_BOUNDS"] == "1,1,1"
    assert env["TPU_CHIPS_PER_PROCESS_BOUNDS"] == "1,2,1"
    assert env["TPU_PROCESS_ADDRESSES"] is None  # unset: the jobs are independent
    assert env["TPU_MESH_CONTROLLER_ADDRESS"] == f"localhost:{env['TPU_MESH_CONTROLLER_PORT']}"
    assert len({s.env["TPU_MESH_CONTROLLER_PORT"] for s in slots}) == 2
    one_chip = job_devices.job_slots(8, "tpu", {"TPU_VISIBLE_CHIPS": "0,1,2,3"})[1]  # at most 4
    assert [s.env["TPU_CHIPS_PER_PROCESS_BOUNDS"] for s in one_chip] == ["1,1,1"] * 4

    monkeypatch.setattr(job_devices, "cpu_cores", lambda: [0, 1, 2, 3, 4, 5, 6, 7])
    kind, slots = job_devices.job_slots(3, "cpu", {})
    assert kind == "cpu" and [s.cpus for s in slots] == [(0, 1, 2), (3, 4), (5, 6, 7)]
    assert [s.label for s in slots] == ["cpus 0-2", "cpus 3-4", "cpus 5-7"]
    assert len(job_devices.job_slots(20, "cpu", {})[1]) == 8  # at least one core each
