"""One benchmark in two checkouts, alternating: is a change faster or slower?

    python -m bench.compare_trees OLD_CHECKOUT NEW_CHECKOUT --rounds 2 \
        --out bench/results/compare_train.json -- bench.bench_train --no-torch --batch-sizes 16

Each round runs ``python -m MODULE ARGS --out FILE`` once in each checkout (fresh processes;
the order alternates per round, so both see the same background load) and collects every
JAX-side ``median_ms`` / ``median_s`` of FILE's JSON. Prints a table of the medians over
rounds and new / old; writes them and every round's value as JSON. Both checkouts run with
this interpreter, each from its own root (``PYTHONPATH`` first), so each imports its own
package.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

from pcmelgan_jax.workdir import write_json_atomic

TIMING_KEYS = ("median_ms", "median_s")
ROW_NAMES = ("stage", "network", "name", "batch_size")  # fields that name a result row


def timings(obj: Any, path: str = "") -> Iterator[tuple[str, float]]:
    """``(path, value)`` of every timing leaf; rows are named by their ``ROW_NAMES`` fields and
    PyTorch sides (a path naming torch) are left out."""
    if isinstance(obj, dict):
        row = ",".join(f"{k}={obj[k]}" for k in ROW_NAMES if isinstance(obj.get(k), str | int))
        prefix = f"{path}/{row}" if row else path
        for key, value in obj.items():
            yield from timings(value, f"{prefix}/{key}")
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            has_name = isinstance(value, dict) and any(k in value for k in ROW_NAMES)
            yield from timings(value, path if has_name else f"{path}[{i}]")
    elif isinstance(obj, int | float) and path.rsplit("/", 1)[-1] in TIMING_KEYS:
        if "torch" not in path.lower():
            yield path, float(obj)


def run_once(checkout: str, module: str, args: list[str]) -> dict[str, float]:
    """One run of the benchmark in ``checkout``: its timings."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        env = dict(os.environ, PYTHONPATH=checkout)
        subprocess.run([sys.executable, "-m", module, *args, "--out", out], cwd=checkout,
                       env=env, check=True, stdout=subprocess.DEVNULL)
        with open(out) as f:
            return dict(timings(json.load(f)))


def compare(runs: dict[str, list[dict[str, float]]]) -> list[dict]:
    """Rows ``{key, old, new, new_over_old, old_all, new_all}`` for the keys both sides have."""
    def values(side: str, key: str) -> list[float]:
        return [r[key] for r in runs[side] if key in r]

    keys = set().union(*runs["old"]) & set().union(*runs["new"])
    rows = []
    for key in sorted(keys):
        old, new = statistics.median(values("old", key)), statistics.median(values("new", key))
        rows.append({"key": key, "old": old, "new": new, "new_over_old": new / old,
                     "old_all": values("old", key), "new_all": values("new", key)})
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| timing | old | new | new / old |", "|---|---:|---:|---:|"]
    lines += [f"| {r['key']} | {r['old']:.4g} | {r['new']:.4g} | {r['new_over_old']:.3f} |"
              for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                usage="%(prog)s OLD NEW [--rounds N] [--out F] -- MODULE [ARGS]")
    p.add_argument("old", help="the reference checkout")
    p.add_argument("new", help="the checkout under test")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", default="bench/results/compare.json")
    argv = sys.argv[1:] if argv is None else list(argv)
    split = argv.index("--") if "--" in argv else len(argv)
    args, bench = p.parse_args(argv[:split]), argv[split + 1:]
    if not bench:
        p.error("name the benchmark after --, e.g. -- bench.bench_train --no-torch")
    module, bench_args = bench[0], bench[1:]
    checkouts = {"old": os.path.abspath(args.old), "new": os.path.abspath(args.new)}
    runs: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
    for r in range(args.rounds):
        for side in ("old", "new") if r % 2 == 0 else ("new", "old"):
            runs[side].append(run_once(checkouts[side], module, bench_args))
            print(f"round {r}: {side} done", file=sys.stderr, flush=True)
    rows = compare(runs)
    write_json_atomic(args.out, {"module": module, "args": bench_args, "rounds": args.rounds,
                                 "checkouts": checkouts, "rows": rows})
    print(markdown(rows))


if __name__ == "__main__":
    main()
