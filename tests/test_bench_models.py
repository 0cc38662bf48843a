"""``bench.bench_models``: each network's JAX and PyTorch sides in worker processes."""

import json
import os

import pytest

from bench import bench_models
from bench.report_tables import models_table


def _block(round_index: int, times: list[float]) -> dict:
    kinds = {
        kind: {"first_ms": 1000.0 * (round_index + 1), "median_ms": sorted(times)[len(times) // 2],
               "min_ms": min(times), "all_ms": times}
        for kind in bench_models.KINDS
    }
    return {"final_loss": float(round_index), **kinds}


def test_combine_rounds():
    """Medians and minima over every call of every block; per-block medians kept; the first
    (compiling) call of the first block; the last block's loss."""
    entry = bench_models.combine_rounds([_block(0, [10.0, 30.0, 20.0]),
                                         _block(1, [40.0, 50.0, 60.0])])
    assert entry["final_loss"] == 1.0
    for kind in bench_models.KINDS:
        assert entry[kind]["all_ms"] == [10.0, 30.0, 20.0, 40.0, 50.0, 60.0]
        assert entry[kind]["median_ms"] == 35.0
        assert entry[kind]["min_ms"] == 10.0
        assert entry[kind]["round_medians_ms"] == [20.0, 50.0]
        assert entry[kind]["first_ms"] == 1000.0


def test_sides_alternate_over_rounds(monkeypatch):
    """Round k times JAX's block then PyTorch's for even k, the reverse for odd k; ratios of
    the medians over all rounds and per round; the table shows both; workers are closed."""
    events = []
    times = {("jax", 0): [10.0], ("torch", 0): [20.0], ("jax", 1): [30.0], ("torch", 1): [20.0],
             ("jax", 2): [12.0], ("torch", 2): [40.0]}

    class FakeSide:
        def __init__(self, name, side, batch_size):
            assert (name, batch_size) == ("alexnet", 4)
            self.side, self.blocks = side, 0
            self.info = {"params": 7, "pid": {"jax": 1, "torch": 2}[side]}

        def block(self, repeats, warmup):
            assert (repeats, warmup) == (1, 2)
            events.append(self.side)
            self.blocks += 1
            return _block(self.blocks - 1, times[(self.side, self.blocks - 1)])

        def close(self):
            events.append(f"close {self.side}")

    monkeypatch.setattr(bench_models, "SideProcess", FakeSide)
    monkeypatch.setattr(bench_models, "torch", object())  # as if installed
    entry = bench_models.bench_network("alexnet", 4, 1, 2, True, "process", 3)
    assert entry["order"] == ["jax", "torch", "torch", "jax", "jax", "torch"]
    assert events == [*entry["order"], "close jax", "close torch"]
    assert (entry["jax"]["pid"], entry["torch"]["pid"]) == (1, 2)
    assert entry["ratio_train_step"] == pytest.approx(12.0 / 20.0)
    assert entry["ratio_train_step_rounds"] == pytest.approx([0.5, 1.5, 0.3])
    results = {"batch_size": 4, "repeats": 1, "rounds": 3, "warmup": 2, "isolation": "process",
               "environment": {"cpu": "Test CPU", "cores": 2, "load_average_start": [1.0],
                               "load_average_end": [1.0]},
               "networks": {"alexnet": entry}}
    text = bench_models.markdown(results)
    assert "median of 1 calls x 3 rounds, each side in a worker process of its own" in text
    assert "Train-step ratio per round: AlexNet K=2 0.50, 1.50, 0.30" in text
    note = models_table(results).notes[0]
    assert "1 calls x 3 rounds, each side in a worker process of its own" in note


def test_worker_failure_names_the_network_and_side():
    """A worker that fails while building its side raises in the parent with its traceback."""
    with pytest.raises(RuntimeError, match=r"the jax worker for no_such_network failed"):
        bench_models.bench_network("no_such_network", 2, 1, 1, use_torch=False)
    with pytest.raises(ValueError, match="isolation"):
        bench_models.bench_network("alexnet", 2, 1, 1, isolation="threads")


def test_rounds_must_be_positive(capsys):
    with pytest.raises(SystemExit) as e:
        bench_models.main(["--rounds", "0"])
    assert e.value.code == 2
    assert "--rounds must be at least 1" in capsys.readouterr().err


@pytest.mark.slow
def test_each_side_runs_in_a_worker_process_of_its_own(tmp_path):
    """A real run (U-Net filter, batch 2, one round of two timed calls): the JAX and PyTorch
    sides ran in two processes, neither of them this one; the same network on both sides.
    Slow (two processes compile and time every kind of call); the worker machinery stays in
    the default suite through the failure test below."""
    pytest.importorskip("torch")
    out = tmp_path / "models.json"
    bench_models.main(["--only", "unet_filter", "--batch-size", "2", "--repeats", "2",
                       "--rounds", "1", "--out", str(out)])
    results = json.loads(out.read_text())
    assert results["isolation"] == "process"
    entry = results["networks"]["unet_filter"]
    pids = {entry["jax"]["pid"], entry["torch"]["pid"]}
    assert len(pids) == 2 and os.getpid() not in pids
    # the original's filter has 202 unused conditioning parameters that ours omits
    assert (entry["jax"]["params"], entry["torch"]["params"]) == (581_009, 581_211)
    for side in ("jax", "torch"):
        assert entry[side]["final_loss"] > 0
        for kind in bench_models.KINDS:
            assert len(entry[side][kind]["all_ms"]) == 2
            assert entry[side][kind]["min_ms"] > 0
    for kind in bench_models.KINDS:  # JAX's first call compiles
        assert entry["jax"][kind]["first_ms"] > 10 * entry["jax"][kind]["min_ms"]
    assert entry["ratio_train_step"] == pytest.approx(
        entry["jax"]["train_step"]["median_ms"] / entry["torch"]["train_step"]["median_ms"])
    assert entry["order"] == ["jax", "torch"]
