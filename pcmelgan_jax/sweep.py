"""Sweeps: one stage config expanded over a grid of field values x seeds.

    pcmelgan-jax sweep configs/sweeps/eps.py --workdir runs/sweep_eps \
        [--print] [--dry-run] [--set key=value ...] [--only NAME_GLOB] [--python PYTHON]

A sweep config file (``configs/sweeps/*.py``) has ``get_config()`` returning a ConfigDict:

- ``base``: the stage config file to expand (e.g. ``"configs/pcmelgan.py"``), relative to the
  sweep file's folder, the repository root or the current directory (first that exists);
- ``axes``: field -> list of values (dotted paths for nested fields as nested dicts), e.g.
  ``{"eps": [0.005, 0.01, 0.05, 0.1]}``; the grid is their product;
- ``seeds``: list of ints, each grid point is run once per seed (``config.seed``);
- ``overrides`` (optional): field -> value, the same for every run (like ``--config.x=y``);
- ``filter_only_baseline`` (optional, default False): also run the paper's Filter baseline
  at every grid point and seed, from ``filter_base`` (optional; default ``base`` with
  ``filter_only=True``).

Run names: ``eps0.05_seed0`` (axes in the ConfigDict's key order, then the seed) and
``filter_eps0.05_seed0`` for the baseline; each run's workdir is ``WORKDIR/<name>``. Order:
grid points in ``itertools.product`` order, within a point the PCMelGAN runs then the
baseline runs, each over ``seeds``.

``--print`` prints one shell-quoted ``python train.py --config BASE --workdir WORKDIR/NAME
--config.x=y ...`` line per run (for ``xargs`` or a job array) and exits. Otherwise the runs
train one after another in this process (``pcmelgan_jax.training.train``), skipping runs whose
``final_metrics.json`` exists and continuing past failures; ``WORKDIR/sweep.json`` records
every run's status and the command that evaluates the sweep is printed at the end. Every
run's config is built and type-checked before anything runs.
"""

from __future__ import annotations

import ast
import dataclasses
import datetime
import fnmatch
import importlib.util
import itertools
import json
import os
import shlex
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

SWEEP_FIELDS = ("base", "filter_base", "axes", "seeds", "overrides", "filter_only_baseline")
SWEEP_JSON = "sweep.json"
FINAL_METRICS = "final_metrics.json"
# Statuses in sweep.json.
PENDING, RUNNING, DONE, SKIPPED, FAILED = "pending", "running", "done", "skipped", "failed"
INTERRUPTED, NOT_SELECTED = "interrupted", "not selected"


class SweepError(ValueError):
    """A sweep config, override or run selection that cannot be expanded; says what and where."""


# --------------------------------------------------------------------------- config files


def load_config_file(path: str | os.PathLike) -> Any:
    """Imports a config file and returns its ``get_config()`` (a ConfigDict)."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.isfile(path):
        raise SweepError(f"config file {path} does not exist")
    name = f"_pcmelgan_config_{abs(hash(path))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise SweepError(f"{path}: cannot be imported as a Python config file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, "get_config", None)):
        raise SweepError(f"{path}: has no get_config() function")
    return module.get_config()


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


def _config_path():
    from ml_collections.config_flags import config_path

    return config_path


def set_field(config: Any, field: str, value: Any) -> None:
    """``config.<field> = value`` with ConfigDict's type checking; KeyError if no such field."""
    cp = _config_path()
    cp.get_value(field, config)  # raises KeyError / AttributeError for an unknown field
    cp.set_value(field, config, value)


def parse_field_value(config: Any, field: str, text: str) -> Any:
    """Parses ``text`` for ``config.<field>`` as ``--config.<field>=text`` would (by the field's
    current type: bool, int, float, str, tuple; anything else as a Python literal)."""
    from absl import flags
    from ml_collections.config_flags import tuple_parser

    kind = _config_path().get_type(field, config)
    parsers: dict[type, Any] = {
        bool: flags.BooleanParser(), int: flags.IntegerParser(), float: flags.FloatParser(),
        tuple: tuple_parser.TupleParser(),
    }
    if kind is str:
        return text
    if kind in parsers:
        return parsers[kind].parse(text)
    try:
        return ast.literal_eval(text)
    except (SyntaxError, ValueError):
        return text


def format_flag_value(value: Any) -> str:
    """A value as written after ``--config.x=`` (parsed back by ml_collections' config flags)."""
    if isinstance(value, bool | int | float):
        return repr(value)
    if isinstance(value, list):
        value = tuple(value)
    if isinstance(value, tuple):
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


# --------------------------------------------------------------------------- sweep spec


@dataclasses.dataclass(frozen=True)
class SweepSpec:
    """A loaded sweep config with its files resolved (absolute paths) and overrides flat."""

    sweep_file: str  # as given, for messages
    base: str
    filter_base: str | None
    axes: tuple[tuple[str, tuple[Any, ...]], ...]  # (dotted field, values), in grid order
    seeds: tuple[int, ...]
    overrides: dict[str, Any]  # dotted field -> value (sweep file, then --set)
    override_sources: dict[str, str]  # field -> "overrides" or "--set"
    filter_only_baseline: bool


def _resolve_file(value: str, sweep_dir: str | None, sweep_file: str, what: str) -> str:
    value = os.path.expanduser(os.fspath(value))
    if os.path.isabs(value):
        candidates = [value]
    else:
        from pcmelgan_jax.repo import PACKAGE_DIR

        bases = [sweep_dir, str(PACKAGE_DIR.parent), os.getcwd()]
        candidates = [os.path.join(b, value) for b in dict.fromkeys(b for b in bases if b)]
    for c in candidates:
        if os.path.isfile(c):
            return os.path.abspath(c)
    raise SweepError(
        f"{sweep_file}: {what}: config file {value!r} not found (looked for "
        + ", ".join(os.path.abspath(c) for c in candidates) + ")"
    )


def load_sweep(
    sweep_config: str | os.PathLike | Mapping[str, Any] | Any, sets: Sequence[str] = ()
) -> SweepSpec:
    """Reads a sweep config (a file path or a ConfigDict / mapping) and the ``--set key=value``
    strings (fixed overrides, parsed by the base config's field types). Raises ``SweepError``."""
    if isinstance(sweep_config, str | os.PathLike):
        sweep_file = os.fspath(sweep_config)
        if not os.path.isfile(sweep_file):
            raise SweepError(f"sweep config {sweep_file!r} does not exist")
        cfg = load_config_file(sweep_file)
        sweep_dir: str | None = os.path.dirname(os.path.abspath(sweep_file))
    else:
        sweep_file, cfg, sweep_dir = "<sweep config>", sweep_config, None
    keys = list(cfg.keys())
    unknown = [k for k in keys if k not in SWEEP_FIELDS]
    if unknown:
        raise SweepError(f"{sweep_file}: unknown sweep field(s) {unknown}; expected {SWEEP_FIELDS}")
    for required in ("base", "axes", "seeds"):
        if required not in keys:
            raise SweepError(f"{sweep_file}: missing sweep field {required!r}")
    base = _resolve_file(cfg["base"], sweep_dir, sweep_file, "base")
    filter_base = cfg.get("filter_base") or None
    if filter_base:
        filter_base = _resolve_file(filter_base, sweep_dir, sweep_file, "filter_base")
    axes = []
    for field, values in flatten(cfg["axes"] or {}).items():
        if isinstance(values, str) or not isinstance(values, Sequence) or not len(values):
            raise SweepError(f"{sweep_file}: axes: {field!r} needs a non-empty list of values")
        if len(set(map(repr, values))) != len(values):
            raise SweepError(f"{sweep_file}: axes: {field!r} has repeated values {list(values)}")
        axes.append((field, tuple(values)))
    seeds = cfg["seeds"]
    if isinstance(seeds, int):
        seeds = [seeds]
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise SweepError(f"{sweep_file}: seeds must be a non-empty list of ints, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise SweepError(f"{sweep_file}: seeds has repeats: {list(seeds)}")
    overrides = flatten(cfg.get("overrides") or {})
    sources = dict.fromkeys(overrides, "overrides")
    if sets:
        base_cfg = load_config_file(base)
        for item in sets:
            field, sep, text = item.partition("=")
            field = field.strip()
            if field.startswith("config."):
                field = field[len("config."):]
            if not sep or not field:
                raise SweepError(f"--set {item!r}: expected key=value")
            try:
                overrides[field] = parse_field_value(base_cfg, field, text)
            except (KeyError, AttributeError) as e:
                raise SweepError(
                    f"--set {item}: {field!r} is not a field of {_display(base)}"
                ) from e
            except ValueError as e:
                raise SweepError(f"--set {item}: {e}") from e
            sources[field] = "--set"
    axis_fields = {f for f, _ in axes}
    for field in ("seed", *overrides):
        if field in axis_fields:
            what = "seeds" if field == "seed" else f"{sources[field]} too"
            raise SweepError(f"{sweep_file}: field {field!r} is an axis and set by {what}")
    if "seed" in overrides:
        raise SweepError(f"{sweep_file}: {sources['seed']}: set seeds with the `seeds` field")
    return SweepSpec(
        sweep_file=sweep_file, base=base, filter_base=filter_base, axes=tuple(axes),
        seeds=tuple(int(s) for s in seeds), overrides=overrides, override_sources=sources,
        filter_only_baseline=bool(cfg.get("filter_only_baseline", False)),
    )


# --------------------------------------------------------------------------- runs


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run of a sweep."""

    name: str  # e.g. "eps0.05_seed0", "filter_eps0.05_seed0"
    workdir: str  # WORKDIR/<name> (as WORKDIR was given)
    config_file: str  # absolute path of the stage config file
    overrides: dict[str, Any]  # dotted field -> value, applied in order
    point: dict[str, Any] = dataclasses.field(default_factory=dict)  # the grid point
    seed: int = 0
    baseline: bool = False  # the Filter-only baseline

    def argv(self, python: str | None = None, train_script: str = "train.py") -> list[str]:
        """``[python, train.py, --config, FILE, --workdir, DIR, --config.x=y, ...]``."""
        return [
            python or sys.executable, train_script, "--config", _display(self.config_file),
            "--workdir", self.workdir,
            *(f"--config.{k}={format_flag_value(v)}" for k, v in self.overrides.items()),
        ]

    def command(self, python: str | None = None, train_script: str = "train.py") -> str:
        """The shell-quoted command line that trains this run."""
        return shlex.join(self.argv(python, train_script))


def build_config(
    run: Run, label: str = "<sweep config>", sources: Mapping[str, str] | None = None
) -> Any:
    """The run's stage config: ``get_config()`` of its file plus its overrides (type-checked,
    as ``--config.x=y`` would be), locked. Raises ``SweepError`` naming ``label`` and the field."""
    config = load_config_file(run.config_file)
    sources = sources or {}
    for field, value in run.overrides.items():
        where = sources.get(field, "axes")
        try:
            set_field(config, field, value)
        except (KeyError, AttributeError) as e:
            raise SweepError(
                f"{label}: {where}: {field!r} is not a field of {_display(run.config_file)}"
            ) from e
        except (TypeError, ValueError) as e:
            raise SweepError(f"{label}: {where}: {field}={value!r}: {e}") from e
    if hasattr(config, "lock"):
        config.lock()
    return config


def expand_sweep(
    sweep_config: str | os.PathLike | Mapping[str, Any] | SweepSpec | Any,
    workdir: str | os.PathLike,
    sets: Sequence[str] = (),
) -> list[Run]:
    """The runs of a sweep (see the module docstring for names and order).

    ``sweep_config``: a sweep config file, a ConfigDict / mapping or a ``SweepSpec``;
    ``sets``: ``key=value`` fixed overrides. Every run's config is built and type-checked
    here, so an unknown field or a bad value raises ``SweepError`` before anything runs.
    """
    spec = sweep_config if isinstance(sweep_config, SweepSpec) else load_sweep(sweep_config, sets)
    workdir = os.fspath(workdir)
    fields = [f for f, _ in spec.axes]
    kinds: list[tuple[bool, str, dict[str, Any]]] = [(False, spec.base, {})]
    if spec.filter_only_baseline:
        if spec.filter_base:
            kinds.append((True, spec.filter_base, {}))
        else:
            kinds.append((True, spec.base, {"filter_only": True}))
    runs: list[Run] = []
    for values in itertools.product(*(v for _, v in spec.axes)):
        point = dict(zip(fields, values, strict=True))
        stem = "_".join(f"{f}{_name_value(v)}" for f, v in point.items())
        for baseline, config_file, extra in kinds:
            for seed in spec.seeds:
                name = "_".join(p for p in ("filter" if baseline else "", stem, f"seed{seed}") if p)
                runs.append(Run(
                    name=name, workdir=os.path.join(workdir, name), config_file=config_file,
                    overrides={**spec.overrides, **extra, **point, "seed": seed},
                    point=point, seed=seed, baseline=baseline,
                ))
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise SweepError(f"{spec.sweep_file}: axis values give repeated run names {dup}")
    sources = {**spec.override_sources, "filter_only": "filter_only_baseline", "seed": "seeds"}
    for run in runs:
        build_config(run, spec.sweep_file, sources)
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


def is_done(run: Run) -> bool:
    """True when the run finished before (its ``final_metrics.json`` exists)."""
    return os.path.isfile(os.path.join(run.workdir, FINAL_METRICS))


# --------------------------------------------------------------------------- commands


@dataclasses.dataclass(frozen=True)
class Scripts:
    """How the printed commands call Python and the repository's scripts."""

    python: str
    train: str  # train.py
    eval: str  # eval.py
    eval_config: str  # configs/eval.py


def find_scripts(python: str | None = None, strict: bool = False) -> Scripts:
    """``train.py`` / ``eval.py`` / ``configs/eval.py`` of the checkout (shown relative to the
    current directory when below it). ``strict``: raise ``RepoRootError`` when absent, else
    fall back to the bare names."""
    from pcmelgan_jax.repo import RepoRootError, repo_root

    try:
        root = repo_root("train.py", "eval.py", "configs/eval.py")
        paths = [_display(root / p) for p in ("train.py", "eval.py", "configs/eval.py")]
    except RepoRootError:
        if strict:
            raise
        paths = ["train.py", "eval.py", "configs/eval.py"]
    return Scripts(python or sys.executable, *paths)


def eval_commands(runs: Sequence[Run], workdir: str | os.PathLike, scripts: Scripts) -> list[str]:
    """The ``eval.py`` command(s) for the sweep's runs.

    ``eval.py`` groups runs by their ``config.json`` eps, so a sweep whose only axis is eps
    (with or without the Filter baseline) is one evaluation of ``--config.runs=WORKDIR`` (a
    folder standing for the runs one level down; ``WORKDIR/*`` would also match
    ``sweep.json``, which is no run). Any other axis gives one evaluation per value of the
    other axes, listing its runs and writing to ``WORKDIR/eval_<point>``.
    """
    workdir = os.fspath(workdir)
    head = [scripts.python, scripts.eval, "--config", scripts.eval_config, "--workdir", workdir]
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


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Writes JSON to a temporary file in the same folder, then ``os.replace``s it."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, default=repr)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def _default_train(config: Any, workdir: str) -> Any:
    """Trains one stage in this process (``pcmelgan_jax.training.train``)."""
    from absl import logging

    from pcmelgan_jax.training import train

    logging.set_verbosity(logging.WARNING)  # as train.py: Orbax logs every save at INFO
    return train(config, workdir)


def run_sweep(
    spec: SweepSpec,
    runs: Sequence[Run],
    workdir: str | os.PathLike,
    selected: Sequence[Run] | None = None,
    train_fn: Callable[[Any, str], Any] | None = None,
    scripts: Scripts | None = None,
    out: TextIO | None = None,
) -> dict[str, Any]:
    """Trains the ``selected`` runs (default all) one after another, skipping finished ones
    and continuing past failures; keeps ``WORKDIR/sweep.json`` up to date. Returns its
    content (``runs``: name, status, workdir, command, error, seconds ...; ``counts``)."""
    out = out or sys.stdout
    train_fn = train_fn or _default_train
    scripts = scripts or find_scripts()
    selected_names = {r.name for r in (runs if selected is None else selected)}
    workdir = os.fspath(workdir)
    sources = {**spec.override_sources, "filter_only": "filter_only_baseline", "seed": "seeds"}
    entries = []
    for run in runs:
        if is_done(run):
            status = SKIPPED if run.name in selected_names else DONE
        else:
            status = PENDING if run.name in selected_names else NOT_SELECTED
        entries.append({
            "name": run.name, "status": status, "workdir": run.workdir,
            "abs_workdir": os.path.abspath(run.workdir), "baseline": run.baseline,
            "seed": run.seed, "point": run.point, "config_file": run.config_file,
            "overrides": run.overrides, "command": run.command(scripts.python, scripts.train),
            "error": None, "seconds": None, "started": None, "finished": None,
        })
    doc: dict[str, Any] = {
        "sweep_file": os.path.abspath(spec.sweep_file) if os.path.exists(spec.sweep_file)
        else spec.sweep_file,
        "workdir": os.path.abspath(workdir), "base": spec.base, "filter_base": spec.filter_base,
        "axes": {f: list(v) for f, v in spec.axes}, "seeds": list(spec.seeds),
        "overrides": spec.overrides, "filter_only_baseline": spec.filter_only_baseline,
        "created": _now(), "updated": None,
        "eval_commands": eval_commands(runs, workdir, scripts), "runs": entries, "counts": {},
    }
    json_path = os.path.join(workdir, SWEEP_JSON)
    try:  # keep the first invocation's date
        with open(json_path, encoding="utf-8") as f:
            doc["created"] = json.load(f).get("created") or doc["created"]
    except (OSError, ValueError, AttributeError):
        pass

    def save() -> None:
        doc["updated"] = _now()
        counts: dict[str, int] = {}
        for e in entries:
            counts[e["status"]] = counts.get(e["status"], 0) + 1
        doc["counts"] = counts
        write_json_atomic(json_path, doc)

    save()
    todo = [(i, r) for i, r in enumerate(runs) if entries[i]["status"] == PENDING]
    for k, (i, run) in enumerate(todo):
        entry = entries[i]
        print(f"[sweep] {k + 1}/{len(todo)} {run.name}: {entry['command']}", file=out, flush=True)
        entry.update(status=RUNNING, started=_now())
        save()
        t0 = time.perf_counter()
        try:
            config = build_config(run, spec.sweep_file, sources)
            train_fn(config, run.workdir)
        except Exception as e:  # a failed run must not stop the sweep
            traceback.print_exc()
            entry.update(status=FAILED, error=f"{type(e).__name__}: {e}")
            print(f"[sweep] {run.name} FAILED: {entry['error']}", file=out, flush=True)
        except BaseException:
            entry.update(status=INTERRUPTED, error="interrupted",
                         seconds=round(time.perf_counter() - t0, 1), finished=_now())
            save()
            raise
        else:
            entry["status"] = DONE
        entry.update(seconds=round(time.perf_counter() - t0, 1), finished=_now())
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
            lines.append(f"  FAILED {e['name']}: {e['error']}")
    lines.append("[sweep] evaluate with:")
    lines += [f"  {c}" for c in doc["eval_commands"]]
    return "\n".join(lines)


# --------------------------------------------------------------------------- command line


def _run(args) -> int:
    from pcmelgan_jax.repo import RepoRootError

    try:
        spec = load_sweep(args.config, args.set or ())
        runs = expand_sweep(spec, args.workdir)
        selected = select_runs(runs, args.only)
        scripts = find_scripts(args.python, strict=args.print)
    except (SweepError, RepoRootError) as e:
        print(f"pcmelgan-jax sweep: error: {e}", file=sys.stderr)
        return 2
    if args.print:
        for run in selected:
            print(run.command(scripts.python, scripts.train))
        print("# then evaluate with:", file=sys.stderr)
        for c in eval_commands(selected, args.workdir, scripts):
            print(f"#   {c}", file=sys.stderr)
        return 0
    if args.dry_run:
        for run in selected:
            state = "skip (finished)" if is_done(run) else "run"
            print(f"{run.name}: {state}: {run.command(scripts.python, scripts.train)}")
        print(f"{len(selected)} of {len(runs)} runs selected; nothing was run (--dry-run); "
              "evaluate afterwards with:")
        for c in eval_commands(runs, args.workdir, scripts):
            print(f"  {c}")
        return 0
    doc = run_sweep(spec, runs, args.workdir, selected, scripts=scripts)
    print(summary(doc), flush=True)
    return 1 if doc["counts"].get(FAILED, 0) else 0


def add_parser(subparsers) -> None:
    """Registers ``sweep``."""
    p = subparsers.add_parser(
        "sweep",
        help="expand a sweep config (grid x seeds) and train its runs, or print their commands",
        description=(
            "Expands a sweep config (configs/sweeps/*.py: base, axes, seeds, overrides, "
            "filter_only_baseline) into runs WORKDIR/<name>. --print prints one train.py "
            "command line per run (for a scheduler); otherwise the runs train one after another "
            "here, finished runs (final_metrics.json) are skipped, failures do not stop the "
            "sweep, WORKDIR/sweep.json records the statuses, and the eval command is printed."
        ),
    )
    p.add_argument("config", metavar="CONFIG", help="sweep config file, e.g. configs/sweeps/eps.py")
    p.add_argument("--workdir", required=True, help="sweep folder; run i goes to WORKDIR/<name>")
    p.add_argument("--print", action="store_true",
                   help="print one shell command per run and exit (nothing is run)")
    p.add_argument("--dry-run", action="store_true",
                   help="check everything and list what would run or be skipped")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="fixed override of the stage config, as --config.KEY=VALUE (repeatable)")
    p.add_argument("--only", action="append", metavar="NAME_GLOB",
                   help="only the runs whose name matches (fnmatch; repeatable, comma-separated)")
    p.add_argument("--python", default=None,
                   help="Python executable in printed commands (default: this interpreter)")
    p.set_defaults(func=_run)


__all__ = [
    "Run", "SweepError", "SweepSpec", "build_config", "eval_commands", "expand_sweep",
    "find_scripts", "load_sweep", "run_sweep", "select_runs", "summary", "write_json_atomic",
]
