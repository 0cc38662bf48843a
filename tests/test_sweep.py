"""``pcmelgan-jax sweep``: expansion, printed commands, bad input, resume and failures.

No training runs: the in-process training call is replaced by a fake.
"""

import json
import os
import shlex
from pathlib import Path

import ml_collections
import pytest

from pcmelgan_jax import cli, sweep

ROOT = Path(__file__).resolve().parents[1]
PCMELGAN = str(ROOT / "configs" / "pcmelgan.py")
SMALL = PCMELGAN + ":small"
FILTER_SMALL = PCMELGAN + ":small,filter_only"


def write_sweep(path: Path, body: str) -> str:
    path.write_text("import ml_collections\n\n\ndef get_config():\n"
                    "    c = ml_collections.ConfigDict()\n"
                    + "".join(f"    {line}\n" for line in body.strip().splitlines())
                    + "    return c\n")
    return str(path)


@pytest.fixture
def tiny(tmp_path):
    """2 eps x 2 seeds + the Filter baseline (pcmelgan.py:small,filter_only) = 8 runs."""
    return write_sweep(tmp_path / "tiny.py", f"""
c.base = "configs/pcmelgan.py:small"
c.filter_base = {FILTER_SMALL!r}
c.axes = {{"eps": [0.1, 0.01]}}
c.seeds = [0, 1]
c.overrides = {{"classifiers_workdir": "runs/cls", "num_train_steps": 2}}
c.filter_only_baseline = True
""")


def test_expand_eps_config():
    runs = sweep.expand_sweep(ROOT / "configs" / "sweeps" / "eps.py", "sw")
    assert len(runs) == 4 * 3 * 2
    assert [r.name for r in runs[:7]] == [
        "eps0.005_seed0", "eps0.005_seed1", "eps0.005_seed2",
        "filter_eps0.005_seed0", "filter_eps0.005_seed1", "filter_eps0.005_seed2",
        "eps0.01_seed0",
    ]
    assert runs[-1].name == "filter_eps0.1_seed2"
    run = next(r for r in runs if r.name == "filter_eps0.05_seed1")
    assert run.workdir == os.path.join("sw", "filter_eps0.05_seed1")
    assert run.config == PCMELGAN + ":filter_only"
    assert run.baseline and run.seed == 1 and run.point == {"eps": 0.05}
    assert list(run.overrides) == ["classifiers_workdir", "data_dir", "vocoder_workdir",
                                   "eps", "seed"]
    assert run.overrides["eps"] == 0.05 and run.overrides["seed"] == 1
    config = sweep.build_config(run)
    assert (config.eps, config.seed, config.filter_only) == (0.05, 1, True)
    assert config.batch_size == 128  # the paper's settings

    lamb = sweep.expand_sweep(ROOT / "configs" / "sweeps" / "lamb.py", "sw")
    assert len(lamb) == 3 * 3 * 2 and lamb[0].name == "lamb10_seed0"
    assert sweep.build_config(lamb[0]).lamb == 10.0
    small = sweep.expand_sweep(ROOT / "configs" / "sweeps" / "eps_small.py", "sw")
    assert sweep.build_config(small[0]).batch_size == 32


def test_expand_grid_order_and_default_filter(tmp_path):
    cfg = ml_collections.ConfigDict({
        "base": SMALL, "axes": {"lamb": [10, 1000.0], "eps": [0.1, 0.05]}, "seeds": [3],
        "filter_only_baseline": True,
    })
    runs = sweep.expand_sweep(cfg, tmp_path)
    # ConfigDict keys are sorted: eps before lamb; int 10 becomes a float field value
    assert [r.name for r in runs] == [
        "eps0.1_lamb10_seed3", "filter_eps0.1_lamb10_seed3",
        "eps0.1_lamb1000_seed3", "filter_eps0.1_lamb1000_seed3",
        "eps0.05_lamb10_seed3", "filter_eps0.05_lamb10_seed3",
        "eps0.05_lamb1000_seed3", "filter_eps0.05_lamb1000_seed3",
    ]
    # without filter_base the baseline is the base config with filter_only=True
    assert runs[1].config == SMALL and runs[1].overrides["filter_only"] is True
    assert "filter_only" not in runs[0].overrides
    config = sweep.build_config(runs[1])
    assert (config.eps, config.lamb, config.seed, config.filter_only) == (0.1, 10.0, 3, True)
    assert isinstance(config.lamb, float)
    with pytest.raises(AttributeError):  # locked, like train.py's --config
        config.not_a_field = 1


def test_print_parses_back(tiny, tmp_path, capsys):
    """--print gives one `pcmelgan-jax train` line per run; each parses back (through the
    train subcommand's own parsing) to the config the sweep would train in-process."""
    from pcmelgan_jax import commands

    work = str(tmp_path / "sw")
    assert cli.main(["sweep", tiny, "--workdir", work, "--print",
                     "--config.data_dir=my data"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    runs = sweep.expand_sweep(tiny, work, overrides=["--config.data_dir=my data"])
    assert len(lines) == len(runs) == 8
    for line, run in zip(lines, runs, strict=True):
        assert shlex.split(line) == run.argv()
    assert shlex.split(lines[0]) == [
        "pcmelgan-jax", "train", "--config", sweep._display_spec(SMALL),
        "--workdir", f"{work}/eps0.1_seed0",
        "--config.classifiers_workdir=runs/cls", "--config.num_train_steps=2",
        "--config.data_dir=my data", "--config.eps=0.1", "--config.seed=0",
    ]
    assert shlex.split(lines[2])[3] == sweep._display_spec(FILTER_SMALL)
    assert "pcmelgan-jax eval" in captured.err and f"--config.runs={work}" in captured.err

    trained = []
    with pytest.MonkeyPatch.context() as m:
        m.setattr(commands, "train_stage", lambda c, w: trained.append((c, w)))
        assert cli.main(shlex.split(lines[3])[1:]) == 0
    ((config, workdir),) = trained
    assert workdir == runs[3].workdir
    assert config.to_dict() == sweep.build_config(runs[3]).to_dict()

    assert cli.main(["sweep", tiny, "--workdir", work, "--print", "--python", "py"]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert shlex.split(line)[:4] == ["py", "-m", "pcmelgan_jax.cli", "train"]


def test_only_glob(tiny, tmp_path, capsys):
    assert cli.main(["sweep", tiny, "--workdir", str(tmp_path), "--print",
                     "--only", "filter_*seed1,eps0.01_*"]) == 0
    names = [shlex.split(line)[5].rsplit("/", 1)[1]
             for line in capsys.readouterr().out.strip().splitlines()]
    assert names == ["filter_eps0.1_seed1", "eps0.01_seed0", "eps0.01_seed1",
                     "filter_eps0.01_seed1"]
    assert cli.main(["sweep", tiny, "--workdir", str(tmp_path), "--only", "nope*"]) == 2


@pytest.mark.parametrize("field, body, message", [
    ("epz", 'c.axes = {"epz": [0.1]}', "axes: 'epz' is not a field"),
    ("lr", 'c.axes = {"eps": [0.1]}\nc.overrides = {"lr": 1.0}', "overrides: 'lr' is not a field"),
    ("distributed.enable", 'c.axes = {"eps": [0.1]}\nc.overrides = {"distributed": '
     '{"enable": True}}', "'distributed.enable' is not a field"),
    ("eps", 'c.axes = {"eps": ["big"]}', "axes: eps='big'"),
])
def test_unknown_field_error(tmp_path, capsys, monkeypatch, field, body, message):
    path = write_sweep(tmp_path / "bad.py", f"c.base = {SMALL!r}\nc.seeds = [0]\n{body}")
    with pytest.raises(sweep.SweepError) as e:
        sweep.expand_sweep(path, tmp_path / "sw")
    assert path in str(e.value) and message in str(e.value) and field in str(e.value)
    calls = []
    monkeypatch.setattr(sweep, "_default_train", lambda c, w: calls.append(w))
    assert cli.main(["sweep", path, "--workdir", str(tmp_path / "sw")]) == 2
    assert message in capsys.readouterr().err
    assert not calls and not (tmp_path / "sw").exists()  # nothing ran, nothing written


def test_bad_sweep_files(tmp_path):
    missing = write_sweep(tmp_path / "m.py", 'c.base = "configs/nope.py"\nc.axes = {}\n'
                          "c.seeds = [0]")
    with pytest.raises(sweep.SweepError, match=r"configs/nope\.py.* not found"):
        sweep.expand_sweep(missing, tmp_path)
    typo = write_sweep(tmp_path / "t.py", f"c.base = {SMALL!r}\nc.axes = {{}}\nc.seed = [0]")
    with pytest.raises(sweep.SweepError, match="unknown sweep field"):
        sweep.expand_sweep(typo, tmp_path)
    with pytest.raises(sweep.SweepError, match="not found"):
        sweep.expand_sweep(tmp_path / "absent.py", tmp_path)
    variant = write_sweep(tmp_path / "v.py", f"c.base = {PCMELGAN + ':tiny'!r}\n"
                          "c.axes = {'eps': [0.1]}\nc.seeds = [0]")
    with pytest.raises(sweep.SweepError, match="unknown config variant 'tiny'"):
        sweep.expand_sweep(variant, tmp_path)


def test_command_line_overrides(tmp_path, capsys):
    """--config.FIELD=VALUE sets a field of every run, typed by the base config; a bad one is
    a one-line error naming the field and the config file (exit code 2); --set is gone."""
    ok = write_sweep(tmp_path / "ok.py", f"c.base = {SMALL!r}\nc.axes = {{'eps': [0.1]}}\n"
                     "c.seeds = [0]")
    with pytest.raises(sweep.SweepError, match="'epsilon' is not a field of .*pcmelgan.py"):
        sweep.expand_sweep(ok, tmp_path, overrides=["--config.epsilon=0.1"])
    with pytest.raises(sweep.SweepError, match="is an axis"):
        sweep.expand_sweep(ok, tmp_path, overrides=["--config.eps=0.2"])
    with pytest.raises(sweep.SweepError, match="expected --config.FIELD=VALUE"):
        sweep.expand_sweep(ok, tmp_path, overrides=["--config.eps_x"])
    runs = sweep.expand_sweep(ok, tmp_path, overrides=["--config.num_epochs=7",
                                                       "--config.entropy=true"])
    assert runs[0].overrides["num_epochs"] == 7 and runs[0].overrides["entropy"] is True
    assert [r.name for r in runs] == ["eps0.1_seed0"]

    assert cli.main(["sweep", ok, "--workdir", str(tmp_path / "a"), "--print",
                     "--config.num_epochs=many"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "num_epochs" in err and "pcmelgan.py" in err
    assert cli.main(["sweep", ok, "--workdir", str(tmp_path / "a"), "--print",
                     "--config.bogus=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'bogus' is not a field" in err
    with pytest.raises(SystemExit) as e:
        cli.main(["sweep", ok, "--workdir", str(tmp_path / "a"), "--set", "eps=1"])
    assert e.value.code == 2 and "unrecognized arguments: --set" in capsys.readouterr().err


def _fake_train(calls, fail=()):
    def train(config, workdir):
        calls.append(os.path.basename(workdir))
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "config.json"), "w") as f:
            json.dump(config.to_dict(), f)
        if os.path.basename(workdir) in fail:
            raise RuntimeError("diverged")
        with open(os.path.join(workdir, "final_metrics.json"), "w") as f:
            json.dump({"step": 2}, f)
        return {"step": 2}
    return train


def test_run_resume_and_failures(tiny, tmp_path, capsys, monkeypatch):
    work = tmp_path / "sw"
    (work / "eps0.1_seed1").mkdir(parents=True)
    (work / "eps0.1_seed1" / "final_metrics.json").write_text("{}")  # finished before
    calls = []
    monkeypatch.setattr(sweep, "_default_train",
                        _fake_train(calls, fail={"filter_eps0.1_seed0"}))
    assert cli.main(["sweep", tiny, "--workdir", str(work)]) == 1
    out = capsys.readouterr().out
    assert calls == ["eps0.1_seed0", "filter_eps0.1_seed0", "filter_eps0.1_seed1",
                     "eps0.01_seed0", "eps0.01_seed1", "filter_eps0.01_seed0",
                     "filter_eps0.01_seed1"]  # the failure did not stop the sweep
    assert "FAILED filter_eps0.1_seed0: RuntimeError: diverged" in out
    assert "6 done, 1 skipped, 1 failed" in out
    assert f"--config.runs={work}" in out and "pcmelgan-jax eval" in out

    doc = json.loads((work / "sweep.json").read_text())
    status = {r["name"]: r["status"] for r in doc["runs"]}
    assert status["eps0.1_seed1"] == "skipped" and status["filter_eps0.1_seed0"] == "failed"
    assert sum(s == "done" for s in status.values()) == 6
    assert doc["counts"] == {"done": 6, "skipped": 1, "failed": 1}
    entry = doc["runs"][0]
    assert entry["workdir"] == str(work / "eps0.1_seed0") and entry["seconds"] is not None
    assert shlex.split(entry["command"])[-2:] == ["--config.eps=0.1", "--config.seed=0"]
    assert doc["runs"][2]["name"] == "filter_eps0.1_seed0"
    assert doc["runs"][2]["error"] == "RuntimeError: diverged"
    assert doc["axes"] == {"eps": [0.1, 0.01]} and doc["seeds"] == [0, 1]
    assert not list(work.glob("*.tmp"))  # atomic writes leave no temporary files
    # training got the overridden, locked config; its config.json carries eps for eval.py
    cfg = json.loads((work / "eps0.01_seed1" / "config.json").read_text())
    assert (cfg["eps"], cfg["seed"], cfg["num_train_steps"], cfg["filter_only"]) == (
        0.01, 1, 2, False)

    # a second invocation only retries the failed run
    calls.clear()
    monkeypatch.setattr(sweep, "_default_train", _fake_train(calls))
    assert cli.main(["sweep", tiny, "--workdir", str(work)]) == 0
    assert calls == ["filter_eps0.1_seed0"]
    doc = json.loads((work / "sweep.json").read_text())
    assert doc["counts"] == {"done": 1, "skipped": 7}

    # --dry-run runs nothing
    calls.clear()
    assert cli.main(["sweep", tiny, "--workdir", str(work), "--dry-run"]) == 0
    assert not calls and "skip (finished)" in capsys.readouterr().out


def test_only_marks_others_not_selected(tiny, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(sweep, "_default_train", _fake_train(calls))
    assert cli.main(["sweep", tiny, "--workdir", str(tmp_path), "--only", "eps0.1_*"]) == 0
    assert calls == ["eps0.1_seed0", "eps0.1_seed1"]
    doc = json.loads((tmp_path / "sweep.json").read_text())
    assert doc["counts"] == {"done": 2, "not selected": 6}


def test_eval_command_finds_the_runs(tiny, tmp_path):
    """The printed evaluation's --config.runs finds every run of the sweep with
    ``evaluation.find_runs``, although WORKDIR also holds sweep.json and eval/."""
    from pcmelgan_jax import evaluation

    work = tmp_path / "sw"
    runs = sweep.expand_sweep(tiny, work)
    for run in runs:
        os.makedirs(os.path.join(run.workdir, "models", "filter"))
        Path(run.workdir, "models", "filter", "model.json").write_text("{}")
    (work / "sweep.json").write_text("{}")
    (work / "eval").mkdir()
    (cmd,) = sweep.eval_commands(runs, work)
    argv = shlex.split(cmd)
    assert argv[:2] == ["pcmelgan-jax", "eval"] and argv[argv.index("--workdir") + 1] == str(work)
    runs_arg = next(a for a in argv if a.startswith("--config.runs="))
    found = evaluation.find_runs(runs_arg.split("=", 1)[1], work)
    assert found == sorted(os.path.abspath(r.workdir) for r in runs)

    # another axis than eps: one evaluation per value, each listing its runs
    cfg = ml_collections.ConfigDict({"base": SMALL, "axes": {"lamb": [10.0, 100.0]},
                                     "seeds": [0], "filter_only_baseline": True})
    lamb_runs = sweep.expand_sweep(cfg, work)
    cmds = sweep.eval_commands(lamb_runs, work)
    assert len(cmds) == 2
    first = shlex.split(cmds[0])
    assert f"--config.runs={work}/lamb10_seed0,{work}/filter_lamb10_seed0" in first
    assert f"--config.output_dir={work}/eval_lamb10" in first
