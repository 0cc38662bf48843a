"""PCMelGAN's networks, settings and train step: filter F, generator G and their
discriminators FD (2 classes: the gender) and GD (3 classes: female, male, fake).

Each batch runs one update per network, in this order (``pcmelgan_step``):

1. F, to fool FD (flipped-gender cross-entropy, or FD's entropy with ``entropy``) while
   staying within ``eps`` of x (the distortion hinge), with ``mean_gap_weight`` also closing
   the gap between the batch's male and female mean outputs and with ``digit_weight`` the
   fixed digit classifier's cross-entropy (the content kept by more than proximity);
2. a fresh train-mode F pass gives x1 (F's batch statistics move, its weights do not);
   G, from x1 (from x itself with ``generator_input`` "original"; only its band means with
   ``generator_input_bands``; with ``generator_digit_condition`` also the digit the fixed
   classifier recognises in it) and a sampled gender s', to make GD predict s', its
   distortion measured against the ORIGINAL x (and its true-gender mean gap with
   ``mean_gap_weight``, the digit loss with ``digit_weight``, the attacker's term of step 5
   with ``attacker_weight``, the fixed gender classifier's cross-entropy against s' with
   ``sampled_gender_weight``);
3. FD on stop_gradient(x1) with the true gender (with ``fd_reset_every`` = N > 0, FD and
   its optimizer state start afresh after every N-th step: an adversary F has not tracked);
4. GD on real x with the true gender and on stop_gradient(x2) as fake, weight 0.5 each;
5. with ``attacker_weight`` > 0, the gender attacker A on stop_gradient(x2) with the TRUE
   gender: what an informed attacker does. G's loss in step 2 then adds ``attacker_weight``
   times CE(A(x2), s'): G must make the attacker of the moment read the SAMPLED gender,
   which is independent of the true one (nothing else in the paper's losses looks for the
   true gender in x2).

With ``filter_only`` only F and FD train (the Filter baseline).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from pcmelgan_jax.models import AlexNet, BatchNorm, LinearClassifier, UNet
from pcmelgan_jax.models.unet import (
    ALL_BINS,
    GENERATOR_SOURCES,
    check_bands,
    generator_input,
)
from pcmelgan_jax.training.classifiers import CLASSIFIER_TASKS, spectrogram_batch
from pcmelgan_jax.training.losses import (
    FAKE,
    accuracy,
    distortion_penalty,
    filter_adversarial_loss,
    generator_discriminator_loss,
    label_mean_gap,
    mean_entropy,
    softmax_cross_entropy,
)
from pcmelgan_jax.training.state import NetworkState, TrainState, apply_gradients

Array = jax.Array
Metrics = dict[str, Array]

# config value -> computation dtype of the networks (parameters and optimizer state are
# float32 either way)
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
RESET_SALT = 0x5EED  # folded into the step's key for FD's re-initialisation (other keys kept)
ATTACKER_ARCHS = ("alexnet", "linear")
OUTPUT_LEVELS = ("input", "training")  # generator_output_level
ATTACKER_SALT = 0xA77  # folded into the step's key for the attacker's dropout (other keys kept)


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
    """PCMelGAN's loss settings and networks.

    ``compute_dtype`` "bfloat16" runs F, G, FD, GD and the monitors in bfloat16 with float32
    parameters, batch statistics and optimizer state; their outputs, hence every loss and
    gradient, are float32.
    """

    eps: float = 0.05
    lamb: float = 100.0
    noise_dim: int = 10
    entropy: bool = False  # F maximises FD's entropy instead of the flipped-label CE
    # weight of the gender mean gap (losses.label_mean_gap) of F's and G's outputs in their
    # losses (0: the original's losses)
    mean_gap_weight: float = 0.0
    fd_reset_every: int = 0  # > 0: FD re-initialised after every N-th step (0: never)
    # weight of the fixed digit classifier's cross-entropy on F's and G's outputs with the
    # true digit in their losses (0: the original's losses, content kept by eps alone)
    digit_weight: float = 0.0
    # > 0: a gender attacker trained on G's output with the true gender; G's loss adds this
    # times CE(attacker(x2), s') (0: no attacker, the original's losses)
    attacker_weight: float = 0.0
    attacker_arch: str = "alexnet"  # the attacker: "alexnet" (FD's) or "linear" (logistic)
    # weight of the fixed gender classifier's cross-entropy on G's output against the SAMPLED
    # gender in G's loss (0: the original's losses, s' taught by GD alone)
    sampled_gender_weight: float = 0.0
    # > 0: G sees its input reduced to this many mel band means (models.unet.band_means) of
    # the mel bins [start, stop) of generator_input_bins, a content bottleneck (0: the whole
    # input, the original)
    generator_input_bands: int = 0
    generator_input_bins: tuple[int, int] = ALL_BINS
    # > 0: that band contour further reduced to its loud frames, +1 within this depth of each
    # band's peak over time and -1 elsewhere (models.unet.loudness_mask; 0: the contour)
    generator_input_mask_depth: float = 0.0
    # what G is fed: "filtered" (F's output x1, the original) or "original" (x itself)
    generator_input: str = "filtered"
    # the (mean, std) G's output is de-normalised with into log-mels: "input" (each
    # utterance's own, the original) or "training" (the training speakers' average, exported
    # with G: the anonymised level and dynamic range say nothing of the speaker)
    generator_output_level: str = "input"
    # G also conditioned on the digit the fixed spectrogram digit classifier recognises in
    # its input (one embedded label, like s'; its weights copied into G, frozen)
    generator_digit_condition: bool = False
    filter_only: bool = False  # the Filter baseline: F and FD only
    discriminator_width: float = 1.0  # AlexNet width of FD and GD (1.0 = the original)
    monitor_widths: tuple = ()  # ((classifier name, AlexNet width), ...) of the monitors
    compute_dtype: str = "float32"  # or "bfloat16" (float32 params and optimizer state)

    def __post_init__(self):
        compute_dtype(self.compute_dtype)  # validates
        if self.attacker_arch not in ATTACKER_ARCHS:
            raise ValueError(f"attacker_arch must be one of {', '.join(map(repr, ATTACKER_ARCHS))}"
                             f", got {self.attacker_arch!r}")
        for field in ("attacker_weight", "sampled_gender_weight", "generator_digit_condition"):
            if getattr(self, field) > 0 and self.filter_only:
                raise ValueError(f"{field} acts on G: it needs filter_only False")
        if self.generator_input_bands:
            check_bands(self.generator_input_bands, self.generator_input_bins)
        elif self.generator_input_bins != ALL_BINS:
            raise ValueError("generator_input_bins needs generator_input_bands > 0")
        if self.generator_input_mask_depth < 0 or (self.generator_input_mask_depth
                                                   and not self.generator_input_bands):
            raise ValueError("generator_input_mask_depth must be >= 0 and needs "
                             "generator_input_bands > 0")
        if self.generator_output_level not in OUTPUT_LEVELS:
            raise ValueError(f"generator_output_level must be one of {OUTPUT_LEVELS}, got "
                             f"{self.generator_output_level!r}")
        if self.generator_output_level != "input" and self.filter_only:
            raise ValueError("generator_output_level acts on G: it needs filter_only False")
        if self.generator_input not in GENERATOR_SOURCES:
            raise ValueError(f"generator_input must be one of {GENERATOR_SOURCES}, got "
                             f"{self.generator_input!r}")

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

    def attacker(self) -> AlexNet | LinearClassifier:
        """The gender attacker on G's output (``attacker_weight``)."""
        if self.attacker_arch == "linear":
            return LinearClassifier(num_classes=2, dtype=self.dtype)
        return self.discriminators()[0]

    def filter(self) -> UNet:
        return UNet(conditional=False, noise_dim=self.noise_dim, dtype=self.dtype)

    def generator(self) -> UNet:
        digit = {}
        if self.generator_digit_condition:  # the fixed digit classifier's architecture
            digit = {"digit_classes": CLASSIFIER_TASKS["spec_digit"][2],
                     "digit_classifier_width": dict(self.monitor_widths).get("spec_digit", 1.0)}
        return UNet(conditional=True, noise_dim=self.noise_dim, dtype=self.dtype,
                    input_bands=self.generator_input_bands, input_bins=self.generator_input_bins,
                    input_mask_depth=self.generator_input_mask_depth,
                    source=self.generator_input, **digit)


def hyper(config: Any, monitor_widths: dict[str, float] | None = None) -> PCMelGANHyper:
    """The step settings of ``config``; ``monitor_widths`` {classifier name: AlexNet width}."""
    return PCMelGANHyper(
        eps=float(config.eps),
        lamb=float(config.lamb),
        noise_dim=int(config.noise_dim),
        entropy=bool(config.entropy),
        mean_gap_weight=float(config.get("mean_gap_weight", 0.0)),
        fd_reset_every=int(config.get("fd_reset_every", 0)),
        digit_weight=float(config.get("digit_weight", 0.0)),
        attacker_weight=float(config.get("attacker_weight", 0.0)),
        attacker_arch=str(config.get("attacker_arch", "alexnet")),
        sampled_gender_weight=float(config.get("sampled_gender_weight", 0.0)),
        generator_input_bands=int(config.get("generator_input_bands", 0)),
        generator_input_bins=tuple(int(b) for b in config.get("generator_input_bins", ALL_BINS)),
        generator_input_mask_depth=float(config.get("generator_input_mask_depth", 0.0)),
        generator_input=str(config.get("generator_input", "filtered")),
        generator_output_level=str(config.get("generator_output_level", "input")),
        generator_digit_condition=bool(config.get("generator_digit_condition", False)),
        filter_only=bool(config.filter_only),
        discriminator_width=float(config.get("discriminator_width", 1.0)),
        monitor_widths=tuple(sorted((monitor_widths or {}).items())),
        compute_dtype=str(config.get("compute_dtype", "float32")),
    )


def _noise(key: Array, x: Array, hp: PCMelGANHyper) -> Array:
    return jax.random.normal(key, (x.shape[0], hp.noise_dim))


def _dropout(key: Array) -> dict[str, Array]:
    return {"dropout": key}


def fixed_classifier_loss(y: Array, name: str, target: tuple[Any, Array] | None,
                          hp: PCMelGANHyper) -> Array:
    """The fixed classifier ``name``'s (eval mode) cross-entropy on ``y``, ``target`` = (its
    parameters, the labels); 0 when ``target`` is None."""
    if target is None:
        return jnp.zeros((), jnp.float32)
    params, labels = target
    logits = hp.monitor(name).apply({"params": params}, y, train=False)
    return softmax_cross_entropy(logits, labels)


def attacker_loss(x2: Array, sampled: Array, attacker: tuple[Any, Array] | None,
                  hp: PCMelGANHyper) -> Array:
    """The gender attacker's cross-entropy on ``x2`` against the SAMPLED gender, ``attacker`` =
    (its parameters, its dropout key), in training mode; 0 when ``attacker`` is None."""
    if attacker is None:
        return jnp.zeros((), jnp.float32)
    params, key = attacker
    logits = hp.attacker().apply({"params": params}, x2, train=True, rngs=_dropout(key))
    return softmax_cross_entropy(logits, sampled)


def update_filter(
    f_net: NetworkState, fd_params: Any, x: Array, gender: Array, keys: tuple[Array, Array],
    *, hp: PCMelGANHyper, tx: Any, content: tuple[Any, Array] | None = None,
) -> tuple[NetworkState, Metrics]:
    """F's update against FD (``fd_params``, train mode): adversarial loss + distortion hinge
    (+ ``hp.digit_weight`` times the digit content loss with ``content``). ``keys``: (F's
    noise, FD's dropout)."""
    k_noise, k_dropout = keys
    filt, fd = hp.filter(), hp.discriminators()[0]
    z = _noise(k_noise, x, hp)

    def loss_fn(f_params):
        x1, mut = filt.apply(
            f_net.variables(f_params), x, z, None, train=True, mutable=["batch_stats"]
        )
        fd_logits = fd.apply({"params": fd_params}, x1, train=True, rngs=_dropout(k_dropout))
        adv = filter_adversarial_loss(fd_logits, gender, hp.entropy)
        penalty, dist = distortion_penalty(x1, x, hp.eps, hp.lamb)
        gap = label_mean_gap(x1, gender)
        digit = fixed_classifier_loss(x1, "spec_digit", content, hp)
        loss = adv + penalty + hp.mean_gap_weight * gap + hp.digit_weight * digit
        return loss, (mut["batch_stats"], adv, dist, mean_entropy(fd_logits), gap, digit)

    (loss, (stats, adv, dist, fd_entropy, gap, digit)), grads = jax.value_and_grad(
        loss_fn, has_aux=True
    )(f_net.params)
    metrics = {"filter/loss": loss, "filter/adversarial": adv, "filter/distortion": dist,
               "filter/fd_entropy": fd_entropy, "filter/gender_mean_gap": gap}
    if content is not None:
        metrics["filter/digit_content"] = digit
    return apply_gradients(f_net, grads, tx, batch_stats=stats), metrics


def filter_pass(
    f_net: NetworkState, x: Array, key: Array, hp: PCMelGANHyper
) -> tuple[NetworkState, Array]:
    """A train-mode F pass with fresh noise: (F with its batch statistics moved,
    stop_gradient(x1))."""
    x1, mut = hp.filter().apply(
        f_net.variables(), x, _noise(key, x, hp), None, train=True, mutable=["batch_stats"]
    )
    return f_net.replace(batch_stats=mut["batch_stats"]), jax.lax.stop_gradient(x1)


def update_generator(
    g_net: NetworkState, gd_params: Any, g_input: Array, x: Array, gender: Array,
    keys: tuple[Array, Array, Array], *, hp: PCMelGANHyper, tx: Any,
    content: tuple[Any, Array] | None = None, attacker: tuple[Any, Array] | None = None,
    gender_classifier: Any | None = None,
) -> tuple[NetworkState, Array, Array, Metrics]:
    """G's update: x2 = G(g_input, z, s') (``g_input``: x1, or x with ``generator_input``
    "original") should make GD (``gd_params``, train mode) predict the sampled gender s',
    within ``eps`` of the ORIGINAL x (and, with ``mean_gap_weight``, keep no mean gap for the
    TRUE ``gender``; with ``content``, keep the digit for the fixed classifier; with
    ``attacker`` = (its params, its dropout key), make the gender attacker read s'; with
    ``gender_classifier`` (the fixed one's params), make it read s'). ``keys``: (s', G's
    noise, GD's dropout). Returns (G, stop_gradient(x2), s', metrics)."""
    k_gender, k_noise, k_dropout = keys
    gen, gd = hp.generator(), hp.discriminators()[1]
    sampled = jax.random.randint(k_gender, (x.shape[0],), 0, 2)
    z = _noise(k_noise, x, hp)

    def loss_fn(g_params):
        x2, mut = gen.apply(
            g_net.variables(g_params), g_input, z, sampled, train=True, mutable=["batch_stats"]
        )
        gd_logits = gd.apply({"params": gd_params}, x2, train=True, rngs=_dropout(k_dropout))
        adv = softmax_cross_entropy(gd_logits, sampled)
        penalty, dist = distortion_penalty(x2, x, hp.eps, hp.lamb)
        gap = label_mean_gap(x2, gender)
        digit = fixed_classifier_loss(x2, "spec_digit", content, hp)
        fooled = attacker_loss(x2, sampled, attacker, hp)
        imposed = fixed_classifier_loss(
            x2, "spec_gender", None if gender_classifier is None else (gender_classifier, sampled),
            hp)
        loss = (adv + penalty + hp.mean_gap_weight * gap + hp.digit_weight * digit
                + hp.attacker_weight * fooled + hp.sampled_gender_weight * imposed)
        return loss, (x2, mut["batch_stats"], adv, dist, gd_logits, gap, digit, fooled, imposed)

    (loss, (x2, stats, adv, dist, gd_logits, gap, digit, fooled, imposed)), grads = (
        jax.value_and_grad(loss_fn, has_aux=True)(g_net.params))
    metrics = {"generator/loss": loss, "generator/adversarial": adv,
               "generator/distortion": dist, "generator/gender_mean_gap": gap,
               "monitor/gd_sampled_gender_acc": accuracy(gd_logits, sampled)}
    if content is not None:
        metrics["generator/digit_content"] = digit
    if attacker is not None:
        metrics["generator/attacker_sampled"] = fooled
    if gender_classifier is not None:
        metrics["generator/fixed_sampled_gender"] = imposed
    g_net = apply_gradients(g_net, grads, tx, batch_stats=stats)
    return g_net, jax.lax.stop_gradient(x2), sampled, metrics


def update_gender_classifier(
    net: NetworkState, model: Any, y: Array, gender: Array, key: Array, *, tx: Any,
    names: tuple[str, str] = ("filter_discriminator/loss", "monitor/fd_acc"),
) -> tuple[NetworkState, Metrics]:
    """A 2-class gender classifier's update (FD on x1, the attacker on x2): ``model`` predicts
    the true gender from ``y`` (``key``: dropout). ``names``: (loss metric, accuracy metric)."""

    def loss_fn(params):
        logits = model.apply({"params": params}, y, train=True, rngs=_dropout(key))
        return softmax_cross_entropy(logits, gender), logits

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(net.params)
    metrics = {names[0]: loss, names[1]: accuracy(logits, gender)}
    return apply_gradients(net, grads, tx), metrics


def reset_key(rng: Array, step: Array) -> Array:
    """The key of FD's re-initialisation after ``step`` (``rng``: the run's key)."""
    return jax.random.fold_in(jax.random.fold_in(rng, step), RESET_SALT)


def reset_filter_discriminator(
    fd_net: NetworkState, x1: Array, key: Array, reset: Array, *, hp: PCMelGANHyper, tx: Any
) -> NetworkState:
    """FD with freshly initialised parameters (from ``key``) and optimizer state where
    ``reset`` is true, else ``fd_net`` unchanged."""
    params = hp.discriminators()[0].init({"params": key}, x1[:1], train=False)["params"]
    fresh = NetworkState(params=params, opt_state=tx.init(params), batch_stats=fd_net.batch_stats)
    return jax.tree.map(lambda new, old: jnp.where(reset, new, old), fresh, fd_net)


def update_generator_discriminator(
    gd_net: NetworkState, x: Array, x2: Array, gender: Array, keys: tuple[Array, Array],
    *, hp: PCMelGANHyper, tx: Any,
) -> tuple[NetworkState, Metrics]:
    """GD's update: the true gender on real x, FAKE on x2. ``keys``: dropout on x, on x2."""
    gd = hp.discriminators()[1]
    k_real, k_fake = keys

    def loss_fn(params):
        real_logits = gd.apply({"params": params}, x, train=True, rngs=_dropout(k_real))
        fake_logits = gd.apply({"params": params}, x2, train=True, rngs=_dropout(k_fake))
        loss = generator_discriminator_loss(real_logits, fake_logits, gender)
        return loss, (real_logits, fake_logits)

    (loss, (real_logits, fake_logits)), grads = jax.value_and_grad(
        loss_fn, has_aux=True
    )(gd_net.params)
    metrics = {
        "generator_discriminator/loss": loss,
        "monitor/gd_real_acc": accuracy(real_logits, gender),
        "monitor/gd_fake_acc": accuracy(fake_logits, jnp.full_like(gender, FAKE)),
    }
    return apply_gradients(gd_net, grads, tx), metrics


def monitor_metrics(
    monitors: Mapping[str, Any] | None, x: Array, labels: Mapping[str, Array], prefix: str,
    hp: PCMelGANHyper,
) -> Metrics:
    """The fixed classifiers' (eval mode) accuracies on spectrograms x:
    ``<prefix>_<task>_acc`` for each task of ``labels`` ("digit", "gender", "sampled_gender")."""
    out = {}
    for task, label in labels.items():
        name = f"spec_{task.split('_')[-1]}"
        if monitors and name in monitors:
            logits = hp.monitor(name).apply({"params": monitors[name]}, x, train=False)
            out[f"{prefix}_{task}_acc"] = accuracy(logits, label)
    return out


def _fixed_params(monitors: Mapping[str, Any] | None, name: str, field: str,
                  weight: float) -> Any | None:
    """The fixed classifier ``name``'s parameters when the loss term ``field`` is on
    (``weight`` > 0), else None; ValueError naming the field when the classifier is missing."""
    if weight <= 0:
        return None
    if not monitors or name not in monitors:
        raise ValueError(f"{field} > 0 needs the fixed classifier {name} (monitors)")
    return monitors[name]


def pcmelgan_step(
    state: TrainState,
    batch: Mapping[str, Array],
    rng: Array,
    monitors: Mapping[str, Any] | None = None,
    *,
    hp: PCMelGANHyper,
    txs: Mapping[str, Any],
) -> tuple[TrainState, Metrics]:
    """One batch: the F, G, FD and GD updates in the module docstring's order. ``rng`` is the
    run's key (``state.step`` is folded in); ``monitors`` {"spec_digit", "spec_gender":
    AlexNet params} (optional) give the fixed classifiers' accuracies."""
    nets = dict(state.networks)
    run_rng = rng
    rng = jax.random.fold_in(rng, state.step)
    k_z1, k_z1b, k_z2, k_s, k_d1, k_d2, k_d3, k_d4, k_d5 = jax.random.split(rng, 9)
    attacking = hp.attacker_weight > 0
    k_a1, k_a2 = jax.random.split(jax.random.fold_in(rng, ATTACKER_SALT))
    x, s = spectrogram_batch(batch["audio"]), batch["gender"]
    labels = {"digit": batch["digit"], "gender": s}
    digit_classifier = _fixed_params(monitors, "spec_digit", "digit_weight", hp.digit_weight)
    content = None if digit_classifier is None else (digit_classifier, batch["digit"])
    gender_classifier = _fixed_params(monitors, "spec_gender", "sampled_gender_weight",
                                      hp.sampled_gender_weight)

    nets["filter"], metrics = update_filter(
        nets["filter"], nets["filter_discriminator"].params, x, s, (k_z1, k_d1),
        hp=hp, tx=txs["filter"], content=content)
    nets["filter"], x1 = filter_pass(nets["filter"], x, k_z1b, hp)
    if not hp.filter_only:
        nets["generator"], x2, sampled, g_metrics = update_generator(
            nets["generator"], nets["generator_discriminator"].params,
            generator_input(hp.generator(), x, x1), x, s,
            (k_s, k_z2, k_d2), hp=hp, tx=txs["generator"], content=content,
            attacker=(nets["gender_attacker"].params, k_a1) if attacking else None,
            gender_classifier=gender_classifier)
        metrics.update(g_metrics)
    nets["filter_discriminator"], fd_metrics = update_gender_classifier(
        nets["filter_discriminator"], hp.discriminators()[0], x1, s, k_d3,
        tx=txs["filter_discriminator"])
    metrics.update(fd_metrics)
    if hp.fd_reset_every > 0:
        nets["filter_discriminator"] = reset_filter_discriminator(
            nets["filter_discriminator"], x1, reset_key(run_rng, state.step),
            (state.step + 1) % hp.fd_reset_every == 0, hp=hp, tx=txs["filter_discriminator"])
    metrics.update(monitor_metrics(monitors, x1, labels, "monitor/filter", hp))
    if not hp.filter_only:
        nets["generator_discriminator"], gd_metrics = update_generator_discriminator(
            nets["generator_discriminator"], x, x2, s, (k_d4, k_d5),
            hp=hp, tx=txs["generator_discriminator"])
        metrics.update(gd_metrics)
        metrics.update(monitor_metrics(
            monitors, x2, {**labels, "sampled_gender": sampled}, "monitor/generator", hp))
    if attacking:
        nets["gender_attacker"], a_metrics = update_gender_classifier(
            nets["gender_attacker"], hp.attacker(), x2, s, k_a2, tx=txs["gender_attacker"],
            names=("gender_attacker/loss", "monitor/attacker_acc"))
        metrics.update(a_metrics)
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
    x1 = hp.filter().apply(networks["filter"].variables(), x, _noise(k_z1, x, hp), None)
    outputs = {"filter": (x1, None)}
    if not hp.filter_only:
        s_sampled = jax.random.randint(k_s, (b,), 0, 2)
        g = hp.generator()
        x2 = g.apply(networks["generator"].variables(), generator_input(g, x, x1),
                     _noise(k_z2, x, hp), s_sampled)
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
    passes of the step's F pass and G update, x1 = F(x, z1) and x2 = G(x1, z2, s' uniform),
    with z1, z2 and s' drawn from the three keys of ``jax.random.split(rng, 3)``.

    Returns ``{"filter"[, "generator"]: statistics}`` shaped like the networks'
    ``batch_stats`` (per layer the batch ``mean`` and the UNBIASED ``var``, the values a
    training step blends into the running statistics with weight ``BatchNorm.momentum``).
    """
    k_z1, k_z2, k_s = jax.random.split(rng, 3)
    x = spectrogram_batch(batch["audio"])

    def statistics(module, net, *inputs):
        # running statistics at zero: the update (1 - m) * 0 + m * batch leaves m * batch
        zeroed = {**net.variables(), "batch_stats": jax.tree.map(jnp.zeros_like, net.batch_stats)}
        y, mut = module.apply(zeroed, *inputs, train=True, mutable=["batch_stats"])
        return y, jax.tree.map(lambda v: v / BatchNorm.momentum, mut["batch_stats"])

    x1, filter_stats = statistics(hp.filter(), networks["filter"], x, _noise(k_z1, x, hp), None)
    result = {"filter": filter_stats}
    if not hp.filter_only:
        s_sampled = jax.random.randint(k_s, (x.shape[0],), 0, 2)
        g = hp.generator()
        _, result["generator"] = statistics(
            g, networks["generator"], generator_input(g, x, x1), _noise(k_z2, x, hp), s_sampled
        )
    return result
