"""Stage ``vocoder``: MelGAN on real log-mels of real audio.

Hinge loss, feature matching (weight ``config.feature_matching_weight``), optional
mel-reconstruction loss (``config.mel_loss_weight``) and multi-resolution STFT loss against the
real audio (``config.stft_loss_weight`` at ``config.stft_resolutions``), both 0 = off as in the
original. With ``config.discriminator_start_step`` = N > 0 the first N steps are a warm-up that
trains the generator on the mel and STFT losses alone (``vocoder_warmup_step``). Every evaluation
measures the mel L1 between the input log-mel and the log-mel re-analysed from the generated
audio on ``config.eval_split`` (the validation split); the best generator by it is exported
to ``WORKDIR/models/generator`` (its discriminator of the same step to
``WORKDIR/models/discriminator``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pcmelgan_jax import workdir as run_layout
from pcmelgan_jax.audio import log_mel, write_audio
from pcmelgan_jax.checkpointing import save_model
from pcmelgan_jax.logging_utils import MetricWriter
from pcmelgan_jax.models import MelGANDiscriminator, MelGANGenerator
from pcmelgan_jax.runtime import compilation, sharding
from pcmelgan_jax.training import stage as stage_lib
from pcmelgan_jax.training.losses import (
    STFT_RESOLUTIONS,
    discriminator_hinge_loss,
    feature_matching_loss,
    generator_hinge_loss,
    l1,
    multi_resolution_stft_loss,
)
from pcmelgan_jax.training.seeds import jit_step
from pcmelgan_jax.training.state import (
    NetworkState,
    TrainState,
    adam,
    apply_gradients,
    init_variables,
    network_state,
    new_train_state,
)

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class VocoderHyper:
    """Vocoder loss settings and network architectures."""

    feature_matching_weight: float = 10.0
    mel_loss_weight: float = 0.0  # optional L1(log-mel(G(s)), s); 0 = the original's losses
    stft_loss_weight: float = 0.0  # optional multi-resolution STFT loss(G(s), x); 0 = off
    stft_resolutions: tuple = STFT_RESOLUTIONS  # its (n_fft, hop, win) triples
    generator_arch: tuple = ()
    discriminator_arch: tuple = ()

    def generator(self) -> MelGANGenerator:
        return MelGANGenerator(**dict(self.generator_arch))

    def discriminator(self) -> MelGANDiscriminator:
        return MelGANDiscriminator(**dict(self.discriminator_arch))


def update_discriminator(
    d_net: NetworkState, audio: Array, fake: Array, hp: VocoderHyper, tx: Any
) -> tuple[NetworkState, list, dict[str, Array]]:
    """D's hinge update on real ``audio`` and generated ``fake`` (a constant); also returns
    D's pre-update features of the real audio, which G's feature matching compares against."""
    disc = hp.discriminator()

    def loss_fn(d_params):
        real = disc.apply({"params": d_params}, audio)
        fake_out = disc.apply({"params": d_params}, jax.lax.stop_gradient(fake))
        return discriminator_hinge_loss(real, fake_out), real

    (loss, real_features), grads = jax.value_and_grad(loss_fn, has_aux=True)(d_net.params)
    return apply_gradients(d_net, grads, tx), real_features, {"discriminator/loss": loss}


def reconstruction_losses(
    fake: Array, audio: Array, mel: Array, hp: VocoderHyper
) -> tuple[Array, dict[str, Array]]:
    """``hp.mel_loss_weight`` x L1(log-mel(fake), mel) + ``hp.stft_loss_weight`` x the
    multi-resolution STFT loss of (fake, audio), and its terms as metrics (``mel_l1``,
    ``stft/spectral_convergence``, ``stft/log_magnitude``). A term of weight 0 is left out of
    the loss, so it is measured but not differentiated."""
    mel_err = l1(log_mel(fake), mel)
    stft, sc, mag = multi_resolution_stft_loss(fake, audio, hp.stft_resolutions)
    weighted = ((hp.mel_loss_weight, mel_err), (hp.stft_loss_weight, stft))
    loss = sum((w * term for w, term in weighted if w), jnp.zeros((), jnp.float32))
    return loss, {"mel_l1": mel_err, "stft/spectral_convergence": sc, "stft/log_magnitude": mag}


def generator_audio_gradient(
    fake: Array, audio: Array, mel: Array, d_params: Any, real_features: list, hp: VocoderHyper
) -> tuple[Array, dict[str, Array]]:
    """The gradient of G's loss (hinge + feature matching, scored by the updated D, + the
    optional mel and STFT losses against the real ``audio`` and its log-mel ``mel``) with
    respect to the generated audio ``fake``, and G's metrics."""
    disc = hp.discriminator()

    def loss_fn(fake_audio):
        out = disc.apply({"params": d_params}, fake_audio)
        adv = generator_hinge_loss(out)
        fm = feature_matching_loss(real_features, out, disc.n_layers)
        recon, recon_metrics = reconstruction_losses(fake_audio, audio, mel, hp)
        loss = adv + hp.feature_matching_weight * fm + recon
        return loss, {"generator/adversarial": adv, "generator/feature_matching": fm,
                      **recon_metrics}

    (loss, metrics), grad = jax.value_and_grad(loss_fn, has_aux=True)(fake)
    return grad, {"generator/loss": loss, **metrics}


def vocoder_step(
    state: TrainState, batch: Mapping[str, Array], rng: Array, *, hp: VocoderHyper,
    txs: Mapping[str, Any],
) -> tuple[TrainState, dict[str, Array]]:
    """MelGAN: D update on (x, stop_gradient(G(s))), then G update (hinge + feature matching
    against D's pre-update real features, as the original). ``s`` = log-mel of the real audio
    (B, 80, 32). Metrics include ``mel_l1`` = L1(s, log-mel(G(s))) and the STFT loss's
    terms (computed, and logged, whatever its weight)."""
    del rng  # deterministic networks
    g_net, d_net = state.networks["generator"], state.networks["discriminator"]
    audio = batch["audio"]
    mel = log_mel(audio)
    # G runs once: its backward pass is taken through the vjp of this forward pass
    fake, g_vjp = jax.vjp(lambda p: hp.generator().apply({"params": p}, mel), g_net.params)
    d_net, real_features, d_metrics = update_discriminator(
        d_net, audio, fake, hp, txs["discriminator"]
    )
    fake_grad, g_metrics = generator_audio_gradient(
        fake, audio, mel, d_net.params, real_features, hp)
    (g_grads,) = g_vjp(fake_grad)
    g_net = apply_gradients(g_net, g_grads, txs["generator"])
    networks = {"generator": g_net, "discriminator": d_net}
    return TrainState(step=state.step + 1, networks=networks), {**d_metrics, **g_metrics}


def vocoder_warmup_step(
    state: TrainState, batch: Mapping[str, Array], rng: Array, *, hp: VocoderHyper,
    txs: Mapping[str, Any],
) -> tuple[TrainState, dict[str, Array]]:
    """MelGAN warm-up: a G update on the reconstruction losses alone
    (``hp.mel_loss_weight`` x L1(log-mel(G(s)), s) + ``hp.stft_loss_weight`` x STFT loss);
    D is left untouched. Metrics ``generator/loss``, ``mel_l1`` and ``stft/...``."""
    del rng
    gen, g_net = hp.generator(), state.networks["generator"]
    audio = batch["audio"]
    mel = log_mel(audio)

    def loss_fn(g_params):
        return reconstruction_losses(gen.apply({"params": g_params}, mel), audio, mel, hp)

    (loss, recon_metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(g_net.params)
    networks = {**state.networks, "generator": apply_gradients(g_net, grads, txs["generator"])}
    metrics = {"generator/loss": loss, **recon_metrics}
    return TrainState(step=state.step + 1, networks=networks), metrics


def vocoder_eval_step(
    g_params: Any, batch: Mapping[str, Array], *, hp: VocoderHyper
) -> dict[str, Array]:
    """Masked sum of the per-utterance mel L1 (input log-mel vs re-analysed output)."""
    mel = log_mel(batch["audio"])
    out = log_mel(hp.generator().apply({"params": g_params}, mel))
    per = jnp.mean(jnp.abs(out - mel), axis=(-1, -2))
    return {"mel_l1_sum": jnp.sum(per * batch["mask"]), "count": jnp.sum(batch["mask"])}


def hyper(config: Any) -> VocoderHyper:
    """The step settings of ``config``."""
    return VocoderHyper(
        feature_matching_weight=float(config.feature_matching_weight),
        mel_loss_weight=float(config.mel_loss_weight),
        stft_loss_weight=float(config.get("stft_loss_weight", 0.0)),
        stft_resolutions=tuple(
            tuple(int(v) for v in r) for r in config.get("stft_resolutions", STFT_RESOLUTIONS)),
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


def _warmup_steps(config: Any, hp: VocoderHyper) -> int:
    """``config.discriminator_start_step`` (0 if unset), checked against the reconstruction
    loss weights."""
    warmup_steps = int(config.get("discriminator_start_step", 0) or 0)
    if warmup_steps > 0 and hp.mel_loss_weight <= 0 and hp.stft_loss_weight <= 0:
        raise ValueError(
            f"vocoder config: discriminator_start_step={warmup_steps} trains the generator on "
            "the reconstruction losses alone first, so mel_loss_weight or stft_loss_weight must "
            f"be > 0 (they are {hp.mel_loss_weight} and {hp.stft_loss_weight})"
        )
    return warmup_steps


class VocoderStage:
    """The vocoder stage of one config: its methods are the ``Stage``'s callbacks."""

    def __init__(self, config: Any, workdir: str, mesh):
        self.config, self.workdir, self.mesh = config, workdir, mesh
        self.hp = hp = hyper(config)
        self.warmup_steps = _warmup_steps(config, hp)
        self.txs = {
            "generator": adam(config.learning_rate_generator, config.b1, config.b2),
            "discriminator": adam(config.learning_rate_discriminator, config.b1, config.b2),
        }
        self.archs = {"generator": _arch(config.generator),
                      "discriminator": _arch(config.discriminator)}
        self.eval_fn = compilation.jit(lambda p, b: vocoder_eval_step(p, b, hp=hp), "inference")
        self.generate = compilation.jit(
            lambda p, audio: hp.generator().apply({"params": p}, log_mel(audio)), "inference"
        )
        self.full_step = jit_step(vocoder_step, hp=hp, txs=self.txs)
        if self.warmup_steps > 0:
            self.warmup_step = jit_step(vocoder_warmup_step, hp=hp, txs=self.txs)

    def initial_state(self) -> TrainState:
        """Both networks initialised from ``config.seed``, replicated on the mesh."""
        init_key = jax.random.key(self.config.seed, impl="rbg")
        networks = {
            name: network_state(
                init_variables(f"melgan_{name}", self.archs[name], jax.random.fold_in(init_key, i)),
                self.txs[name],
            )
            for i, name in enumerate(("generator", "discriminator"))
        }
        return sharding.replicate(new_train_state(networks), self.mesh)

    def train_step(self, state: TrainState, batch: Any, rng: Array) -> tuple[TrainState, dict]:
        """The warm-up step for the first ``warmup_steps`` steps, then the full step."""
        step = int(jax.device_get(state.step))
        return (self.warmup_step if step < self.warmup_steps else self.full_step)(
            state, batch, rng)

    def evaluate(self, state: TrainState, step: int) -> dict[str, float]:
        sums = None
        for batch in stage_lib.eval_batches(self.config, self.mesh):
            sums = stage_lib.sum_metrics(
                sums, self.eval_fn(state.networks["generator"].params, batch))
        sums = jax.device_get(sums)
        return {"mel_l1": float(sums["mel_l1_sum"]) / max(float(sums["count"]), 1.0)}

    def export(self, state: TrainState, step: int, mel_l1: float) -> None:
        extra = {"step": step, "validation_mel_l1": mel_l1}
        for name in ("generator", "discriminator"):
            save_model(
                run_layout.model_dir(self.workdir, name),
                f"melgan_{name}",
                jax.device_get({"params": state.networks[name].params}),
                self.archs[name],
                extra=extra,
                overwrite=True,
            )

    def after_evaluation(self, state: TrainState, step: int, metrics: dict, book: dict) -> bool:
        if update_best(book, step, metrics["mel_l1"]):
            self.export(state, step, metrics["mel_l1"])
        return False

    def write_samples(self, state: TrainState, step: int, writer: MetricWriter) -> None:
        """Real and vocoded wavs of the first evaluation examples, in ``samples/`` and in
        TensorBoard (``samples/audio/<i>_real``, ``samples/audio/<i>_vocoded``)."""
        # every process computes (the generator spans them all); process 0 writes
        batch = next(iter(stage_lib.eval_batches(self.config, self.mesh)))
        n = min(int(self.config.num_samples), batch["audio"].shape[0])
        audio = np.asarray(sharding.to_host(batch["audio"]))[:n]
        fake = np.asarray(
            sharding.to_host(self.generate(state.networks["generator"].params, audio)))
        if jax.process_index() != 0:
            return
        folder = os.path.join(self.workdir, run_layout.SAMPLES, f"step_{step:07d}")
        for i in range(n):
            for kind, wav in (("real", audio[i]), ("vocoded", fake[i])):
                write_audio(os.path.join(folder, f"{i}_{kind}.wav"), wav)
                writer.write_audio(step, f"samples/audio/{i}_{kind}", wav)

    def finalize(self, state: TrainState, book: dict) -> dict[str, Any]:
        if book.get("best_mel_l1") is None:
            step = int(jax.device_get(state.step))
            self.after_evaluation(state, step, self.evaluate(state, step), book)
        return {"best_mel_l1": book["best_mel_l1"], "best_step": book["best_step"]}

    def stage(self) -> stage_lib.Stage:
        return stage_lib.Stage(
            name="vocoder",
            state=self.initial_state(),
            train_step=self.train_step if self.warmup_steps > 0 else self.full_step,
            evaluate=self.evaluate,
            after_evaluation=self.after_evaluation,
            write_samples=self.write_samples,
            finalize=self.finalize,
            bookkeeping={"best_mel_l1": None, "best_step": None},
        )


def build_stage(config: Any, workdir: str, mesh) -> stage_lib.Stage:
    """The vocoder stage of ``config`` for ``loop.run``."""
    return VocoderStage(config, workdir, mesh).stage()
