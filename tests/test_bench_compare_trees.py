"""bench.compare_trees: which numbers it compares and how it tabulates them."""

from __future__ import annotations

import pytest

from bench import compare_trees


def test_timings_name_rows_and_skip_pytorch():
    result = {
        "environment": {"cpu": "x", "median_ms": "not a number"},
        "results": [
            {"stage": "vocoder", "batch_size": 16, "jax": {"median_s": 0.5, "first_s": 9.0},
             "torch": {"median_s": 0.7}},
            {"stage": "pcmelgan", "batch_size": 16, "jax": {"median_s": 0.25}},
        ],
    }
    assert dict(compare_trees.timings(result)) == {
        "/results/stage=vocoder,batch_size=16/jax/median_s": 0.5,
        "/results/stage=pcmelgan,batch_size=16/jax/median_s": 0.25,
    }


def test_compare_takes_medians_over_rounds_and_keeps_shared_keys():
    runs = {"old": [{"a": 1.0, "b": 5.0}, {"a": 3.0, "b": 5.0}, {"a": 2.0}],
            "new": [{"a": 1.0, "c": 1.0}, {"a": 1.0}]}
    rows = compare_trees.compare(runs)
    assert [r["key"] for r in rows] == ["a"]
    assert rows[0]["old"] == 2.0 and rows[0]["new"] == 1.0
    assert rows[0]["new_over_old"] == pytest.approx(0.5)
    assert "| a | 2 | 1 | 0.500 |" in compare_trees.markdown(rows)


def test_command_line_splits_the_benchmark_off_at_the_double_dash(tmp_path, monkeypatch):
    calls = []

    def fake_run(checkout, module, args):
        calls.append((checkout, module, args))
        return {"/t/median_s": 2.0 if checkout.endswith("old") else 1.0}

    monkeypatch.setattr(compare_trees, "run_once", fake_run)
    out = tmp_path / "c.json"
    compare_trees.main([str(tmp_path / "old"), str(tmp_path / "new"), "--rounds", "2",
                        "--out", str(out), "--", "bench.bench_train", "--no-torch"])
    assert [c[0][-3:] for c in calls] == ["old", "new", "new", "old"]
    assert {c[1:] == ("bench.bench_train", ["--no-torch"]) for c in calls} == {True}
    assert '"new_over_old": 0.5' in out.read_text()
