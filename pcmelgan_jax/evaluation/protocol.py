"""The evaluation protocol: every anonymiser against every attacker, on held-out speakers.

    run_evaluation(config, workdir)   # config: configs/eval.py's get_config(), fields filled

Conditions (what is attacked; ``conditions``): the untransformed speech, the training-free
baselines (the vocoded original, McAdams, a gender-flipping pitch shift, digit templates:
the recognised digit's mean training spectrogram in a sampled gender) and, per trained
run, the Filter's output x1 = F(x, z1) and PCMelGAN's x2 = G(x1, z2, s'), s' uniform in
{0, 1}. Each is applied to the train, validation and test splits. Attackers
(``attackers``, ``speaker``) are scored on the test speakers; those that learn do so on the
training speakers and select on the validation speakers (the ``fresh`` attacker learns on
the validation speakers, cross-validated among them). Runs are grouped by ``eps``.

Outputs in ``OUT`` (default ``WORKDIR/eval``): ``results.json`` (schema in the README),
``tables.md``, ``privacy_utility.png`` (informed and strongest attacker) and
``examples/<run>/``.
Deterministic for a seed: the noise of test batch i comes from ``fold_in(key(seed), i)``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from pcmelgan_jax import metrics
from pcmelgan_jax.checkpointing import load_network
from pcmelgan_jax.evaluation import attackers, conditions, inference, report, speaker
from pcmelgan_jax.evaluation.data import SPLITS, SplitData, load_split
from pcmelgan_jax.evaluation.runs import (
    DEFAULT_DATASET,
    EvaluationError,
    RunInfo,
    find_runs,
    resolve_run,
)
from pcmelgan_jax.workdir import existing_path, model_dir, write_text_atomic

# training-free anonymisers beside the vocoded original (digit_template works on spectrograms)
BASELINES = ("mcadams", "pitch_shift", "digit_template")
EMPTY = {"mean": None, "std": None, "runs": [], "low": None, "high": None}


@dataclasses.dataclass
class ModelSet:
    """The fixed models of one evaluation: classifiers ((module, variables) pairs) and the
    vocoder."""

    spec_digit: tuple
    spec_gender: tuple
    audio_digit: tuple
    audio_gender: tuple
    vocoder: inference.Vocoder

    @classmethod
    def load(cls, classifiers_workdir: str, vocoder_workdir: str | None,
             cfg: Mapping[str, Any]) -> ModelSet:
        c = classifiers_workdir
        return cls(
            spec_digit=load_network(model_dir(c, "spec_digit"), "alexnet"),
            spec_gender=load_network(model_dir(c, "spec_gender"), "alexnet"),
            audio_digit=load_network(model_dir(c, "audio_digit"), "audionet"),
            audio_gender=load_network(model_dir(c, "audio_gender"), "audionet"),
            vocoder=load_vocoder(cfg, vocoder_workdir),
        )


def vocoder_kind(cfg: Mapping[str, Any]) -> str:
    """The config's ``vocoder`` ("melgan" or "griffin_lim"), checked."""
    kind = str(cfg.get("vocoder") or "melgan")
    if kind not in inference.VOCODERS:
        raise EvaluationError(f"vocoder must be one of {inference.VOCODERS}, got {kind!r}")
    return kind


def load_vocoder(cfg: Mapping[str, Any], vocoder_workdir: str | None) -> inference.Vocoder:
    """The trained MelGAN in ``vocoder_workdir``, or Griffin-Lim (``cfg.vocoder``)."""
    if vocoder_kind(cfg) == "griffin_lim":
        try:
            return inference.griffin_lim_vocoder(int(cfg["griffin_lim_iterations"]))
        except ValueError as e:
            raise EvaluationError(str(e)) from None
    if not vocoder_workdir:
        raise EvaluationError("no MelGAN vocoder workdir found (set vocoder_workdir, or "
                              "vocoder=griffin_lim for the training-free inversion)")
    generator = load_network(model_dir(vocoder_workdir, "generator"), "melgan_generator")
    return inference.melgan_vocoder(*generator)


@dataclasses.dataclass
class Context:
    """What the runs sharing classifiers, vocoder and data share: the data, the models, the
    real-speech speaker classifier and the baselines' attacks."""

    # classifiers, vocoder (None: Griffin-Lim), data_dir, dataset
    paths: tuple[str, str | None, str, str]
    models: ModelSet
    splits: dict[str, SplitData]
    ignorant_speaker: tuple
    speaker_info: dict
    baselines: dict[str, dict] = dataclasses.field(default_factory=dict)
    baseline_logs: dict[str, dict] = dataclasses.field(default_factory=dict)
    features: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    examples: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


def baseline_names(cfg: Mapping[str, Any]) -> list[str]:
    """The configured baselines, checked."""
    names = [n for n in cfg.get("baselines", BASELINES) if n]
    unknown = sorted(set(names) - set(BASELINES))
    if unknown:
        raise EvaluationError(f"baselines: unknown {unknown}; expected some of {sorted(BASELINES)}")
    return names


def baseline_transforms(cfg: Mapping[str, Any]) -> dict[str, conditions.WaveformTransform]:
    """The configured training-free waveform anonymisers."""
    from pcmelgan_jax.evaluation import baselines

    known = {
        "mcadams": lambda s: baselines.mcadams_batch(
            s.clips, coefficient=float(cfg["mcadams_coefficient"])),
        "pitch_shift": lambda s: baselines.pitch_shift_flip_batch(
            s.clips, s.gender, semitones=float(cfg["pitch_shift_semitones"])),
    }
    return {n: known[n] for n in baseline_names(cfg) if n in known}


# Every configured attacker's reference (the untransformed speech) and the anonymiser under
# test; the conditions they are compared with (the vocoded original, the baselines, the
# Filter) may be given fewer attackers (``comparison_attackers``).
FULLY_ATTACKED = ("real", "pcmelgan", "pcmelgan_erased")


def learning_attackers(cfg: Mapping[str, Any], name: str) -> set[str]:
    """The attackers of condition ``name`` besides the fixed classifiers (which every
    condition gets): ``attackers``, for a condition not in ``FULLY_ATTACKED`` only those also
    in ``comparison_attackers``."""
    wanted = set(cfg.get("attackers", (*attackers.ATTACKERS, "speaker"))) - {"fixed"}
    if name not in FULLY_ATTACKED:
        wanted &= set(cfg.get("comparison_attackers", wanted))
    return wanted


def splits_to_attack(cfg: Mapping[str, Any], name: str) -> tuple[str, ...]:
    """The splits condition ``name`` is applied to: all when an attacker learns from its
    output, else the test split alone (all the fixed classifiers score)."""
    return SPLITS if learning_attackers(cfg, name) else ("test",)


def attack(outs: Mapping[str, conditions.Outputs], ctx: Context, cfg: Mapping[str, Any],
           name: str) -> tuple[dict, np.ndarray, dict]:
    """Every configured attacker against one condition's outputs (``FULLY_ATTACKED``; the
    others only those also in ``comparison_attackers``). Returns (tree of ``Scores`` /
    floats, the digit AudioNet's features of the test output, logs)."""
    batch_size = int(cfg["batch_size"])
    wanted = learning_attackers(cfg, name)
    seconds: dict[str, float] = {}

    def timed(attacker: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        result = fn()
        seconds[attacker] = round(time.perf_counter() - t0, 1)
        return result

    fixed = timed("fixed", lambda: attackers.fixed(ctx.models, outs["test"],
                                                   ctx.splits["test"], batch_size))
    tree: dict[str, Any] = {"fixed": fixed["scores"]}
    logs: dict[str, Any] = {"seconds": seconds}
    if "informed" in wanted:
        tree["informed"], logs["informed"] = timed("informed", lambda: attackers.informed(
            outs, ctx.splits, cfg["informed"], batch_size))
    if "linear" in wanted:
        tree["linear"] = timed("linear", lambda: attackers.linear(outs, ctx.splits,
                                                                  cfg["linear"]))
    if "features" in wanted:
        tree["features"] = timed("features", lambda: attackers.features(outs, ctx.splits,
                                                                        cfg["linear"]))
    if "fresh" in wanted:
        tree["fresh"], logs["fresh"] = timed("fresh", lambda: attackers.fresh(
            outs, ctx.splits, cfg["linear"]))
    if "speaker" in wanted:
        tree["speaker"] = {"spectrogram": timed("speaker", lambda: speaker.speaker_attack(
            ctx.splits["train"], ctx.splits["test"], outs["train"].spec, outs["test"].spec,
            ctx.ignorant_speaker, cfg["speaker"], batch_size))}
    if any(a in tree for a in ("informed", "linear", "features")):
        tree["strongest"], logs["strongest"] = attackers.strongest(tree)
    print(f"[eval]   {name}: " + ", ".join(f"{k} {v} s" for k, v in seconds.items()),
          flush=True)
    return tree, fixed["features"], logs


def _apply(condition: Callable[[SplitData], conditions.Outputs], splits,
           names: Sequence[str] = SPLITS) -> dict:
    return {s: condition(splits[s]) for s in names}


def load_splits(data_dir: str, dataset: str, cfg: Mapping[str, Any]) -> dict[str, SplitData]:
    """The three splits; train and validation cut to repetitions < ``attack_repetitions``."""
    splits = {s: load_split(data_dir, dataset, s, int(cfg["batch_size"])) for s in SPLITS}
    keep = int(cfg.get("attack_repetitions", 0) or 0)
    if keep > 0:
        for s in ("train", "validation"):
            splits[s] = splits[s].subset(splits[s].repetition < keep)
    for name, split in splits.items():
        if len(split) == 0:
            raise EvaluationError(f"{dataset} in {data_dir}: the {name} split is empty")
    return splits


def build_context(classifiers: str, vocoder: str | None, data_dir: str, dataset: str,
                  cfg: Mapping[str, Any], out_dir: str,
                  extra: Mapping[str, conditions.WaveformTransform]) -> Context:
    """Loads the models and data, trains (or reuses) the speaker classifier and attacks the
    untransformed speech and the baselines."""
    splits = load_splits(data_dir, dataset, cfg)
    spk_cfg = cfg["speaker"]
    data_id = speaker.fingerprint(splits["train"], float(spk_cfg["holdout_fraction"]),
                                  data_dir, dataset)
    cache = os.path.join(out_dir, "speaker_classifier")
    ignorant, info = speaker.ignorant_classifier(splits["train"], spk_cfg, cache, data_id)
    ctx = Context((classifiers, vocoder, data_dir, dataset),
                  ModelSet.load(classifiers, vocoder, cfg), splits, ignorant,
                  {"checkpoint": cache, **info})
    batch_size = int(cfg["batch_size"])
    named = {"real": conditions.real,
             "vocoded_real": conditions.vocoded(ctx.models.vocoder, batch_size)}
    for name, transform in {**baseline_transforms(cfg), **extra}.items():
        named[name] = conditions.waveform_condition(transform, batch_size)
    if "digit_template" in baseline_names(cfg):
        from pcmelgan_jax.evaluation.baselines import digit_templates

        train = splits["train"]
        named["digit_template"] = conditions.digit_template(
            digit_templates(train.x, train.digit, train.gender), ctx.models.spec_digit,
            ctx.models.vocoder, int(cfg["seed"]), batch_size,
            (float(train.mean.mean()), float(train.std.mean())))
    for name, condition in named.items():
        outs = _apply(condition, splits, splits_to_attack(cfg, name))
        ctx.baselines[name], ctx.features[name], ctx.baseline_logs[name] = attack(
            outs, ctx, cfg, name)
        if name == "vocoded_real":
            ctx.examples["vocoded"] = outs["test"].audio
    return ctx


def evaluate_run(run: RunInfo, ctx: Context, cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The Filter's (and for a full run PCMelGAN's) attacks, FIDs and test outputs."""
    filt = load_network(model_dir(run.path, "filter"), "unet_filter")
    gen = None if run.filter_only else load_network(model_dir(run.path, "generator"),
                                                    "unet_generator")
    batch_size, seed = int(cfg["batch_size"]), int(cfg["seed"])
    outs: dict[str, dict] = {"filter": {}, "pcmelgan": {}}
    filter_splits = splits_to_attack(cfg, "filter")
    for s in SPLITS:
        first, second = conditions.filter_and_generator(
            filt, gen, ctx.models.vocoder, seed, batch_size, ctx.splits[s],
            vocode_filter=s in filter_splits)
        if first is not None:
            outs["filter"][s] = first
        if second is not None:
            outs["pcmelgan"][s] = second
    if cfg.get("linear_eraser") and outs["pcmelgan"]:
        outs["pcmelgan_erased"] = conditions.linearly_erased(
            outs["pcmelgan"], ctx.splits, ctx.models.vocoder, batch_size,
            float(cfg.get("eraser_shrinkage", 1e-2)))
    result: dict[str, Any] = {"attacks": {}, "fid": {}, "logs": {}, "test": {}}
    for name, by_split in outs.items():
        if not by_split:
            continue
        tree, feats, logs = attack(by_split, ctx, cfg, name)
        result["attacks"][name] = tree
        result["logs"][name] = logs
        result["fid"][name] = metrics.fid(ctx.features["real"], feats)
        result["test"][name] = by_split["test"]
    return result


def _examples(ctx: Context, run_result: Mapping[str, Any], n: int) -> dict[str, np.ndarray]:
    test = ctx.splits["test"]
    out = {"x": test.x[:n], "audio": test.clips[:n], "vocoded": ctx.examples["vocoded"][:n]}
    for name, (spec_key, audio_key) in (("filter", ("x1", "audio_filter")),
                                        ("pcmelgan", ("x2", "audio_pcmelgan"))):
        if name in run_result["test"]:
            out[spec_key] = run_result["test"][name].spec[:n]
            out[audio_key] = run_result["test"][name].audio[:n]
    return out


def group_results(eps: float | None, members: Sequence[dict], ctx: Context,
                  baselines: Mapping[str, dict], boot: Mapping[str, Any]) -> dict[str, Any]:
    """One eps group: the Filter column from the full runs' own F (a filter-only run of the
    same group is reported separately as ``filter_only``, not pooled), or from the
    filter-only runs when the group has no full run. ``baselines``: the summarised
    baselines of ``ctx``, whose untransformed and vocoded rows fill the reference entries."""
    full = [m for m in members if not m["run"].filter_only]
    only = [m for m in members if m["run"].filter_only]
    sources = {"filter": full or only, "pcmelgan": full, "filter_only": only if full else [],
               "pcmelgan_erased": [m for m in full if "pcmelgan_erased" in m["attacks"]]}
    attacks = {name: report.summarize_trees(
                   [m["attacks"]["filter" if name == "filter_only" else name] for m in ms], boot)
               for name, ms in sources.items() if ms}
    ref = {n: report.compat_entry(baselines[n]) for n in ("real", "vocoded_real")}
    out: dict[str, Any] = {
        "eps": eps, "eps_label": "unknown" if eps is None else f"{eps:g}",
        "num_runs": len(members), "runs": [m["run"].path for m in members],
        "filter_source": "pcmelgan runs' own F" if full else "filter-only runs",
    }
    for domain, keys in (("spectrogram", ("digit_acc", "gender_acc", "speaker_acc")),
                         ("audio", ("digit_acc", "gender_acc"))):
        entry = {n: {k: ref[n][domain].get(k, EMPTY) for k in keys} for n in ref}
        entry["vocoded_real"].pop("speaker_acc", None)
        for name in ("filter", "pcmelgan"):
            compat = report.compat_entry(attacks[name])[domain] if name in attacks else {}
            wanted = (*keys, "sampled_gender_acc") if name == "pcmelgan" else keys
            entry[name] = {k: compat.get(k, EMPTY) for k in wanted}
        out[domain] = entry
    out["fid"] = {name: metrics.summarize([m["fid"][name] for m in sources[name]])
                  for name in ("filter", "pcmelgan")}
    out["fid"]["vocoded_real"] = metrics.summarize(
        [metrics.fid(ctx.features["real"], ctx.features["vocoded_real"])])
    out["attacks"] = attacks
    return out


def _config_dict(config: Any) -> dict[str, Any]:
    from pcmelgan_jax.configs.eval import get_config as default_config

    given = config.to_dict() if hasattr(config, "to_dict") else dict(config or {})
    merged = default_config().to_dict()
    for key, value in given.items():
        merged[key] = {**merged[key], **value} if isinstance(merged.get(key), dict) else value
    return merged


def _context_paths(cfg: Mapping[str, Any], workdir: str) -> tuple:
    """Classifiers, vocoder (None for Griffin-Lim), data and dataset of a baselines-only
    evaluation."""
    found = []
    for field, name in (("classifiers_workdir", "classifiers"), ("vocoder_workdir", "vocoder"),
                        ("data_dir", "data")):
        if name == "vocoder" and vocoder_kind(cfg) == "griffin_lim":
            found.append(None)
            continue
        path = existing_path([cfg.get(field), os.path.join(workdir, name)], workdir)
        if path is None:
            raise EvaluationError(f"{workdir}: no {name} found (set {field})")
        found.append(path)
    return (*found, cfg.get("dataset") or DEFAULT_DATASET)


def run_evaluation(config: Any, workdir: str | os.PathLike,
                   extra_conditions: Mapping[str, conditions.WaveformTransform] | None = None,
                   ) -> dict[str, Any]:
    """Evaluates the runs of ``config`` (see ``configs/eval.py``; ``runs = "none"``: the
    baselines only); ``extra_conditions`` are further waveform anonymisers attacked beside
    the baselines. Writes ``OUT`` and returns the content of ``results.json``."""
    t0 = time.perf_counter()
    cfg = _config_dict(config)
    workdir = os.path.abspath(os.fspath(workdir))
    out_dir = os.path.abspath(cfg.get("output_dir") or os.path.join(workdir, "eval"))
    cfg["speaker"].setdefault("seed", cfg["seed"])
    num_examples = int(cfg.get("num_examples_to_save", 4))
    boot = cfg["bootstrap"]
    baselines_only = str(cfg.get("runs")).strip().lower() == "none"
    runs = [] if baselines_only else [resolve_run(p, workdir, cfg)
                                      for p in find_runs(cfg.get("runs"), workdir)]
    if vocoder_kind(cfg) == "griffin_lim":  # bad vocoder settings fail before any work
        load_vocoder(cfg, None)
    os.makedirs(out_dir, exist_ok=True)
    contexts: dict[tuple, Context] = {}

    def context(key: tuple) -> Context:
        if key not in contexts:
            print(f"[eval] data {key[2]} ({key[3]}): real speech and baselines", flush=True)
            contexts[key] = build_context(*key, cfg, out_dir, extra_conditions or {})
        return contexts[key]

    first_key = ((runs[0].classifiers_workdir, runs[0].vocoder_workdir, runs[0].data_dir,
                  runs[0].dataset) if runs else _context_paths(cfg, workdir))
    first = context(first_key)
    per_run = []
    for idx, run in enumerate(runs):
        print(f"[eval] run {idx + 1}/{len(runs)}: {run.path} (eps {run.eps}"
              f"{', filter only' if run.filter_only else ''})", flush=True)
        ctx = context((run.classifiers_workdir, run.vocoder_workdir, run.data_dir, run.dataset))
        result = evaluate_run(run, ctx, cfg)
        if num_examples:
            report.save_examples(_examples(ctx, result, num_examples),
                                 os.path.join(out_dir, "examples", f"{idx:02d}_{run.name}"))
        per_run.append({"run": run, "ctx": ctx, **result})
    results = assemble(cfg, runs, per_run, first, out_dir, boot)
    results["seconds"] = round(time.perf_counter() - t0, 2)
    results = _json_ready(results)
    write_text_atomic(os.path.join(out_dir, "results.json"), json.dumps(results, indent=1))
    write_text_atomic(os.path.join(out_dir, "tables.md"), report.markdown_tables(results))
    report.plot_privacy_utility(results, os.path.join(out_dir, "privacy_utility.png"))
    print(report.markdown_tables(results), flush=True)
    print(f"[eval] wrote {out_dir} ({results['seconds']} s)", flush=True)
    return results


def assemble(cfg: Mapping[str, Any], runs: Sequence[RunInfo], per_run: Sequence[dict],
             first: Context, out_dir: str, boot: Mapping[str, Any]) -> dict[str, Any]:
    """The content of ``results.json`` (without ``seconds``)."""
    summaries: dict[tuple, dict] = {}

    def summarized(ctx: Context) -> dict[str, dict]:
        """The summarised baselines of a context, bootstrapped once."""
        if ctx.paths not in summaries:
            summaries[ctx.paths] = {n: report.summarize_trees([t], boot)
                                    for n, t in ctx.baselines.items()}
        return summaries[ctx.paths]

    baselines = summarized(first)
    reference = {domain: {n: {k: v["mean"] for k, v in baselines[n]["fixed"][domain].items()}
                          for n in ("real", "vocoded_real")} for domain in ("spectrogram",
                                                                             "audio")}
    reference["features_real"] = first.features["real"]
    warnings = [f"{first.paths[0]}: {w}" for w in report.reference_warnings(reference)]
    vocoder_name = first.paths[1] or "griffin-lim"
    warnings += [f"{vocoder_name}: {w}" for w in report.vocoder_warnings(reference)]
    warnings += report.attacker_warnings({a: {d: {k: v["mean"] for k, v in vals.items()}
                                              for d, vals in baselines["real"].get(a, {}).items()}
                                          for a in ("informed", "features")})
    groups = []
    for eps in sorted({r.eps for r in runs}, key=lambda e: (e is None, e or 0.0)):
        members = [m for m in per_run if m["run"].eps == eps]
        ctx = members[0]["ctx"]
        groups.append(group_results(eps, members, ctx, summarized(ctx), boot))
    warnings += report.floor_warnings({"baselines": baselines, "groups": groups})
    for w in warnings:
        print(f"[eval] WARNING: {w}", flush=True)
    head = groups[0] if groups else {}
    spk = first.speaker_info
    test = first.splits["test"]
    return {
        "eps": head.get("eps"), "spectrogram": head.get("spectrogram"),
        "audio": head.get("audio"), "fid": head.get("fid"), "attacks": head.get("attacks"),
        "groups": groups, "baselines": baselines, "baseline_logs": first.baseline_logs,
        "runs": [run_entry(m) for m in per_run],
        "speaker": {"num_speakers": len(spk.get("speakers", [])), **spk},
        "test": {"num_utterances": len(test), "speakers": sorted(set(test.speaker.tolist()))},
        "warnings": warnings, "config": cfg, "output_dir": out_dir,
    }


def run_entry(member: Mapping[str, Any]) -> dict[str, Any]:
    """One run's numbers in results.json: the original protocol's entries per domain and
    condition, every attacker's accuracies, FIDs and the attackers' training logs."""
    attacks = {n: report.leaf_values(t) for n, t in member["attacks"].items()}
    entry: dict[str, Any] = {"run": dataclasses.asdict(member["run"]),
                             "spectrogram": {}, "audio": {}}
    for name, tree in attacks.items():
        for domain, values in report.compat_entry(tree).items():
            entry[domain][name] = values
    return {**entry, "fid": member["fid"], "attacks": attacks, "logs": member["logs"]}


def _json_ready(obj: Any) -> Any:
    import math

    if isinstance(obj, Mapping):
        return {str(k): _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_ready(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _json_ready(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
