"""Evaluation: metrics on fixed cases, FID, aggregation, tables, and eval.py end to end on
untrained (random) models saved in the stage-workdir layout over a tiny synthetic corpus."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from pcmelgan_jax import evaluation, metrics
from pcmelgan_jax.checkpointing import read_model_info, save_model
from pcmelgan_jax.evaluation.attackers import Scores
from pcmelgan_jax.models.registry import numpy_random_variables

ROOT = Path(__file__).resolve().parents[1]
SPEAKERS, REPS = 6, 2  # 1 F + 1 M speaker in each of train, validation, test: 40 utterances
BATCH = 16  # 40 test utterances -> 3 batches, the last one padded (mask 0)


# ------------------------------------------------------------------ tiny models on disk


random_variables = numpy_random_variables


def save_random(directory, network: str, seed: int, via_torch: bool = False, **arch) -> None:
    """Saves random variables as a model checkpoint; ``via_torch`` goes through the PyTorch
    state-dict round trip (export -> convert), as ``pcmelgan-jax import-torch`` does."""
    variables = random_variables(network, seed, **arch)
    extra = {}
    if via_torch:
        from pcmelgan_jax.interop.torch_import import convert_state_dict, export_state_dict

        variables = convert_state_dict(network, export_state_dict(network, variables, **arch),
                                       **arch)
        extra = {"converted_from": "pytorch"}
    save_model(directory, network, variables, arch=arch, extra=extra)


def make_run(run_dir: Path, seed: int, eps: float, filter_only: bool, **config) -> None:
    save_random(run_dir / "models" / "filter", "unet_filter", seed, via_torch=True)
    if not filter_only:
        save_random(run_dir / "models" / "generator", "unet_generator", seed + 1, via_torch=True)
    cfg = {"eps": eps, "seed": seed, "filter_only": filter_only, "noise_dim": 10, **config}
    (run_dir / "config.json").write_text(json.dumps(cfg))


@pytest.fixture(scope="session")
def quickstart(tmp_path_factory) -> Path:
    """A quickstart-shaped workdir: corpus, data, classifiers, vocoder, pcmelgan (eps 0.05,
    seed 0) and a sweep/ of two filter-only runs (eps 0.05 seed 1; eps 0.1 seed 0)."""
    from pcmelgan_jax.data.prepare import prepare
    from pcmelgan_jax.data.synth import synthesize_corpus

    root = tmp_path_factory.mktemp("quick")
    synthesize_corpus(root / "corpus", speakers=SPEAKERS, reps=REPS, seed=0)
    prepare(root / "corpus", root / "data", "all")
    models = root / "classifiers" / "models"
    # narrow classifiers (width 0.25, as the small configs' AlexNets) keep every pass cheap
    save_random(models / "spec_digit", "alexnet", 1, num_classes=10, width=0.25)
    save_random(models / "spec_gender", "alexnet", 2, num_classes=2, width=0.25)
    save_random(models / "audio_digit", "audionet", 3, num_classes=10, width=0.25)
    save_random(models / "audio_gender", "audionet", 4, num_classes=2, width=0.25)
    # a narrow vocoder (ngf 8 instead of 32) keeps the audio domain cheap on CPU
    save_random(root / "vocoder" / "models" / "generator", "melgan_generator", 5, via_torch=True,
                ngf=8)
    # the quickstart run names no paths: they come from the workdir layout
    make_run(root / "pcmelgan", 10, 0.05, False, dataset="audio_mnist/all")
    paths = {"classifiers_workdir": str(root / "classifiers"),
             "vocoder_workdir": str(root / "vocoder"), "data_dir": str(root / "data"),
             "dataset": "audio_mnist/all"}
    make_run(root / "sweep" / "eps0.05_seed1", 20, 0.05, True, **paths)
    make_run(root / "sweep" / "eps0.1_seed0", 30, 0.1, True, **paths)
    return root


def eval_config(**overrides):
    spec = importlib.util.spec_from_file_location("eval_config", ROOT / "configs" / "eval.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.batch_size = BATCH
    config.num_examples_to_save = 2
    config.speaker.steps = 3
    config.speaker.batch_size = 8
    config.speaker.width = 0.25
    config.informed.update(spec_width=0.25, audio_width=0.25, spec_steps=3, audio_steps=3,
                           batch_size=8, eval_every=2)
    config.linear.max_iter = 10
    config.bootstrap.num_resamples = 200
    for k, v in overrides.items():
        config[k] = v
    return config


@pytest.fixture(scope="session")
def quick_results(quickstart):
    return evaluation.run_evaluation(eval_config(), quickstart)


# ------------------------------------------------------------------ metrics, fixed cases


def test_masked_correct():
    logits = jnp.array([[0.1, 0.9], [2.0, -1.0], [0.0, 1.0]])
    assert float(metrics.masked_correct(logits, jnp.array([1, 1, 1]), jnp.array([1, 1, 0]))) == 1


def test_summarize_mean_and_sample_std():
    s = metrics.summarize([0.5, 0.7, 0.9])
    assert s["mean"] == pytest.approx(0.7)
    assert s["std"] == pytest.approx(0.2)  # ddof = 1
    assert s["runs"] == [0.5, 0.7, 0.9]
    assert metrics.summarize([0.25]) == {"mean": 0.25, "std": 0.0, "runs": [0.25]}
    assert metrics.summarize([]) == {"mean": None, "std": None, "runs": []}
    assert metrics.summarize([float("nan"), 0.5])["runs"] == [None, 0.5]


def test_fid_of_a_set_with_itself_is_zero_and_a_shift_is_its_squared_norm():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 8192)).astype(np.float32) * 3.0 + 1.0  # n << d
    assert metrics.fid(x, x) == pytest.approx(0.0, abs=1e-6 * float(np.sum(np.var(x, axis=0))))
    shift = rng.standard_normal(8192) * 0.1
    assert metrics.fid(x, x + shift) == pytest.approx(float(shift @ shift), rel=1e-6)


def test_fid_closed_form():
    # diagonal covariances: |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2 = 5 + (1 - 2)^2 + (2 - 3)^2
    assert metrics.frechet_distance(
        np.zeros(2), np.diag([1.0, 4.0]), np.array([1.0, 2.0]), np.diag([4.0, 9.0])
    ) == pytest.approx(7.0)
    # general covariances against scipy's sqrtm formula
    import scipy.linalg

    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((4, 4)), rng.standard_normal((4, 4))
    s1, s2 = a @ a.T + 0.1 * np.eye(4), b @ b.T + 0.1 * np.eye(4)
    m1, m2 = rng.standard_normal(4), rng.standard_normal(4)
    expected = (m1 - m2) @ (m1 - m2) + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert metrics.frechet_distance(m1, s1, m2, s2) == pytest.approx(expected, rel=1e-9)
    # from samples, n < d and n > d: the same as the fitted Gaussians' distance
    for n, d in ((12, 30), (60, 5)):
        x, y = rng.standard_normal((n, d)), rng.standard_normal((n + 3, d)) * 2 + 0.5
        mx, sx = metrics.gaussian_fit(x)
        my, sy = metrics.gaussian_fit(y)
        assert metrics.fid(x, y) == pytest.approx(
            metrics.frechet_distance(mx, sx, my, sy), rel=1e-8)


def test_heldout_repetitions():
    assert evaluation.heldout_repetitions([0, 1], 0.2) == [1]
    assert evaluation.heldout_repetitions(range(10), 0.2) == [8, 9]
    assert evaluation.heldout_repetitions([3, 3, 3], 0.2) == []
    assert evaluation.heldout_repetitions(range(50), 0.2) == list(range(40, 50))


def _scores(correct, speakers=(1, 1, 2, 2), genders=(0, 0, 1, 1)):
    return Scores(np.asarray(correct, np.int8), np.asarray(speakers), np.asarray(genders))


def _tree(fd, fg):
    """One condition's attacks on 4 test utterances: fixed digit/gender hits, EER 0.3."""
    return {"fixed": {"spectrogram": {"digit_acc": _scores(fd), "gender_acc": _scores(fg)},
                      "audio": {"digit_acc": _scores(fd), "gender_acc": _scores(fg)}},
            "speaker": {"spectrogram": {"eer_ignorant": 0.3}}}


def test_summaries_over_runs_and_tables():
    """Mean and sample std over runs, the bootstrap interval over runs and speakers, EER
    without an interval, and the rows of tables.md."""
    runs = [_tree((1, 1, 0, 0), (1, 0, 1, 0)), _tree((1, 1, 1, 1), (1, 1, 1, 0))]
    boot = {"num_resamples": 300, "level": 0.95, "seed": 0}
    s = evaluation.summarize_trees(runs, boot)
    d = s["fixed"]["spectrogram"]["digit_acc"]
    assert d["mean"] == pytest.approx(0.75) and d["std"] == pytest.approx(math.sqrt(0.125))
    assert d["runs"] == [0.5, 1.0]
    assert 0.0 <= d["low"] <= 0.75 <= d["high"] <= 1.0
    eer = s["speaker"]["spectrogram"]["eer_ignorant"]
    assert eer["mean"] == pytest.approx(0.3) and eer["low"] is None
    single = evaluation.summarize_trees(runs[:1], boot)["fixed"]["spectrogram"]["gender_acc"]
    assert single["runs"] == [0.5] and single["std"] == 0.0 and single["low"] < 0.5
    entry = {k: {"digit_acc": s["fixed"]["spectrogram"]["digit_acc"],
                 "gender_acc": s["fixed"]["spectrogram"]["gender_acc"],
                 "sampled_gender_acc": s["fixed"]["spectrogram"]["gender_acc"],
                 "speaker_acc": s["fixed"]["spectrogram"]["digit_acc"]}
             for k in ("real", "vocoded_real", "filter", "pcmelgan")}
    group = {"eps": 0.05, "eps_label": "0.05", "num_runs": 2, "spectrogram": entry,
             "audio": entry, "fid": {k: metrics.summarize([1.0, 2.0]) for k in
                                     ("filter", "pcmelgan", "vocoded_real")},
             "attacks": {"pcmelgan": s}}
    md = evaluation.markdown_tables({"groups": [group], "baselines": {"real": s},
                                     "speaker": {"num_speakers": 4}})
    g = s["fixed"]["spectrogram"]["gender_acc"]
    cell = (f"62.5 ± {100 * g['std']:.1f} [{100 * g['low']:.1f}, {100 * g['high']:.1f}]")
    assert f"| 0.05 | {cell} | {cell} |" in md  # gender Filter, gender PCMelGAN
    assert "## Fixed classifiers" in md and "## Informed attacker" in md
    assert f"| PCMelGAN, eps 0.05 | {cell} | {cell} |" in md
    assert "| untransformed | - | - | 30.0 ± 0.0 | - |" in md  # the speaker table's EER
    assert "| 0.05 | 1.500 ± 0.707 | 1.500 ± 0.707 |" in md  # FID


def test_reference_warnings_name_classifiers_at_chance_and_constant_features():
    """A fixed classifier within 5 points of chance on real test data, or digit AudioNet
    features equal for every clip (a dead network: every FID 0), is named in a warning,
    which tables.md shows above the tables; healthy references give none."""
    rng = np.random.default_rng(0)

    def reference(sd, sg, ad, ag, features):
        return {"spectrogram": {"real": {"digit_acc": sd, "gender_acc": sg}},
                "audio": {"real": {"digit_acc": ad, "gender_acc": ag}},
                "features_real": features}

    healthy = reference(0.9, 0.99, 0.6, 1.0, rng.standard_normal((6, 8)))
    assert evaluation.reference_warnings(healthy) == []
    assert evaluation.reference_warnings(reference(0.151, 0.551, 0.6, 1.0, healthy[
        "features_real"])) == []
    dead = reference(0.9, 0.549, 0.1, 1.0, np.zeros((6, 8)))
    warnings = evaluation.reference_warnings(dead)
    assert len(warnings) == 3
    assert "spectrogram gender classifier (AlexNet)" in warnings[0] and "54.9 %" in warnings[0]
    assert "audio digit classifier (AudioNet)" in warnings[1] and "10.0 %" in warnings[1]
    assert "every FID is 0" in warnings[2]
    results = {"groups": [], "speaker": {}, "warnings": warnings}
    md = evaluation.markdown_tables(results)
    assert md.index("**Warning:** the audio digit") < md.index("## Fixed classifiers")
    del results["warnings"]
    assert "Warning" not in evaluation.markdown_tables(results)


def test_vocoder_warnings_name_tasks_the_vocoder_loses():
    """An AudioNet that recognises the originals but is within 5 points of chance on their
    vocoded copies is named; one at chance on the originals too is left to
    ``reference_warnings``; a vocoder that keeps both tasks gives none."""

    def reference(real, vocoded):
        return {"audio": {"real": {"digit_acc": real[0], "gender_acc": real[1]},
                          "vocoded_real": {"digit_acc": vocoded[0], "gender_acc": vocoded[1]}}}

    assert evaluation.vocoder_warnings(reference((0.84, 1.0), (0.17, 0.98))) == []
    assert evaluation.vocoder_warnings(reference((0.84, 1.0), (0.151, 0.551))) == []
    warnings = evaluation.vocoder_warnings(reference((0.8375, 1.0), (0.1, 0.549)))
    assert len(warnings) == 2
    assert "digit AudioNet recognises 83.8 %" in warnings[0] and "10.0 %" in warnings[0]
    assert "gender AudioNet" in warnings[1] and "54.9 %" in warnings[1]
    assert "chance 50 %" in warnings[1]
    assert evaluation.vocoder_warnings(reference((0.12, 1.0), (0.1, 0.98))) == []


# ------------------------------------------------------------------ end to end


REQUIRED = {
    "spectrogram": {"real": {"digit_acc", "gender_acc", "speaker_acc"},
                    "filter": {"digit_acc", "gender_acc", "speaker_acc"},
                    "pcmelgan": {"digit_acc", "gender_acc", "sampled_gender_acc",
                                 "speaker_acc"}},
    "audio": {"real": {"digit_acc", "gender_acc"}, "filter": {"digit_acc", "gender_acc"},
              "pcmelgan": {"digit_acc", "gender_acc", "sampled_gender_acc"}},
}


def _check_value(v, n_runs, interval=True):
    assert set(v) == {"mean", "std", "runs", "low", "high"}
    assert len(v["runs"]) == n_runs
    assert v["mean"] == pytest.approx(np.mean(v["runs"]))
    if interval:
        assert 0.0 <= v["low"] <= v["mean"] <= v["high"] <= 1.0


ATTACKS = {"fixed": {"spectrogram": {"digit_acc", "gender_acc"},
                     "audio": {"digit_acc", "gender_acc"}},
           "informed": {"spectrogram": {"digit_acc", "gender_acc"},
                        "audio": {"digit_acc", "gender_acc"}},
           "linear": {"spectrogram": {"digit_acc", "gender_acc"},
                      "audio": {"digit_acc", "gender_acc"}},
           "features": {"audio": {"digit_acc", "gender_acc"}},
           "speaker": {"spectrogram": {"reid_ignorant_acc", "reid_informed_acc",
                                       "eer_ignorant", "eer_informed"}}}


def _check_attacks(attacks, n_runs, attackers=tuple(ATTACKS)):
    for attacker in attackers:
        domains = ATTACKS[attacker]
        for domain, keys in domains.items():
            assert keys <= set(attacks[attacker][domain]), (attacker, domain)
            for key in keys:
                _check_value(attacks[attacker][domain][key], n_runs,
                             interval=not key.startswith("eer"))


def test_quickstart_results_json(quickstart, quick_results):
    out = quickstart / "eval"
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["spectrogram"] == quick_results["spectrogram"]
    for domain, entries in REQUIRED.items():
        for entry, keys in entries.items():
            assert keys <= set(on_disk[domain][entry]), (domain, entry)
            for key in keys:
                _check_value(on_disk[domain][entry][key], 1)
                assert 0.0 <= on_disk[domain][entry][key]["mean"] <= 1.0
    assert set(on_disk["fid"]) == {"filter", "pcmelgan", "vocoded_real"}
    for v in on_disk["fid"].values():
        assert len(v["runs"]) == 1 and v["mean"] >= 0.0
    # every attacker with intervals, for the runs' conditions and the baselines
    assert set(on_disk["attacks"]) == {"filter", "pcmelgan"}
    for attacks in on_disk["attacks"].values():
        _check_attacks(attacks, 1)
    assert set(on_disk["baselines"]) == {"real", "vocoded_real", "mcadams", "pitch_shift",
                                         "digit_template"}
    for attacks in on_disk["baselines"].values():
        _check_attacks(attacks, 1)
    assert on_disk["attacks"]["pcmelgan"]["fixed"]["audio"]["sampled_gender_acc"]["low"] >= 0
    assert on_disk["test"]["num_utterances"] == 40
    assert on_disk["groups"][0]["filter_source"] == "pcmelgan runs' own F"
    assert on_disk["eps"] == 0.05 and len(on_disk["groups"]) == 1
    assert isinstance(on_disk["warnings"], list)
    run = on_disk["runs"][0]["run"]
    assert run["path"] == str(quickstart / "pcmelgan")
    assert run["vocoder_workdir"] == str(quickstart / "vocoder")
    assert on_disk["speaker"]["num_speakers"] == 2  # the training speakers
    reid = on_disk["baselines"]["real"]["speaker"]["spectrogram"]["reid_ignorant_acc"]
    assert on_disk["spectrogram"]["real"]["speaker_acc"] == reid
    # the imported (PyTorch round-trip) checkpoints were the ones evaluated
    assert read_model_info(quickstart / "pcmelgan" / "models" / "filter")["converted_from"]
    # outputs beside results.json
    md = (out / "tables.md").read_text()
    g = on_disk["spectrogram"]
    row = "| 0.05 | " + " | ".join(evaluation.report.fmt(g[entry][key]) for key in (
        "gender_acc", "digit_acc") for entry in ("filter", "pcmelgan")) + " |"
    assert row in md
    for title in ("Fixed classifiers", "Informed attacker", "Linear attacker",
                  "Feature attacker", "Speakers"):
        assert f"## {title}" in md
    assert "| McAdams (0.8) |" in md and "| PCMelGAN, eps 0.05 |" in md
    assert (out / "privacy_utility.png").stat().st_size > 10_000
    assert (out / "speaker_classifier" / "model.json").is_file()
    ex = out / "examples" / "00_pcmelgan"
    assert sorted(p.name for p in ex.iterdir()) == sorted(
        [f"{i:02d}_{s}.wav" for i in range(2) for s in ("original", "vocoded", "filter",
                                                         "pcmelgan")] + ["spectrograms.png"])


def test_quickstart_numbers_match_a_direct_computation(quickstart, quick_results):
    """Reference and Filter accuracies recomputed here from the test records, unbatched."""
    from pcmelgan_jax.audio import mel_features, prepare_clip
    from pcmelgan_jax.checkpointing import load_model
    from pcmelgan_jax.data.pipeline import load_source

    source = load_source(quickstart / "data", "audio_mnist/all", "test")
    records = [source[i] for i in range(len(source))]
    assert len(records) == 40
    audio = np.stack([prepare_clip(np.asarray(r["audio"], np.float32) / 32768) for r in records])
    digit = np.array([r["digit"] for r in records])
    gender = np.array([r["gender"] for r in records])
    x = np.zeros((48, 80, 32), np.float32)  # 3 batches of 16, the last 8 rows padding
    x[:40] = np.asarray(mel_features(jnp.asarray(audio))[0])
    batches = [jnp.asarray(x[i : i + BATCH]) for i in range(0, 48, BATCH)]
    digit_net = load_model(quickstart / "classifiers" / "models" / "spec_digit")
    pred = np.concatenate([evaluation.spec_predict(*digit_net, b) for b in batches])[:40]
    expected = float(np.mean(pred == digit))
    assert quick_results["spectrogram"]["real"]["digit_acc"]["mean"] == pytest.approx(expected)
    # the filter output of batch i uses z1 from fold_in(key(seed), i): rebuild it
    gender_net = load_model(quickstart / "classifiers" / "models" / "spec_gender")
    filt = load_model(quickstart / "pcmelgan" / "models" / "filter")
    pred = []
    for i, b in enumerate(batches):
        z1, _, _ = evaluation.batch_noise(0, i, BATCH, 10)
        x1 = evaluation.unet_apply(*filt, b, jnp.asarray(z1), None)
        pred.append(evaluation.spec_predict(*gender_net, x1))
    hits = int(np.sum(np.concatenate(pred)[:40] == gender))
    assert quick_results["spectrogram"]["filter"]["gender_acc"]["mean"] == pytest.approx(hits / 40)


def test_digit_template_condition_replaces_each_utterance(quickstart):
    """Every output spectrogram is the template of the fixed AlexNet's predicted digit in the
    sampled gender, s' being G's draw for the same batch; the vocoder gets the one level it
    is given for every utterance, not the utterance's own statistics."""
    from pcmelgan_jax.checkpointing import load_model
    from pcmelgan_jax.evaluation import conditions
    from pcmelgan_jax.evaluation.data import load_split

    test = load_split(str(quickstart / "data"), "audio_mnist/all", "test", BATCH)
    digit_net = load_model(quickstart / "classifiers" / "models" / "spec_digit")
    bank = np.random.default_rng(0).normal(size=(10, 2, 80, 32)).astype(np.float32)
    seen = []

    def vocoder(x, mean, std):  # records its inputs, returns a clip a log-mel can read
        seen.append((np.asarray(x), np.asarray(mean), np.asarray(std)))
        return jnp.sin(jnp.arange(8192.0) * 0.3)[None] * (1.0 + x[:, :1, 0])

    out = conditions.digit_template(bank, digit_net, vocoder, 0, BATCH, (-2.5, 1.5))(test)
    pred = evaluation.spec_predict(*digit_net, jnp.asarray(test.x[:BATCH]))
    sampled = evaluation.batch_noise(0, 0, BATCH, 10)[2]
    np.testing.assert_array_equal(out.sampled_gender[:BATCH], sampled)
    np.testing.assert_array_equal(out.spec[:BATCH], bank[np.asarray(pred), sampled])
    assert out.spec.shape == test.x.shape and out.audio.shape == (len(test), 8192)
    for got, want in zip(seen[0][1:], (-2.5, 1.5), strict=True):
        np.testing.assert_array_equal(got, np.full(BATCH, want, np.float32))
    assert len(set(np.asarray(pred).tolist())) > 1 or len(set(sampled.tolist())) > 1


def test_eval_py_sweep_groups_by_eps(quickstart, quick_results, monkeypatch):
    """eval.py's flags, several runs, two eps groups, a filter-only run, determinism and the
    reuse of the cached speaker classifier."""
    spec = importlib.util.spec_from_file_location("eval_script", ROOT / "eval.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    argv = [
        "eval.py", f"--config={ROOT / 'configs' / 'eval.py'}", f"--workdir={quickstart}",
        "--config.runs=pcmelgan,sweep/*", f"--config.batch_size={BATCH}",
        "--config.num_examples_to_save=0", "--config.speaker.steps=3",
        "--config.speaker.batch_size=8", "--config.speaker.width=0.25",
        "--config.informed.spec_steps=3",
        "--config.informed.audio_steps=3", "--config.informed.spec_width=0.25",
        "--config.informed.audio_width=0.25", "--config.informed.batch_size=8",
        "--config.linear.max_iter=10", "--config.bootstrap.num_resamples=200",
        "--config.attackers=('fixed','linear','speaker')", "--config.baselines=()",
        "--config.comparison_attackers=('fixed','speaker','informed')",
    ]
    monkeypatch.setattr(sys, "argv", argv)  # config_flags reads its overrides from sys.argv
    script.FLAGS(argv)
    try:
        script.main(["eval.py"])
    finally:
        script.FLAGS.unparse_flags()
    res = json.loads((quickstart / "eval" / "results.json").read_text())
    assert res["speaker"]["reused"] is True
    assert [g["eps"] for g in res["groups"]] == [0.05, 0.1]
    g05, g10 = res["groups"]
    assert g05["num_runs"] == 2 and g10["num_runs"] == 1
    # eps 0.05: the Filter column is the PCMelGAN run's own F; the filter-only run of the
    # same eps is reported on its own, not pooled into it
    assert g05["filter_source"] == "pcmelgan runs' own F"
    for domain, entries in REQUIRED.items():
        for entry, keys in entries.items():
            for key in keys:
                _check_value(g05[domain][entry][key], 1)
    assert set(g05["attacks"]) == {"filter", "pcmelgan", "filter_only"}
    _check_attacks(g05["attacks"]["pcmelgan"], 1, ("fixed", "linear", "speaker"))
    assert set(g05["attacks"]["pcmelgan"]) == {"fixed", "linear", "speaker", "strongest"}
    for name in ("filter", "filter_only"):
        _check_attacks(g05["attacks"][name], 1, ("fixed", "speaker"))
        assert set(g05["attacks"][name]) == {"fixed", "speaker"}
    assert set(res["baselines"]) == {"real", "vocoded_real"}
    # the untransformed speech and PCMelGAN get every attacker; the vocoded original and the
    # Filter those also in comparison_attackers (informed is not in attackers: nobody has it)
    assert set(res["baselines"]["real"]) == {"fixed", "linear", "speaker", "strongest"}
    assert set(res["baselines"]["vocoded_real"]) == {"fixed", "speaker"}
    sweep_run = next(r for r in res["runs"] if r["run"]["name"] == "eps0.05_seed1")
    assert g05["attacks"]["filter_only"]["fixed"]["spectrogram"]["digit_acc"]["mean"] == (
        pytest.approx(sweep_run["spectrogram"]["filter"]["digit_acc"]))
    # eps 0.1 has only a filter-only run: it is the Filter column
    assert g10["filter_source"] == "filter-only runs" and set(g10["attacks"]) == {"filter"}
    assert g10["spectrogram"]["pcmelgan"]["digit_acc"]["mean"] is None
    assert g10["fid"]["pcmelgan"]["runs"] == []
    _check_value(g10["spectrogram"]["filter"]["gender_acc"], 1)
    # the quickstart run gives the same numbers as in the first evaluation (same seed)
    first = next(r for r in res["runs"] if r["run"]["path"] == str(quickstart / "pcmelgan"))
    assert first["spectrogram"]["pcmelgan"]["digit_acc"] == pytest.approx(
        quick_results["spectrogram"]["pcmelgan"]["digit_acc"]["mean"])
    assert first["fid"]["filter"] == pytest.approx(quick_results["fid"]["filter"]["mean"])
    md = (quickstart / "eval" / "tables.md").read_text()
    assert md.count("\n| 0.1 |") == 3  # both accuracy tables and FID
    assert "| Filter (filter-only runs), eps 0.05 |" in md


def test_griffin_lim_evaluation_needs_no_vocoder(quickstart, tmp_path):
    """``vocoder=griffin_lim``: the vocoded original is the Griffin-Lim inversion of the test
    clips (the fixed AudioNet's accuracy on it recomputed here), the tables say so, and a
    run without a MelGAN resolves; an unknown vocoder is refused before any work."""
    from pcmelgan_jax import griffin_lim
    from pcmelgan_jax.audio import denormalize
    from pcmelgan_jax.checkpointing import load_model
    from pcmelgan_jax.evaluation.classifier import predict
    from pcmelgan_jax.evaluation.data import load_split

    out = tmp_path / "eval"
    res = evaluation.run_evaluation(eval_config(
        vocoder="griffin_lim", griffin_lim_iterations=4, runs="none", output_dir=str(out),
        vocoder_workdir=str(tmp_path / "absent"), attackers=("fixed",), baselines=(),
        num_examples_to_save=0), quickstart)
    test = load_split(str(quickstart / "data"), "audio_mnist/all", "test", BATCH)
    audio = np.asarray(griffin_lim.vocode(denormalize(test.x, test.mean, test.std), 4))
    net = load_model(quickstart / "classifiers" / "models" / "audio_digit")
    expected = float(np.mean(predict("audionet", *net, audio, BATCH) == test.digit))
    got = res["baselines"]["vocoded_real"]["fixed"]["audio"]["digit_acc"]["mean"]
    assert got == pytest.approx(expected, abs=1 / 40)  # batched vs whole: one clip at most
    assert "Griffin-Lim (4 iterations" in (out / "tables.md").read_text()
    run = tmp_path / "r"
    (run / "models" / "filter").mkdir(parents=True)
    (run / "models" / "filter" / "model.json").write_text("{}")
    os.makedirs(tmp_path / "classifiers")
    os.makedirs(tmp_path / "data")
    info = evaluation.resolve_run(str(run), str(tmp_path), {"vocoder": "griffin_lim"})
    assert info.vocoder_workdir is None
    with pytest.raises(evaluation.EvaluationError, match="vocoder must be one of"):
        evaluation.run_evaluation(eval_config(vocoder="hifigan", runs="none"), quickstart)
    with pytest.raises(evaluation.EvaluationError, match="griffin_lim_iterations must be >= 1"):
        evaluation.run_evaluation(eval_config(vocoder="griffin_lim", griffin_lim_iterations=0,
                                              runs="none"), quickstart)


def test_find_runs_one_and_two_levels_down(tmp_path):
    """A sweep folder stands for its runs, and for the seed runs of a num_seeds run inside it
    (SWEEP/RUN/seed_<S>/); a folder that is itself a run is not searched further."""
    def run(*parts):
        (tmp_path.joinpath(*parts) / "models" / "filter").mkdir(parents=True)
        (tmp_path.joinpath(*parts) / "models" / "filter" / "model.json").write_text("{}")
        return str(tmp_path.joinpath(*parts))

    expected = [run("sweep", "eps_0.01"), run("sweep", "eps_0.05", "seed_0"),
                run("sweep", "eps_0.05", "seed_1")]
    run("sweep", "eps_0.01", "nested")  # below a run: not a run of the sweep
    (tmp_path / "sweep" / "eval").mkdir()
    (tmp_path / "sweep" / "sweep.json").write_text("{}")
    assert evaluation.find_runs("sweep", tmp_path) == expected
    assert evaluation.find_runs("", tmp_path / "sweep") == expected


def test_seed_runs_are_named_after_their_run(tmp_path):
    """Seed S of a multi-seed run RUN (RUN/seed_<S>) is reported as RUN_seed_<S>."""
    from pcmelgan_jax.evaluation.runs import run_name

    packed = tmp_path / "sweep" / "eps0.05_seeds0-1"
    (packed / "seed_0").mkdir(parents=True)
    (packed / "config.json").write_text("{}")
    assert run_name(packed / "seed_0") == "eps0.05_seeds0-1_seed_0"
    assert run_name(packed) == "eps0.05_seeds0-1"
    (tmp_path / "other" / "seed_0").mkdir(parents=True)  # not inside a run
    assert run_name(tmp_path / "other" / "seed_0") == "seed_0"


def test_find_runs_errors(tmp_path):
    with pytest.raises(evaluation.EvaluationError, match="matches nothing"):
        evaluation.find_runs("nope*", tmp_path)
    with pytest.raises(evaluation.EvaluationError, match="not a PCMelGAN run"):
        evaluation.find_runs("", tmp_path)
    (tmp_path / "r" / "models" / "filter").mkdir(parents=True)
    (tmp_path / "r" / "models" / "filter" / "model.json").write_text("{}")
    assert evaluation.find_runs("", tmp_path / "r") == [str(tmp_path / "r")]
    with pytest.raises(evaluation.EvaluationError, match="no classifiers workdir"):
        evaluation.resolve_run(str(tmp_path / "r"), str(tmp_path))
    os.makedirs(tmp_path / "classifiers")
    with pytest.raises(evaluation.EvaluationError, match="no vocoder workdir"):
        evaluation.resolve_run(str(tmp_path / "r"), str(tmp_path))


def test_baselines_command_attacks_the_training_free_anonymisers(quickstart, capsys):
    """``pcmelgan-jax baselines`` on a quickstart workdir: the untransformed speech and the
    four baselines through every attacker, no run needed; a bad field is one line."""
    from pcmelgan_jax import cli

    small = ["--config.speaker.steps=3", "--config.speaker.batch_size=8",
             "--config.speaker.width=0.25", "--config.informed.spec_steps=3",
             "--config.informed.audio_steps=3", "--config.informed.batch_size=8",
             f"--config.batch_size={BATCH}", "--config.linear.max_iter=10",
             "--config.bootstrap.num_resamples=100", "--config.num_examples_to_save=0",
             "--config.attackers=('fixed','features')"]
    assert cli.main(["baselines", "--workdir", str(quickstart), "--small", *small]) == 0
    res = json.loads((quickstart / "baselines" / "results.json").read_text())
    assert res["groups"] == [] and res["eps"] is None
    assert set(res["baselines"]) == {"real", "vocoded_real", "mcadams", "pitch_shift",
                                     "digit_template"}
    for attacks in res["baselines"].values():
        _check_attacks(attacks, 1, ("fixed", "features"))
    md = (quickstart / "baselines" / "tables.md").read_text()
    assert "none (baselines only)" in md and "| pitch shift (gender flip) |" in md
    assert cli.main(["baselines", "--workdir", str(quickstart), "--config.bogus=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == ("pcmelgan-jax baselines: error: --config.bogus: 'bogus' is not a "
                       "field of configs/eval.py")


def test_comparison_attackers_choose_the_attackers_and_the_splits():
    """The untransformed speech and PCMelGAN get every attacker; the conditions they are
    compared with only those also in ``comparison_attackers``; a condition no attacker
    learns from is applied to the test split alone."""
    from pcmelgan_jax.evaluation.data import SPLITS
    from pcmelgan_jax.evaluation.protocol import learning_attackers, splits_to_attack

    cfg = {"attackers": ("fixed", "informed", "linear", "speaker"),
           "comparison_attackers": ("fixed", "linear", "features")}
    for name in ("real", "pcmelgan", "pcmelgan_erased"):
        assert learning_attackers(cfg, name) == {"informed", "linear", "speaker"}
        assert splits_to_attack(cfg, name) == SPLITS
    for name in ("vocoded_real", "mcadams", "pitch_shift", "digit_template", "filter"):
        assert learning_attackers(cfg, name) == {"linear"}
        assert splits_to_attack(cfg, name) == SPLITS
    cfg["comparison_attackers"] = ("fixed",)
    assert learning_attackers(cfg, "filter") == set()
    assert splits_to_attack(cfg, "filter") == splits_to_attack(cfg, "mcadams") == ("test",)
    assert splits_to_attack(cfg, "real") == SPLITS
    assert splits_to_attack({"attackers": ("fixed",)}, "real") == ("test",)
    assert learning_attackers({}, "filter") == {"informed", "linear", "features", "fresh",
                                                "speaker"}
