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

``config.num_seeds`` N > 1 trains the N independent runs of the seeds ``config.seed + i`` at
once: ``jax.vmap`` of ``pcmelgan_step`` over a leading seed axis of the state, the batch (N
data iterators) and the RNG key, the fixed monitors shared (``steps.jit_seeds_step``). Seed i
matches a single run with ``--config.seed=<seed + i>`` (same initialisation, key and data
order) up to floating-point rounding. One checkpoint in ``WORKDIR/checkpoints`` holds all
seeds; at the end each seed is exported as its own run ``WORKDIR/seed_<S>/`` (``models/``,
``config.json``, ``final_metrics.json``), so ``eval.py --workdir WORKDIR`` evaluates the N
runs (mean and standard deviation over seeds).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import jax
import numpy as np
import optax

from pcmelgan_jax.audio import denormalize, mel_features, write_audio
from pcmelgan_jax.checkpointing import load_model, save_model
from pcmelgan_jax.logging_utils import spectrogram_panel
from pcmelgan_jax.models import AlexNet, MelGANGenerator
from pcmelgan_jax.runtime import compilation, sharding
from pcmelgan_jax.training import loop
from pcmelgan_jax.training.state import (
    TrainState,
    adam,
    init_variables,
    network_state,
    new_train_state,
    seed_state,
    stack_seeds,
)
from pcmelgan_jax.training.steps import (
    CLASSIFIER_TASKS,
    PCMelGANHyper,
    batch_norm_statistics,
    jit_seeds_step,
    jit_step,
    pcmelgan_eval_step,
    pcmelgan_step,
    resolve_seed_strategy,
)

# exported name -> (registry network, arch)
NETWORKS = {
    "filter": ("unet_filter", "unet"),
    "generator": ("unet_generator", "unet"),
    "filter_discriminator": ("alexnet", {"num_classes": 2}),
    "generator_discriminator": ("alexnet", {"num_classes": 3}),
}


def hyper(config: Any, monitor_widths: dict[str, float] | None = None) -> PCMelGANHyper:
    """The step settings of ``config``; ``monitor_widths`` from ``load_monitors``."""
    return PCMelGANHyper(
        eps=float(config.eps),
        lamb=float(config.lamb),
        noise_dim=int(config.noise_dim),
        entropy=bool(config.entropy),
        filter_only=bool(config.filter_only),
        discriminator_width=float(config.get("discriminator_width", 1.0)),
        monitor_widths=tuple(sorted((monitor_widths or {}).items())),
        compute_dtype=str(config.get("compute_dtype", "float32")),
    )


def _arch(name: str, hp: PCMelGANHyper) -> tuple[str, dict]:
    network, arch = NETWORKS[name]
    if arch == "unet":
        return network, {"noise_dim": hp.noise_dim}
    arch = dict(arch)
    if hp.discriminator_width != 1.0:
        arch["width"] = hp.discriminator_width
    return network, arch


def load_monitors(classifiers_workdir: str) -> tuple[dict[str, Any], dict[str, float]]:
    """({"spec_digit", "spec_gender": AlexNet params}, {name: AlexNet width}) from a
    classifiers workdir."""
    root = loop.require_path(classifiers_workdir, "classifiers_workdir")
    monitors, widths = {}, {}
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
        widths[name] = float(module.width)
    return monitors, widths


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


def seed_workdir(workdir: str, seed: int) -> str:
    """``WORKDIR/seed_<seed>``: the exported run of one seed of a ``num_seeds`` > 1 run."""
    return os.path.join(workdir, f"seed_{seed}")


def seed_run_config(config: Any, seed: int) -> dict:
    """The JSON config of seed ``seed`` of a multi-seed run: that of the equivalent single run
    (``seed``, ``num_seeds`` 1) with the data, classifiers and vocoder paths made absolute."""
    out = loop.config_to_json(config)
    out.update(seed=int(seed), num_seeds=1)
    for field in ("data_dir", "classifiers_workdir", "vocoder_workdir"):
        if out.get(field):
            out[field] = os.path.abspath(os.path.expanduser(out[field]))
    return out


def _write_json(path: str, data: dict) -> None:
    if jax.process_index() == 0:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)


class Programs(NamedTuple):
    """The jitted functions of a stage: ``txs`` {network: optimiser}, ``step`` (train step,
    vmapped over seeds when built for several), ``evaluate`` (one seed's masked sums over an
    evaluation batch) and ``samples`` (one seed's spectrograms for the sample panels)."""

    txs: dict[str, optax.GradientTransformation]
    step: Callable
    evaluate: Callable
    samples: Callable


def make_programs(
    hp: PCMelGANHyper,
    txs: Mapping[str, optax.GradientTransformation],
    multi: str | None,
) -> Programs:
    """Jitted step / evaluation / sample functions for ``hp`` and ``txs``; ``multi`` ("vmap"
    or "map", see ``steps.seeds_step``): the step runs over a leading seed axis (networks
    (N, ...), batch (N, B, ...), keys (N,)); None: a single run.
    Evaluation and samples run one seed at a time (the single-run programs: the same numbers
    as a single run, and one compilation shared with single runs)."""
    txs = dict(txs)
    if multi:
        step = jit_seeds_step(pcmelgan_step, multi, hp=hp, txs=txs)
    else:
        step = jit_step(pcmelgan_step, hp=hp, txs=txs)
    return Programs(txs, step, eval_program(hp),
                    samples_program(hp))


@functools.lru_cache(maxsize=16)
def eval_program(hp: PCMelGANHyper) -> Callable:
    """Jitted ``steps.pcmelgan_eval_step`` of ``hp`` (one seed's networks)."""
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
            for label, gender in (("sampled_male", 1), ("sampled_female", 0)):
                out[label] = hp.generator().apply(
                    networks["generator"].variables(), x1, z2, jax.numpy.full((b,), gender)
                )
        return {k: v[..., 0] for k, v in out.items()}, mean, std

    return samples


# the random stream of the BatchNorm recalibration's noise and sampled genders, per seed
BN_RECALIBRATION_STREAM = 0xB4


@functools.lru_cache(maxsize=16)
def batch_norm_statistics_program(hp: PCMelGANHyper) -> Callable:
    """Jitted ``steps.batch_norm_statistics`` of ``hp`` (one seed's networks)."""
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
    the weights moved, and evaluation mode normalises with those: on the small config's
    test split (seed 0) F's output was 0.070 from x (mean L1) in evaluation mode, 0.054 in
    training mode and 0.061 after recalibrating on 62 training batches."""
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
def _adam_programs(hp: PCMelGANHyper, adam_settings: tuple, multi: str | None) -> Programs:
    b1, b2, lrs = adam_settings
    return make_programs(hp, {n: adam(lr, b1, b2) for n, lr in lrs}, multi)


@functools.lru_cache(maxsize=16)
def _given_programs(hp: PCMelGANHyper, txs_items: tuple, multi: str | None) -> Programs:
    return make_programs(hp, dict(txs_items), multi)


def build_stage(
    config: Any,
    workdir: str,
    mesh,
    txs: Mapping[str, optax.GradientTransformation] | None = None,
) -> loop.Stage:
    """The PCMelGAN (or Filter-only) stage of ``config`` for ``loop.run``.

    With ``config.num_seeds`` N > 1 the stage trains the N seeds ``config.seed + i`` in one
    program (vmapped, or a loop inside the program: ``config.seeds_strategy``): the state's
    network leaves are (N, ...), each seed initialised exactly as a single run of that seed;
    ``evaluate`` returns (N,) values; samples go to
    ``WORKDIR/seed_<S>/samples``; ``finalize`` exports each seed as a run folder
    ``WORKDIR/seed_<S>/`` (models/, config.json, final_metrics.json).

    ``txs`` replaces the config's Adam optimisers ({network name: optax transformation}).
    The jitted functions are shared by every stage built in this process with the same
    settings (and the same ``txs`` objects), so repeated runs (sweeps, resumes) compile once.
    """
    num_seeds = int(config.get("num_seeds", 1))
    if num_seeds < 1:
        raise ValueError(f"num_seeds must be >= 1, got {num_seeds}")
    multi = num_seeds > 1
    # how the seeds share the program (see resolve_seed_strategy)
    strategy = (resolve_seed_strategy(str(config.get("seeds_strategy", "auto")),
                                      int(config.batch_size)) if multi else None)
    seeds = loop.run_seeds(config, num_seeds)
    monitors, monitor_widths = load_monitors(config.classifiers_workdir)
    monitors = sharding.replicate(monitors, mesh)
    hp = hyper(config, monitor_widths)
    vocoder = load_vocoder(config.get("vocoder_workdir", ""))
    if vocoder is not None:
        vocode = compilation.jit(
            lambda p, mel, module=vocoder[0]: module.apply({"params": p}, mel), "inference"
        )
    names = ["filter", "filter_discriminator"]
    if not hp.filter_only:
        names += ["generator", "generator_discriminator"]
    lr = {
        "filter": config.learning_rate_filter,
        "generator": config.learning_rate_generator,
        "filter_discriminator": config.learning_rate_filter_discriminator,
        "generator_discriminator": config.learning_rate_generator_discriminator,
    }
    if txs is None:
        settings = (float(config.b1), float(config.b2), tuple((n, float(lr[n])) for n in names))
        programs = _adam_programs(hp, settings, strategy)
    else:
        items = tuple((n, txs[n]) for n in names)
        try:  # optax transformations hash by identity: the same objects share the programs
            programs = _given_programs(hp, items, strategy)
        except TypeError:
            programs = make_programs(hp, dict(items), strategy)
    txs, step_fn, eval_fn, _samples = programs

    def init_state(seed: int) -> TrainState:
        init_key = jax.random.key(seed, impl="rbg")
        networks = {}
        for i, name in enumerate(sorted(NETWORKS)):
            if name in names:
                network, arch = _arch(name, hp)
                networks[name] = network_state(
                    init_variables(network, arch, jax.random.fold_in(init_key, i)), txs[name]
                )
        return new_train_state(networks)

    state = stack_seeds([init_state(s) for s in seeds]) if multi else init_state(config.seed)
    state = sharding.replicate(state, mesh)
    eval_key = jax.random.key(config.seed + 1)
    eval_keys = [jax.random.key(s + 1) for s in seeds]  # per seed, as its single run
    models_dir = os.path.join(workdir, "models")

    def train_step(state, batch, rng):
        return step_fn(state, batch, rng, monitors)

    def evaluate(state, step):
        if multi:  # each seed as its single run; {name: (N,) values}
            nets = [seed_state(state, i).networks for i in range(num_seeds)]
            per = [None] * num_seeds
            for b, batch in enumerate(loop.eval_batches(config, mesh)):
                for i in range(num_seeds):
                    out = eval_fn(nets[i], batch, jax.random.fold_in(eval_keys[i], b), monitors)
                    per[i] = loop.sum_metrics(per[i], out)
            per = jax.device_get(per)
            counts = np.maximum(np.asarray([p.pop("count") for p in per], np.float64), 1.0)
            return {
                k.replace("_correct", "_acc").replace("_sum", ""): (
                    np.asarray([p[k] for p in per], np.float64) / counts
                )
                for k in per[0]
            }
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

    def _write_samples(networks, key, batch, pick, folder, step):
        audio = batch["audio"][pick]
        specs, mean, std = sharding.to_host(_samples(networks, audio, key))
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
        spectrogram_panel(os.path.join(folder, f"step_{step:07d}.png"), rows, titles_shown, labels)
        if vocoder is not None:
            for t in titles:
                wav = np.asarray(vocode(vocoder[1], denormalize(specs[t], mean, std)))
                for i in range(len(pick)):
                    write_audio(os.path.join(folder, f"step_{step:07d}", f"{i}_{t}.wav"), wav[i])

    def write_samples(state, step):
        batch = sharding.to_host(next(iter(loop.eval_batches(config, mesh))))
        # one female and one male example when the batch has both
        order = np.argsort(batch["gender"][: int(batch["mask"].sum())], kind="stable")
        pick = np.unique(np.concatenate([order[:1], order[-1:]]))[: int(config.num_samples)]
        if not multi:
            folder = os.path.join(workdir, "samples")
            _write_samples(state.networks, eval_key, batch, pick, folder, step)
            return
        for i, s in enumerate(seeds):
            folder = os.path.join(seed_workdir(workdir, s), "samples")
            networks = seed_state(state, i).networks
            _write_samples(networks, eval_keys[i], batch, pick, folder, step)

    def _export(networks, folder, extra):
        for name in names:
            network, arch = _arch(name, hp)
            save_model(
                os.path.join(folder, name), network, networks[name].variables(), arch,
                extra=extra, overwrite=True,
            )

    recalibration_batches = int(config.get("bn_recalibration_batches", 0))
    if recalibration_batches < 0:
        raise ValueError(f"bn_recalibration_batches must be >= 0, got {recalibration_batches}")

    def recalibrated(networks, seed):
        # the seed's own data order from its start, a stream of its own for the noise
        it = loop.make_train_iterator(config, seed)
        try:
            batches = (sharding.shard_batch(next(it), mesh) for _ in range(recalibration_batches))
            key = jax.random.fold_in(jax.random.key(seed), BN_RECALIBRATION_STREAM)
            return recalibrate_batch_norm(networks, batches, key, hp)
        finally:
            it.close()

    def finalize(state, book):
        step = int(jax.device_get(state.step))
        if recalibration_batches > 0:  # the exported models only; the checkpoint keeps its own
            if multi:
                state = sharding.replicate(stack_seeds([
                    state.replace(networks=recalibrated(seed_state(state, i).networks, s))
                    for i, s in enumerate(seeds)
                ]), mesh)
            else:
                state = state.replace(networks=recalibrated(state.networks, config.seed))
        host = jax.device_get(state.networks)
        extra = {"step": step, "eps": hp.eps, "lamb": hp.lamb, "entropy": hp.entropy,
                 "filter_only": hp.filter_only, "bn_recalibration_batches": recalibration_batches}
        if not multi:
            _export(host, models_dir, extra)
            metrics = evaluate(state, step)
            return {**metrics, "models_dir": models_dir, **{k: v for k, v in extra.items()}}
        metrics = evaluate(state, step)  # {name: (N,)}
        per = loop.per_seed(metrics, seeds)
        means = per.pop("")
        runs = []
        for i, s in enumerate(seeds):
            run_dir = seed_workdir(workdir, s)
            seed_extra = {**extra, "seed": s}
            _export(jax.tree.map(lambda x, i=i: x[i], host), os.path.join(run_dir, "models"),
                    seed_extra)
            _write_json(os.path.join(run_dir, "config.json"), seed_run_config(config, s))
            _write_json(
                os.path.join(run_dir, "final_metrics.json"),
                {**per[f"seed{s}"], "models_dir": os.path.join(run_dir, "models"), **seed_extra},
            )
            runs.append(run_dir)
        return {**means, "num_seeds": num_seeds, "seeds": seeds, "runs": runs,
                "per_seed": per, **{k: v for k, v in extra.items() if k != "step"}}

    return loop.Stage(
        name="pcmelgan-filter" if hp.filter_only else "pcmelgan",
        state=state,
        train_step=train_step,
        evaluate=evaluate,
        write_samples=write_samples,
        finalize=finalize,
        num_seeds=num_seeds,
    )


def train(config: Any, workdir: str, mesh=None) -> dict:
    """Trains PCMelGAN (or the Filter baseline) in ``workdir``; returns the final metrics on
    ``config.eval_split`` (the validation split)."""
    sharding.maybe_initialize_distributed(config)
    mesh = mesh if mesh is not None else sharding.make_mesh()
    stage = build_stage(config, os.path.abspath(workdir), mesh)
    return loop.run(config, workdir, stage, mesh)
