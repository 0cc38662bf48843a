"""``pcmelgan-jax train`` / ``eval`` / ``baselines``: configs, overrides and one-line errors
(no training or evaluation runs: the runners are replaced by fakes)."""

import pytest

from pcmelgan_jax import cli, commands


@pytest.fixture
def calls(monkeypatch):
    calls = []
    monkeypatch.setattr(commands, "train_stage", lambda c, w: calls.append(("train", c, w)))
    monkeypatch.setattr(commands, "evaluate", lambda c, w: calls.append(("eval", c, w)))
    return calls


def test_train_loads_variants_and_overrides(calls, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the package's configs/ from another folder
    assert cli.main(["train", "--config", "configs/pcmelgan.py:small,filter_only",
                     "--workdir", "w", "--config.eps=0.2", "--config.num_seeds=2"]) == 0
    ((what, config, workdir),) = calls
    assert (what, workdir, config.eps, config.num_seeds) == ("train", "w", 0.2, 2)
    assert config.filter_only and config.batch_size == 32
    with pytest.raises(AttributeError):  # locked, as train.py's
        config.new_field = 1


def test_eval_defaults_to_the_eval_config(calls):
    assert cli.main(["eval", "--workdir", "w", "--config.runs=a,b",
                     "--config.speaker.steps=5"]) == 0
    ((what, config, _),) = calls
    assert (what, config.runs, config.speaker.steps, config.informed.spec_width) == (
        "eval", "a,b", 5, 1.0)
    calls.clear()
    assert cli.main(["eval", "--workdir", "w", "--config", "configs/eval.py:small"]) == 0
    assert calls[0][1].informed.spec_width == 0.25


@pytest.mark.parametrize("command, args, message", [
    ("train", ["--config", "configs/vocoder.py", "--config.generator.ngff=8"],
     "'generator.ngff' is not a field of configs/vocoder.py"),
    ("train", ["--config", "configs/vocoder.py:small", "--config.batch_size=big"],
     "batch_size='big'"),
    ("train", ["--config", "configs/vocoder.py:tiny"], "unknown config variant 'tiny'"),
    ("eval", ["--config.speaker.nope=1"], "'speaker.nope' is not a field"),
    ("baselines", ["--config.linear.max_iter=x"], "linear.max_iter='x'"),
])
def test_errors_are_one_line(calls, capsys, command, args, message):
    assert cli.main([command, "--workdir", "w", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"pcmelgan-jax {command}: error:")
    assert message in err[0] and not calls


def test_other_unknown_arguments_are_usage_errors(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--config", "configs/vocoder.py", "--workdir", "w", "--set", "x=1"])
    assert e.value.code == 2 and "unrecognized arguments: --set x=1" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a subcommand without overrides
        cli.main(["synth-data", "--config.x=1"])
