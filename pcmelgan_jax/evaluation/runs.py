"""Which runs to evaluate and where their models, classifiers, vocoder and data are."""

from __future__ import annotations

import dataclasses
import glob
import os
from collections.abc import Mapping, Sequence
from typing import Any

from pcmelgan_jax.workdir import config_path, existing_path, has_model, read_json

DEFAULT_DATASET = "audio_mnist/all"


class EvaluationError(ValueError):
    """A run, workdir or model that cannot be evaluated; the message says what is missing."""


# --------------------------------------------------------------------------- runs and paths


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """One trained run: where its models are and what it was trained with."""

    path: str
    name: str  # the folder's name; ``RUN_seed_<S>`` for seed S of a multi-seed run RUN
    eps: float | None
    seed: int | None
    filter_only: bool
    classifiers_workdir: str
    vocoder_workdir: str | None  # None: the evaluation vocodes with Griffin-Lim
    data_dir: str
    dataset: str


def is_run_dir(path: str | os.PathLike) -> bool:
    """True for a PCMelGAN / Filter-only workdir (it holds ``models/filter``)."""
    return has_model(path, "filter")


def run_name(path: str | os.PathLike) -> str:
    """A run's name in reports: its folder's name, with the multi-seed run's in front for
    a seed folder (``eps0.05_seeds0-1/seed_0`` -> ``eps0.05_seeds0-1_seed_0``)."""
    folder, name = os.path.split(os.path.abspath(os.fspath(path)))
    seed = name.removeprefix("seed_")
    if seed != name and seed.isdigit() and os.path.isfile(config_path(folder)):
        return f"{os.path.basename(folder)}_{name}"
    return name


def _split_runs(runs: str | Sequence[str] | None) -> list[str]:
    if runs is None:
        return []
    if isinstance(runs, str):
        return [r.strip() for r in runs.split(",") if r.strip()]
    return [os.fspath(r) for r in runs if os.fspath(r).strip()]


def _runs_below(folder: str) -> list[str]:
    """The runs one level below ``folder``, and two levels below through sub-folders that
    are not runs (a sweep's ``RUN/seed_<S>/`` exports of ``num_seeds`` runs)."""
    if not os.path.isdir(folder):
        return []
    found = []
    for d in sorted(os.listdir(folder)):
        sub = os.path.join(folder, d)
        if is_run_dir(sub):
            found.append(sub)
        elif os.path.isdir(sub):
            found += [os.path.join(sub, e) for e in sorted(os.listdir(sub))
                      if is_run_dir(os.path.join(sub, e))]
    return found


def find_runs(runs: str | Sequence[str] | None, workdir: str | os.PathLike) -> list[str]:
    """Run workdirs from ``runs`` (paths or globs, a list or a comma string; relative to the
    current directory, else to ``workdir``). A folder that is not a run but holds runs one
    level down (or two: a sweep of ``num_seeds`` runs) stands for them. Empty ``runs``:
    ``WORKDIR/pcmelgan`` if it exists (a quickstart workdir), else ``WORKDIR``. Returns
    sorted absolute paths without duplicates.
    """
    workdir = os.path.abspath(os.fspath(workdir))
    patterns = _split_runs(runs)
    if not patterns:
        quick = os.path.join(workdir, "pcmelgan")
        patterns = [quick if os.path.isdir(quick) else workdir]
    found: list[str] = []
    for pattern in patterns:
        matches = sorted(glob.glob(os.path.expanduser(pattern)))
        if not matches and not os.path.isabs(pattern):
            matches = sorted(glob.glob(os.path.join(workdir, pattern)))
        if not matches:
            raise EvaluationError(f"runs: {pattern!r} matches nothing")
        for match in matches:
            if is_run_dir(match):
                found.append(os.path.abspath(match))
                continue
            inner = _runs_below(match)
            if not inner:
                raise EvaluationError(
                    f"{match}: not a PCMelGAN run (no models/filter) and holds no runs"
                )
            found += [os.path.abspath(p) for p in inner]
    return sorted(dict.fromkeys(found))


def resolve_run(
    path: str, workdir: str, config: Mapping[str, Any] | None = None
) -> RunInfo:
    """Reads a run's ``config.json`` and resolves its classifiers, vocoder (none when the
    evaluation ``config`` vocodes with Griffin-Lim) and data.

    Precedence: a non-empty field of the evaluation ``config`` > the run's ``config.json`` >
    ``WORKDIR/classifiers`` / ``WORKDIR/vocoder`` / ``WORKDIR/data`` > siblings of the run.
    A run without ``config.json`` (e.g. imported PyTorch checkpoints) takes ``eps`` from the
    evaluation config (None if unset).
    """
    config = dict(config or {})
    run_cfg = read_json(config_path(path))
    workdir = os.path.abspath(workdir)
    parent = os.path.dirname(path)

    def pick(field: str, fallbacks: Sequence[str]) -> str | None:
        return existing_path([config.get(field), run_cfg.get(field), *fallbacks], path)

    classifiers = pick(
        "classifiers_workdir",
        [os.path.join(workdir, "classifiers"), os.path.join(parent, "classifiers")],
    )
    griffin_lim = config.get("vocoder") == "griffin_lim"
    vocoder = None if griffin_lim else pick(
        "vocoder_workdir", [os.path.join(workdir, "vocoder"), os.path.join(parent, "vocoder")]
    )
    data_dir = pick("data_dir", [os.path.join(workdir, "data"), os.path.join(parent, "data")])
    if classifiers is None:
        raise EvaluationError(f"{path}: no classifiers workdir found (set classifiers_workdir)")
    if vocoder is None and not griffin_lim:
        raise EvaluationError(f"{path}: no vocoder workdir found (set vocoder_workdir, or "
                              "vocoder=griffin_lim)")
    if data_dir is None:
        raise EvaluationError(f"{path}: no TFDS data_dir found (set data_dir)")
    eps = run_cfg.get("eps", config.get("eps"))
    has_generator = has_model(path, "generator")
    return RunInfo(
        path=path,
        name=run_name(path),
        eps=None if eps is None else float(eps),
        seed=run_cfg.get("seed"),
        filter_only=bool(run_cfg.get("filter_only", False)) or not has_generator,
        classifiers_workdir=classifiers,
        vocoder_workdir=vocoder,
        data_dir=data_dir,
        dataset=config.get("dataset") or run_cfg.get("dataset") or DEFAULT_DATASET,
    )
