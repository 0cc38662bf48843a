"""Summaries over runs with bootstrap intervals, warnings, ``tables.md`` and the plots.

A summarised number is ``{"mean", "std", "runs", "low", "high"}``: the mean and sample std
over the runs of a group, each run's value, and the 95 % bootstrap interval (over runs,
test speakers within gender and their utterances; ``None`` for the EER and FID).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pcmelgan_jax import audio as audio_lib
from pcmelgan_jax import metrics
from pcmelgan_jax.evaluation.attackers import Scores
from pcmelgan_jax.evaluation.intervals import bootstrap_accuracy
from pcmelgan_jax.workdir import atomic_path

CHANCE_MARGIN = 0.05  # a fixed classifier within this of chance on real data is "at chance"
TASK_CLASSES = (("digit", 10), ("gender", 2))  # the fixed classifiers' tasks and class counts
STRONG_ENOUGH = 0.9  # an informed attacker below this gender accuracy on real speech is weak

# Rows of the attacker tables: baselines first, then the runs' conditions.
CONDITION_LABELS = {"real": "untransformed", "vocoded_real": "vocoded original",
                    "mcadams": "McAdams (0.8)", "pitch_shift": "pitch shift (gender flip)",
                    "digit_template": "digit template (recognised digit, sampled gender)",
                    "filter": "Filter", "pcmelgan": "PCMelGAN",
                    "filter_only": "Filter (filter-only runs)",
                    "pcmelgan_erased": "PCMelGAN + linear eraser fitted on the training speakers"}
ATTACKER_TITLES = {
    "fixed": "Fixed classifiers (ignorant attacker: trained on real speech)",
    "informed": "Informed attacker (same architectures retrained on anonymised speech)",
    "linear": "Linear attacker (logistic regression on the log-mel grid)",
    "features": "Feature attacker (median F0 and MFCC statistics, logistic regression)",
    "fresh": "Fresh-speaker attacker (the linear attacker trained on the validation speakers, "
             "whom the anonymiser never saw)",
    "strongest": "Strongest learned attacker (per cell, the one best on the validation speakers)",
}


# ------------------------------------------------------------------ summaries


def leaf_values(tree: Mapping[str, Any]) -> dict[str, Any]:
    """A per-run tree with every ``Scores`` replaced by its accuracy."""
    return {k: leaf_values(v) if isinstance(v, Mapping) else
            (v.accuracy if isinstance(v, Scores) else v) for k, v in tree.items()}


def _summary(leaves: Sequence[Any], boot: Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(leaves[0], Scores):
        out = metrics.summarize([s.accuracy for s in leaves])
        correct = np.stack([s.correct for s in leaves])
        interval = bootstrap_accuracy(
            correct if len(leaves) > 1 else correct[0], speakers=leaves[0].speakers,
            strata=leaves[0].strata, num_resamples=int(boot["num_resamples"]),
            level=float(boot["level"]), seed=int(boot["seed"]))
        return {**out, "low": interval["low"], "high": interval["high"]}
    return {**metrics.summarize(list(leaves)), "low": None, "high": None}


def summarize_trees(trees: Sequence[Mapping[str, Any]], boot: Mapping[str, Any]) -> dict:
    """Per-run trees of ``Scores`` / floats -> one tree of summarised numbers (a leaf over
    the runs that have it)."""
    keys = list(dict.fromkeys(k for t in trees for k in t))
    out: dict[str, Any] = {}
    for key in keys:
        present = [t[key] for t in trees if key in t]
        if isinstance(present[0], Mapping):
            out[key] = summarize_trees(present, boot)
        else:
            out[key] = _summary(present, boot)
    return out


def compat_entry(attacks: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The original protocol's entry of one condition: the fixed classifiers per domain,
    and the ignorant re-identification as the spectrogram's ``speaker_acc``."""
    out = {domain: dict(values) for domain, values in attacks.get("fixed", {}).items()}
    reid = attacks.get("speaker", {}).get("spectrogram", {}).get("reid_ignorant_acc")
    if reid is not None:
        out.setdefault("spectrogram", {})["speaker_acc"] = reid
    return out


# ------------------------------------------------------------------ warnings


def _at_chance(acc: float, classes: int) -> bool:
    """Accuracy within ``CHANCE_MARGIN`` of chance (1 / classes)."""
    return acc < 1.0 / classes + CHANCE_MARGIN


def reference_warnings(reference: Mapping[str, Any]) -> list[str]:
    """What makes numbers of the reference meaningless: a fixed classifier within
    ``CHANCE_MARGIN`` of chance (10 % digit, 50 % gender) on untransformed test data,
    whose accuracies then say nothing of the transformed data; digit AudioNet features that
    are constant over the real test audio (a dead network), which make every FID 0."""
    out = []
    for domain, net in (("spectrogram", "AlexNet"), ("audio", "AudioNet")):
        for task, classes in TASK_CLASSES:
            acc = reference[domain]["real"][f"{task}_acc"]
            if acc is not None and _at_chance(acc, classes):
                out.append(
                    f"the {domain} {task} classifier ({net}) is at chance on untransformed test "
                    f"data ({100 * acc:.1f} %, chance {100 / classes:.0f} %): its {domain}-domain "
                    f"{task} accuracies carry no information; retrain it"
                )
    features = np.asarray(reference["features_real"])
    if features.shape[0] > 1 and not np.any(np.ptp(features, axis=0) > 0):
        out.append("the digit AudioNet's features are the same for every real test clip: "
                   "every FID is 0 and carries no information")
    return out


def vocoder_warnings(reference: Mapping[str, Any]) -> list[str]:
    """An AudioNet that recognises the original test clips (above ``CHANCE_MARGIN`` of
    chance) but is within it of chance on their vocoded copies: the vocoder loses what that
    classifier needs, so the runs' audio-domain accuracies of that task measure the vocoder."""
    out = []
    for task, classes in TASK_CLASSES:
        real = reference["audio"]["real"][f"{task}_acc"]
        vocoded = reference["audio"]["vocoded_real"][f"{task}_acc"]
        if (real is not None and vocoded is not None and not _at_chance(real, classes)
                and _at_chance(vocoded, classes)):
            out.append(
                f"the {task} AudioNet recognises {100 * real:.1f} % of the original test clips "
                f"but {100 * vocoded:.1f} % of their vocoded copies (chance {100 / classes:.0f} "
                f"%): the vocoder loses the {task}, so the audio-domain {task} accuracies of "
                "Filter and PCMelGAN carry no information; train the vocoder longer"
            )
    return out


def attacker_warnings(real: Mapping[str, Any]) -> list[str]:
    """Informed and feature attackers below ``STRONG_ENOUGH`` gender accuracy on the real
    test speakers: too weak for their accuracies on anonymised speech to mean much."""
    out = []
    for attacker in ("informed", "features"):
        for domain, values in real.get(attacker, {}).items():
            acc = values.get("gender_acc")
            if acc is not None and acc < STRONG_ENOUGH:
                out.append(
                    f"the {attacker} attacker ({domain}) recognises the gender of only "
                    f"{100 * acc:.1f} % of the real test clips (< {100 * STRONG_ENOUGH:.0f} %): "
                    "it is too weak for its accuracies on anonymised speech to show privacy; "
                    "train it longer"
                )
    return out


def floor_warnings(results: Mapping[str, Any]) -> list[str]:
    """Conditions where the informed attacker finds the gender less often than the linear
    one's interval allows: it is undertrained there, and the linear (or strongest) row is
    the one to read."""
    out = []
    for _, label, attacks in condition_rows(results):
        for domain, values in attacks.get("informed", {}).items():
            informed = values.get("gender_acc") or {}
            floor = attacks.get("linear", {}).get(domain, {}).get("gender_acc") or {}
            if (informed.get("mean") is not None and floor.get("low") is not None
                    and informed["mean"] < floor["low"]):
                out.append(
                    f"{label}, {domain}: the informed attacker finds the gender in "
                    f"{100 * informed['mean']:.1f} % of the test clips, below the linear "
                    f"attacker's interval ({fmt(floor)}): it is undertrained there; read the "
                    "linear or strongest attacker's row")
    return out


# ------------------------------------------------------------------ tables


def fmt(value: Mapping[str, Any] | None, percent: bool = True) -> str:
    """``mean [low, high]`` (``mean ± std [low, high]`` over several runs), '-' if absent."""
    if not value or value.get("mean") is None:
        return "-"
    scale, digits = (100, 1) if percent else (1, 3)
    text = f"{scale * value['mean']:.{digits}f}"
    if len(value.get("runs", [])) > 1:
        text += f" ± {scale * (value['std'] or 0.0):.{digits}f}"
    if value.get("low") is not None:
        text += f" [{scale * value['low']:.{digits}f}, {scale * value['high']:.{digits}f}]"
    return text


def condition_rows(results: Mapping[str, Any]) -> list[tuple[str, str, Mapping[str, Any]]]:
    """(condition, row label, its attacks) for the baselines, then every eps group."""
    rows = [(name, CONDITION_LABELS.get(name, name), attacks)
            for name, attacks in results.get("baselines", {}).items()]
    for g in results["groups"]:
        for name in ("filter", "pcmelgan", "filter_only", "pcmelgan_erased"):
            if name in g.get("attacks", {}):
                rows.append((name, f"{CONDITION_LABELS[name]}, eps {g['eps_label']}",
                             g["attacks"][name]))
    return rows


def _attacker_table(rows, attacker: str) -> list[str]:
    domains = ("audio",) if attacker == "features" else ("spectrogram", "audio")
    head = [f"gender {d}" for d in domains] + [f"digit {d}" for d in domains]
    lines = [f"## {ATTACKER_TITLES[attacker]}", "", "| data | " + " | ".join(head) + " |",
             "|---|" + "---:|" * len(head)]
    for _, label, attacks in rows:
        a = attacks.get(attacker, {})
        cells = [fmt(a.get(d, {}).get(f"{t}_acc")) for t in ("gender", "digit") for d in domains]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines + [""]


def markdown_tables(results: Mapping[str, Any]) -> str:
    """``tables.md``: the original protocol's tables, then one table per attacker."""
    groups = results["groups"]
    lines = ["# PCMelGAN evaluation", ""]
    runs_note = ", ".join(f"eps {g['eps_label']}: {g['num_runs']} run(s)" for g in groups)
    lines += [f"Runs: {runs_note or 'none (baselines only)'}. Accuracies in % on the test "
              "speakers, `mean [95 % interval]` (`mean ± std [interval]` over several runs; "
              "the interval resamples runs, speakers within gender and their utterances); "
              "gender against the original gender (50 is chance: lower is not more private, "
              "an attacker can flip its answer).", ""]
    cfg = results.get("config") or {}
    if cfg.get("vocoder") == "griffin_lim":
        lines += [f"Audio domain: spectrograms vocoded by Griffin-Lim "
                  f"({cfg.get('griffin_lim_iterations')} iterations, training-free).", ""]
    lines += [f"**Warning:** {w}." for w in results.get("warnings", [])]
    if results.get("warnings"):
        lines.append("")
    titles = {"spectrogram": "Spectrogram-domain classifiers (AlexNet)",
              "audio": "Audio-domain classifiers (vocoded, AudioNet)"}
    for domain, title in titles.items():
        if not groups:
            break
        lines += [f"## {title} (the original protocol)", "",
                  "| eps | gender Filter | gender PCMelGAN | digit Filter | digit PCMelGAN |",
                  "|---|---:|---:|---:|---:|"]
        for g in groups:
            d = g[domain]
            lines.append(
                f"| {g['eps_label']} | {fmt(d['filter']['gender_acc'])} "
                f"| {fmt(d['pcmelgan']['gender_acc'])} | {fmt(d['filter']['digit_acc'])} "
                f"| {fmt(d['pcmelgan']['digit_acc'])} |")
        lines += ["", "Reference rows and the sampled gender (PCMelGAN output against s'):", "",
                  "| data | gender | digit |", "|---|---:|---:|"]
        ref = groups[0][domain]
        for name, label in (("real", "untransformed"), ("vocoded_real", "vocoded original")):
            lines.append(f"| {label} | {fmt(ref[name]['gender_acc'])} "
                         f"| {fmt(ref[name]['digit_acc'])} |")
        for g in groups:
            lines.append(f"| PCMelGAN eps {g['eps_label']}, sampled gender "
                         f"| {fmt(g[domain]['pcmelgan']['sampled_gender_acc'])} | |")
        lines.append("")
    rows = condition_rows(results)
    for attacker in ATTACKER_TITLES:
        lines += _attacker_table(rows, attacker)
    lines += speaker_table(rows, results.get("speaker", {}).get("num_speakers"))
    if groups:
        lines += ["## FID (digit AudioNet features, against real test audio)", "",
                  "| eps | Filter | PCMelGAN |", "|---|---:|---:|"]
        for g in groups:
            lines.append(f"| {g['eps_label']} | {fmt(g['fid']['filter'], False)} "
                         f"| {fmt(g['fid']['pcmelgan'], False)} |")
        lines.append(f"| vocoded original | {fmt(groups[0]['fid']['vocoded_real'], False)} | |")
    return "\n".join(lines) + "\n"


def speaker_table(rows, num_speakers: int | None) -> list[str]:
    lines = ["## Speakers: re-identification (held-out repetitions of training speakers) and "
             "verification EER (test speakers)", "",
             "| data | re-id ignorant | re-id informed | EER ignorant | EER informed |",
             "|---|---:|---:|---:|---:|"]
    for _, label, attacks in rows:
        s = attacks.get("speaker", {}).get("spectrogram", {})
        lines.append(f"| {label} | {fmt(s.get('reid_ignorant_acc'))} "
                     f"| {fmt(s.get('reid_informed_acc'))} | {fmt(s.get('eer_ignorant'))} "
                     f"| {fmt(s.get('eer_informed'))} |")
    if num_speakers:
        lines.append(f"\nRe-identification chance: {100 / num_speakers:.1f} % ({num_speakers} "
                     "speakers); EER 50 % means no information.")
    return lines + [""]


# ------------------------------------------------------------------ figures and examples


def plot_privacy_utility(results: Mapping[str, Any], path: str,
                         attackers: Sequence[str] = ("informed", "strongest")) -> None:
    """Privacy (an attacker's gender accuracy) against utility (its digit accuracy), one row
    per attacker, one column per domain, with interval bars: the baselines, and Filter and
    PCMelGAN per eps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(attackers), 2, figsize=(11, 4.6 * len(attackers)),
                             squeeze=False)
    styles = {"filter": ("o", "tab:blue"), "pcmelgan": ("s", "tab:orange"),
              "filter_only": ("D", "tab:cyan"), "pcmelgan_erased": ("p", "darkred")}
    others = iter(zip("*^vPXh<>", ("black", "gray", "tab:green", "tab:red", "tab:purple",
                                    "tab:brown", "tab:pink", "tab:olive"), strict=True))
    for name in results.get("baselines", {}):
        styles[name] = next(others, ("o", "gray"))

    def err(v: Mapping[str, Any]):
        return None if v.get("low") is None else [[v["mean"] - v["low"]],
                                                  [v["high"] - v["mean"]]]

    for row, attacker in zip(axes, attackers, strict=True):
        for ax, domain in zip(row, ("spectrogram", "audio"), strict=True):
            seen: set[str] = set()
            for kind, label, attacks in condition_rows(results):
                values = attacks.get(attacker, {}).get(domain, {})
                dx, dy = values.get("digit_acc") or {}, values.get("gender_acc") or {}
                if dx.get("mean") is None or dy.get("mean") is None:
                    continue
                marker, color = styles[kind]
                name = CONDITION_LABELS.get(kind, kind)
                ax.errorbar(dx["mean"], dy["mean"], xerr=err(dx), yerr=err(dy), fmt=marker,
                            color=color, capsize=3, markersize=8,
                            label=None if name in seen else name)
                seen.add(name)
                if label != name:
                    ax.annotate(label.split(", ")[-1], (dx["mean"], dy["mean"]), fontsize=8,
                                textcoords="offset points", xytext=(5, 5), color=color)
            ax.axhline(0.5, color="gray", lw=0.8, ls="--")
            ax.set(xlim=(0, 1.02), ylim=(0, 1.02), xlabel="digit accuracy (utility)",
                   ylabel="gender accuracy (privacy leak)",
                   title=f"{attacker} attacker, {domain} domain")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def save_examples(examples: Mapping[str, np.ndarray], directory: str) -> list[str]:
    """Writes example wavs (8 kHz) and a spectrogram panel PNG; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(directory, exist_ok=True)
    written = []
    n = len(examples.get("x", []))
    for i in range(n):
        for key, suffix in (("audio", "original"), ("vocoded", "vocoded"),
                            ("audio_filter", "filter"), ("audio_pcmelgan", "pcmelgan")):
            if key in examples:
                path = os.path.join(directory, f"{i:02d}_{suffix}.wav")
                audio_lib.write_audio(path, examples[key][i])
                written.append(path)
    if n:
        cols = [(k, t) for k, t in (("x", "original"), ("x1", "Filter"), ("x2", "PCMelGAN"))
                if k in examples]
        fig, axes = plt.subplots(n, len(cols), figsize=(3.2 * len(cols), 2.2 * n), squeeze=False)
        for i in range(n):
            for j, (k, title) in enumerate(cols):
                ax = axes[i, j]
                ax.imshow(examples[k][i], origin="lower", aspect="auto", vmin=-1, vmax=1,
                          cmap="magma")
                ax.set_xticks([])
                ax.set_yticks([])
                if i == 0:
                    ax.set_title(title)
        fig.tight_layout()
        path = os.path.join(directory, "spectrograms.png")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
        plt.close(fig)
        written.append(path)
    return written
