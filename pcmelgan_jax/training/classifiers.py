"""Stage ``classifiers``: the fixed spectrogram (AlexNet) and audio (AudioNet) classifiers.

All of ``config.classifiers`` (default spec_digit, spec_gender, audio_digit, audio_gender)
train together, each with its own Adam, on real training data only. After every evaluation
on ``config.eval_split`` (the validation split) each network whose validation loss improved
is exported to ``WORKDIR/models/<name>`` (the best checkpoint); training stops early once no
network has improved for ``config.patience`` evaluations.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from pcmelgan_jax import workdir as run_layout
from pcmelgan_jax.audio import mel_features
from pcmelgan_jax.checkpointing import save_model
from pcmelgan_jax.models import AlexNet, AudioNet
from pcmelgan_jax.models.layers import he_normal_reinit
from pcmelgan_jax.runtime import compilation, sharding
from pcmelgan_jax.training import stage as stage_lib
from pcmelgan_jax.training.losses import accuracy, softmax_cross_entropy
from pcmelgan_jax.training.seeds import jit_step
from pcmelgan_jax.training.state import (
    TrainState,
    adam,
    apply_gradients,
    init_variables,
    network_state,
    new_train_state,
)

Array = jax.Array

CLASSIFIER_TASKS = {
    # name: (input domain, label field, number of classes)
    "spec_digit": ("spec", "digit", 10),
    "spec_gender": ("spec", "gender", 2),
    "audio_digit": ("audio", "digit", 10),
    "audio_gender": ("audio", "gender", 2),
}


CLASSIFIER_INITS = ("torch", "he")  # a classifier's parameter initialisation


def spectrogram_batch(audio: Array) -> Array:
    """Audio (B, 8192) -> normalised log-mel (B, 80, 32, 1), channels-last."""
    return mel_features(audio)[0][..., None]


def classifier_module(name: str, width: float = 1.0) -> AlexNet | AudioNet:
    """The classifier of task ``name`` (a CLASSIFIER_TASKS key) at ``width``."""
    domain, _, k = CLASSIFIER_TASKS[name]
    if domain == "spec":
        return AlexNet(num_classes=k, width=width)
    return AudioNet(num_classes=k, width=width)


def _classifier_logits(
    name: str, params: Any, spec: Array, audio: Array, train: bool, key=None, width: float = 1.0
) -> Array:
    module = classifier_module(name, width)
    rngs = {"dropout": key} if train else None
    if CLASSIFIER_TASKS[name][0] == "spec":
        return module.apply({"params": params}, spec, train=train, rngs=rngs)
    return module.apply({"params": params}, audio, train=train, rngs=rngs)[0]


def classifier_step(
    state: TrainState,
    batch: Mapping[str, Array],
    rng: Array,
    *,
    txs: Mapping[str, Any],
    widths: Mapping[str, float] | None = None,
    label_smoothing: Mapping[str, float] | None = None,
) -> tuple[TrainState, dict[str, Array]]:
    """One Adam update of every classifier in ``state.networks`` (names of CLASSIFIER_TASKS),
    each on its own label, with dropout. ``widths`` {name: width} (default 1.0);
    ``label_smoothing`` {name: smoothing of its training loss} (default 0: the original's
    cross-entropy). Metrics ``<name>/loss`` (the training loss), ``<name>/accuracy``."""
    widths = widths or {}
    label_smoothing = label_smoothing or {}
    rng = jax.random.fold_in(rng, state.step)
    spec = spectrogram_batch(batch["audio"])
    networks, metrics = {}, {}
    for i, (name, net) in enumerate(sorted(state.networks.items())):
        labels = batch[CLASSIFIER_TASKS[name][1]]
        key = jax.random.fold_in(rng, i)

        def loss_fn(params, name=name, labels=labels, key=key):
            logits = _classifier_logits(
                name, params, spec, batch["audio"], True, key, widths.get(name, 1.0)
            )
            smoothing = label_smoothing.get(name, 0.0)
            return softmax_cross_entropy(logits, labels, smoothing), logits

        (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(net.params)
        networks[name] = apply_gradients(net, grads, txs[name])
        metrics[f"{name}/loss"] = loss
        metrics[f"{name}/accuracy"] = accuracy(logits, labels)
    return TrainState(step=state.step + 1, networks=networks), metrics


def classifier_eval_step(
    params: Mapping[str, Any],
    batch: Mapping[str, Array],
    widths: Mapping[str, float] | None = None,
) -> dict[str, Array]:
    """Masked sums over one evaluation batch: ``<name>/loss_sum``, ``<name>/correct``, ``count``.

    ``params`` {name: params}, ``widths`` {name: width}. Divide the sums by the summed ``count``.
    """
    widths = widths or {}
    spec = spectrogram_batch(batch["audio"])
    mask = batch["mask"]
    out = {"count": jnp.sum(mask)}
    for name, p in params.items():
        labels = batch[CLASSIFIER_TASKS[name][1]]
        width = widths.get(name, 1.0)
        logits = _classifier_logits(name, p, spec, batch["audio"], False, None, width)
        logp = jax.nn.log_softmax(logits)
        nll = -jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]
        out[f"{name}/loss_sum"] = jnp.sum(nll * mask)
        out[f"{name}/correct"] = jnp.sum((jnp.argmax(logits, -1) == labels) * mask)
    return out


def classifier_network(name: str, width: float = 1.0) -> tuple[str, dict]:
    """(registry network, arch) of a classifier name at ``width``."""
    domain, _, k = CLASSIFIER_TASKS[name]
    arch = {"num_classes": k}
    if width != 1.0:
        arch["width"] = float(width)
    return ("alexnet" if domain == "spec" else "audionet"), arch


def _per_domain(config: Any, setting: str, default: Any, cast: Callable = float) -> dict:
    """{name: ``cast(config.<domain>_<setting>)``} for each of ``config.classifiers``
    (domain: spec or audio; ``default`` where the field is absent)."""
    return {
        name: cast(config.get(f"{CLASSIFIER_TASKS[name][0]}_{setting}", default))
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


def classifier_inits(config: Any) -> dict[str, str]:
    """{name: its initialisation, ``config.<domain>_init``}: "torch" (PyTorch's default, the
    original) or "he" (``layers.he_normal_reinit``) for each of ``config.classifiers``."""
    inits = _per_domain(config, "init", "torch", str)
    for name, init in inits.items():
        if init not in CLASSIFIER_INITS:
            raise ValueError(f"{CLASSIFIER_TASKS[name][0]}_init must be one of "
                             f"{CLASSIFIER_INITS}, not {init!r}")
    return inits


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


class ClassifiersStage:
    """The classifiers stage of one config: its methods are the ``Stage``'s callbacks. Each
    classifier keeps its best validation loss's export and stops after ``config.patience``
    evaluations without improvement (the stage stops when all have)."""

    def __init__(self, config: Any, workdir: str, mesh):
        self.config, self.workdir, self.mesh = config, workdir, mesh
        self.names = sorted(config.classifiers)
        for name in self.names:
            if name not in CLASSIFIER_TASKS:
                raise ValueError(
                    f"unknown classifier {name!r}; expected some of {list(CLASSIFIER_TASKS)}"
                )
        self.widths = classifier_widths(config)
        self.label_smoothing = classifier_label_smoothing(config)
        self.txs = classifier_optimizers(config)
        self.inits = classifier_inits(config)
        self.eval_fn = compilation.jit(
            functools.partial(classifier_eval_step, widths=self.widths), "inference"
        )

    def initial_state(self) -> TrainState:
        """Every classifier initialised from ``config.seed``, replicated on the mesh."""
        init_key = jax.random.key(self.config.seed, impl="rbg")
        networks = {}
        for i, name in enumerate(self.names):
            network, arch = classifier_network(name, self.widths[name])
            key = jax.random.fold_in(init_key, i)
            variables = init_variables(network, arch, key)
            if self.inits[name] == "he":
                variables = {"params": he_normal_reinit(variables["params"],
                                                        jax.random.fold_in(key, 1))}
            networks[name] = network_state(variables, self.txs[name])
        return sharding.replicate(new_train_state(networks), self.mesh)

    def evaluate(self, state: TrainState, step: int) -> dict[str, float]:
        params = {n: state.networks[n].params for n in self.names}
        sums = None
        for batch in stage_lib.eval_batches(self.config, self.mesh):
            sums = stage_lib.sum_metrics(sums, self.eval_fn(params, batch))
        sums = jax.device_get(sums)
        count = max(float(sums["count"]), 1.0)
        out = {}
        for n in self.names:
            out[f"{n}/loss"] = float(sums[f"{n}/loss_sum"]) / count
            out[f"{n}/accuracy"] = float(sums[f"{n}/correct"]) / count
        return out

    def _export(self, state: TrainState, name: str, step: int, metrics: dict) -> None:
        network, arch = classifier_network(name, self.widths[name])
        save_model(
            run_layout.model_dir(self.workdir, name),
            network,
            jax.device_get({"params": state.networks[name].params}),
            arch,
            extra={
                "step": step,
                "validation_loss": metrics[f"{name}/loss"],
                "validation_accuracy": metrics[f"{name}/accuracy"],
                "label": CLASSIFIER_TASKS[name][1],
            },
            overwrite=True,
        )

    def after_evaluation(self, state: TrainState, step: int, metrics: dict, book: dict) -> bool:
        best = book.setdefault("best", {})
        stale = book.setdefault("evaluations_since_improvement", {})
        for n in self.names:
            loss = metrics[f"{n}/loss"]
            if n not in best or loss < best[n]["loss"]:
                self._export(state, n, step, metrics)
                best[n] = {"loss": loss, "accuracy": metrics[f"{n}/accuracy"], "step": step}
                stale[n] = 0
            else:
                stale[n] = stale.get(n, 0) + 1
        return all(stale[n] >= self.config.patience for n in self.names)

    def finalize(self, state: TrainState, book: dict) -> dict[str, Any]:
        best = book.get("best", {})
        if not best:  # never evaluated: export the final networks
            metrics = self.evaluate(state, int(state.step))
            self.after_evaluation(state, int(state.step), metrics, book)
            best = book["best"]
        return {
            **{f"{n}/best_{k}": v for n in self.names for k, v in best[n].items()},
            "models_dir": run_layout.models_dir(self.workdir),
        }

    def stage(self) -> stage_lib.Stage:
        return stage_lib.Stage(
            name="classifiers",
            state=self.initial_state(),
            train_step=jit_step(
                classifier_step, txs=self.txs, widths=self.widths,
                label_smoothing=self.label_smoothing,
            ),
            evaluate=self.evaluate,
            after_evaluation=self.after_evaluation,
            finalize=self.finalize,
            bookkeeping={"best": {}, "evaluations_since_improvement": {}},
        )


def build_stage(config: Any, workdir: str, mesh) -> stage_lib.Stage:
    """The classifiers stage of ``config`` for ``loop.run``."""
    return ClassifiersStage(config, workdir, mesh).stage()
