"""``pcmelgan-jax quickstart``: its stage configs, --config.STAGE.FIELD=VALUE, the summary."""

import pytest

from pcmelgan_jax import cli, quickstart
from pcmelgan_jax.config_files import ConfigError


def test_stage_configs_wiring_and_typed_overrides(tmp_path):
    """The overrides are typed like ``train.py --config.x=y`` and win over the wiring."""
    c = quickstart.stage_configs(str(tmp_path), [
        "--config.pcmelgan.eps=0.1", "--config.pcmelgan.filter_only=true",
        "--config.eval.speaker.width=0.5", "--config.classifiers.num_epochs=3",
        "--config.vocoder.num_epochs=2", "--config.vocoder.data_dir=elsewhere"], seed=4)
    assert c.pcmelgan.eps == 0.1 and c.pcmelgan.filter_only is True
    assert c.eval.speaker.width == 0.5 and c.vocoder.num_epochs == 2
    assert c.classifiers.num_epochs == 3 and isinstance(c.classifiers.num_epochs, int)
    assert c.vocoder.data_dir == "elsewhere"
    assert c.pcmelgan.data_dir == str(tmp_path / "data") and c.pcmelgan.seed == 4
    assert c.pcmelgan.classifiers_workdir == str(tmp_path / "classifiers")
    assert c.eval.runs == str(tmp_path / "pcmelgan") and c.eval.output_dir == str(
        tmp_path / "eval")
    assert c.pcmelgan.batch_size == 32  # the small config
    with pytest.raises(ConfigError, match="'pcmelgan.nope' is not a field of configs/quick"):
        quickstart.stage_configs(str(tmp_path), ["--config.pcmelgan.nope=1"])
    with pytest.raises(ConfigError, match="num_epochs='abc'"):
        quickstart.stage_configs(str(tmp_path), ["--config.classifiers.num_epochs=abc"])


def test_the_melgan_stage_runs_only_when_the_evaluation_vocodes_with_it(tmp_path):
    """The small evaluation vocodes with Griffin-Lim: no MelGAN is trained and the PCMelGAN
    stage gets no vocoder; ``--config.eval.vocoder=melgan`` brings both back."""
    c = quickstart.stage_configs(str(tmp_path))
    assert c.eval.vocoder == "griffin_lim"
    assert quickstart.stages(c) == ("classifiers", "pcmelgan")
    assert c.pcmelgan.vocoder_workdir == ""
    c = quickstart.stage_configs(str(tmp_path), ["--config.eval.vocoder=melgan"])
    assert quickstart.stages(c) == ("classifiers", "vocoder", "pcmelgan")
    assert c.pcmelgan.vocoder_workdir == c.eval.vocoder_workdir == str(tmp_path / "vocoder")
    with pytest.raises(ConfigError, match="eval.vocoder='hifigan': must be one of melgan, grif"):
        quickstart.stage_configs(str(tmp_path), ["--config.eval.vocoder=hifigan"])


@pytest.mark.parametrize("args, message", [
    (["--config.pcmelgan.nope=1"], "'pcmelgan.nope' is not a field"),
    (["--config.vocoder.num_epochs=two"], "vocoder.num_epochs='two'"),
])
def test_bad_override_is_one_line_and_runs_nothing(tmp_path, capsys, args, message):
    work = tmp_path / "qs"
    assert cli.main(["quickstart", "--workdir", str(work), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pcmelgan-jax quickstart: error:")
    assert message in err[0] and not work.exists()
    with pytest.raises(SystemExit) as e:  # the old syntax is gone
        cli.main(["quickstart", "--workdir", str(work), "--set", "pcmelgan.eps=0.1"])
    assert e.value.code == 2


def test_summary_repeats_the_evaluation_warnings():
    """The summary printed at the end of the quickstart lists the evaluation's warnings (a
    classifier at chance makes numbers above it meaningless)."""
    summary = {"seconds": {"evaluate": 60.0}, "total_seconds": 60.0,
               "classifiers": {"audio_digit/best_accuracy": 0.1},
               "eval": {"warnings": ["W1: the audio digit classifier is at chance"]}}
    text = quickstart.format_summary(summary)
    assert "classifier audio_digit   validation accuracy 0.100" in text
    assert text.endswith("  WARNING: W1: the audio digit classifier is at chance")
    del summary["eval"]
    assert "WARNING" not in quickstart.format_summary(summary)
