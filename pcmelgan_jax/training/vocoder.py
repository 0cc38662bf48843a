"""Stage ``vocoder``: MelGAN (SPEC 5) on real log-mels of real audio.

Hinge loss, feature matching (weight ``config.feature_matching_weight``), optional
mel-reconstruction loss (``config.mel_loss_weight``, 0 = off as in the original). With
``config.discriminator_start_step`` = N > 0 the first N steps are a warm-up that trains the
generator on the mel-reconstruction loss alone (``steps.vocoder_warmup_step``). Every
evaluation measures the mel L1 between the input log-mel and the log-mel re-analysed from
the generated audio on ``config.eval_split`` (the validation split); the best generator by it
is exported to ``WORKDIR/models/generator`` (its discriminator of the same step to
``WORKDIR/models/discriminator``).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np

from pcmelgan_jax.audio import log_mel, write_audio
from pcmelgan_jax.checkpointing import save_model
from pcmelgan_jax.runtime import compilation, sharding
from pcmelgan_jax.training import loop
from pcmelgan_jax.training.state import adam, init_variables, network_state, new_train_state
from pcmelgan_jax.training.steps import (
    VocoderHyper,
    jit_step,
    vocoder_eval_step,
    vocoder_step,
    vocoder_warmup_step,
)


def hyper(config: Any) -> VocoderHyper:
    return VocoderHyper(
        feature_matching_weight=float(config.feature_matching_weight),
        mel_loss_weight=float(config.mel_loss_weight),
        generator_arch=_hashable(config.generator),
        discriminator_arch=_hashable(config.discriminator),
    )


def _hashable(cfg) -> tuple:
    return tuple(
        sorted((k, tuple(v) if isinstance(v, list | tuple) else v) for k, v in dict(cfg).items())
    )


def _arch(cfg) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(cfg).items()}


def update_best(book: dict, step: int, mel_l1: float) -> bool:
    """Records ``mel_l1`` in ``book`` when it beats ``book["best_mel_l1"]``; True if it did."""
    if book.get("best_mel_l1") is None or mel_l1 < book["best_mel_l1"]:
        book["best_mel_l1"], book["best_step"] = float(mel_l1), int(step)
        return True
    return False


def build_stage(config: Any, workdir: str, mesh) -> loop.Stage:
    hp = hyper(config)
    warmup_steps = int(config.get("discriminator_start_step", 0) or 0)
    if warmup_steps > 0 and hp.mel_loss_weight <= 0:
        raise ValueError(
            f"vocoder config: discriminator_start_step={warmup_steps} trains the generator on "
            "the mel-reconstruction loss alone first, so mel_loss_weight must be > 0 (it is "
            f"{hp.mel_loss_weight})"
        )
    txs = {
        "generator": adam(config.learning_rate_generator, config.b1, config.b2),
        "discriminator": adam(config.learning_rate_discriminator, config.b1, config.b2),
    }
    init_key = jax.random.key(config.seed, impl="rbg")
    g_arch, d_arch = _arch(config.generator), _arch(config.discriminator)
    networks = {
        "generator": network_state(
            init_variables("melgan_generator", g_arch, jax.random.fold_in(init_key, 0)),
            txs["generator"],
        ),
        "discriminator": network_state(
            init_variables("melgan_discriminator", d_arch, jax.random.fold_in(init_key, 1)),
            txs["discriminator"],
        ),
    }
    state = sharding.replicate(new_train_state(networks), mesh)
    eval_fn = compilation.jit(lambda p, b: vocoder_eval_step(p, b, hp=hp), "inference")
    generate = compilation.jit(
        lambda p, audio: hp.generator().apply({"params": p}, log_mel(audio)), "inference"
    )
    models_dir = os.path.join(workdir, "models")

    def evaluate(state, step):
        sums = None
        for batch in loop.eval_batches(config, mesh):
            sums = loop.sum_metrics(sums, eval_fn(state.networks["generator"].params, batch))
        sums = jax.device_get(sums)
        return {"mel_l1": float(sums["mel_l1_sum"]) / max(float(sums["count"]), 1.0)}

    def export(state, step, mel_l1):
        extra = {"step": step, "validation_mel_l1": mel_l1}
        for name, arch in (("generator", g_arch), ("discriminator", d_arch)):
            save_model(
                os.path.join(models_dir, name),
                f"melgan_{name}",
                jax.device_get({"params": state.networks[name].params}),
                arch,
                extra=extra,
                overwrite=True,
            )

    def after_evaluation(state, step, metrics, book):
        if update_best(book, step, metrics["mel_l1"]):
            export(state, step, metrics["mel_l1"])
        return False

    def write_samples(state, step):
        # every process computes (the generator spans them all); process 0 writes
        batch = next(iter(loop.eval_batches(config, mesh)))
        n = min(int(config.num_samples), batch["audio"].shape[0])
        audio = np.asarray(sharding.to_host(batch["audio"]))[:n]
        fake = np.asarray(sharding.to_host(generate(state.networks["generator"].params, audio)))
        if jax.process_index() != 0:
            return
        folder = os.path.join(workdir, "samples", f"step_{step:07d}")
        for i in range(n):
            write_audio(os.path.join(folder, f"{i}_real.wav"), audio[i])
            write_audio(os.path.join(folder, f"{i}_vocoded.wav"), fake[i])

    def finalize(state, book):
        if book.get("best_mel_l1") is None:
            step = int(jax.device_get(state.step))
            after_evaluation(state, step, evaluate(state, step), book)
        return {"best_mel_l1": book["best_mel_l1"], "best_step": book["best_step"]}

    full_step = jit_step(vocoder_step, hp=hp, txs=txs)
    if warmup_steps > 0:
        warmup_step = jit_step(vocoder_warmup_step, hp=hp, txs=txs)

        def train_step(state, batch, rng):
            step = int(jax.device_get(state.step))
            return (warmup_step if step < warmup_steps else full_step)(state, batch, rng)
    else:
        train_step = full_step

    return loop.Stage(
        name="vocoder",
        state=state,
        train_step=train_step,
        evaluate=evaluate,
        after_evaluation=after_evaluation,
        write_samples=write_samples,
        finalize=finalize,
        bookkeeping={"best_mel_l1": None, "best_step": None},
    )


def train(config: Any, workdir: str, mesh=None) -> dict:
    """Trains the MelGAN vocoder in ``workdir``; returns the best validation mel L1."""
    sharding.maybe_initialize_distributed(config)
    mesh = mesh if mesh is not None else sharding.make_mesh()
    stage = build_stage(config, os.path.abspath(workdir), mesh)
    return loop.run(config, workdir, stage, mesh)
