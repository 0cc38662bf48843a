"""Evaluation config (SPEC section 8): ``python eval.py --config configs/eval.py --workdir DIR``.

Empty strings mean "derive it": runs default to ``DIR/pcmelgan`` (a quickstart workdir) or
``DIR`` itself; classifiers, vocoder and data come from each run's ``config.json``, else
``DIR/classifiers``, ``DIR/vocoder``, ``DIR/data``. Override on the command line, e.g.
``--config.runs='sweep/eps0.05_seed*,sweep/eps0.1_seed*'``.
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    # PCMelGAN / Filter-only run workdirs or globs, comma-separated ("" = see above).
    config.runs = ""
    config.classifiers_workdir = ""  # holds models/spec_{digit,gender}, models/audio_{...}
    config.vocoder_workdir = ""  # holds models/generator (MelGAN)
    config.data_dir = ""  # TFDS data_dir
    config.dataset = ""  # e.g. "audio_mnist/all"
    # eps of runs without a config.json (e.g. imported PyTorch checkpoints).
    config.eps = config_dict.placeholder(float)
    config.output_dir = ""  # "" = WORKDIR/eval
    config.seed = 0  # noise z1, z2 and the sampled gender s'
    config.batch_size = 50
    config.num_examples_to_save = 4  # per run: wavs and a spectrogram panel

    # Speaker re-identification classifier (AlexNet on real training-speaker utterances),
    # cached in OUTPUT_DIR/speaker_classifier/.
    config.speaker = ml_collections.ConfigDict()
    config.speaker.holdout_fraction = 0.2  # of each speaker's repetitions, held out
    config.speaker.steps = 150
    config.speaker.batch_size = 32
    config.speaker.learning_rate = 3e-4
    config.speaker.seed = 0
    config.speaker.retrain = False
    return config
