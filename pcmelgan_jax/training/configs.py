"""Default configurations of the three stages: the paper's settings and small CPU variants.

``configs/*.py`` (for ``train.py --config``) and the quickstart build on these functions.
Every config has ``stage``, ``data_dir``, ``dataset`` and ``seed``. Training selects models on
``eval_split`` = ``validation`` (speaker-disjoint from train and test; see ``data.corpus``):
the classifiers' early stopping and best export, the vocoder's best generator, PCMelGAN's
periodic evaluations, samples and final metrics. The test split is for the evaluation
(``eval.py``) only. Accuracies quoted in the comments below as "test" were measured when the
dataset had no validation split and training evaluated on test.
"""

from __future__ import annotations

import ml_collections


def _common(stage: str) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.stage = stage
    c.data_dir = ""  # TFDS data_dir given to `pcmelgan-jax prepare`
    c.dataset = "audio_mnist/all"
    c.seed = 0
    c.batch_size = 64  # global batch (split over processes and devices)
    c.eval_batch_size = 128
    c.eval_split = "validation"  # model selection and training metrics; never "test"
    c.num_epochs = 1000
    c.num_train_steps = -1  # > 0 overrides num_epochs
    c.b1 = 0.5
    c.b2 = 0.9
    c.log_every_steps = 50
    c.eval_every_steps = 0  # 0 = every epoch, < 0 = never
    c.checkpoint_every_steps = 0  # 0 = every epoch
    c.samples_every_steps = -1  # 0 = every epoch, < 0 = only at the end
    c.keep_checkpoints = 2  # preservation policy: the latest N ...
    c.keep_period = 0  # ... plus every N-th step when > 0
    c.async_checkpointing = True
    c.num_samples = 2
    c.worker_count = 0  # Grain worker processes
    c.worker_threads = 2  # Grain reader threads
    c.progress_bar = True
    # typed placeholders (None until set) so that --config.distributed.x=... overrides them
    placeholder = ml_collections.config_dict.placeholder
    c.distributed = ml_collections.ConfigDict({
        "enabled": False, "coordinator_address": placeholder(str),
        "num_processes": placeholder(int), "process_id": placeholder(int),
    })
    return c


def classifiers(small: bool = False) -> ml_collections.ConfigDict:
    """Fixed classifiers (SPEC 8): Adam 1e-4 (0.5, 0.9), batch 64, patience 100 epochs."""
    c = _common("classifiers")
    c.classifiers = ("spec_digit", "spec_gender", "audio_digit", "audio_gender")
    c.learning_rate = 1e-4
    c.batch_size = 64
    c.num_epochs = 1000
    c.patience = 100  # evaluations (epochs) without a better validation loss
    c.spec_width = 1.0  # AlexNet width multiplier (1.0 = the original architecture)
    c.audio_width = 1.0  # AudioNet width multiplier
    # label smoothing of the training loss (validation loss stays plain cross-entropy)
    c.spec_label_smoothing = 0.0
    c.audio_label_smoothing = 0.0
    # linear learning-rate warm-up over the first N updates (0 = the original's constant rate)
    c.spec_warmup_steps = 0
    c.audio_warmup_steps = 0
    if small:
        c.batch_size = 32
        c.learning_rate = 1e-3
        # label smoothing keeps the validation loss (the early-stopping criterion) from
        # rising while accuracy still climbs: small spectrogram digit classifier, seeds 0/1/2,
        # best-loss test accuracy 0.92 / 0.91 / 0.93 with 0.1, 0.927 / 0.797 / 0.902 without.
        # Not for AudioNet: its digit classifier stayed at chance for 10 epochs with 0.1.
        c.spec_label_smoothing = 0.1
        c.num_epochs = 10  # at 5 the digit classifiers were still learning (test 0.60 / 0.27)
        c.patience = 3
        c.log_every_steps = 10
        c.spec_width = 0.25
        c.audio_width = 0.5  # at 0.25 AudioNet did not learn gender from raw audio
        # At a constant 1e-3 the digit AudioNet stayed at chance (loss ln 10) for all 10
        # epochs on 2 Xeon cores with seeds 0 and 1 (0.665 with seed 0 on 2 EPYC cores: float
        # rounding decides). A 100-update warm-up: best-loss test accuracy 0.84 / 0.78 / 0.73
        # (seeds 0 / 1 / 2, Xeon).
        c.audio_warmup_steps = 100
    return c


def vocoder(small: bool = False) -> ml_collections.ConfigDict:
    """MelGAN (SPEC 5): hinge + 10 x feature matching, Adam 1e-4 (0.5, 0.9), batch 16."""
    c = _common("vocoder")
    c.batch_size = 16
    c.learning_rate_generator = 1e-4
    c.learning_rate_discriminator = 1e-4
    c.feature_matching_weight = 10.0
    c.mel_loss_weight = 0.0  # optional mel-reconstruction L1 (off = the original's losses)
    c.discriminator_start_step = 0  # > 0: G warms up on the mel loss alone for these steps
    c.generator = ml_collections.ConfigDict(
        {"ngf": 32, "n_residual_layers": 3, "ratios": (8, 8, 2, 2)}
    )
    c.discriminator = ml_collections.ConfigDict(
        {"num_scales": 3, "ndf": 16, "n_layers": 4, "downsampling_factor": 4}
    )
    c.num_epochs = 2120  # as the PCMelGAN authors' 8 kHz MelGAN
    c.eval_every_steps = 0
    if small:
        c.batch_size = 8
        c.num_epochs = 1
        # A generator of half the width (ngf 16) takes 2.2x the steps of ngf 32 in the same
        # time on 2 CPU cores and learns as fast per step (test mel L1 0.332 vs 0.338 after
        # 300 warm-up steps). In the quickstart (535 s): mel L1 0.225; the vocoded original
        # test clips keep digit 0.575 for the spectrogram classifier and gender 0.70 for
        # AudioNet, against 0.27 and 0.55 with 300 + 20 steps at ngf 32 (mel L1 0.325). The
        # digit AudioNet stays at chance on them (0.11) at either setting.
        c.generator.ngf = 16
        c.num_train_steps = 1420
        c.discriminator_start_step = 1400  # the mel-loss warm-up does most of the work here
        c.eval_every_steps = 350
        c.checkpoint_every_steps = 350
        c.eval_batch_size = 64
        c.log_every_steps = 10
        c.learning_rate_generator = 2e-4
        c.learning_rate_discriminator = 2e-4
        c.mel_loss_weight = 10.0  # speeds up early training a lot on a tiny budget
    return c


def pcmelgan(small: bool = False) -> ml_collections.ConfigDict:
    """PCMelGAN (SPEC 6): eps 0.05, lambda 100, lr F = G = 1e-4, FD = GD = 4e-4, batch 128."""
    c = _common("pcmelgan")
    c.classifiers_workdir = ""  # holds models/spec_digit, models/spec_gender (required)
    c.vocoder_workdir = ""  # holds models/generator (optional: sample wavs)
    c.eps = 0.05
    c.lamb = 100.0
    c.noise_dim = 10
    # F maximises FD's entropy instead of the flipped-label CE. Small config, seeds 0 and 1 (a
    # 2-seed program): test digit accuracy of F's output 0.42 / 0.23 and of G's 0.21 / 0.25,
    # against 0.64 / 0.77 and 0.67 / 0.68 with the flipped-label CE; gender near 0.5 in both.
    c.entropy = False
    c.filter_only = False  # the paper's Filter baseline: F and FD only
    c.discriminator_width = 1.0  # AlexNet width of FD and GD (1.0 = the original)
    c.compute_dtype = "float32"  # or "bfloat16": bf16 compute, float32 params and optimizer state
    c.num_seeds = 1  # > 1: seeds seed..seed+N-1 trained at once (vmapped), runs WORKDIR/seed_<S>
    c.seeds_strategy = "auto"  # vmap | map (lax.map) | unroll | auto (unroll on CPU, else vmap)
    c.learning_rate_filter = 1e-4
    c.learning_rate_generator = 1e-4
    c.learning_rate_filter_discriminator = 4e-4
    c.learning_rate_generator_discriminator = 4e-4
    c.batch_size = 128
    c.num_epochs = 1000
    c.eval_every_steps = 0
    c.samples_every_steps = 0
    # > 0: at the end, F's and G's running BatchNorm statistics are re-estimated over this many
    # training batches with the weights frozen, for the exported models (0: the original's
    # moving averages, as training left them). Small config, 4 seeds, 62 batches: test digit
    # accuracy of F's / G's output -1.3 to +4.3 / -0.3 to +3.5 points (mean +1.2 / +1.6)
    c.bn_recalibration_batches = 0
    if small:
        c.batch_size = 32
        # 12 epochs (744 steps): at the end, the fixed gender classifier found the sampled
        # gender in G's test output at 0.95 to 1.00 in 4 of 6 runs (seeds 0 to 3, then 0 and 1
        # as one 2-seed program) and at 0.56 and 0.76 in the other two; after 8 epochs in 1 of
        # 3 (0.55, 1.00, 0.58). GD first spends 100-300 steps predicting "fake" for everything,
        # and G learns the condition only once GD tells genders apart.
        c.num_epochs = 12
        # FD and GD at width 0.5 (seeds 0 and 1, 2-seed program): test digit accuracy of F's
        # output 0.72 / 0.80 against 0.64 / 0.77 here, of G's 0.60 / 0.73 against 0.67 / 0.68,
        # gender of both within 0.05 of 0.5 (G's 0.37 for seed 0 here), in twice the time.
        c.discriminator_width = 0.25
        c.eval_every_steps = 0
        c.samples_every_steps = 0
        c.log_every_steps = 10
        # F keeps the paper's 1e-4, a quarter of FD's 4e-4. At 3e-4 the fixed gender
        # classifier's test accuracy on F's output swung between 0.50 and 0.91 from epoch to
        # epoch and run to run (0.60 at the end of the last quickstart); at 1e-4 it was 0.50 to
        # 0.56 from epoch 5 on and 0.50 at the end (seeds 0 and 1: the classifier gave every
        # filtered test clip the same gender). G learns at 3e-4 and imposes the sampled
        # gender (0.91 and 1.00 at the end of two 8-epoch runs).
        c.learning_rate_generator = 3e-4
    return c


def evaluation(small: bool = False) -> ml_collections.ConfigDict:
    """Evaluation (SPEC 8; ``configs/eval.py``). Empty strings mean "derive it" (see eval.py)."""
    from ml_collections import config_dict

    c = ml_collections.ConfigDict()
    # PCMelGAN / Filter-only run workdirs or globs, comma-separated ("" = WORKDIR/pcmelgan or
    # WORKDIR itself).
    c.runs = ""
    c.classifiers_workdir = ""  # holds models/spec_{digit,gender}, models/audio_{...}
    c.vocoder_workdir = ""  # holds models/generator (MelGAN)
    c.data_dir = ""  # TFDS data_dir
    c.dataset = ""  # e.g. "audio_mnist/all"
    c.eps = config_dict.placeholder(float)  # eps of runs without a config.json
    c.output_dir = ""  # "" = WORKDIR/eval
    c.seed = 0  # noise z1, z2 and the sampled gender s'
    c.batch_size = 50
    c.num_examples_to_save = 4  # per run: wavs and a spectrogram panel
    # Speaker re-identification classifier (AlexNet on real training-speaker utterances),
    # cached in OUTPUT_DIR/speaker_classifier/.
    c.speaker = ml_collections.ConfigDict()
    c.speaker.holdout_fraction = 0.2  # of each speaker's repetitions, held out
    c.speaker.steps = 1000
    c.speaker.batch_size = 64
    c.speaker.learning_rate = 1e-4
    c.speaker.width = 1.0  # AlexNet width multiplier
    c.speaker.seed = 0
    c.speaker.retrain = False
    # Attackers (pcmelgan_jax.evaluation.attackers): fixed, informed, linear, features, speaker.
    c.attackers = ("fixed", "informed", "linear", "features", "speaker")
    c.baselines = ("mcadams", "pitch_shift")  # beside the vocoded original, always evaluated
    c.mcadams_coefficient = 0.8  # VoicePrivacy's B2 setting
    c.pitch_shift_semitones = 4.0  # male up, female down
    c.attack_repetitions = 0  # > 0: attackers learn from repetitions < N per speaker and digit
    # The informed attacker: AlexNet / AudioNet retrained on anonymised speech (train split),
    # the parameters of the best validation accuracy kept.
    c.informed = ml_collections.ConfigDict()
    c.informed.spec_width = 1.0
    c.informed.audio_width = 1.0
    c.informed.spec_steps = 2000
    c.informed.audio_steps = 2000
    c.informed.spec_warmup_steps = 0
    c.informed.audio_warmup_steps = 100
    c.informed.batch_size = 64
    c.informed.learning_rate = 1e-4
    c.informed.eval_every = 200
    c.informed.seed = 0
    # The linear and feature attackers' logistic regression: L2 strength chosen on validation.
    c.linear = ml_collections.ConfigDict()
    c.linear.l2_grid = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
    c.linear.max_iter = 300
    # 95 % bootstrap intervals over runs, test speakers (within gender) and utterances.
    c.bootstrap = ml_collections.ConfigDict()
    c.bootstrap.num_resamples = 1000
    c.bootstrap.level = 0.95
    c.bootstrap.seed = 0
    if small:
        # budgets that keep the quickstart's evaluation near 12 minutes on 2 cores
        c.speaker.update(steps=200, batch_size=32, learning_rate=1e-3, width=0.25)
        # the widths of the small fixed classifiers (AudioNet at 0.25 did not learn gender)
        c.informed.update(spec_width=0.25, audio_width=0.5, spec_steps=250, audio_steps=100,
                          batch_size=32, learning_rate=1e-3, eval_every=50)
        c.linear.max_iter = 200
    return c
