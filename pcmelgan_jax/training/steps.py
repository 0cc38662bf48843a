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
from pcmelgan_jax.models import (
    AlexNet,
    AudioNet,
    BatchNorm,
    MelGANDiscriminator,
    MelGANGenerator,
    UNet,
)
from pcmelgan_jax.models.classifiers import softmax_cross_entropy
from pcmelgan_jax.runtime.compilation import compiler_options
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


def classifier_module(name: str, width: float = 1.0) -> AlexNet | AudioNet:
    """The classifier of task ``name`` (a CLASSIFIER_TASKS key) at ``width``."""
    domain, _, k = CLASSIFIER_TASKS[name]
    if domain == "spec":
        return AlexNet(num_classes=k, width=width)
    return AudioNet(num_classes=k, width=width)


def _classifier_logits(
    name: str, params: Any, spec: Array, audio: Array, train: bool, key=None, width: float = 1.0
):
    domain = CLASSIFIER_TASKS[name][0]
    module = classifier_module(name, width)
    rngs = {"dropout": key} if train else None
    if domain == "spec":
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
) -> tuple[TrainState, Metrics]:
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
) -> Metrics:
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


def vocoder_warmup_step(
    state: TrainState, batch: Mapping[str, Array], rng: Array, *, hp: VocoderHyper,
    txs: Mapping[str, Any],
) -> tuple[TrainState, Metrics]:
    """MelGAN warm-up: a G update on the mel-reconstruction loss alone
    (``hp.mel_loss_weight`` x L1(log-mel(G(s)), s)); D is left untouched. About 3x cheaper
    than ``vocoder_step``; metrics ``generator/loss`` and ``mel_l1``."""
    del rng
    gen, g_net = hp.generator(), state.networks["generator"]
    mel = log_mel(batch["audio"])

    def loss_fn(g_params):
        mel_err = l1(log_mel(gen.apply({"params": g_params}, mel)), mel)
        return hp.mel_loss_weight * mel_err, mel_err

    (loss, mel_err), grads = jax.value_and_grad(loss_fn, has_aux=True)(g_net.params)
    networks = {**state.networks, "generator": apply_gradients(g_net, grads, txs["generator"])}
    metrics = {"generator/loss": loss, "mel_l1": mel_err}
    return TrainState(step=state.step + 1, networks=networks), metrics


def vocoder_eval_step(g_params: Any, batch: Mapping[str, Array], *, hp: VocoderHyper) -> Metrics:
    """Masked sum of the per-utterance mel L1 (input log-mel vs re-analysed output)."""
    mel = log_mel(batch["audio"])
    out = log_mel(hp.generator().apply({"params": g_params}, mel))
    per = jnp.mean(jnp.abs(out - mel), axis=(-1, -2))
    return {"mel_l1_sum": jnp.sum(per * batch["mask"]), "count": jnp.sum(batch["mask"])}


# ----------------------------------------------------------------------------- PCMelGAN

# config value -> computation dtype of the networks (parameters and optimizer state are
# float32 either way)
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(name: str, field: str = "compute_dtype") -> Any:
    """The JAX dtype of the config value ``name`` ("float32" or "bfloat16"); ValueError naming
    ``field`` otherwise."""
    if name not in COMPUTE_DTYPES:
        raise ValueError(
            f"{field} must be one of {', '.join(map(repr, COMPUTE_DTYPES))}, got {name!r}"
        )
    return COMPUTE_DTYPES[name]


@dataclasses.dataclass(frozen=True)
class PCMelGANHyper:
    """PCMelGAN loss settings (SPEC 6).

    ``compute_dtype`` "bfloat16" runs F, G, FD, GD and the monitors in bfloat16 with float32
    parameters, batch statistics and optimizer state; their outputs, hence every loss and
    gradient, are float32.
    """

    eps: float = 0.05
    lamb: float = 100.0
    noise_dim: int = 10
    entropy: bool = False  # F maximises FD's entropy instead of the flipped-label CE
    filter_only: bool = False  # the Filter baseline: F and FD only
    discriminator_width: float = 1.0  # AlexNet width of FD and GD (1.0 = the original)
    monitor_widths: tuple = ()  # ((classifier name, AlexNet width), ...) of the monitors
    compute_dtype: str = "float32"  # or "bfloat16" (float32 params and optimizer state)

    def __post_init__(self):
        compute_dtype(self.compute_dtype)  # validates

    @property
    def dtype(self) -> Any:
        """The networks' computation dtype."""
        return compute_dtype(self.compute_dtype)

    def monitor(self, name: str) -> AlexNet:
        """The fixed spectrogram classifier ``name`` ("spec_digit" / "spec_gender")."""
        width = dict(self.monitor_widths).get(name, 1.0)
        return AlexNet(num_classes=CLASSIFIER_TASKS[name][2], width=width, dtype=self.dtype)

    def discriminators(self) -> tuple[AlexNet, AlexNet]:
        """(FD with 2 classes, GD with 3 classes)."""
        w, dt = self.discriminator_width, self.dtype
        return AlexNet(num_classes=2, width=w, dtype=dt), AlexNet(num_classes=3, width=w, dtype=dt)

    def filter(self) -> UNet:
        return UNet(conditional=False, noise_dim=self.noise_dim, dtype=self.dtype)

    def generator(self) -> UNet:
        return UNet(conditional=True, noise_dim=self.noise_dim, dtype=self.dtype)


def _monitor(
    monitors: Mapping[str, Any] | None,
    x: Array,
    labels: Mapping[str, Array],
    prefix: str,
    hp: PCMelGANHyper,
):
    """Fixed classifiers (eval mode) on spectrograms x: ``<prefix>_<task>_acc``."""
    out = {}
    if not monitors:
        return out
    for task, label in labels.items():
        name = f"spec_{task.split('_')[-1]}"
        if name in monitors:
            logits = hp.monitor(name).apply({"params": monitors[name]}, x, train=False)
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
    fd, gd = hp.discriminators()
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
        _monitor(monitors, x1, {"digit": batch["digit"], "gender": s}, "monitor/filter", hp)
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
                hp,
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
            logits = hp.monitor(name).apply({"params": monitors[name]}, y)
            out[f"{prefix}_{task}_correct"] = jnp.sum((jnp.argmax(logits, -1) == label) * mask)
        per = jnp.mean(jnp.abs(y - x), axis=(1, 2, 3))
        out[f"{prefix}_distortion_sum"] = jnp.sum(per * mask)
    return out


def batch_norm_statistics(
    networks: Mapping[str, NetworkState],
    batch: Mapping[str, Array],
    rng: Array,
    *,
    hp: PCMelGANHyper,
) -> dict[str, Any]:
    """One batch's BatchNorm statistics of F (and G), parameters frozen: the training-mode
    passes of SPEC 6 step 2, x1 = F(x, z1) and x2 = G(x1, z2, s' uniform), with z1, z2 and
    s' drawn from the three keys of ``jax.random.split(rng, 3)``.

    Returns ``{"filter"[, "generator"]: statistics}`` shaped like the networks'
    ``batch_stats`` (per layer the batch ``mean`` and the UNBIASED ``var``, the values a
    training step blends into the running statistics with weight ``BatchNorm.momentum``).
    """
    k_z1, k_z2, k_s = jax.random.split(rng, 3)
    x = spectrogram_batch(batch["audio"])
    b = x.shape[0]

    def statistics(module, net, *inputs):
        # running statistics at zero: the update (1 - m) * 0 + m * batch leaves m * batch
        zeroed = {**net.variables(), "batch_stats": jax.tree.map(jnp.zeros_like, net.batch_stats)}
        y, mut = module.apply(zeroed, *inputs, train=True, mutable=["batch_stats"])
        return y, jax.tree.map(lambda v: v / BatchNorm.momentum, mut["batch_stats"])

    z1 = jax.random.normal(k_z1, (b, hp.noise_dim))
    x1, filter_stats = statistics(hp.filter(), networks["filter"], x, z1, None)
    result = {"filter": filter_stats}
    if not hp.filter_only:
        s_sampled = jax.random.randint(k_s, (b,), 0, 2)
        z2 = jax.random.normal(k_z2, (b, hp.noise_dim))
        _, result["generator"] = statistics(
            hp.generator(), networks["generator"], x1, z2, s_sampled
        )
    return result


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
    """``jax.jit`` of ``step`` with its keyword settings bound and the state donated
    (``compiler_options("train")``)."""
    return jax.jit(
        with_finite_flag(functools.partial(step, **static)),
        donate_argnums=0,
        compiler_options=compiler_options("train"),
    )


SEED_STRATEGIES = ("auto", "vmap", "map", "unroll")


# the largest per-seed batch that ``auto`` vmaps on an accelerator (4 seeds, the PCMelGAN
# step, vmap vs sequential throughput: one H200 with XLA's grouped convolutions 1.85x at
# batch 16, 1.29x at 32, 0.58x at 128, bench/measured/nvidia-h200; one H100 at batch 16,
# 2.83x with those and a 1.30x faster vmapped step with ``conv_nd``'s batched matmuls,
# bench/measured/nvidia-h100; larger batches not yet measured with the matmuls)
VMAP_MAX_BATCH = 32


def resolve_seed_strategy(strategy: str, batch_size: int | None = None) -> str:
    """``"vmap"``, ``"map"`` or ``"unroll"``. ``"auto"`` is ``unroll`` on CPU (4 seeds at
    batch 8 on 2 cores: unroll 1.06x the sequential throughput, vmap 0.85x with XLA's grouped
    convolutions and with ``layers.conv_nd``'s batched matmuls alike, and a ``lax.map`` loop
    was slower still); on an accelerator ``vmap`` up to a per-seed
    ``batch_size`` of ``VMAP_MAX_BATCH`` (None: unknown, vmap), where it pays, else
    ``unroll``."""
    if strategy not in SEED_STRATEGIES:
        raise ValueError(f"seeds_strategy must be one of {SEED_STRATEGIES}, not {strategy!r}")
    if strategy == "auto":
        if jax.default_backend() == "cpu":
            return "unroll"
        return "vmap" if batch_size is None or batch_size <= VMAP_MAX_BATCH else "unroll"
    return strategy


def seeds_step(step: Callable, strategy: str = "vmap") -> Callable:
    """``step`` over a leading seed axis, in one program.

    ``(state, batch, rng, *extra) -> (state, metrics)`` where ``state.networks`` leaves are
    (N, ...), ``state.step`` is one shared scalar, ``batch`` leaves are (N, B, ...), ``rng``
    is (N,) keys and ``extra`` (e.g. the fixed monitor classifiers) is shared by every seed
    (not batched); the metrics come back as (N,) arrays. Seed i computes ``step`` on
    ``state.networks[i]``, ``batch[i]`` and ``rng[i]``. ``strategy`` ``"vmap"`` vectorises
    with ``jax.vmap`` (equal to the unbatched step up to rounding: vmap batches the
    convolutions); ``"map"`` loops over the seeds inside the program with ``jax.lax.map``;
    ``"unroll"`` writes the N unbatched steps one after another into the program (the
    unbatched step's arithmetic; compile time grows with N; the choice for CPU).
    """
    strategy = resolve_seed_strategy(strategy)
    axes = TrainState(step=None, networks=0)  # type: ignore[arg-type]

    @functools.wraps(step)
    def vectorised(state, batch, rng, *extra):
        def one(s, b, r):
            return step(s, b, r, *extra)

        return jax.vmap(one, in_axes=(axes, 0, 0), out_axes=(axes, 0))(state, batch, rng)

    @functools.wraps(step)
    def mapped(state, batch, rng, *extra):
        def one(args):
            networks, b, r = args
            new, metrics = step(TrainState(step=state.step, networks=networks), b, r, *extra)
            return new.networks, metrics

        networks, metrics = jax.lax.map(one, (state.networks, batch, rng))
        return TrainState(step=state.step + 1, networks=networks), metrics

    @functools.wraps(step)
    def unrolled(state, batch, rng, *extra):
        outs = []
        for i in range(rng.shape[0]):
            networks = jax.tree.map(lambda x, i=i: x[i], state.networks)
            b = jax.tree.map(lambda x, i=i: x[i], batch)
            new, metrics = step(TrainState(step=state.step, networks=networks), b, rng[i], *extra)
            outs.append((new.networks, metrics))
        networks, metrics = jax.tree.map(lambda *xs: jnp.stack(xs), *outs)
        return TrainState(step=state.step + 1, networks=networks), metrics

    return {"vmap": vectorised, "map": mapped, "unroll": unrolled}[strategy]


def jit_seeds_step(step: Callable, strategy: str = "vmap", **static: Any) -> Callable:
    """``jax.jit`` of ``seeds_step(step, strategy)`` (keyword settings bound, state donated):
    N seeds in one program, each with its own finite flag (``metrics["finite"]`` (N,))."""
    return jax.jit(
        seeds_step(with_finite_flag(functools.partial(step, **static)), strategy),
        donate_argnums=0,
        compiler_options=compiler_options("train"),
    )
