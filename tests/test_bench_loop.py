"""bench/bench_loop.py: the loop and its step timed on the same stage, JSON and table."""

from __future__ import annotations

import json

import pytest

from bench import bench_loop


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    return bench_loop.prepare_data(str(tmp_path_factory.mktemp("bench_loop")), speakers=6,
                                   reps=1)


def test_loop_and_step_run_the_same_steps_and_report(data_dir, tmp_path, monkeypatch, capsys):
    made = []

    def one_small_classifier(*args, **kwargs):
        config = stage_config(*args, **kwargs)
        config.update(classifiers=("spec_gender",), batch_size=8, worker_threads=0)
        made.append(config)
        return config

    stage_config = bench_loop.stage_config
    monkeypatch.setattr(bench_loop, "stage_config", one_small_classifier)
    out = tmp_path / "loop.json"
    bench_loop.main(["--steps", "3", "--log-every", "2", "--checkpoint-every", "2",
                     "--repeats", "1", "--data-dir", data_dir, "--out", str(out)])
    config = made[0]
    assert (config.num_train_steps, config.log_every_steps, config.checkpoint_every_steps,
            config.eval_every_steps) == (3, 2, 2, -1)
    doc = json.loads(out.read_text())
    (row,) = doc["results"]
    assert row["stage"] == "classifiers" and row["batch_size"] == 8 and row["steps"] == 3
    ms = {}
    for name in ("loop", "step", "loop_2x", "step_2x"):
        timing = row["timings_ms"][name]
        assert len(timing["all_ms"]) == 1 and timing["median_ms"] > 0
        ms[name] = timing["median_ms"]
    for name in ("loop", "step"):
        assert row[f"{name}_steps_per_second"] == pytest.approx(3e3 / ms[name])
        # steady state: the 3 extra steps of the 2x call over the time they added (at least
        # 1 ns: on a busy machine one timing of the 2x call can come out shorter)
        assert row[f"steady_{name}_steps_per_second"] == pytest.approx(
            3 / max((ms[f"{name}_2x"] - ms[name]) / 1e3, 1e-9))
    assert row["loop_fraction"] == pytest.approx(
        row["loop_steps_per_second"] / row["step_steps_per_second"])
    assert row["steady_fraction"] == pytest.approx(
        row["steady_loop_steps_per_second"] / row["steady_step_steps_per_second"])
    assert row["loop_fixed_seconds"] == pytest.approx(
        ms["loop"] / 1e3 - 3 / row["steady_loop_steps_per_second"])
    assert row["cache_records"] is True
    assert "jax" in doc["environment"]
    table = capsys.readouterr().out
    assert "| classifiers | 8 | 3 |" in table and f"{row['loop_fraction']:.3f} |" in table
