"""Stage ``pcmelgan``: trains F, G, FD and GD (``pcmelgan.pcmelgan_step``), or with
``config.filter_only`` F and FD only (the Filter baseline).

``config.classifiers_workdir`` (required) provides the fixed spectrogram classifiers
(``models/spec_digit``, ``models/spec_gender``) for the monitoring accuracies and the
evaluation; ``config.vocoder_workdir`` (optional, ``models/generator``) vocodes the sample
wavs. Exports ``WORKDIR/models/{filter, generator, filter_discriminator,
generator_discriminator}`` at the end (no generator or GD in filter_only).

``config.num_seeds`` N > 1 trains the N independent runs of the seeds ``config.seed + i`` in
one program (``seeds.jit_step``; the fixed monitors shared). One checkpoint in
``WORKDIR/checkpoints`` holds all seeds; at the end each seed is exported as its own run
``WORKDIR/seed_<S>/`` (``models/``, ``config.json``, ``final_metrics.json``), so
``eval.py --workdir WORKDIR`` evaluates the N runs (mean and standard deviation over seeds).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from pcmelgan_jax import workdir as run_layout
from pcmelgan_jax.audio import denormalize, mel_features, write_audio
from pcmelgan_jax.checkpointing import load_model, save_model
from pcmelgan_jax.logging_utils import MetricWriter, spectrogram_panel
from pcmelgan_jax.models import AlexNet, MelGANGenerator
from pcmelgan_jax.models.unet import (
    DIGIT_CLASSIFIER,
    GENERATOR_FIELDS,
    UNet,
    generator_input,
    output_statistics,
)
from pcmelgan_jax.runtime import compilation, sharding
from pcmelgan_jax.training import seeds as seeds_lib
from pcmelgan_jax.training import stage as stage_lib
from pcmelgan_jax.training.classifiers import CLASSIFIER_TASKS
from pcmelgan_jax.training.pcmelgan import (
    PCMelGANHyper,
    batch_norm_statistics,
    hyper,
    pcmelgan_eval_step,
    pcmelgan_step,
)
from pcmelgan_jax.training.state import (
    TrainState,
    adam,
    init_variables,
    network_state,
    new_train_state,
)

# exported name -> (registry network, arch); a new network goes last (its place in this
# order picks its initialisation key, so the others keep theirs)
NETWORKS = {
    "filter": ("unet_filter", "unet"),
    "filter_discriminator": ("alexnet", {"num_classes": 2}),
    "generator": ("unet_generator", "unet"),
    "generator_discriminator": ("alexnet", {"num_classes": 3}),
    "gender_attacker": ("alexnet", {"num_classes": 2}),
}

# the random stream of the BatchNorm recalibration's noise and sampled genders, per seed
BN_RECALIBRATION_STREAM = 0xB4


def network_names(hp: PCMelGANHyper) -> list[str]:
    """The trained networks: F and FD, G and GD unless ``filter_only``, and the gender
    attacker with ``attacker_weight`` > 0."""
    if hp.filter_only:
        return ["filter", "filter_discriminator"]
    names = ["filter", "filter_discriminator", "generator", "generator_discriminator"]
    return names + ["gender_attacker"] * (hp.attacker_weight > 0)


def _arch(name: str, hp: PCMelGANHyper, output_level: tuple[float, float] | None = None
          ) -> tuple[str, dict]:
    network, arch = NETWORKS[name]
    if name == "gender_attacker" and hp.attacker_arch == "linear":
        return "linear_classifier", {"num_classes": 2}
    if arch == "unet":
        arch = {"noise_dim": hp.noise_dim}
        if name == "generator":  # G's settings, where they are not the U-Net's defaults
            g = hp.generator().clone(output_level=output_level)
            default = UNet(conditional=True)
            arch.update({f: getattr(g, f) for f in GENERATOR_FIELDS
                         if getattr(g, f) != getattr(default, f)})
        return network, arch
    arch = dict(arch)
    if hp.discriminator_width != 1.0:
        arch["width"] = hp.discriminator_width
    return network, arch


@functools.partial(compilation.jit, kind="inference")
def _level_sums(audio: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
    _, mean, std = mel_features(audio)
    return {"mean": jnp.sum(mean * mask), "std": jnp.sum(std * mask), "count": jnp.sum(mask)}


def training_level(config: Any, mesh) -> tuple[float, float]:
    """The training speakers' average log-mel (mean, std), ``audio.normalize``'s statistics
    over one pass of the training split (``generator_output_level`` "training")."""
    sums = None
    for batch in stage_lib.eval_batches(config, mesh, "train"):
        sums = stage_lib.sum_metrics(sums, _level_sums(batch["audio"], batch["mask"]))
    if sums is None:
        raise ValueError(f"{config.data_dir}: the training split is empty")
    sums = jax.device_get(sums)
    return float(sums["mean"] / sums["count"]), float(sums["std"] / sums["count"])


def load_monitors(classifiers_workdir: str) -> tuple[dict[str, Any], dict[str, float]]:
    """({"spec_digit", "spec_gender": AlexNet params}, {name: AlexNet width}) from a
    classifiers workdir."""
    root = stage_lib.require_path(classifiers_workdir, "classifiers_workdir")
    monitors, widths = {}, {}
    for name in ("spec_digit", "spec_gender"):
        path = run_layout.model_dir(root, name)
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
        widths[name] = float(module.width)
    return monitors, widths


def with_digit_classifier(variables: Mapping[str, Any], digit_params: Any) -> dict[str, Any]:
    """A digit-conditioned G's initial ``variables`` with its frozen digit classifier's
    weights those of the fixed spectrogram digit classifier (``digit_params``)."""
    params = dict(variables["params"])
    shapes = jax.tree.map(jax.numpy.shape, (params[DIGIT_CLASSIFIER], digit_params))
    if shapes[0] != shapes[1]:
        raise ValueError("the fixed digit classifier does not fit G's digit classifier")
    # a copy: the state is donated to the step, the fixed classifier is not
    params[DIGIT_CLASSIFIER] = jax.tree.map(np.array, digit_params)
    return {**variables, "params": params}


def load_vocoder(vocoder_workdir: str) -> tuple[MelGANGenerator, Any] | None:
    """(MelGAN generator, params) from ``vocoder_workdir/models/generator``; None if unset."""
    if not vocoder_workdir:
        return None
    root = stage_lib.require_path(vocoder_workdir, "vocoder_workdir")
    path = run_layout.model_dir(root, "generator")
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"vocoder generator not found: {path} (train the vocoder stage into {root}, or "
            "import a PyTorch MelGAN with `pcmelgan-jax import-torch`)"
        )
    module, variables = load_model(path)
    if not isinstance(module, MelGANGenerator):
        raise ValueError(f"{path}: not a MelGAN generator")
    return module, variables["params"]


def seed_run_config(config: Any, seed: int) -> dict:
    """The JSON config of seed ``seed`` of a multi-seed run: that of the equivalent single run
    (``seed``, ``num_seeds`` 1) with the data, classifiers and vocoder paths made absolute."""
    out = stage_lib.config_to_json(config)
    out.update(seed=int(seed), num_seeds=1)
    for field in ("data_dir", "classifiers_workdir", "vocoder_workdir"):
        if out.get(field):
            out[field] = os.path.abspath(os.path.expanduser(out[field]))
    return out


class Programs(NamedTuple):
    """The jitted functions of a stage: ``txs`` {network: optimiser}, ``step`` (train step,
    over the seed axis when built for several seeds), ``evaluate`` (one seed's masked sums
    over an evaluation batch) and ``samples`` (one seed's spectrograms for the panels)."""

    txs: dict[str, optax.GradientTransformation]
    step: Callable
    evaluate: Callable
    samples: Callable


def make_programs(
    hp: PCMelGANHyper,
    txs: Mapping[str, optax.GradientTransformation],
    strategy: str | None,
) -> Programs:
    """Jitted step / evaluation / sample functions for ``hp`` and ``txs``; ``strategy`` (see
    ``seeds``): None for a single run, else how the step runs the seeds. Evaluation and
    samples run one seed at a time (the single-run programs, shared with single runs)."""
    txs = dict(txs)
    step = seeds_lib.jit_step(pcmelgan_step, strategy, hp=hp, txs=txs)
    return Programs(txs, step, eval_program(hp), samples_program(hp))


@functools.lru_cache(maxsize=16)
def eval_program(hp: PCMelGANHyper) -> Callable:
    """Jitted ``pcmelgan_eval_step`` of ``hp`` (one seed's networks)."""
    return compilation.jit(functools.partial(pcmelgan_eval_step, hp=hp), "inference")


@functools.lru_cache(maxsize=16)
def samples_program(hp: PCMelGANHyper) -> Callable:
    """Jitted ``(networks, audio (B, 8192), key) -> ({"original", "filtered"[,
    "sampled_male", "sampled_female"]: (B, 80, 32)}, mean, std)`` for one seed's networks."""

    @functools.partial(compilation.jit, kind="inference")
    def samples(networks, audio, rng):
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
            g = hp.generator()
            for label, gender in (("sampled_male", 1), ("sampled_female", 0)):
                out[label] = g.apply(networks["generator"].variables(),
                                     generator_input(g, x, x1), z2, jax.numpy.full((b,), gender))
        return {k: v[..., 0] for k, v in out.items()}, mean, std

    return samples


@functools.lru_cache(maxsize=16)
def batch_norm_statistics_program(hp: PCMelGANHyper) -> Callable:
    """Jitted ``pcmelgan.batch_norm_statistics`` of ``hp`` (one seed's networks)."""
    return compilation.jit(functools.partial(batch_norm_statistics, hp=hp), "inference")


def recalibrate_batch_norm(
    networks: Mapping[str, Any],
    batches: Iterable[Mapping[str, Any]],
    rng: jax.Array,
    hp: PCMelGANHyper,
) -> dict[str, Any]:
    """``networks`` (one seed's) with F's and G's running BatchNorm statistics replaced by the
    average of their per-batch statistics over ``batches`` (training batches, parameters
    frozen; "precise BatchNorm"). Training leaves moving averages of statistics taken while
    the weights moved, and evaluation mode normalises with those."""
    program = batch_norm_statistics_program(hp)
    total, count = None, 0
    for i, batch in enumerate(batches):
        stats = program(networks, batch, jax.random.fold_in(rng, i))
        total = stats if total is None else jax.tree.map(jax.numpy.add, total, stats)
        count += 1
    if total is None:
        raise ValueError("recalibrate_batch_norm needs at least one batch")
    out = dict(networks)
    for name, stats in total.items():
        out[name] = out[name].replace(batch_stats=jax.tree.map(lambda v: v / count, stats))
    return out


@functools.lru_cache(maxsize=16)
def _adam_programs(hp: PCMelGANHyper, adam_settings: tuple, strategy: str | None) -> Programs:
    b1, b2, lrs = adam_settings
    return make_programs(hp, {n: adam(lr, b1, b2) for n, lr in lrs}, strategy)


@functools.lru_cache(maxsize=16)
def _given_programs(hp: PCMelGANHyper, txs_items: tuple, strategy: str | None) -> Programs:
    return make_programs(hp, dict(txs_items), strategy)


def stage_programs(
    config: Any, hp: PCMelGANHyper, txs: Mapping[str, Any] | None, strategy: str | None
) -> Programs:
    """The programs of ``config`` with its Adam optimisers, or with ``txs`` {network: optax
    transformation}; shared by every stage of this process with the same settings (and the
    same ``txs`` objects), so repeated runs (sweeps, resumes) compile once."""
    names = network_names(hp)
    if txs is None:
        lrs = tuple((n, float(getattr(config, f"learning_rate_{n}"))) for n in names)
        return _adam_programs(hp, (float(config.b1), float(config.b2), lrs), strategy)
    items = tuple((n, txs[n]) for n in names)
    try:  # optax transformations hash by identity: the same objects share the programs
        return _given_programs(hp, items, strategy)
    except TypeError:
        return make_programs(hp, dict(items), strategy)


def _eval_name(key: str) -> str:
    return key.replace("_correct", "_acc").replace("_sum", "")


class PCMelGANStage:
    """The PCMelGAN (or Filter-only) stage of one config: its methods are the ``Stage``'s
    callbacks. Single runs and multi-seed runs share them: a single run is the seed list
    ``[config.seed]`` with ``strategy`` None and its outputs in WORKDIR itself."""

    def __init__(self, config: Any, workdir: str, mesh, txs: Mapping[str, Any] | None = None):
        self.config, self.workdir, self.mesh = config, workdir, mesh
        self.num_seeds = int(config.get("num_seeds", 1))
        self.strategy = seeds_lib.config_strategy(config, self.num_seeds)
        self.seeds = seeds_lib.run_seeds(config, self.num_seeds)
        self.fixed, monitor_widths = load_monitors(config.classifiers_workdir)
        self.monitors = sharding.replicate(self.fixed, mesh)
        self.hp = hyper(config, monitor_widths)
        self.names = network_names(self.hp)
        # the (mean, std) the anonymiser de-normalises G's output with (None: each input's own)
        self.output_level = (training_level(config, mesh)
                             if self.hp.generator_output_level == "training" else None)
        self.programs = stage_programs(config, self.hp, txs, self.strategy)
        self.vocoder = load_vocoder(config.get("vocoder_workdir", ""))
        if self.vocoder is not None:
            module = self.vocoder[0]
            self.vocode = compilation.jit(
                lambda p, mel: module.apply({"params": p}, mel), "inference"
            )
        self.recalibration_batches = int(config.get("bn_recalibration_batches", 0))
        if self.recalibration_batches < 0:
            raise ValueError(
                f"bn_recalibration_batches must be >= 0, got {self.recalibration_batches}"
            )
        self.eval_keys = [jax.random.key(s + 1) for s in self.seeds]  # as each single run's
        # where each seed's samples and exports go: WORKDIR itself for a single run
        self.run_dirs = (
            [workdir] if self.strategy is None
            else [run_layout.seed_dir(workdir, s) for s in self.seeds]
        )

    def initial_state(self) -> TrainState:
        """The initial state, replicated on the mesh (seed-stacked with several seeds)."""
        states = [self._init_state(s) for s in self.seeds]
        state = states[0] if self.strategy is None else seeds_lib.stack_seeds(states)
        return sharding.replicate(state, self.mesh)

    def _init_state(self, seed: int) -> TrainState:
        init_key = jax.random.key(seed, impl="rbg")
        networks = {}
        for i, name in enumerate(NETWORKS):  # each network's key index: its place in NETWORKS
            if name in self.names:
                network, arch = _arch(name, self.hp, self.output_level)
                variables = init_variables(network, arch, jax.random.fold_in(init_key, i))
                if name == "generator" and self.hp.generator_digit_condition:
                    variables = with_digit_classifier(variables, self.fixed["spec_digit"])
                networks[name] = network_state(variables, self.programs.txs[name])
        return new_train_state(networks)

    def seed_networks(self, state: TrainState) -> list[dict[str, Any]]:
        """Each seed's networks (one entry for a single run)."""
        if self.strategy is None:
            return [state.networks]
        return [seeds_lib.seed_state(state, i).networks for i in range(self.num_seeds)]

    def train_step(self, state: TrainState, batch: Any, rng: jax.Array) -> tuple[TrainState, dict]:
        return self.programs.step(state, batch, rng, self.monitors)

    def evaluate(self, state: TrainState, step: int) -> dict[str, Any]:
        return self._evaluate(self.seed_networks(state))

    def _evaluate(self, networks: list[dict[str, Any]]) -> dict[str, Any]:
        """Evaluation metrics of each seed's ``networks``, each as its single run: floats for
        a single run, (N,) arrays for N seeds."""
        per = [None] * len(networks)
        for b, batch in enumerate(stage_lib.eval_batches(self.config, self.mesh)):
            for i, nets in enumerate(networks):
                key = jax.random.fold_in(self.eval_keys[i], b)
                out = self.programs.evaluate(nets, batch, key, self.monitors)
                per[i] = stage_lib.sum_metrics(per[i], out)
        per = jax.device_get(per)
        counts = np.maximum(np.asarray([p.pop("count") for p in per], np.float64), 1.0)
        values = {_eval_name(k): np.asarray([p[k] for p in per], np.float64) / counts
                  for k in per[0]}
        if self.strategy is None:
            return {k: float(v[0]) for k, v in values.items()}
        return values

    def write_samples(self, state: TrainState, step: int, writer: MetricWriter) -> None:
        """Each seed's panel (PNG) and, with a vocoder, wavs in its ``samples/``; both also to
        TensorBoard under ``samples/`` (``samples/seed<S>/`` with several seeds)."""
        batch = sharding.to_host(next(iter(stage_lib.eval_batches(self.config, self.mesh))))
        # one female and one male example when the batch has both
        order = np.argsort(batch["gender"][: int(batch["mask"].sum())], kind="stable")
        pick = np.unique(np.concatenate([order[:1], order[-1:]]))[: int(self.config.num_samples)]
        for i, networks in enumerate(self.seed_networks(state)):
            folder = os.path.join(self.run_dirs[i], run_layout.SAMPLES)
            tag = "samples" if self.strategy is None else f"samples/seed{self.seeds[i]}"
            self._write_samples(networks, self.eval_keys[i], batch, pick, folder, step,
                                writer, tag)

    def _write_samples(self, networks, key, batch, pick, folder: str, step: int,
                       writer: MetricWriter, tag: str) -> None:
        audio = batch["audio"][pick]
        specs, mean, std = sharding.to_host(self.programs.samples(networks, audio, key))
        if jax.process_index() != 0:  # every process computes (the networks span them all)
            return
        titles = [
            t for t in ("original", "filtered", "sampled_male", "sampled_female") if t in specs
        ]
        rows = [[specs[t][i] for t in titles] for i in range(len(pick))]
        labels = [
            f"{('female', 'male')[int(batch['gender'][j])]} digit {int(batch['digit'][j])}"
            for j in pick
        ]
        titles_shown = [t.replace("_", " ") for t in titles]
        panel = spectrogram_panel(
            os.path.join(folder, f"step_{step:07d}.png"), rows, titles_shown, labels)
        writer.write_image(step, f"{tag}/panel", panel)
        if self.vocoder is None:
            return
        for t in titles:  # G's outputs ("sampled_*") at G's output level
            level = self.output_level if t.startswith("sampled") else None
            wav = np.asarray(self.vocode(self.vocoder[1], denormalize(
                specs[t], *output_statistics(level, mean, std))))
            for i in range(len(pick)):
                write_audio(os.path.join(folder, f"step_{step:07d}", f"{i}_{t}.wav"), wav[i])
                writer.write_audio(step, f"{tag}/audio/{i}_{t}", wav[i])

    def _recalibrated(self, networks: dict[str, Any], seed: int) -> dict[str, Any]:
        # the seed's own data order from its start, a stream of its own for the noise
        it = stage_lib.make_train_iterator(self.config, seed)
        try:
            batches = (sharding.shard_batch(next(it), self.mesh)
                       for _ in range(self.recalibration_batches))
            key = jax.random.fold_in(jax.random.key(seed), BN_RECALIBRATION_STREAM)
            return recalibrate_batch_norm(networks, batches, key, self.hp)
        finally:
            it.close()

    def _export(self, networks: dict[str, Any], run_dir: str, extra: dict) -> None:
        for name in self.names:
            network, arch = _arch(name, self.hp, self.output_level)
            save_model(run_layout.model_dir(run_dir, name), network,
                       networks[name].variables(), arch, extra=extra, overwrite=True)

    def finalize(self, state: TrainState, book: dict) -> dict[str, Any]:
        """Exports each seed's networks (BatchNorm-recalibrated when configured: the exports
        only, the checkpoint keeps its own) and returns the final evaluation."""
        step = int(jax.device_get(state.step))
        networks = self.seed_networks(state)
        if self.recalibration_batches > 0:
            networks = [self._recalibrated(n, s) for n, s in zip(networks, self.seeds, strict=True)]
        hp = self.hp
        extra = {"step": step, "eps": hp.eps, "lamb": hp.lamb, "entropy": hp.entropy,
                 "filter_only": hp.filter_only,
                 "bn_recalibration_batches": self.recalibration_batches}
        metrics = self._evaluate(networks)
        if self.strategy is None:
            self._export(jax.device_get(networks[0]), self.workdir, extra)
            return {**metrics, "models_dir": run_layout.models_dir(self.workdir), **extra}
        per = seeds_lib.per_seed(metrics, self.seeds)
        means = per.pop("")
        for nets, seed, run_dir in zip(networks, self.seeds, self.run_dirs, strict=True):
            self._export_seed(jax.device_get(nets), seed, run_dir, per[f"seed{seed}"], extra)
        return {**means, "num_seeds": self.num_seeds, "seeds": self.seeds,
                "runs": self.run_dirs, "per_seed": per,
                **{k: v for k, v in extra.items() if k != "step"}}

    def _export_seed(self, networks, seed: int, run_dir: str, metrics: dict, extra: dict) -> None:
        """Seed ``seed`` as a run folder of its own: models/, config.json, final_metrics.json."""
        seed_extra = {**extra, "seed": seed}
        self._export(networks, run_dir, seed_extra)
        if jax.process_index() == 0:
            run_layout.write_json_atomic(
                run_layout.config_path(run_dir), seed_run_config(self.config, seed))
            run_layout.write_json_atomic(
                run_layout.final_metrics_path(run_dir),
                {**metrics, "models_dir": run_layout.models_dir(run_dir), **seed_extra})

    def stage(self) -> stage_lib.Stage:
        return stage_lib.Stage(
            name="pcmelgan-filter" if self.hp.filter_only else "pcmelgan",
            state=self.initial_state(),
            train_step=self.train_step,
            evaluate=self.evaluate,
            write_samples=self.write_samples,
            finalize=self.finalize,
            num_seeds=self.num_seeds,
        )


def build_stage(
    config: Any, workdir: str, mesh, txs: Mapping[str, optax.GradientTransformation] | None = None
) -> stage_lib.Stage:
    """The PCMelGAN (or Filter-only) stage of ``config`` for ``loop.run``; ``txs`` replaces
    the config's Adam optimisers ({network name: optax transformation})."""
    return PCMelGANStage(config, workdir, mesh, txs).stage()
