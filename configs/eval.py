"""The evaluation protocol: fixed, informed, linear, feature, fresh-speaker and speaker
attackers.

    python eval.py --config configs/eval.py --workdir DIR [--config.runs=RUN1,RUN2,...]
    python eval.py --config configs/eval.py:small --workdir DIR    # the quickstart's budgets

Empty strings mean "derive it": runs default to ``DIR/pcmelgan`` (a quickstart workdir) or
``DIR`` itself; classifiers, vocoder and data come from each run's ``config.json``, else
``DIR/classifiers``, ``DIR/vocoder``, ``DIR/data``. E.g.
``--config.runs='sweep/eps0.05_seed*,sweep/eps0.1_seed*'``.
"""

from __future__ import annotations

import ml_collections

from pcmelgan_jax.configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Variant: ``small`` (attacker budgets for 2 CPU cores)."""
    variant = common.parse_arg(arg, small=False)
    c = ml_collections.ConfigDict()
    # PCMelGAN / Filter-only run workdirs or globs, comma-separated ("" = WORKDIR/pcmelgan or
    # WORKDIR itself; "none" = the baselines only)
    c.runs = ""
    c.classifiers_workdir = ""  # holds models/spec_{digit,gender}, models/audio_{...}
    c.vocoder_workdir = ""  # holds models/generator (MelGAN); unused with Griffin-Lim
    # What turns spectrograms into audio for the audio-domain attackers: "melgan" (the trained
    # vocoder in vocoder_workdir, the paper's) or "griffin_lim" (training-free inversion).
    c.vocoder = "melgan"
    c.griffin_lim_iterations = 32
    c.data_dir = ""  # TFDS data_dir
    c.dataset = ""  # e.g. "audio_mnist/all"
    c.eps = ml_collections.config_dict.placeholder(float)  # eps of runs without a config.json
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
    # Attackers (pcmelgan_jax.evaluation.attackers): fixed, informed, linear, features, fresh,
    # speaker.
    c.attackers = ("fixed", "informed", "linear", "features", "fresh", "speaker")
    # The attackers of the conditions PCMelGAN is compared with (the vocoded original, the
    # baselines, the Filter): those of ``attackers`` also listed here (the untransformed
    # speech and PCMelGAN's output get every one of ``attackers``); by default all of them
    c.comparison_attackers = c.attackers
    # beside the vocoded original, always evaluated; digit_template: the recognised digit's
    # mean training spectrogram in a sampled gender (keeps the digit and nothing else)
    c.baselines = ("mcadams", "pitch_shift", "digit_template")
    c.mcadams_coefficient = 0.8  # VoicePrivacy's B2 setting
    c.pitch_shift_semitones = 4.0  # male up, female down
    # Also attack PCMelGAN's output after a linear gender eraser fitted on the training
    # speakers' outputs (evaluation.erasure): a check of what the attackers can show (those
    # that learn from the training speakers are blind to it by construction), not a setting.
    c.linear_eraser = False
    c.eraser_shrinkage = 0.01  # of the eraser's covariance towards its mean eigenvalue
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
    # The linear, feature and fresh attackers' logistic regression: L2 strength chosen on
    # validation (fresh: by cross-validation over the validation speakers).
    c.linear = ml_collections.ConfigDict()
    c.linear.l2_grid = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
    c.linear.max_iter = 300
    # 95 % bootstrap intervals over runs, test speakers (within gender) and utterances.
    c.bootstrap = ml_collections.ConfigDict()
    c.bootstrap.num_resamples = 1000
    c.bootstrap.level = 0.95
    c.bootstrap.seed = 0
    if variant.small:
        c.speaker.update(steps=200, batch_size=32, learning_rate=1e-3, width=0.25)
        # the widths of the small fixed classifiers (AudioNet at 0.25 did not learn gender)
        c.informed.update(spec_width=0.25, audio_width=0.5, spec_steps=250, audio_steps=100,
                          batch_size=32, learning_rate=1e-3, eval_every=50)
        c.linear.max_iter = 200
        # the small MelGAN loses most of the content (bench/privacy.md, vocoder lever)
        c.vocoder = "griffin_lim"
    return c
