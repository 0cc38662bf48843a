"""Stage ``classifiers``: the fixed spectrogram (AlexNet) and audio (AudioNet) classifiers.

All of ``config.classifiers`` (default spec_digit, spec_gender, audio_digit, audio_gender)
train together, each with its own Adam, on real training data only. After every evaluation
on ``config.eval_split`` (the validation split) each network whose validation loss improved
is exported to ``WORKDIR/models/<name>`` (the best checkpoint); training stops early once no
network has improved for ``config.patience`` evaluations.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import jax
import optax

from pcmelgan_jax.checkpointing import save_model
from pcmelgan_jax.runtime import compilation, sharding
from pcmelgan_jax.training import loop
from pcmelgan_jax.training.state import adam, init_variables, network_state, new_train_state
from pcmelgan_jax.training.steps import (
    CLASSIFIER_TASKS,
    classifier_eval_step,
    classifier_step,
    jit_step,
)


def classifier_network(name: str, width: float = 1.0) -> tuple[str, dict]:
    """(registry network, arch) of a classifier name at ``width``."""
    domain, _, k = CLASSIFIER_TASKS[name]
    arch = {"num_classes": k}
    if width != 1.0:
        arch["width"] = float(width)
    return ("alexnet" if domain == "spec" else "audionet"), arch


def _per_domain(config: Any, setting: str, default: float) -> dict[str, float]:
    """{name: ``config.<domain>_<setting>``} for each of ``config.classifiers`` (domain: spec
    or audio; ``default`` where the field is absent)."""
    return {
        name: float(config.get(f"{CLASSIFIER_TASKS[name][0]}_{setting}", default))
        for name in config.classifiers
    }


def classifier_widths(config: Any) -> dict[str, float]:
    """{name: width} from ``config.spec_width`` / ``config.audio_width`` (default 1.0)."""
    return _per_domain(config, "width", 1.0)


def classifier_label_smoothing(config: Any) -> dict[str, float]:
    """{name: label smoothing of its training loss} from ``config.spec_label_smoothing`` /
    ``config.audio_label_smoothing`` (default 0, the original's cross-entropy), each in [0, 1)."""
    smoothing = _per_domain(config, "label_smoothing", 0.0)
    for name, value in smoothing.items():
        if not 0.0 <= value < 1.0:
            field = f"{CLASSIFIER_TASKS[name][0]}_label_smoothing"
            raise ValueError(f"{field} must be in [0, 1), not {value}")
    return smoothing


def classifier_optimizers(config: Any) -> dict[str, optax.GradientTransformation]:
    """{name: Adam at ``config.learning_rate`` with the betas of ``config``, warmed up over
    ``config.<domain>_warmup_steps`` updates (default 0)} for each of ``config.classifiers``."""
    warmup = _per_domain(config, "warmup_steps", 0)
    for name, steps in warmup.items():
        if steps < 0 or steps != int(steps):
            field = f"{CLASSIFIER_TASKS[name][0]}_warmup_steps"
            raise ValueError(f"{field} must be an integer >= 0, not {steps}")
    return {
        n: adam(config.learning_rate, config.b1, config.b2, int(warmup[n]))
        for n in config.classifiers
    }


def build_stage(config: Any, workdir: str, mesh) -> loop.Stage:
    names = sorted(config.classifiers)
    for name in names:
        if name not in CLASSIFIER_TASKS:
            raise ValueError(
                f"unknown classifier {name!r}; expected some of {list(CLASSIFIER_TASKS)}"
            )
    widths = classifier_widths(config)
    label_smoothing = classifier_label_smoothing(config)
    txs = classifier_optimizers(config)
    init_key = jax.random.key(config.seed, impl="rbg")
    networks = {}
    for i, name in enumerate(names):
        network, arch = classifier_network(name, widths[name])
        networks[name] = network_state(
            init_variables(network, arch, jax.random.fold_in(init_key, i)), txs[name]
        )
    state = sharding.replicate(new_train_state(networks), mesh)
    eval_fn = compilation.jit(functools.partial(classifier_eval_step, widths=widths), "inference")
    models_dir = os.path.join(workdir, "models")

    def evaluate(state, step):
        params = {n: state.networks[n].params for n in names}
        sums = None
        for batch in loop.eval_batches(config, mesh):
            sums = loop.sum_metrics(sums, eval_fn(params, batch))
        sums = jax.device_get(sums)
        count = max(float(sums["count"]), 1.0)
        out = {}
        for n in names:
            out[f"{n}/loss"] = float(sums[f"{n}/loss_sum"]) / count
            out[f"{n}/accuracy"] = float(sums[f"{n}/correct"]) / count
        return out

    def after_evaluation(state, step, metrics, book):
        best = book.setdefault("best", {})
        stale = book.setdefault("evaluations_since_improvement", {})
        for n in names:
            loss = metrics[f"{n}/loss"]
            if n not in best or loss < best[n]["loss"]:
                network, arch = classifier_network(n, widths[n])
                save_model(
                    os.path.join(models_dir, n),
                    network,
                    jax.device_get({"params": state.networks[n].params}),
                    arch,
                    extra={
                        "step": step,
                        "validation_loss": loss,
                        "validation_accuracy": metrics[f"{n}/accuracy"],
                        "label": CLASSIFIER_TASKS[n][1],
                    },
                    overwrite=True,
                )
                best[n] = {"loss": loss, "accuracy": metrics[f"{n}/accuracy"], "step": step}
                stale[n] = 0
            else:
                stale[n] = stale.get(n, 0) + 1
        return all(stale[n] >= config.patience for n in names)

    def finalize(state, book):
        best = book.get("best", {})
        if not best:  # never evaluated: export the final networks
            metrics = evaluate(state, int(state.step))
            after_evaluation(state, int(state.step), metrics, book)
            best = book["best"]
        return {
            **{f"{n}/best_{k}": v for n in names for k, v in best[n].items()},
            "models_dir": models_dir,
        }

    return loop.Stage(
        name="classifiers",
        state=state,
        train_step=jit_step(
            classifier_step, txs=txs, widths=widths, label_smoothing=label_smoothing
        ),
        evaluate=evaluate,
        after_evaluation=after_evaluation,
        finalize=finalize,
        bookkeeping={"best": {}, "evaluations_since_improvement": {}},
    )


def train(config: Any, workdir: str, mesh=None) -> dict:
    """Trains the classifiers in ``workdir``; returns the best validation losses/accuracies."""
    sharding.maybe_initialize_distributed(config)
    mesh = mesh if mesh is not None else sharding.make_mesh()
    stage = build_stage(config, os.path.abspath(workdir), mesh)
    return loop.run(config, workdir, stage, mesh)


__all__ = ["build_stage", "classifier_network", "train"]
