"""``pcmelgan-jax sweep``: expansion, seed packing, printed commands, bad input, resume,
failures, and a sweep trained for real through the evaluation (``--jobs``' child processes:
test_jobs.py; their devices: test_job_devices.py).

The bookkeeping tests replace training with a fake in process;
``test_sweep_trains_and_evaluates`` trains for real, 2 jobs at once.
"""

import json
import os
import shlex
from pathlib import Path

import ml_collections
import numpy as np
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


def write_tiny(folder: Path) -> str:
    """2 eps x 2 seeds + the Filter baseline (pcmelgan.py:small,filter_only) = 8 runs."""
    return write_sweep(folder / "tiny.py", f"""
c.base = "configs/pcmelgan.py:small"
c.filter_base = {FILTER_SMALL!r}
c.axes = {{"eps": [0.1, 0.01]}}
c.seeds = [0, 1]
c.overrides = {{"classifiers_workdir": "runs/cls", "num_train_steps": 2}}
c.filter_only_baseline = True
""")


@pytest.fixture
def tiny(tmp_path):
    return write_tiny(tmp_path)


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


# --------------------------------------------------------------------------- seeds per run


def test_seed_chunks():
    assert sweep.seed_chunks([0, 1, 2], 2) == [(0, 1), (2,)]
    assert sweep.seed_chunks([0, 2, 3], 2) == [(0,), (2, 3)]  # a run takes consecutive seeds
    assert sweep.seed_chunks([3, 4, 5, 6], 3) == [(3, 4, 5), (6,)]
    assert sweep.seed_chunks([1, 0], 2) == [(1,), (0,)]  # the order listed
    assert sweep.seed_chunks([0, 1], 1) == [(0,), (1,)]


def test_seeds_per_run_packs_seeds(tiny, tmp_path, capsys):
    """--seeds-per-run 2: one run per grid point (and baseline) trains seeds 0 and 1 with
    num_seeds=2; one printed line per run; --only matches the packed names."""
    work = str(tmp_path / "sw")
    runs = sweep.expand_sweep(tiny, work, seeds_per_run=2)
    assert [r.name for r in runs] == ["eps0.1_seeds0-1", "filter_eps0.1_seeds0-1",
                                      "eps0.01_seeds0-1", "filter_eps0.01_seeds0-1"]
    run = runs[1]
    assert (run.seed, run.seeds, run.baseline) == (0, (0, 1), True)
    assert list(run.overrides)[-2:] == ["seed", "num_seeds"]
    assert run.seed_runs() == [os.path.join(work, run.name, f"seed_{s}") for s in (0, 1)]
    config = sweep.build_config(run)
    assert (config.seed, config.num_seeds, config.filter_only, config.eps) == (0, 2, True, 0.1)
    single = sweep.expand_sweep(tiny, work)[0]
    assert "num_seeds" not in single.overrides and single.seed_runs() == [single.workdir]

    assert cli.main(["sweep", tiny, "--workdir", work, "--print", "--seeds-per-run", "2",
                     "--only", "eps*"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [shlex.split(line) for line in lines] == [r.argv() for r in runs[::2]]
    assert shlex.split(lines[0])[-2:] == ["--config.seed=0", "--config.num_seeds=2"]

    # the sweep file's seeds_per_run, overridden by the command line
    packed = write_sweep(tmp_path / "packed.py", f"c.base = {SMALL!r}\n"
                         "c.axes = {'eps': [0.1]}\nc.seeds = [0, 1, 2]\nc.seeds_per_run = 2")
    assert [r.name for r in sweep.expand_sweep(packed, work)] == ["eps0.1_seeds0-1",
                                                                  "eps0.1_seed2"]
    assert len(sweep.expand_sweep(packed, work, seeds_per_run=1)) == 3
    with pytest.raises(sweep.SweepError, match="set num_seeds with"):
        sweep.expand_sweep(packed, work, overrides=["--config.num_seeds=2"])
    with pytest.raises(sweep.SweepError, match="seeds_per_run must be an int >= 1"):
        sweep.expand_sweep(packed, work, seeds_per_run=0)
    with pytest.raises(SystemExit) as e:
        cli.main(["sweep", packed, "--workdir", work, "--print", "--seeds-per-run", "0"])
    assert e.value.code == 2 and "expected an int >= 1" in capsys.readouterr().err


def test_other_packings_are_reported(tiny, tmp_path, capsys, monkeypatch):
    """Seeds of the sweep that lie in WORKDIR under another packing would be evaluated twice
    by --config.runs=WORKDIR: the sweep says so."""
    work = tmp_path / "sw"
    for name in ("eps0.1_seed1", "eps0.1_seed7", "eps0.5_seed0", "notes"):
        (work / name).mkdir(parents=True)
    runs = sweep.expand_sweep(tiny, work, seeds_per_run=2)
    assert sweep.other_packings(runs, work) == ["eps0.1_seed1"]
    assert sweep.other_packings(sweep.expand_sweep(tiny, work), work) == []
    monkeypatch.setattr(sweep, "_default_train", _fake_train([]))
    assert cli.main(["sweep", tiny, "--workdir", str(work), "--seeds-per-run", "2",
                     "--only", "eps0.01*"]) == 0
    assert "also holds eps0.1_seed1" in capsys.readouterr().err


# --------------------------------------------------------------------------- end to end

TRAIN_OVERRIDES = {  # a few steps of the small config at batch 4
    "batch_size": 4, "eval_batch_size": 40, "num_train_steps": 2, "eval_every_steps": -1,
    "samples_every_steps": -1, "log_every_steps": 1, "worker_threads": 0,
    "async_checkpointing": False, "progress_bar": False, "seeds_strategy": "vmap",
}
EVAL_OVERRIDES = [  # tiny attacker budgets
    "--config.batch_size=16", "--config.num_examples_to_save=1", "--config.baselines=()",
    "--config.speaker.steps=3", "--config.speaker.batch_size=8", "--config.speaker.width=0.25",
    "--config.informed.spec_width=0.25", "--config.informed.audio_width=0.25",
    "--config.informed.spec_steps=3", "--config.informed.audio_steps=3",
    "--config.informed.batch_size=8", "--config.informed.eval_every=2",
    "--config.linear.max_iter=10", "--config.bootstrap.num_resamples=50",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tiny_data) -> Path:
    """A quickstart-shaped folder: the tiny prepared corpus (conftest; 1 F + 1 M speaker per
    split) as data/, random narrow classifiers and a random narrow vocoder."""
    from pcmelgan_jax.checkpointing import save_model
    from pcmelgan_jax.models.registry import numpy_random_variables

    root = tmp_path_factory.mktemp("sweep_corpus")
    (root / "data").symlink_to(tiny_data, target_is_directory=True)
    models = root / "random_classifiers" / "models"
    for name, network, classes, seed in (("spec_digit", "alexnet", 10, 1),
                                         ("spec_gender", "alexnet", 2, 2),
                                         ("audio_digit", "audionet", 10, 3),
                                         ("audio_gender", "audionet", 2, 4)):
        arch = {"num_classes": classes, "width": 0.25}
        save_model(models / name, network, numpy_random_variables(network, seed, **arch),
                   arch=arch)
    arch = {"ngf": 8}
    save_model(root / "vocoder" / "models" / "generator", "melgan_generator",
               numpy_random_variables("melgan_generator", 5, **arch), arch=arch)
    return root


def _train_and_evaluate(corpus: Path, work: Path, base: str, classifiers: Path,
                        attackers: tuple[str, ...], capsys, filter_baseline: bool = False):
    """Sweeps eps {0.1, 0.01} x seeds {0, 1} (2 seeds per run, 2 jobs at once), evaluates it
    with the printed command; returns (sweep.json, results.json, tables.md)."""
    overrides = {**TRAIN_OVERRIDES, "data_dir": str(corpus / "data"),
                 "classifiers_workdir": str(classifiers)}
    spec = write_sweep(work.parent / f"{work.name}.py", f"""
c.base = {base!r}
c.axes = {{"eps": [0.1, 0.01]}}
c.seeds = [0, 1]
c.overrides = {overrides!r}
c.filter_only_baseline = {filter_baseline}
""")
    code = cli.main(["sweep", spec, "--workdir", str(work), "--seeds-per-run", "2",
                     "--jobs", "2"])
    out = capsys.readouterr().out
    doc = json.loads((work / "sweep.json").read_text())
    logs = {e["name"]: Path(e["log"]).read_text()[-3000:] for e in doc["runs"] if e["log"]}
    assert code == 0, (out, logs)
    (command,) = [line.strip() for line in out.splitlines()
                  if line.strip().startswith("pcmelgan-jax eval")]
    assert shlex.split(command)[1:] == ["eval", "--workdir", str(work),
                                        f"--config.runs={work}"]
    assert cli.main([*shlex.split(command)[1:], f"--config.vocoder_workdir={corpus / 'vocoder'}",
                     f"--config.attackers={attackers!r}", *EVAL_OVERRIDES]) == 0
    results = json.loads((work / "eval" / "results.json").read_text())
    return doc, results, (work / "eval" / "tables.md").read_text()


def _check_groups(doc: dict, results: dict, tables: str, work: Path, columns) -> None:
    """Two eps rows of two runs each (the seeds of one packed run), numbers in [0, 1] with the
    sample std over the two seeds."""
    assert [e["status"] for e in doc["runs"]] == ["done"] * len(doc["runs"])
    pcmelgan_runs = [e for e in doc["runs"] if not e["baseline"]]
    assert [e["name"] for e in pcmelgan_runs] == ["eps0.1_seeds0-1", "eps0.01_seeds0-1"]
    for entry in doc["runs"]:
        assert entry["seeds"] == [0, 1]
        for seed, path in zip((0, 1), entry["seed_runs"], strict=True):
            final = json.loads(Path(path, "final_metrics.json").read_text())
            assert final["seed"] == seed and final["step"] == 2
    groups = {g["eps_label"]: g for g in results["groups"]}
    assert sorted(groups) == ["0.01", "0.1"]
    for label, group in groups.items():
        members = [e for e in doc["runs"] if e["point"]["eps"] == float(label)]
        assert group["num_runs"] == 2 * len(members)
        assert sorted(group["runs"]) == sorted(p for e in members for p in e["seed_runs"])
        for domain, condition, metric in columns:
            value = group[domain][condition][metric]
            assert len(value["runs"]) == 2  # the two seeds of the packed run
            assert all(0.0 <= v <= 1.0 for v in (*value["runs"], value["mean"]))
            assert value["std"] == pytest.approx(np.std(value["runs"], ddof=1))
        assert f"\n| {label} | " in tables
    names = sorted(r["run"]["name"] for r in results["runs"])
    assert names[:2] == ["eps0.01_seeds0-1_seed_0", "eps0.01_seeds0-1_seed_1"]
    assert (work / "eval" / "examples" / "00_eps0.01_seeds0-1_seed_0").is_dir()
    assert " ± " in tables


@pytest.mark.slow
def test_sweep_trains_and_evaluates(corpus, tmp_path, capsys, monkeypatch):
    """End to end, for real: 2 eps x 2 seeds of the Filter (the PCMelGAN stage with
    filter_only) packed 2 seeds per run, 2 jobs at once, a few steps each; the printed
    evaluation command makes a table grouped by eps with mean ± std over the seeds.
    Slow: two U-Net programs compile, then the evaluation."""
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    # the jobs' programs compile faster unoptimised (2 steps: compile time is the cost)
    monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=0 "
                       "--xla_llvm_disable_expensive_passes=true")
    work = tmp_path / "sweep"
    doc, results, tables = _train_and_evaluate(
        corpus, work, "configs/pcmelgan.py:small,filter_only", corpus / "random_classifiers",
        ("fixed",), capsys)
    _check_groups(doc, results, tables, work, [("spectrogram", "filter", "gender_acc"),
                                               ("audio", "filter", "digit_acc")])
    assert all(e["devices"].startswith("cpus ") for e in doc["runs"])


@pytest.mark.slow
def test_sweep_trains_and_evaluates_pcmelgan(corpus, tmp_path, capsys, monkeypatch):
    """The same with the full PCMelGAN (F, G and both discriminators) and its Filter
    baseline, on classifiers trained for a few steps, with every attacker."""
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    classifiers = tmp_path / "classifiers"
    assert cli.main(["train", "--config", "configs/classifiers.py:small", "--workdir",
                     str(classifiers), f"--config.data_dir={corpus / 'data'}",
                     "--config.num_train_steps=4", "--config.batch_size=8",
                     "--config.eval_every_steps=2", "--config.audio_width=0.25",
                     "--config.audio_warmup_steps=0", "--config.worker_threads=0",
                     "--config.async_checkpointing=False", "--config.progress_bar=False"]) == 0
    work = tmp_path / "sweep"
    doc, results, tables = _train_and_evaluate(
        corpus, work, "configs/pcmelgan.py:small", classifiers,
        ("fixed", "informed", "linear", "features", "speaker"), capsys, filter_baseline=True)
    assert [e["name"] for e in doc["runs"]] == [
        "eps0.1_seeds0-1", "filter_eps0.1_seeds0-1", "eps0.01_seeds0-1",
        "filter_eps0.01_seeds0-1"]
    _check_groups(doc, results, tables, work, [
        ("spectrogram", "filter", "gender_acc"), ("spectrogram", "pcmelgan", "gender_acc"),
        ("audio", "pcmelgan", "digit_acc")])
    for group in results["groups"]:
        assert len(group["attacks"]["filter_only"]["informed"]["spectrogram"]["gender_acc"][
            "runs"]) == 2
