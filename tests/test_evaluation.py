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
from pcmelgan_jax.models.registry import numpy_random_variables

ROOT = Path(__file__).resolve().parents[1]
SPEAKERS, REPS = 4, 2  # train: 1 F + 1 M speaker, test: 1 F + 1 M; 40 utterances each
BATCH = 16  # 40 test utterances -> 3 batches, the last one padded (mask 0)


# ------------------------------------------------------------------ tiny models on disk


random_variables = numpy_random_variables


def save_random(directory, network: str, seed: int, via_torch: bool = False, **arch) -> None:
    """Saves random variables as a model checkpoint; ``via_torch`` goes through the PyTorch
    state-dict round trip (export -> convert), as ``pcmelgan-jax import-torch`` does."""
    variables = random_variables(network, seed, **arch)
    extra = {}
    if via_torch:
        from pcmelgan_jax.torch_import import convert_state_dict, export_state_dict

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
    save_random(models / "spec_digit", "alexnet", 1, num_classes=10)
    save_random(models / "spec_gender", "alexnet", 2, num_classes=2)
    save_random(models / "audio_digit", "audionet", 3, num_classes=10)
    save_random(models / "audio_gender", "audionet", 4, num_classes=2)
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
    for k, v in overrides.items():
        config[k] = v
    return config


@pytest.fixture(scope="session")
def quick_results(quickstart):
    return evaluation.run_evaluation(eval_config(), quickstart)


# ------------------------------------------------------------------ metrics, fixed cases


def test_masked_accuracy_and_counter():
    pred = np.array([1, 2, 3, 0, 5])
    label = np.array([1, 2, 0, 0, 4])
    mask = np.array([1, 1, 1, 0, 1], np.float32)
    assert metrics.masked_accuracy(pred, label, mask) == pytest.approx(2 / 4)
    assert math.isnan(metrics.masked_accuracy(pred, label, np.zeros(5)))
    counter = metrics.AccuracyCounter()
    counter.update("a", pred, label, mask)  # 2 of 4
    counter.update("a", np.array([7, 7]), np.array([7, 1]), np.array([1.0, 0.0]))  # 1 of 1
    counter.update("b", np.array([0]), np.array([1]), np.array([1.0]))
    assert counter.result() == {"a": pytest.approx(3 / 5), "b": 0.0}
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


def _run_entry(fd, fg, pd=None, pg=None, ps=None, fid_f=10.0, fid_p=None):
    run = {
        "spectrogram": {"real": {"digit_acc": 0.9, "gender_acc": 1.0, "speaker_acc": 0.8},
                        "vocoded_real": {"digit_acc": 0.8, "gender_acc": 0.9},
                        "filter": {"digit_acc": fd, "gender_acc": fg, "speaker_acc": 0.3}},
        "audio": {"real": {"digit_acc": 0.9, "gender_acc": 1.0},
                  "vocoded_real": {"digit_acc": 0.7, "gender_acc": 0.9},
                  "filter": {"digit_acc": fd, "gender_acc": fg}},
        "fid": {"filter": fid_f, "vocoded_real": 2.0},
    }
    if pd is not None:
        run["spectrogram"]["pcmelgan"] = {"digit_acc": pd, "gender_acc": pg,
                                          "sampled_gender_acc": ps, "speaker_acc": 0.1}
        run["audio"]["pcmelgan"] = {"digit_acc": pd, "gender_acc": pg, "sampled_gender_acc": ps}
        run["fid"]["pcmelgan"] = fid_p
    return run


def test_aggregate_group_and_tables():
    runs = [_run_entry(0.6, 0.5, 0.4, 0.45, 0.9, 10.0, 20.0),
            _run_entry(0.8, 0.7, 0.6, 0.55, 1.0, 14.0, 30.0),
            _run_entry(0.7, 0.6)]  # a filter-only run: Filter numbers only
    g = evaluation.aggregate_group(runs)
    f = g["spectrogram"]["filter"]["digit_acc"]
    assert f["mean"] == pytest.approx(0.7) and f["std"] == pytest.approx(0.1)
    assert f["runs"] == [0.6, 0.8, 0.7]
    p = g["audio"]["pcmelgan"]["gender_acc"]
    assert p["mean"] == pytest.approx(0.5) and p["std"] == pytest.approx(math.sqrt(0.005))
    assert g["spectrogram"]["pcmelgan"]["sampled_gender_acc"]["mean"] == pytest.approx(0.95)
    assert g["fid"]["filter"]["mean"] == pytest.approx(34 / 3)
    assert g["fid"]["pcmelgan"]["runs"] == [20.0, 30.0]
    real = g["spectrogram"]["real"]["speaker_acc"]
    assert real["mean"] == pytest.approx(0.8) and real["std"] == pytest.approx(0.0, abs=1e-12)
    assert real["runs"] == [0.8, 0.8, 0.8]
    results = {"groups": [{"eps": 0.05, "eps_label": "0.05", "num_runs": 3, **g}],
               "speaker": {"num_speakers": 4}}
    md = evaluation.markdown_tables(results)
    # gender Filter, gender PCMelGAN, digit Filter, digit PCMelGAN, in %, mean ± std
    assert "| 0.05 | 60.0 ± 10.0 | 50.0 ± 7.1 | 70.0 ± 10.0 | 50.0 ± 14.1 |" in md
    assert "| 0.05 | 11.33 ± 2.31 | 25.00 ± 7.07 |" in md  # FID
    assert "| untransformed | 100.0 ± 0.0 | 90.0 ± 0.0 |" in md
    assert "Chance: 25.0 %" in md


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
    g = evaluation.aggregate_group([_run_entry(0.6, 0.5, 0.4, 0.45, 0.9, 10.0, 20.0)])
    results = {"groups": [{"eps": 0.05, "eps_label": "0.05", "num_runs": 1, **g}],
               "speaker": {}, "warnings": warnings}
    md = evaluation.markdown_tables(results)
    assert md.index("**Warning:** the audio digit") < md.index("## Spectrogram-domain")
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


def _check_value(v, n_runs):
    assert set(v) == {"mean", "std", "runs"}
    assert len(v["runs"]) == n_runs
    assert v["mean"] == pytest.approx(np.mean(v["runs"]))


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
        _check_value(v, 1)
        assert v["mean"] >= 0.0
    assert on_disk["eps"] == 0.05 and len(on_disk["groups"]) == 1
    assert isinstance(on_disk["warnings"], list)
    run = on_disk["runs"][0]["run"]
    assert run["path"] == str(quickstart / "pcmelgan")
    assert run["vocoder_workdir"] == str(quickstart / "vocoder")
    assert on_disk["speaker"]["num_speakers"] == 2 and on_disk["speaker"]["num_heldout"] == 20
    # the imported (PyTorch round-trip) checkpoints were the ones evaluated
    assert read_model_info(quickstart / "pcmelgan" / "models" / "filter")["converted_from"]
    # outputs beside results.json
    md = (out / "tables.md").read_text()
    g = on_disk["spectrogram"]
    row = (f"| 0.05 | {100 * g['filter']['gender_acc']['mean']:.1f} "
           f"| {100 * g['pcmelgan']['gender_acc']['mean']:.1f} "
           f"| {100 * g['filter']['digit_acc']['mean']:.1f} "
           f"| {100 * g['pcmelgan']['digit_acc']['mean']:.1f} |")
    assert row in md
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
        "--config.speaker.batch_size=8",
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
    for domain, entries in REQUIRED.items():
        for entry, keys in entries.items():
            for key in keys:  # the filter-only run of eps 0.05 adds Filter numbers only
                _check_value(g05[domain][entry][key], 2 if entry != "pcmelgan" else 1)
    assert g10["spectrogram"]["pcmelgan"]["digit_acc"]["mean"] is None
    assert g10["fid"]["pcmelgan"]["runs"] == []
    _check_value(g10["spectrogram"]["filter"]["gender_acc"], 1)
    # the quickstart run gives the same numbers as in the first evaluation (same seed)
    first = next(r for r in res["runs"] if r["run"]["path"] == str(quickstart / "pcmelgan"))
    assert first["spectrogram"]["pcmelgan"]["digit_acc"] == pytest.approx(
        quick_results["spectrogram"]["pcmelgan"]["digit_acc"]["mean"])
    assert first["fid"]["filter"] == pytest.approx(quick_results["fid"]["filter"]["mean"])
    s = g05["spectrogram"]["filter"]["digit_acc"]
    assert s["std"] == pytest.approx(float(np.std(s["runs"], ddof=1)))
    md = (quickstart / "eval" / "tables.md").read_text()
    assert md.count("\n| 0.1 |") == 4  # both accuracy tables, speakers, FID


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
