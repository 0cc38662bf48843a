"""PCMelGAN: filter F, generator G and their discriminators FD, GD on the fixed classifiers.

    python train.py --config configs/pcmelgan.py --workdir DIR          # the paper's settings
    python train.py --config configs/pcmelgan.py:small --workdir DIR    # the small CPU settings
    python train.py --config configs/pcmelgan.py:filter_only ...        # the Filter baseline

Paper settings: eps 0.05, lambda 100, Adam lr F = G = 1e-4, FD = GD = 4e-4, batch 128.
"""

from __future__ import annotations

import ml_collections

from pcmelgan_jax.configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Variants: ``small`` (the CPU settings), ``filter_only`` (F and FD only)."""
    variant = common.parse_arg(arg, small=False, filter_only=False)
    c = common.stage_config("pcmelgan")
    c.classifiers_workdir = ""  # holds models/spec_digit, models/spec_gender (required)
    c.vocoder_workdir = ""  # holds models/generator (optional: sample wavs)
    c.eps = 0.05  # distortion budget: F's and G's distortion is penalised above it
    c.lamb = 100.0  # weight of the distortion penalty
    c.noise_dim = 10
    c.entropy = False  # F maximises FD's entropy instead of the flipped-label cross-entropy
    # > 0: F's and G's losses add this times the gender mean gap of their outputs (squared
    # difference of female and male means, unbiased; 0 when no linear attacker can learn)
    c.mean_gap_weight = 0.0
    c.fd_reset_every = 0  # > 0: FD (and its optimizer state) re-initialised every N steps
    # > 0: F's and G's losses add this times the fixed digit classifier's cross-entropy on
    # their outputs with the true digit (the content kept by a loss, not by eps alone)
    c.digit_weight = 0.0
    # > 0: a gender attacker (FD's architecture) learns the TRUE gender from G's output and
    # G's loss adds this times its cross-entropy against the SAMPLED gender
    c.attacker_weight = 0.0
    c.attacker_arch = "alexnet"  # or "linear": logistic regression on the spectrogram
    # > 0: G's loss adds this times the fixed gender classifier's cross-entropy on its output
    # against the SAMPLED gender (s' taught from the first step, not once GD has learned)
    c.sampled_gender_weight = 0.0
    # > 0: G sees its input only as this many mel band means (a content bottleneck: the
    # energy contour, not the spectral detail); must divide the bins of generator_input_bins
    c.generator_input_bands = 0
    # with bands: only the mel bins [start, stop) are pooled into them, the bins outside (the
    # lowest carry F0's harmonics) pass nothing; (0, 80): all
    c.generator_input_bins = (0, 80)
    # > 0 (with bands): G reads only the band contour's timing, +1 in the frames within this
    # depth of the band's peak and -1 elsewhere (the levels carry the voice); 0: the contour
    c.generator_input_mask_depth = 0.0
    # what G is fed: "filtered" (F's output, the original) or "original" (the input itself:
    # G sees no trace of F's own gender-dependent changes)
    c.generator_input = "filtered"
    # the log-mel level (mean, std) G's output is de-normalised with: "input" (each
    # utterance's own, the original) or "training" (the training speakers' average, exported
    # with G: the anonymised audio's level and dynamic range say nothing of the speaker)
    c.generator_output_level = "input"
    # G also conditioned on the digit the fixed spectrogram digit classifier recognises in its
    # input (its argmax, embedded like the gender): the content named, not carried by pixels
    c.generator_digit_condition = False
    c.filter_only = variant.filter_only  # the paper's Filter baseline: F and FD only
    c.discriminator_width = 1.0  # AlexNet width of FD and GD (1.0 = the original)
    c.compute_dtype = "float32"  # or "bfloat16": bf16 compute, float32 params and optimizer state
    c.num_seeds = 1  # > 1: seeds seed..seed+N-1 trained at once (vmapped), runs WORKDIR/seed_<S>
    c.seeds_strategy = "auto"  # vmap | map (lax.map) | unroll | auto (unroll on CPU, else vmap)
    c.learning_rate_filter = 1e-4
    c.learning_rate_generator = 1e-4
    c.learning_rate_filter_discriminator = 4e-4
    c.learning_rate_generator_discriminator = 4e-4
    c.learning_rate_gender_attacker = 4e-4  # used with attacker_weight > 0
    c.batch_size = 128
    c.eval_every_steps = 0
    c.samples_every_steps = 0
    # > 0: F's and G's BatchNorm statistics re-estimated over this many training batches at
    # the end, weights frozen, for the exported models (0: the moving averages as trained)
    c.bn_recalibration_batches = 0
    if variant.small:
        c.batch_size = 32
        c.num_epochs = 12  # G learns the sampled gender only once GD tells genders apart
        c.discriminator_width = 0.25  # FD and GD at a quarter width: half the time of 0.5
        c.log_every_steps = 10
        # F keeps the paper's 1e-4 (steadier gender hiding); G learns faster at 3e-4
        c.learning_rate_generator = 3e-4
        # the best setting on the validation speakers (bench/privacy.md): a larger budget
        # moves the informed attackers, the digit loss keeps the content it would cost; G
        # reads the recognised digit and nothing else of the input (a mask depth of 2, the
        # normalised range, makes every frame of its contour loud: not even the word's
        # span), the fixed gender classifier teaches it s' from the start, and its output
        # is heard at the training speakers' level
        c.eps = 0.2
        c.digit_weight = 3.0
        c.generator_input = "original"
        c.generator_input_bands = 1
        c.generator_input_bins = (10, 70)
        if not variant.filter_only:  # G's levers (the Filter baseline has no G)
            c.generator_digit_condition = True
            c.sampled_gender_weight = 1.0
            c.generator_input_mask_depth = 2.0
            c.generator_output_level = "training"
    return c
