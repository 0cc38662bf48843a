"""``bench.bench_train``'s command line."""

import argparse

import pytest


def test_bench_train_rejects_an_unknown_stage_before_any_work(capsys, monkeypatch):
    """``--only classifiers`` (the stage is ``classifier``) is a usage error naming it, raised
    before the backend or torch is touched; an empty ``--only`` means every stage."""
    from bench import bench_train, common

    def no_work(*args, **kwargs):
        raise AssertionError("started work")

    monkeypatch.setattr(bench_train, "torch_device", no_work)
    monkeypatch.setattr(bench_train, "time_stage", no_work)
    with pytest.raises(SystemExit) as e:
        bench_train.main(["--only", "classifiers,pcmelgan"])
    assert e.value.code == 2
    assert "unknown names ['classifiers']" in capsys.readouterr().err
    parser = argparse.ArgumentParser()
    assert common.parse_subset(parser, " , ", bench_train.STAGES) == bench_train.STAGES
    assert common.parse_subset(parser, "pcmelgan, classifier", bench_train.STAGES) == (
        "pcmelgan", "classifier")
