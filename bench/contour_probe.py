"""How much gender and digit the content bottleneck lets through, on REAL speech.

    .venv/bin/python -m bench.contour_probe --data-dir DIR \
        [--layout BANDS:START-STOP[@DEPTH] ...] [--digit-classifier-workdir DIR] \
        [--out bench/results/contour_probe.json]

G fed the original with ``generator_input_bands`` = k over ``generator_input_bins`` =
(start, stop) sees only the k band means of the input's mel bins [start, stop)
(``models.unet.band_means``): the band contour, k values per frame. For each layout this
probe takes that contour of the real training and validation speakers' log-mels and scores
it, training on the training speakers and testing on the validation speakers:

- ``linear_*``: the privacy probe's linear attacker (logistic regression, L2 chosen on the
  validation speakers);
- ``mlp_*``: a network with one hidden layer of 256 units (scikit-learn's MLPClassifier),
  a nonlinear reader as G is one: what it finds in the contour, G's output can carry.

With ``--digit-classifier-workdir`` (holding ``models/spec_digit``) every layout gets a
second row, ``LAYOUT+digit``: the contour and the digit the fixed spectrogram AlexNet
recognises (one-hot, the argmax only), an input that names the digit instead of carrying its
spectral shape. The first row (``80:0-80``, bands of one bin) is the untransformed log-mel.
A layout ``BANDS:START-STOP@DEPTH`` scores what G reads with ``generator_input_mask_depth``
= DEPTH: the contour's loud frames only (``models.unet.loudness_mask``), its timing without
its levels. The validation speakers only, as for every choice of a setting. Writes ``--out`` (JSON,
atomically) and prints a markdown table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from bench.privacy_probe import BATCH, linear_accuracy
from pcmelgan_jax.workdir import write_json_atomic

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_LAYOUTS = ("1:10-70", "2:0-80", "3:10-70", "4:0-80")
UNTRANSFORMED = "80:0-80"  # 80 bands of one bin: the log-mel itself, the first row
TASKS = (("gender", 2), ("digit", 10))


def parse_layout(text: str) -> tuple[int, tuple[int, int], float]:
    """"BANDS:START-STOP[@DEPTH]" -> (bands, (start, stop), mask depth, 0.0 without one);
    ValueError naming the text otherwise."""
    try:
        layout, _, depth = text.partition("@")
        bands, bins = layout.split(":")
        start, stop = bins.split("-")
        parsed = int(bands), (int(start), int(stop)), float(depth) if depth else 0.0
    except ValueError:
        raise ValueError(f"layout {text!r}: expected BANDS:START-STOP[@DEPTH], e.g. 3:10-70 "
                         "or 1:10-70@0.3") from None
    if parsed[2] < 0:
        raise ValueError(f"layout {text!r}: the mask depth must be >= 0")
    return parsed


def contour(x: np.ndarray, bands: int, bins: tuple[int, int],
            mask_depth: float = 0.0) -> np.ndarray:
    """The band contour G is fed, (N, bands, T), of log-mels ``x`` (N, F, T): one value per
    band and frame, read from ``models.unet.band_means`` itself; with ``mask_depth`` > 0 its
    loud frames (``models.unet.loudness_mask``: +1 within that depth of the peak, -1 elsewhere)."""
    import jax.numpy as jnp

    from pcmelgan_jax.models.unet import band_means, loudness_mask

    pooled = band_means(jnp.asarray(x, jnp.float32)[..., None], bands, bins)
    if mask_depth:
        pooled = loudness_mask(pooled, mask_depth)
    pooled = np.asarray(pooled)[..., 0]
    width = (bins[1] - bins[0]) // bands
    return pooled[:, bins[0]:bins[1]:width]


def features(x: np.ndarray, bands: int, bins: tuple[int, int],
             digit: np.ndarray | None = None, mask_depth: float = 0.0) -> np.ndarray:
    """The flattened contour (N, bands * T) (its loud frames with ``mask_depth``), with the
    recognised digits' one-hot rows ``digit`` (N, 10) appended when given."""
    flat = contour(x, bands, bins, mask_depth).reshape(len(x), -1)
    return flat if digit is None else np.concatenate([flat, digit], axis=1)


def recognised_digits(classifiers_workdir: str, x: np.ndarray) -> np.ndarray:
    """One-hot (N, 10) of the digit the fixed spectrogram AlexNet recognises in ``x``."""
    from pcmelgan_jax.checkpointing import load_network
    from pcmelgan_jax.evaluation.classifier import predict
    from pcmelgan_jax.workdir import model_dir

    model, variables = load_network(model_dir(classifiers_workdir, "spec_digit"), "alexnet")
    return np.eye(10, dtype=np.float32)[predict("alexnet", model, variables, x, BATCH)]


def mlp_accuracy(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray,
                 val_y: np.ndarray, seed: int = 0) -> float:
    """A one-hidden-layer network's accuracy on the validation rows, the features
    standardised with the training rows' statistics."""
    from sklearn.neural_network import MLPClassifier

    train_x = train_x.reshape(len(train_x), -1)
    val_x = val_x.reshape(len(val_x), -1)
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    model = MLPClassifier((256,), alpha=1e-2, max_iter=400, random_state=seed)
    model.fit((train_x - mean) / std, train_y)
    return float(model.score((val_x - mean) / std, val_y))


def probe(train, val, layouts: list[str],
          digits: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, dict[str, float]]:
    """{layout: {"linear_gender", "mlp_gender", "linear_digit", "mlp_digit"}} on ``val``;
    with ``digits`` (the training and validation speakers' recognised digits, one-hot) also
    a ``LAYOUT+digit`` row per layout."""
    out = {}
    for layout in layouts:
        bands, bins, depth = parse_layout(layout)
        variants = [(layout, None, None)]
        if digits is not None:
            variants.append((f"{layout}+digit", *digits))
        for name, train_digit, val_digit in variants:
            tx = features(train.x, bands, bins, train_digit, depth)
            vx = features(val.x, bands, bins, val_digit, depth)
            row = {}
            for task, classes in TASKS:
                ty, vy = getattr(train, task), getattr(val, task)
                row[f"linear_{task}"] = linear_accuracy(tx, ty, vx, vy, classes)
                row[f"mlp_{task}"] = mlp_accuracy(tx, ty, vx, vy)
            out[name] = row
    return out


def markdown(results: dict[str, dict[str, float]]) -> str:
    cols = [f"{kind}_{task}" for task, _ in TASKS for kind in ("linear", "mlp")]
    lines = ["| layout (bands:bins) | " + " | ".join(cols) + " |",
             "|---|" + "---:|" * len(cols)]
    for layout, row in results.items():
        lines.append(f"| {layout} | " + " | ".join(f"{row[c]:.3f}" for c in cols) + " |")
    return "\n".join(lines)


def main() -> None:
    from pcmelgan_jax.evaluation.data import load_split

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--dataset", default="audio_mnist/all")
    p.add_argument("--layout", action="append", help="BANDS:START-STOP[@DEPTH] (repeatable)")
    p.add_argument("--digit-classifier-workdir", default="",
                   help="holds models/spec_digit: adds the LAYOUT+digit rows")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "contour_probe.json"))
    args = p.parse_args()
    layouts = [UNTRANSFORMED, *(args.layout or DEFAULT_LAYOUTS)]
    for layout in layouts:
        parse_layout(layout)  # a bad layout fails before the data loads
    train = load_split(args.data_dir, args.dataset, "train", BATCH)
    val = load_split(args.data_dir, args.dataset, "validation", BATCH)
    digits = None
    if args.digit_classifier_workdir:
        digits = tuple(recognised_digits(args.digit_classifier_workdir, split.x)
                       for split in (train, val))
    results = probe(train, val, layouts, digits)
    write_json_atomic(args.out, {"data_dir": args.data_dir, "split": "validation",
                                 "layouts": results})
    print(markdown(results))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
