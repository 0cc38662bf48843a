"""Stage ``pcmelgan``: filter F, generator G and their discriminators FD, GD (SPEC 6).

Each batch runs the four updates of ``steps.pcmelgan_step`` in SPEC order. With
``config.filter_only`` only F and FD train (the paper's Filter baseline). With
``config.entropy`` F maximises FD's entropy instead of fooling it with flipped labels (the
original's +entropy sign error is NOT reproduced).

``config.classifiers_workdir`` (required) provides the fixed spectrogram classifiers
(``models/spec_digit``, ``models/spec_gender``) for the monitoring accuracies and the
evaluation; ``config.vocoder_workdir`` (optional, ``models/generator``) vocodes the sample
wavs. Exports ``WORKDIR/models/{filter, generator, filter_discriminator,
generator_discriminator}`` at the end (no generator or GD in filter_only).
"""

from __future__ import annotations

import functools
import os
from typing import Any

import jax
import numpy as np

from pcmelgan_jax import sharding
from pcmelgan_jax.audio import denormalize, mel_features, write_audio
from pcmelgan_jax.checkpointing import load_model, save_model
from pcmelgan_jax.logging_utils import spectrogram_panel
from pcmelgan_jax.models import AlexNet, MelGANGenerator
from pcmelgan_jax.training import loop
from pcmelgan_jax.training.state import adam, init_variables, network_state, new_train_state
from pcmelgan_jax.training.steps import (
    CLASSIFIER_TASKS,
    PCMelGANHyper,
    jit_step,
    pcmelgan_eval_step,
    pcmelgan_step,
)

# exported name -> (registry network, arch)
NETWORKS = {
    "filter": ("unet_filter", "unet"),
    "generator": ("unet_generator", "unet"),
    "filter_discriminator": ("alexnet", {"num_classes": 2}),
    "generator_discriminator": ("alexnet", {"num_classes": 3}),
}


def hyper(config: Any) -> PCMelGANHyper:
    return PCMelGANHyper(
        eps=float(config.eps),
        lamb=float(config.lamb),
        noise_dim=int(config.noise_dim),
        entropy=bool(config.entropy),
        filter_only=bool(config.filter_only),
    )


def _arch(name: str, hp: PCMelGANHyper) -> tuple[str, dict]:
    network, arch = NETWORKS[name]
    return network, ({"noise_dim": hp.noise_dim} if arch == "unet" else dict(arch))


def load_monitors(classifiers_workdir: str) -> dict[str, Any]:
    """{"spec_digit", "spec_gender": AlexNet params} from a classifiers workdir."""
    root = loop.require_path(classifiers_workdir, "classifiers_workdir")
    monitors = {}
    for name in ("spec_digit", "spec_gender"):
        path = os.path.join(root, "models", name)
        if not os.path.isdir(path):
            raise FileNotFoundError(
                f"fixed classifier not found: {path} (train the classifiers stage into "
                f"{root} first)"
            )
        module, variables = load_model(path)
        k = CLASSIFIER_TASKS[name][2]
        if not isinstance(module, AlexNet) or module.num_classes != k:
            raise ValueError(f"{path}: expected a spectrogram AlexNet with {k} classes")
        monitors[name] = variables["params"]
    return monitors


def load_vocoder(vocoder_workdir: str) -> tuple[MelGANGenerator, Any] | None:
    """(MelGAN generator, params) from ``vocoder_workdir/models/generator``; None if unset."""
    if not vocoder_workdir:
        return None
    root = loop.require_path(vocoder_workdir, "vocoder_workdir")
    path = os.path.join(root, "models", "generator")
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"vocoder generator not found: {path} (train the vocoder stage into {root}, or "
            "import a PyTorch MelGAN with `pcmelgan-jax import-torch`)"
        )
    module, variables = load_model(path)
    if not isinstance(module, MelGANGenerator):
        raise ValueError(f"{path}: not a MelGAN generator")
    return module, variables["params"]


def build_stage(config: Any, workdir: str, mesh) -> loop.Stage:
    hp = hyper(config)
    monitors = sharding.replicate(load_monitors(config.classifiers_workdir), mesh)
    vocoder = load_vocoder(config.get("vocoder_workdir", ""))
    if vocoder is not None:
        vocode = jax.jit(lambda p, mel, module=vocoder[0]: module.apply({"params": p}, mel))
    names = ["filter", "filter_discriminator"]
    if not hp.filter_only:
        names += ["generator", "generator_discriminator"]
    lr = {
        "filter": config.learning_rate_filter,
        "generator": config.learning_rate_generator,
        "filter_discriminator": config.learning_rate_filter_discriminator,
        "generator_discriminator": config.learning_rate_generator_discriminator,
    }
    txs = {n: adam(lr[n], config.b1, config.b2) for n in names}
    init_key = jax.random.key(config.seed, impl="rbg")
    networks = {}
    for i, name in enumerate(sorted(NETWORKS)):
        if name in names:
            network, arch = _arch(name, hp)
            networks[name] = network_state(
                init_variables(network, arch, jax.random.fold_in(init_key, i)), txs[name]
            )
    state = sharding.replicate(new_train_state(networks), mesh)
    step_fn = jit_step(pcmelgan_step, hp=hp, txs=txs)
    eval_fn = jax.jit(functools.partial(pcmelgan_eval_step, hp=hp))
    eval_key = jax.random.key(config.seed + 1)
    models_dir = os.path.join(workdir, "models")

    def train_step(state, batch, rng):
        return step_fn(state, batch, rng, monitors)

    def evaluate(state, step):
        sums = None
        for i, batch in enumerate(loop.eval_batches(config, mesh)):
            out = eval_fn(state.networks, batch, jax.random.fold_in(eval_key, i), monitors)
            sums = loop.sum_metrics(sums, out)
        sums = jax.device_get(sums)
        count = max(float(sums.pop("count")), 1.0)
        return {
            k.replace("_correct", "_acc").replace("_sum", ""): float(v) / count
            for k, v in sums.items()
        }

    @jax.jit
    def _samples(networks, audio, rng):
        x, mean, std = mel_features(audio)
        x = x[..., None]
        b = x.shape[0]
        k1, k2 = jax.random.split(rng)
        x1 = hp.filter().apply(
            networks["filter"].variables(), x, jax.random.normal(k1, (b, hp.noise_dim)), None
        )
        out = {"original": x, "filtered": x1}
        if not hp.filter_only:
            z2 = jax.random.normal(k2, (b, hp.noise_dim))
            for label, gender in (("sampled_male", 1), ("sampled_female", 0)):
                out[label] = hp.generator().apply(
                    networks["generator"].variables(), x1, z2, jax.numpy.full((b,), gender)
                )
        return {k: v[..., 0] for k, v in out.items()}, mean, std

    def write_samples(state, step):
        if jax.process_index() != 0:
            return
        batch = jax.device_get(next(iter(loop.eval_batches(config, mesh))))
        # one female and one male example when the batch has both
        order = np.argsort(batch["gender"][: int(batch["mask"].sum())], kind="stable")
        pick = np.unique(np.concatenate([order[:1], order[-1:]]))[: int(config.num_samples)]
        audio = batch["audio"][pick]
        specs, mean, std = jax.device_get(_samples(state.networks, audio, eval_key))
        folder = os.path.join(workdir, "samples")
        titles = [
            t for t in ("original", "filtered", "sampled_male", "sampled_female") if t in specs
        ]
        rows = [[specs[t][i] for t in titles] for i in range(len(pick))]
        labels = [
            f"{('female', 'male')[int(batch['gender'][j])]} digit {int(batch['digit'][j])}"
            for j in pick
        ]
        titles_shown = [t.replace("_", " ") for t in titles]
        spectrogram_panel(os.path.join(folder, f"step_{step:07d}.png"), rows, titles_shown, labels)
        if vocoder is not None:
            for t in titles:
                wav = np.asarray(vocode(vocoder[1], denormalize(specs[t], mean, std)))
                for i in range(len(pick)):
                    write_audio(os.path.join(folder, f"step_{step:07d}", f"{i}_{t}.wav"), wav[i])

    def finalize(state, book):
        step = int(jax.device_get(state.step))
        host = jax.device_get(state.networks)
        extra = {"step": step, "eps": hp.eps, "lamb": hp.lamb, "entropy": hp.entropy,
                 "filter_only": hp.filter_only}
        for name in names:
            network, arch = _arch(name, hp)
            save_model(
                os.path.join(models_dir, name), network, host[name].variables(), arch,
                extra=extra, overwrite=True,
            )
        metrics = evaluate(state, step)
        return {**metrics, "models_dir": models_dir, **{k: v for k, v in extra.items()}}

    return loop.Stage(
        name="pcmelgan-filter" if hp.filter_only else "pcmelgan",
        state=state,
        train_step=train_step,
        evaluate=evaluate,
        write_samples=write_samples,
        finalize=finalize,
    )


def train(config: Any, workdir: str, mesh=None) -> dict:
    """Trains PCMelGAN (or the Filter baseline) in ``workdir``; returns the final test metrics."""
    sharding.maybe_initialize_distributed(config)
    mesh = mesh if mesh is not None else sharding.make_mesh()
    stage = build_stage(config, os.path.abspath(workdir), mesh)
    return loop.run(config, workdir, stage, mesh)
