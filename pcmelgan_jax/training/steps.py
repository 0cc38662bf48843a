"""Pure train and evaluation steps of the three stages, and their losses.

Every train step is ``(state, batch, rng) -> (state, metrics)``: ``state`` a ``TrainState``,
``batch`` the pipeline's dict (``audio`` (B, 8192) float32, ``digit`` / ``gender`` (B,) int32,
``mask`` (B,) float32), ``rng`` the run's base key (the step folds ``state.step`` into it),
``metrics`` a dict of float32 scalars. Log-mel features are computed inside the step.
``jit_*`` wrap them with ``jax.jit(..., donate_argnums=0)``; frozen inputs (the fixed
monitoring classifiers) are passed as a jit argument, not baked in as constants.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from pcmelgan_jax.audio import log_mel, mel_features
from pcmelgan_jax.models import AlexNet, AudioNet, MelGANDiscriminator, MelGANGenerator, UNet
from pcmelgan_jax.models.classifiers import softmax_cross_entropy
from pcmelgan_jax.training.state import NetworkState, TrainState, apply_gradients

Array = jax.Array
Metrics = dict[str, Array]
FAKE = 2  # GD's class for generated spectrograms


# ----------------------------------------------------------------------------- helpers


def spectrogram_batch(audio: Array) -> Array:
    """Audio (B, 8192) -> normalised log-mel (B, 80, 32, 1), channels-last."""
    return mel_features(audio)[0][..., None]


def accuracy(logits: Array, labels: Array, mask: Array | None = None) -> Array:
    """Fraction of argmax(logits) == labels, weighted by ``mask`` (B,)."""
    hit = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    if mask is None:
        return hit.mean()
    return jnp.sum(hit * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def l1(a: Array, b: Array) -> Array:
    """Mean absolute difference."""
    return jnp.mean(jnp.abs(a - b))


def distortion_penalty(x_out: Array, x: Array, eps: float, lamb: float) -> tuple[Array, Array]:
    """(lamb * relu(L1(x_out, x) - eps)^2, L1(x_out, x)) of SPEC 6."""
    distortion = l1(x_out, x)
    return lamb * jnp.square(jax.nn.relu(distortion - eps)), distortion


def mean_entropy(logits: Array) -> Array:
    """Mean over the batch of the entropy (nats) of softmax(logits). (B, K) -> ()."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32))
    return -jnp.mean(jnp.sum(jnp.exp(logp) * logp, axis=-1))


def filter_adversarial_loss(fd_logits: Array, gender: Array, entropy: bool) -> Array:
    """F's adversarial loss: CE(FD(x1), 1 - s), or with ``entropy`` the NEGATIVE entropy of FD.

    Minimising ``-entropy`` MAXIMISES FD's entropy (pushes it to uniform), the intended
    objective; the original added +entropy (a sign error that makes FD more confident).
    """
    if entropy:
        return -mean_entropy(fd_logits)
    return softmax_cross_entropy(fd_logits, 1 - gender)


def _finite(metrics: Mapping[str, Array]) -> Array:
    """True when every metric is finite."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in metrics.values()]))


# ----------------------------------------------------------------------------- classifiers

CLASSIFIER_TASKS = {
    # name: (input domain, label field, number of classes)
    "spec_digit": ("spec", "digit", 10),
    "spec_gender": ("spec", "gender", 2),
    "audio_digit": ("audio", "digit", 10),
    "audio_gender": ("audio", "gender", 2),
}


def classifier_module(name: str) -> AlexNet | AudioNet:
    domain, _, k = CLASSIFIER_TASKS[name]
    return AlexNet(num_classes=k) if domain == "spec" else AudioNet(num_classes=k)


def _classifier_logits(name: str, params: Any, spec: Array, audio: Array, train: bool, key=None):
    domain = CLASSIFIER_TASKS[name][0]
    module = classifier_module(name)
    rngs = {"dropout": key} if train else None
    if domain == "spec":
        return module.apply({"params": params}, spec, train=train, rngs=rngs)
    return module.apply({"params": params}, audio, train=train, rngs=rngs)[0]


def classifier_step(
    state: TrainState, batch: Mapping[str, Array], rng: Array, *, txs: Mapping[str, Any]
) -> tuple[TrainState, Metrics]:
    """One Adam update of every classifier in ``state.networks`` (names of CLASSIFIER_TASKS),
    each on its own label, with dropout. Metrics ``<name>/loss``, ``<name>/accuracy``."""
    rng = jax.random.fold_in(rng, state.step)
    spec = spectrogram_batch(batch["audio"])
    networks, metrics = {}, {}
    for i, (name, net) in enumerate(sorted(state.networks.items())):
        labels = batch[CLASSIFIER_TASKS[name][1]]
        key = jax.random.fold_in(rng, i)

        def loss_fn(params, name=name, labels=labels, key=key):
            logits = _classifier_logits(name, params, spec, batch["audio"], True, key)
            return softmax_cross_entropy(logits, labels), logits

        (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(net.params)
        networks[name] = apply_gradients(net, grads, txs[name])
        metrics[f"{name}/loss"] = loss
        metrics[f"{name}/accuracy"] = accuracy(logits, labels)
    return TrainState(step=state.step + 1, networks=networks), metrics


def classifier_eval_step(params: Mapping[str, Any], batch: Mapping[str, Array]) -> Metrics:
    """Masked sums over one evaluation batch: ``<name>/loss_sum``, ``<name>/correct``, ``count``.

    ``params`` {name: params}. Divide the summed sums by the summed ``count``.
    """
    spec = spectrogram_batch(batch["audio"])
    mask = batch["mask"]
    out = {"count": jnp.sum(mask)}
    for name, p in params.items():
        labels = batch[CLASSIFIER_TASKS[name][1]]
        logits = _classifier_logits(name, p, spec, batch["audio"], False)
        logp = jax.nn.log_softmax(logits)
        nll = -jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]
        out[f"{name}/loss_sum"] = jnp.sum(nll * mask)
        out[f"{name}/correct"] = jnp.sum((jnp.argmax(logits, -1) == labels) * mask)
    return out


# ----------------------------------------------------------------------------- vocoder


@dataclasses.dataclass(frozen=True)
class VocoderHyper:
    """Vocoder loss settings (SPEC 5)."""

    feature_matching_weight: float = 10.0
    mel_loss_weight: float = 0.0  # optional L1(log-mel(G(s)), s); 0 = the original's losses
    generator_arch: tuple = ()
    discriminator_arch: tuple = ()

    def generator(self) -> MelGANGenerator:
        return MelGANGenerator(**dict(self.generator_arch))

    def discriminator(self) -> MelGANDiscriminator:
        return MelGANDiscriminator(**dict(self.discriminator_arch))


def discriminator_hinge_loss(real: list, fake: list) -> Array:
    """Sum over scales of mean(relu(1 - D(x))) + mean(relu(1 + D(G(s))))."""
    return sum(
        jnp.mean(jax.nn.relu(1.0 - r[-1])) + jnp.mean(jax.nn.relu(1.0 + f[-1]))
        for r, f in zip(real, fake, strict=True)
    )


def feature_matching_loss(real: list, fake: list, n_layers: int) -> Array:
    """Sum over scales and all layers but the last of (1/num_D)(4/(n_layers+1)) L1(fake, real)."""
    weight = (1.0 / len(real)) * (4.0 / (n_layers + 1))
    return sum(
        weight * l1(f, jax.lax.stop_gradient(r))
        for rs, fs in zip(real, fake, strict=True)
        for r, f in zip(rs[:-1], fs[:-1], strict=True)
    )


def vocoder_step(
    state: TrainState, batch: Mapping[str, Array], rng: Array, *, hp: VocoderHyper,
    txs: Mapping[str, Any],
) -> tuple[TrainState, Metrics]:
    """MelGAN: D update on (x, stop_gradient(G(s))), then G update (hinge + feature matching
    against D's pre-update real features, as the original). ``s`` = log-mel of the real audio
    (B, 80, 32). Metrics include ``mel_l1`` = L1(s, log-mel(G(s)))."""
    del rng  # deterministic networks
    gen, disc = hp.generator(), hp.discriminator()
    g_net, d_net = state.networks["generator"], state.networks["discriminator"]
    audio = batch["audio"]
    mel = log_mel(audio)
    fake, g_vjp = jax.vjp(lambda p: gen.apply({"params": p}, mel), g_net.params)

    def d_loss_fn(d_params):
        real = disc.apply({"params": d_params}, audio)
        fake_out = disc.apply({"params": d_params}, jax.lax.stop_gradient(fake))
        return discriminator_hinge_loss(real, fake_out), real

    (d_loss, real_features), d_grads = jax.value_and_grad(d_loss_fn, has_aux=True)(d_net.params)
    d_net = apply_gradients(d_net, d_grads, txs["discriminator"])

    def g_loss_fn(fake_audio):
        out = disc.apply({"params": d_net.params}, fake_audio)
        adv = sum(-jnp.mean(o[-1]) for o in out)
        fm = feature_matching_loss(real_features, out, disc.n_layers)
        mel_err = l1(log_mel(fake_audio), mel)
        loss = adv + hp.feature_matching_weight * fm + hp.mel_loss_weight * mel_err
        return loss, (adv, fm, mel_err)

    (g_loss, (adv, fm, mel_err)), fake_grad = jax.value_and_grad(g_loss_fn, has_aux=True)(fake)
    (g_grads,) = g_vjp(fake_grad)
    g_net = apply_gradients(g_net, g_grads, txs["generator"])
    metrics = {
        "discriminator/loss": d_loss,
        "generator/loss": g_loss,
        "generator/adversarial": adv,
        "generator/feature_matching": fm,
        "mel_l1": mel_err,
    }
    networks = {"generator": g_net, "discriminator": d_net}
    return TrainState(step=state.step + 1, networks=networks), metrics


def vocoder_eval_step(g_params: Any, batch: Mapping[str, Array], *, hp: VocoderHyper) -> Metrics:
    """Masked sum of the per-utterance mel L1 (input log-mel vs re-analysed output)."""
    mel = log_mel(batch["audio"])
    out = log_mel(hp.generator().apply({"params": g_params}, mel))
    per = jnp.mean(jnp.abs(out - mel), axis=(-1, -2))
    return {"mel_l1_sum": jnp.sum(per * batch["mask"]), "count": jnp.sum(batch["mask"])}


# ----------------------------------------------------------------------------- PCMelGAN


@dataclasses.dataclass(frozen=True)
class PCMelGANHyper:
    """PCMelGAN loss settings (SPEC 6)."""

    eps: float = 0.05
    lamb: float = 100.0
    noise_dim: int = 10
    entropy: bool = False  # F maximises FD's entropy instead of the flipped-label CE
    filter_only: bool = False  # the Filter baseline: F and FD only

    def filter(self) -> UNet:
        return UNet(conditional=False, noise_dim=self.noise_dim)

    def generator(self) -> UNet:
        return UNet(conditional=True, noise_dim=self.noise_dim)


def _monitor(monitors: Mapping[str, Any] | None, x: Array, labels: Mapping[str, Array], prefix):
    """Fixed classifiers (eval mode) on spectrograms x: ``<prefix>_<task>_acc``."""
    out = {}
    if not monitors:
        return out
    for task, label in labels.items():
        name = f"spec_{task.split('_')[-1]}"
        if name in monitors:
            logits = AlexNet(num_classes=CLASSIFIER_TASKS[name][2]).apply(
                {"params": monitors[name]}, x, train=False
            )
            out[f"{prefix}_{task}_acc"] = accuracy(logits, label)
    return out


def pcmelgan_step(
    state: TrainState,
    batch: Mapping[str, Array],
    rng: Array,
    monitors: Mapping[str, Any] | None = None,
    *,
    hp: PCMelGANHyper,
    txs: Mapping[str, Any],
) -> tuple[TrainState, Metrics]:
    """One batch of SPEC 6, in order: (1) F update, (2) G update on a fresh train-mode F pass,
    distortion against the ORIGINAL x, (3) FD update on stop_gradient(x1 of step 2), (4) GD
    update on real x and stop_gradient(x2), weight 0.5. ``monitors`` {"spec_digit",
    "spec_gender": AlexNet params} (optional) give the fixed classifiers' accuracies."""
    filt, gen = hp.filter(), hp.generator()
    fd, gd = AlexNet(num_classes=2), AlexNet(num_classes=3)
    nets = dict(state.networks)
    rng = jax.random.fold_in(rng, state.step)
    k_z1, k_z1b, k_z2, k_s, k_d1, k_d2, k_d3, k_d4, k_d5 = jax.random.split(rng, 9)
    x = spectrogram_batch(batch["audio"])
    s = batch["gender"]
    b = x.shape[0]
    f_net, fd_net = nets["filter"], nets["filter_discriminator"]
    metrics: Metrics = {}

    # (1) filter update
    z1 = jax.random.normal(k_z1, (b, hp.noise_dim))

    def filter_loss_fn(f_params):
        x1, mut = filt.apply(
            f_net.variables(f_params), x, z1, None, train=True, mutable=["batch_stats"]
        )
        fd_logits = fd.apply({"params": fd_net.params}, x1, train=True, rngs={"dropout": k_d1})
        adv = filter_adversarial_loss(fd_logits, s, hp.entropy)
        penalty, dist = distortion_penalty(x1, x, hp.eps, hp.lamb)
        return adv + penalty, (mut["batch_stats"], adv, dist, mean_entropy(fd_logits))

    (f_loss, (f_stats, f_adv, f_dist, fd_ent)), f_grads = jax.value_and_grad(
        filter_loss_fn, has_aux=True
    )(f_net.params)
    f_net = apply_gradients(f_net, f_grads, txs["filter"], batch_stats=f_stats)
    metrics.update(
        {
            "filter/loss": f_loss,
            "filter/adversarial": f_adv,
            "filter/distortion": f_dist,
            "filter/fd_entropy": fd_ent,
        }
    )

    # (2) fresh train-mode filter pass (F not updated, its batch statistics are); G update
    z1b = jax.random.normal(k_z1b, (b, hp.noise_dim))
    x1, mut = filt.apply(f_net.variables(), x, z1b, None, train=True, mutable=["batch_stats"])
    f_net = f_net.replace(batch_stats=mut["batch_stats"])
    x1 = jax.lax.stop_gradient(x1)
    if not hp.filter_only:
        g_net, gd_net = nets["generator"], nets["generator_discriminator"]
        s_sampled = jax.random.randint(k_s, (b,), 0, 2)
        z2 = jax.random.normal(k_z2, (b, hp.noise_dim))

        def generator_loss_fn(g_params):
            x2, mut = gen.apply(
                g_net.variables(g_params), x1, z2, s_sampled, train=True, mutable=["batch_stats"]
            )
            gd_logits = gd.apply({"params": gd_net.params}, x2, train=True, rngs={"dropout": k_d2})
            adv = softmax_cross_entropy(gd_logits, s_sampled)
            penalty, dist = distortion_penalty(x2, x, hp.eps, hp.lamb)  # vs the ORIGINAL x
            return adv + penalty, (x2, mut["batch_stats"], adv, dist, gd_logits)

        (g_loss, (x2, g_stats, g_adv, g_dist, gd_fake_logits)), g_grads = jax.value_and_grad(
            generator_loss_fn, has_aux=True
        )(g_net.params)
        g_net = apply_gradients(g_net, g_grads, txs["generator"], batch_stats=g_stats)
        x2 = jax.lax.stop_gradient(x2)
        metrics.update(
            {
                "generator/loss": g_loss,
                "generator/adversarial": g_adv,
                "generator/distortion": g_dist,
                "monitor/gd_sampled_gender_acc": accuracy(gd_fake_logits, s_sampled),
            }
        )

    # (3) FD update on x1 of step 2 with the true gender
    def fd_loss_fn(params):
        logits = fd.apply({"params": params}, x1, train=True, rngs={"dropout": k_d3})
        return softmax_cross_entropy(logits, s), logits

    (fd_loss, fd_logits), fd_grads = jax.value_and_grad(fd_loss_fn, has_aux=True)(fd_net.params)
    fd_net = apply_gradients(fd_net, fd_grads, txs["filter_discriminator"])
    metrics["filter_discriminator/loss"] = fd_loss
    metrics["monitor/fd_acc"] = accuracy(fd_logits, s)
    nets["filter"], nets["filter_discriminator"] = f_net, fd_net
    metrics.update(
        _monitor(monitors, x1, {"digit": batch["digit"], "gender": s}, "monitor/filter")
    )

    # (4) GD update: real x with the true gender, stop_gradient(x2) as fake (class 2)
    if not hp.filter_only:
        fake_labels = jnp.full((b,), FAKE, jnp.int32)

        def gd_loss_fn(params):
            real_logits = gd.apply({"params": params}, x, train=True, rngs={"dropout": k_d4})
            fake_logits = gd.apply({"params": params}, x2, train=True, rngs={"dropout": k_d5})
            loss = 0.5 * (
                softmax_cross_entropy(real_logits, s)
                + softmax_cross_entropy(fake_logits, fake_labels)
            )
            return loss, (real_logits, fake_logits)

        (gd_loss, (real_logits, fake_logits)), gd_grads = jax.value_and_grad(
            gd_loss_fn, has_aux=True
        )(gd_net.params)
        gd_net = apply_gradients(gd_net, gd_grads, txs["generator_discriminator"])
        nets["generator"], nets["generator_discriminator"] = g_net, gd_net
        metrics["generator_discriminator/loss"] = gd_loss
        metrics["monitor/gd_real_acc"] = accuracy(real_logits, s)
        metrics["monitor/gd_fake_acc"] = accuracy(fake_logits, fake_labels)
        metrics.update(
            _monitor(
                monitors,
                x2,
                {"digit": batch["digit"], "gender": s, "sampled_gender": s_sampled},
                "monitor/generator",
            )
        )
    return TrainState(step=state.step + 1, networks=nets), metrics


def pcmelgan_eval_step(
    networks: Mapping[str, NetworkState],
    batch: Mapping[str, Array],
    rng: Array,
    monitors: Mapping[str, Any],
    *,
    hp: PCMelGANHyper,
) -> Metrics:
    """Masked correct counts of the fixed classifiers on x1 = F(x) and x2 = G(x1, s' random),
    both in evaluation mode: ``<filter|generator>_<digit|gender|sampled_gender>_correct``,
    plus the summed distortions and ``count``."""
    k_z1, k_z2, k_s = jax.random.split(rng, 3)
    x = spectrogram_batch(batch["audio"])
    b = x.shape[0]
    mask = batch["mask"]
    filt = hp.filter()
    x1 = filt.apply(
        networks["filter"].variables(), x, jax.random.normal(k_z1, (b, hp.noise_dim)), None
    )
    outputs = {"filter": (x1, None)}
    if not hp.filter_only:
        s_sampled = jax.random.randint(k_s, (b,), 0, 2)
        x2 = hp.generator().apply(
            networks["generator"].variables(), x1, jax.random.normal(k_z2, (b, hp.noise_dim)),
            s_sampled,
        )
        outputs["generator"] = (x2, s_sampled)
    out = {"count": jnp.sum(mask)}
    for prefix, (y, sampled) in outputs.items():
        labels = {"digit": batch["digit"], "gender": batch["gender"]}
        if sampled is not None:
            labels["sampled_gender"] = sampled
        for task, label in labels.items():
            name = f"spec_{task.split('_')[-1]}"
            logits = AlexNet(num_classes=CLASSIFIER_TASKS[name][2]).apply(
                {"params": monitors[name]}, y
            )
            out[f"{prefix}_{task}_correct"] = jnp.sum((jnp.argmax(logits, -1) == label) * mask)
        per = jnp.mean(jnp.abs(y - x), axis=(1, 2, 3))
        out[f"{prefix}_distortion_sum"] = jnp.sum(per * mask)
    return out


# ----------------------------------------------------------------------------- jit wrappers


def with_finite_flag(step: Callable) -> Callable:
    """Adds ``metrics["finite"]`` to a step's output: 1.0 when every metric and every updated
    parameter is finite (so a bad update is never checkpointed)."""

    @functools.wraps(step)
    def wrapped(*args, **kwargs):
        state, metrics = step(*args, **kwargs)
        params = {k: net.params for k, net in state.networks.items()}
        params_ok = jnp.isfinite(optax.global_norm(params))
        metrics["finite"] = (_finite(metrics) & params_ok).astype(jnp.float32)
        return state, metrics

    return wrapped


def jit_step(step: Callable, **static: Any) -> Callable:
    """``jax.jit`` of ``step`` with its keyword settings bound and the state donated."""
    return jax.jit(with_finite_flag(functools.partial(step, **static)), donate_argnums=0)
