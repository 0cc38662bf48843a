"""Sweeps: one stage config expanded over a grid of field values x seeds.

    pcmelgan-jax sweep configs/sweeps/eps.py --workdir runs/sweep_eps \
        [--print] [--dry-run] [--config.FIELD=VALUE ...] [--only NAME_GLOB] [--python PYTHON] \
        [--seeds-per-run K] [--jobs N]

A sweep config file (``configs/sweeps/*.py``) has ``get_config()`` returning a ConfigDict:

- ``base``: the stage config to expand, ``PATH[:VARIANTS]`` (e.g. ``"configs/pcmelgan.py:small"``),
  relative to the sweep file's folder or the current directory, else the package's configs;
- ``axes``: field -> list of values (dotted paths for nested fields as nested dicts), e.g.
  ``{"eps": [0.005, 0.01, 0.05, 0.1]}``; the grid is their product;
- ``seeds``: list of ints, each grid point is run once per seed (``config.seed``);
- ``seeds_per_run`` (optional, default 1; ``--seeds-per-run`` overrides it): K > 1 packs up to
  K consecutive seeds of a grid point into one run (``seed`` its first seed, ``num_seeds`` the
  count): one program trains them together (``training.seeds``) and writes each seed's run
  folder to ``RUN/seed_<S>``, which the evaluation counts as a run of its own;
- ``overrides`` (optional): field -> value, the same for every run (as ``--config.x=y``, which
  on the command line adds to them); ``seed`` and ``num_seeds`` come from the two fields above;
- ``filter_only_baseline`` (optional, default False): also run the paper's Filter baseline
  at every grid point and seed, from ``filter_base`` (optional; default ``base`` with
  ``filter_only=True``).

Run names: ``eps0.05_seed0`` (axes in the ConfigDict's key order, then the seed),
``eps0.05_seeds0-1`` for a run of seeds 0 and 1, and ``filter_eps0.05_seed0`` ... for the
baseline; each run's workdir is ``WORKDIR/<name>``. Seeds are packed in the order listed, a
run taking consecutive integers only (seeds [0, 1, 2] with K = 2: ``seeds0-1`` and ``seed2``).
Order: grid points in ``itertools.product`` order, within a point the PCMelGAN runs then the
baseline runs, each over the seeds.

``--print`` prints one shell-quoted ``pcmelgan-jax train --config BASE --workdir WORKDIR/NAME
--config.x=y ...`` line per run (for ``xargs`` or a job array) and exits. Otherwise the runs
train, skipping runs whose ``final_metrics.json`` exists and continuing past failures;
``WORKDIR/sweep.json`` (written by this process only, atomically) records every run's status
and the ``pcmelgan-jax eval`` command that evaluates the sweep is printed at the end. Every
run's config is built and type-checked before anything runs.

``--jobs 1`` (the default) trains the runs one after another in this process
(``commands.train_stage``). ``--jobs N`` runs up to N at once, each as a child process running
the command ``--print`` shows (with ``--python`` or this interpreter), its output in
``RUN/train.log``, on its own share of the machine: GPUs through ``CUDA_VISIBLE_DEVICES``
(more jobs than GPUs share them, each with ``XLA_PYTHON_CLIENT_MEM_FRACTION`` of the memory),
TPU chips through ``TPU_VISIBLE_CHIPS`` with the process bounds and a mesh-controller port of
its own, CPU cores through the child's affinity mask; no JAX backend starts here (it would
hold the devices the jobs need). A failed job does not stop the others; Ctrl-C (or SIGTERM)
interrupts the running jobs and marks them ``interrupted``. The mechanics: the device kind
and each job's share in ``pcmelgan_jax.runtime.job_devices``, the child processes with their
logs, failures and interruption in ``pcmelgan_jax.jobs``.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import itertools
import os
import shlex
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

from pcmelgan_jax import workdir as run_folder
from pcmelgan_jax.config_files import (
    OVERRIDE_PREFIX,
    ConfigError,
    load_config,
    override,
    parse_overrides,
    resolve_config_file,
)
from pcmelgan_jax.jobs import DONE, FAILED, INTERRUPTED, RUNNING, JobSpec, run_jobs, timestamp
from pcmelgan_jax.runtime.job_devices import DeviceSplitError, Slot, job_slots

SWEEP_FIELDS = ("base", "filter_base", "axes", "seeds", "seeds_per_run", "overrides",
                "filter_only_baseline")
SWEEP_JSON = "sweep.json"
JOB_LOG = "train.log"  # --jobs N: a job's stdout and stderr, in its run folder
COMMAND_LINE = "--config"  # the source of command-line overrides, in messages
# Statuses in sweep.json, besides the jobs' RUNNING, DONE, FAILED and INTERRUPTED.
PENDING, SKIPPED, NOT_SELECTED = "pending", "skipped", "not selected"


class SweepError(ValueError):
    """A sweep config, override or run selection that cannot be expanded; says what and where."""


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as ``{"a.b": value}``; values that are not mappings are leaves."""
    out: dict[str, Any] = {}
    for key in tree.keys():
        value = tree[key]
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) or hasattr(value, "to_dict"):
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


def format_flag_value(value: Any) -> str:
    """A value as written after ``--config.x=`` (parsed back by ``parse_value``)."""
    if isinstance(value, list):
        value = tuple(value)
    if isinstance(value, bool | int | float | tuple):
        return repr(value)
    return str(value)


def _name_value(value: Any) -> str:
    """A value as it appears in a run name: 0.05 -> "0.05", 100.0 -> "100", (8, 2) -> "8-2"."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        text = repr(value)
        return text[:-2] if text.endswith(".0") else text
    if isinstance(value, list | tuple):
        return "-".join(_name_value(v) for v in value)
    text = str(value)
    return "".join(c if c.isalnum() or c in ".+-" else "-" for c in text)


def _display(path: str | os.PathLike) -> str:
    """``path`` relative to the current directory when it lies below it, else absolute."""
    path = os.path.abspath(os.fspath(path))
    cwd = os.getcwd()
    if path == cwd or path.startswith(cwd.rstrip(os.sep) + os.sep):
        return os.path.relpath(path, cwd)
    return path


def _display_spec(spec: str) -> str:
    """``PATH[:VARIANTS]`` with PATH shown as ``_display`` does."""
    path, colon, variants = spec.partition(":")
    return _display(path) + colon + variants


# --------------------------------------------------------------------------- sweep spec


@dataclasses.dataclass(frozen=True)
class SweepSpec:
    """A loaded sweep config with its stage configs resolved and its overrides flat."""

    sweep_file: str  # as given, for messages
    base: str  # absolute PATH[:VARIANTS]
    filter_base: str | None
    axes: tuple[tuple[str, tuple[Any, ...]], ...]  # (dotted field, values), in grid order
    seeds: tuple[int, ...]
    overrides: dict[str, Any]  # dotted field -> value (sweep file, then command line)
    override_sources: dict[str, str]  # field -> "overrides" or "--config"
    filter_only_baseline: bool
    seeds_per_run: int = 1  # K > 1: up to K consecutive seeds per run (num_seeds)


def _resolve_spec(value: str, sweep_dir: str | None, sweep_file: str, what: str) -> str:
    """A stage config ``PATH[:VARIANTS]`` with PATH absolute: below the sweep file's folder,
    else as ``config_files.resolve_config_file`` finds it."""
    path, colon, variants = os.fspath(value).partition(":")
    beside = os.path.join(sweep_dir, path) if sweep_dir else None
    try:
        found = beside if beside and os.path.isfile(beside) else resolve_config_file(path)
    except ConfigError as e:
        raise SweepError(f"{sweep_file}: {what}: {e}") from None
    return os.path.abspath(found) + colon + variants


def _read_sweep_file(sweep_config: Any) -> tuple[str, Any, str | None]:
    """(name for messages, sweep ConfigDict, folder of the file or None)."""
    if not isinstance(sweep_config, str | os.PathLike):
        return "<sweep config>", sweep_config, None
    sweep_file = os.fspath(sweep_config)
    try:
        path = resolve_config_file(sweep_file)
        return sweep_file, load_config(path), os.path.dirname(path)
    except ConfigError as e:
        raise SweepError(f"sweep config: {e}") from None


def _axes(cfg: Any, sweep_file: str) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    axes = []
    for field, values in flatten(cfg["axes"] or {}).items():
        if isinstance(values, str) or not isinstance(values, Sequence) or not len(values):
            raise SweepError(f"{sweep_file}: axes: {field!r} needs a non-empty list of values")
        if len(set(map(repr, values))) != len(values):
            raise SweepError(f"{sweep_file}: axes: {field!r} has repeated values {list(values)}")
        axes.append((field, tuple(values)))
    return tuple(axes)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _seeds_per_run(value: Any, where: str) -> int:
    if not _is_int(value) or value < 1:
        raise SweepError(f"{where}: seeds_per_run must be an int >= 1, got {value!r}")
    return int(value)


def _seeds(cfg: Any, sweep_file: str) -> tuple[int, ...]:
    seeds = cfg["seeds"]
    if isinstance(seeds, int):
        seeds = [seeds]
    if not seeds or not all(_is_int(s) for s in seeds):
        raise SweepError(f"{sweep_file}: seeds must be a non-empty list of ints, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise SweepError(f"{sweep_file}: seeds has repeats: {list(seeds)}")
    return tuple(int(s) for s in seeds)


def _command_line_overrides(base: str, args: Sequence[str]) -> dict[str, Any]:
    """``--config.FIELD=VALUE`` arguments, typed by the base config's fields."""
    from ml_collections.config_flags import config_path

    if not args:
        return {}
    base_config = load_config(base)
    out = {}
    for field, text in parse_overrides(args).items():
        override(base_config, field, text, _display_spec(base), f"{OVERRIDE_PREFIX}{field}")
        out[field] = config_path.get_value(field, base_config)
    return out


def load_sweep(
    sweep_config: str | os.PathLike | Mapping[str, Any] | Any,
    overrides: Sequence[str] = (),
    seeds_per_run: int | None = None,
) -> SweepSpec:
    """Reads a sweep config (a file path or a ConfigDict / mapping), the command line's
    ``--config.FIELD=VALUE`` ``overrides`` (typed by the base config) and ``--seeds-per-run``
    (None: the file's ``seeds_per_run``, else 1). Raises ``SweepError``."""
    sweep_file, cfg, sweep_dir = _read_sweep_file(sweep_config)
    keys = list(cfg.keys())
    unknown = [k for k in keys if k not in SWEEP_FIELDS]
    if unknown:
        raise SweepError(f"{sweep_file}: unknown sweep field(s) {unknown}; expected {SWEEP_FIELDS}")
    for required in ("base", "axes", "seeds"):
        if required not in keys:
            raise SweepError(f"{sweep_file}: missing sweep field {required!r}")
    base = _resolve_spec(cfg["base"], sweep_dir, sweep_file, "base")
    filter_base = cfg.get("filter_base") or None
    if filter_base:
        filter_base = _resolve_spec(filter_base, sweep_dir, sweep_file, "filter_base")
    axes = _axes(cfg, sweep_file)
    fixed = flatten(cfg.get("overrides") or {})
    sources = dict.fromkeys(fixed, "overrides")
    try:
        from_command_line = _command_line_overrides(base, overrides)
    except ConfigError as e:
        raise SweepError(str(e)) from None
    fixed.update(from_command_line)
    sources.update(dict.fromkeys(from_command_line, COMMAND_LINE))
    axis_fields = {f for f, _ in axes}
    for field in ("seed", *fixed):
        if field in axis_fields:
            what = "seeds" if field == "seed" else f"{sources[field]} too"
            raise SweepError(f"{sweep_file}: field {field!r} is an axis and set by {what}")
    if "seed" in fixed:
        raise SweepError(f"{sweep_file}: {sources['seed']}: set seeds with the `seeds` field")
    if "num_seeds" in fixed:
        raise SweepError(f"{sweep_file}: {sources['num_seeds']}: set num_seeds with "
                         "`seeds_per_run` or --seeds-per-run")
    if seeds_per_run is None:
        per_run = _seeds_per_run(cfg.get("seeds_per_run", 1), sweep_file)
    else:
        per_run = _seeds_per_run(seeds_per_run, "--seeds-per-run")
    return SweepSpec(
        sweep_file=sweep_file, base=base, filter_base=filter_base, axes=axes,
        seeds=_seeds(cfg, sweep_file), overrides=fixed, override_sources=sources,
        filter_only_baseline=bool(cfg.get("filter_only_baseline", False)),
        seeds_per_run=per_run,
    )


# --------------------------------------------------------------------------- runs


def launcher(python: str | None = None) -> list[str]:
    """How printed commands call the package: ``pcmelgan-jax`` or ``PYTHON -m pcmelgan_jax.cli``."""
    return [python, "-m", "pcmelgan_jax.cli"] if python else ["pcmelgan-jax"]


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run of a sweep."""

    name: str  # e.g. "eps0.05_seed0", "filter_eps0.05_seed0"
    workdir: str  # WORKDIR/<name> (as WORKDIR was given)
    config: str  # the stage config, absolute PATH[:VARIANTS]
    overrides: dict[str, Any]  # dotted field -> value, applied in order
    point: dict[str, Any] = dataclasses.field(default_factory=dict)  # the grid point
    seed: int = 0  # the first seed
    baseline: bool = False  # the Filter-only baseline
    seeds: tuple[int, ...] = ()  # every seed the run trains (num_seeds > 1: several)

    def seed_runs(self) -> list[str]:
        """The run folders of the run's seeds: ``WORKDIR/<name>/seed_<S>`` for several
        seeds, else the workdir itself."""
        if len(self.seeds) > 1:
            return [run_folder.seed_dir(self.workdir, s) for s in self.seeds]
        return [self.workdir]

    def argv(self, python: str | None = None) -> list[str]:
        """``[pcmelgan-jax, train, --config, SPEC, --workdir, DIR, --config.x=y, ...]``."""
        return [
            *launcher(python), "train", "--config", _display_spec(self.config),
            "--workdir", self.workdir,
            *(f"{OVERRIDE_PREFIX}{k}={format_flag_value(v)}" for k, v in self.overrides.items()),
        ]

    def command(self, python: str | None = None) -> str:
        """The shell-quoted command line that trains this run."""
        return shlex.join(self.argv(python))


def build_config(
    run: Run, label: str = "<sweep config>", sources: Mapping[str, str] | None = None
) -> Any:
    """The run's stage config with its overrides (type-checked as ``--config.x=y``), locked.
    Raises ``SweepError`` naming ``label``, what set the field and the field."""
    try:
        config = load_config(run.config)
        for field, value in run.overrides.items():
            where = f"{label}: {(sources or {}).get(field, 'axes')}"
            override(config, field, value, _display_spec(run.config), where)
    except ConfigError as e:
        raise SweepError(str(e)) from None
    config.lock()
    return config


def _run_kinds(spec: SweepSpec) -> list[tuple[bool, str, dict[str, Any]]]:
    """(baseline, stage config, extra overrides) of the runs at each grid point and seed."""
    kinds: list[tuple[bool, str, dict[str, Any]]] = [(False, spec.base, {})]
    if spec.filter_only_baseline:
        if spec.filter_base:
            kinds.append((True, spec.filter_base, {}))
        else:
            kinds.append((True, spec.base, {"filter_only": True}))
    return kinds


def _sources(spec: SweepSpec) -> dict[str, str]:
    return {**spec.override_sources, "filter_only": "filter_only_baseline", "seed": "seeds",
            "num_seeds": "seeds_per_run"}


def seed_chunks(seeds: Sequence[int], per_run: int) -> list[tuple[int, ...]]:
    """``seeds`` in order, cut into runs of at most ``per_run`` consecutive integers (a run
    with ``num_seeds`` N trains the seeds ``seed .. seed + N - 1``)."""
    chunks: list[list[int]] = []
    for seed in seeds:
        last = chunks[-1] if chunks else None
        if last is not None and len(last) < per_run and seed == last[-1] + 1:
            last.append(seed)
        else:
            chunks.append([seed])
    return [tuple(c) for c in chunks]


def _seed_label(chunk: Sequence[int]) -> str:
    """``seed3`` for one seed, ``seeds3-4`` for the seeds 3 and 4."""
    return f"seed{chunk[0]}" if len(chunk) == 1 else f"seeds{chunk[0]}-{chunk[-1]}"


def expand_sweep(
    sweep_config: str | os.PathLike | Mapping[str, Any] | SweepSpec | Any,
    workdir: str | os.PathLike,
    overrides: Sequence[str] = (),
    seeds_per_run: int | None = None,
) -> list[Run]:
    """The runs of a sweep (see the module docstring for names and order).

    ``sweep_config``: a sweep config file, a ConfigDict / mapping or a ``SweepSpec``;
    ``overrides``: ``--config.FIELD=VALUE`` arguments; ``seeds_per_run``: as
    ``--seeds-per-run`` (ignored with a ``SweepSpec``). Every run's config is built and
    type-checked here, so an unknown field or a bad value raises ``SweepError`` before
    anything runs.
    """
    spec = sweep_config if isinstance(sweep_config, SweepSpec) else load_sweep(
        sweep_config, overrides, seeds_per_run)
    workdir = os.fspath(workdir)
    fields = [f for f, _ in spec.axes]
    runs: list[Run] = []
    for values in itertools.product(*(v for _, v in spec.axes)):
        point = dict(zip(fields, values, strict=True))
        stem = "_".join(f"{f}{_name_value(v)}" for f, v in point.items())
        for baseline, config, extra in _run_kinds(spec):
            for chunk in seed_chunks(spec.seeds, spec.seeds_per_run):
                name = "_".join(p for p in ("filter" if baseline else "", stem,
                                            _seed_label(chunk)) if p)
                packed = {"num_seeds": len(chunk)} if len(chunk) > 1 else {}
                runs.append(Run(
                    name=name, workdir=os.path.join(workdir, name), config=config,
                    overrides={**spec.overrides, **extra, **point, "seed": chunk[0], **packed},
                    point=point, seed=chunk[0], baseline=baseline, seeds=chunk,
                ))
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise SweepError(f"{spec.sweep_file}: axis values give repeated run names {dup}")
    for run in runs:
        build_config(run, spec.sweep_file, _sources(spec))
    return runs


def select_runs(runs: Sequence[Run], patterns: Sequence[str] | None) -> list[Run]:
    """The runs whose name matches any of the globs (comma-separated allowed); all if none."""
    globs = [g.strip() for p in patterns or () for g in p.split(",") if g.strip()]
    if not globs:
        return list(runs)
    chosen = [r for r in runs if any(fnmatch.fnmatchcase(r.name, g) for g in globs)]
    if not chosen:
        raise SweepError(f"--only {','.join(globs)} matches none of {[r.name for r in runs]}")
    return chosen


def eval_commands(
    runs: Sequence[Run], workdir: str | os.PathLike, python: str | None = None
) -> list[str]:
    """The ``pcmelgan-jax eval`` command(s) for the sweep's runs.

    The evaluation groups runs by their ``config.json`` eps, so a sweep whose only axis is
    eps (with or without the Filter baseline) is one evaluation of ``--config.runs=WORKDIR``
    (a folder standing for the runs one level down; ``WORKDIR/*`` would also match
    ``sweep.json``, which is no run). Any other axis gives one evaluation per value of the
    other axes, listing its runs and writing to ``WORKDIR/eval_<point>``.
    """
    workdir = os.fspath(workdir)
    head = [*launcher(python), "eval", "--workdir", workdir]
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        key = tuple((f, v) for f, v in run.point.items() if f != "eps")
        groups.setdefault(key, []).append(run)
    if list(groups) == [()]:
        return [shlex.join([*head, f"--config.runs={workdir}"])]
    out = []
    for key, members in groups.items():
        label = "_".join(f"{f}{_name_value(v)}" for f, v in key)
        out.append(shlex.join([
            *head, "--config.runs=" + ",".join(r.workdir for r in members),
            f"--config.output_dir={os.path.join(workdir, 'eval_' + label)}",
        ]))
    return out


# --------------------------------------------------------------------------- running


def _default_train(config: Any, workdir: str) -> Any:
    """Trains one stage in this process, as ``pcmelgan-jax train`` does."""
    from pcmelgan_jax.commands import train_stage

    return train_stage(config, workdir)


def _entry(run: Run, selected: bool, python: str | None) -> dict[str, Any]:
    """A run's record in sweep.json, before it runs."""
    if run_folder.is_complete(run.workdir):
        status = SKIPPED if selected else DONE
    else:
        status = PENDING if selected else NOT_SELECTED
    return {
        "name": run.name, "status": status, "workdir": run.workdir,
        "abs_workdir": os.path.abspath(run.workdir), "baseline": run.baseline,
        "seed": run.seed, "seeds": list(run.seeds), "seed_runs": run.seed_runs(),
        "point": run.point, "config": run.config,
        "overrides": run.overrides, "command": run.command(python),
        "error": None, "seconds": None, "started": None, "finished": None,
        "devices": None, "log": None, "pid": None, "exit_code": None,
    }


def _sweep_doc(spec: SweepSpec, runs: Sequence[Run], workdir: str, entries: list,
               python: str | None, jobs: int) -> dict[str, Any]:
    """The content of sweep.json (``created`` kept from an earlier invocation)."""
    sweep_file = spec.sweep_file
    previous = run_folder.read_json(os.path.join(workdir, SWEEP_JSON))
    return {
        "sweep_file": os.path.abspath(sweep_file) if os.path.exists(sweep_file) else sweep_file,
        "workdir": os.path.abspath(workdir), "base": spec.base, "filter_base": spec.filter_base,
        "axes": {f: list(v) for f, v in spec.axes}, "seeds": list(spec.seeds),
        "seeds_per_run": spec.seeds_per_run, "jobs": jobs,
        "overrides": spec.overrides, "filter_only_baseline": spec.filter_only_baseline,
        "created": previous.get("created") or timestamp(), "updated": None,
        "eval_commands": eval_commands(runs, workdir, python), "runs": entries, "counts": {},
    }


def _train_one(run: Run, entry: dict, spec: SweepSpec, train_fn: Callable,
               out: TextIO) -> None:
    """Trains ``run``, recording the outcome in ``entry``; a failure is recorded, not raised."""
    t0 = time.perf_counter()
    try:
        train_fn(build_config(run, spec.sweep_file, _sources(spec)), run.workdir)
    except Exception as e:  # a failed run must not stop the sweep
        traceback.print_exc()
        entry.update(status=FAILED, error=f"{type(e).__name__}: {e}")
        print(f"[sweep] {run.name} FAILED: {entry['error']}", file=out, flush=True)
    except BaseException:
        entry.update(status=INTERRUPTED, error="interrupted")
        raise
    else:
        entry["status"] = DONE
    finally:
        entry.update(seconds=round(time.perf_counter() - t0, 1), finished=timestamp())


def _job_slots(jobs: int) -> tuple[str, list[Slot]]:
    """``job_slots(jobs)`` with its errors as ``SweepError``."""
    try:
        return job_slots(jobs)
    except DeviceSplitError as e:
        raise SweepError(f"--jobs: {e}") from None


def _job(run: Run, entry: dict[str, Any], python: str | None) -> JobSpec:
    """``run`` as a child process: its training command (``python`` or this interpreter),
    output in ``RUN/train.log``, done when its final metrics exist; outcome to ``entry``."""
    return JobSpec(run.name, run.argv(python or sys.executable),
                   os.path.join(run.workdir, JOB_LOG), entry,
                   run_folder.final_metrics_path(run.workdir))


# --------------------------------------------------------------------------- running the sweep


def run_sweep(
    spec: SweepSpec,
    runs: Sequence[Run],
    workdir: str | os.PathLike,
    selected: Sequence[Run] | None = None,
    train_fn: Callable[[Any, str], Any] | None = None,
    python: str | None = None,
    out: TextIO | None = None,
    jobs: int = 1,
    slots: Sequence[Slot] | None = None,
) -> dict[str, Any]:
    """Trains the ``selected`` runs (default all), skipping finished ones and continuing past
    failures; keeps ``WORKDIR/sweep.json`` up to date. ``jobs`` 1: one after another in this
    process (``train_fn``, default ``commands.train_stage``); more: that many child processes
    at once on the ``slots`` (default ``job_slots(jobs)``). Returns sweep.json's content
    (``runs``: name, status, workdir, command, error, seconds, devices, log ...; ``counts``)."""
    out = out or sys.stdout
    train_fn = train_fn or _default_train
    selected_names = {r.name for r in (runs if selected is None else selected)}
    workdir = os.fspath(workdir)
    entries = [_entry(run, run.name in selected_names, python) for run in runs]
    doc = _sweep_doc(spec, runs, workdir, entries, python, jobs)

    def save() -> None:
        doc["updated"] = timestamp()
        counts: dict[str, int] = {}
        for e in entries:
            counts[e["status"]] = counts.get(e["status"], 0) + 1
        doc["counts"] = counts
        run_folder.write_json_atomic(os.path.join(workdir, SWEEP_JSON), doc)

    todo = [(i, r) for i, r in enumerate(runs) if entries[i]["status"] == PENDING]
    if jobs > 1:
        if slots is None:
            kind, slots = _job_slots(jobs)
            print(f"[sweep] {len(todo)} run(s), up to {len(slots)} at once on {kind}: "
                  + "; ".join(s.label for s in slots), file=out, flush=True)
        doc["job_slots"] = [s.label for s in slots]
        save()
        run_jobs([_job(run, entries[i], python) for i, run in todo], slots, save, out)
        return doc
    save()
    for k, (i, run) in enumerate(todo):
        entry = entries[i]
        print(f"[sweep] {k + 1}/{len(todo)} {run.name}: {entry['command']}", file=out, flush=True)
        entry.update(status=RUNNING, started=timestamp())
        save()
        try:
            _train_one(run, entry, spec, train_fn, out)
        finally:
            save()
    return doc


def summary(doc: Mapping[str, Any]) -> str:
    """A few lines: counts, the failed runs with their errors, the evaluation command(s)."""
    counts = doc["counts"]
    order = (DONE, SKIPPED, FAILED, INTERRUPTED, PENDING, NOT_SELECTED)
    parts = [f"{counts.get(s, 0)} {s}" for s in order if counts.get(s, 0) or s in (DONE, FAILED)]
    lines = [f"[sweep] {len(doc['runs'])} runs in {doc['workdir']}: " + ", ".join(parts)
             + f" (skipped = finished before; details in {SWEEP_JSON})"]
    for e in doc["runs"]:
        if e["status"] == FAILED:
            log = f" (log {e['log']})" if e.get("log") else ""
            lines.append(f"  FAILED {e['name']}: {e['error']}{log}")
    lines.append("[sweep] evaluate with:")
    lines += [f"  {c}" for c in doc["eval_commands"]]
    return "\n".join(lines)


# --------------------------------------------------------------------------- command line


def _print_commands(runs: Sequence[Run], selected: Sequence[Run], workdir: str,
                    python: str | None, dry_run: bool) -> None:
    """``--print``: one command per run on stdout; ``--dry-run``: what would run or skip."""
    if not dry_run:
        for run in selected:
            print(run.command(python))
        print("# then evaluate with:", file=sys.stderr)
        for c in eval_commands(selected, workdir, python):
            print(f"#   {c}", file=sys.stderr)
        return
    for run in selected:
        state = "skip (finished)" if run_folder.is_complete(run.workdir) else "run"
        print(f"{run.name}: {state}: {run.command(python)}")
    print(f"{len(selected)} of {len(runs)} runs selected; nothing was run (--dry-run); "
          "evaluate afterwards with:")
    for c in eval_commands(runs, workdir, python):
        print(f"  {c}")


def _seeds_of_name(name: str) -> tuple[str, set[int]]:
    """``"eps0.1_seeds0-1"`` -> ("eps0.1", {0, 1}); ("", set()) for another name."""
    stem, sep, label = name.rpartition("_seed")
    first, _, last = label.removeprefix("s").partition("-")
    if not sep or not first.isdigit() or not (last or first).isdigit():
        return "", set()
    return stem, set(range(int(first), int(last or first) + 1))


def other_packings(runs: Sequence[Run], workdir: str | os.PathLike) -> list[str]:
    """Folders of ``workdir`` that hold seeds of the sweep's runs under another name (another
    ``--seeds-per-run``: ``eps0.1_seed0`` beside ``eps0.1_seeds0-1``): an evaluation of the
    whole folder would count those seeds twice."""
    workdir = os.fspath(workdir)
    names = {r.name for r in runs}
    seeds: dict[str, set[int]] = {}
    for run in runs:
        stem, run_seeds = _seeds_of_name(run.name)
        seeds.setdefault(stem, set()).update(run_seeds)
    found = []
    for d in sorted(os.listdir(workdir)) if os.path.isdir(workdir) else ():
        stem, dir_seeds = _seeds_of_name(d)
        if d not in names and dir_seeds & seeds.get(stem, set()) and os.path.isdir(
                os.path.join(workdir, d)):
            found.append(d)
    return found


def _run(args) -> int:
    try:
        spec = load_sweep(args.config, args.overrides, args.seeds_per_run)
        runs = expand_sweep(spec, args.workdir)
        selected = select_runs(runs, args.only)
        slots = _job_slots(args.jobs) if args.jobs > 1 and not args.print else None
    except SweepError as e:
        print(f"pcmelgan-jax sweep: error: {e}", file=sys.stderr)
        return 2
    if args.print or args.dry_run:
        _print_commands(runs, selected, args.workdir, args.python, args.dry_run)
        if slots and args.dry_run:
            print(f"--jobs {args.jobs}: up to {len(slots[1])} at once on {slots[0]}: "
                  + "; ".join(s.label for s in slots[1]))
        return 0
    others = other_packings(runs, args.workdir)
    if others:
        print(f"[sweep] warning: {args.workdir} also holds {', '.join(others)}: the same "
              "seeds under another --seeds-per-run; evaluating the whole folder counts them "
              "twice (name the runs in --config.runs instead)", file=sys.stderr, flush=True)
    if slots:
        print(f"[sweep] up to {len(slots[1])} jobs at once on {slots[0]}: "
              + "; ".join(s.label for s in slots[1]), flush=True)
    try:
        doc = run_sweep(spec, runs, args.workdir, selected, python=args.python,
                        jobs=args.jobs, slots=slots[1] if slots else None)
    except KeyboardInterrupt:
        print(f"[sweep] interrupted; {os.path.join(args.workdir, SWEEP_JSON)} records which "
              "runs finished; run the same command again to continue", file=sys.stderr,
              flush=True)
        return 130
    print(summary(doc), flush=True)
    return 1 if doc["counts"].get(FAILED, 0) else 0


def _at_least_one(text: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {text!r}")
    return value


def add_parser(subparsers) -> None:
    """Registers ``sweep`` (``--config.FIELD=VALUE`` arguments: see cli.main)."""
    p = subparsers.add_parser(
        "sweep",
        help="expand a sweep config (grid x seeds) and train its runs, or print their commands",
        description=(
            "Expands a sweep config (configs/sweeps/*.py: base, axes, seeds, seeds_per_run, "
            "overrides, filter_only_baseline) into runs WORKDIR/<name>. --config.FIELD=VALUE "
            "sets a field of every run's stage config. --print prints one `pcmelgan-jax train` "
            "command line per run (for a scheduler); otherwise the runs train (one after "
            "another here, or --jobs N at once in child processes on disjoint devices), "
            "finished runs (final_metrics.json) are skipped, failures do not stop the sweep, "
            "WORKDIR/sweep.json records the statuses, and the eval command is printed."
        ),
    )
    p.add_argument("config", metavar="CONFIG", help="sweep config file, e.g. configs/sweeps/eps.py")
    p.add_argument("--workdir", required=True, help="sweep folder; run i goes to WORKDIR/<name>")
    p.add_argument("--print", action="store_true",
                   help="print one shell command per run and exit (nothing is run)")
    p.add_argument("--dry-run", action="store_true",
                   help="check everything and list what would run or be skipped")
    p.add_argument("--only", action="append", metavar="NAME_GLOB",
                   help="only the runs whose name matches (fnmatch; repeatable, comma-separated)")
    p.add_argument("--python", default=None,
                   help="printed commands (and --jobs' child processes) run PYTHON -m "
                        "pcmelgan_jax.cli instead of pcmelgan-jax (this interpreter)")
    p.add_argument("--seeds-per-run", type=_at_least_one, default=None, metavar="K",
                   help="pack up to K consecutive seeds of a grid point into one run trained "
                        "as one program (num_seeds=K), named e.g. eps0.05_seeds0-1, each seed's "
                        "outputs in RUN/seed_<S> (default: the sweep file's seeds_per_run, 1)")
    p.add_argument("--jobs", type=_at_least_one, default=1, metavar="N",
                   help="train up to N runs at once, each a child process on its own GPUs "
                        "(CUDA_VISIBLE_DEVICES), TPU chips (TPU_VISIBLE_CHIPS) or CPU cores, "
                        f"output in RUN/{JOB_LOG} (default 1: one after another in this process)")
    p.set_defaults(func=_run, overrides=[])
