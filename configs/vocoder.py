"""The MelGAN vocoder (mel spectrogram -> waveform) that turns PCMelGAN's output into speech.

    python train.py --config configs/vocoder.py --workdir DIR          # the paper's settings
    python train.py --config configs/vocoder.py:small --workdir DIR    # CPU settings

Paper settings: hinge loss + 10 x feature matching, Adam 1e-4 (0.5, 0.9), batch 16.
"""

from __future__ import annotations

import ml_collections

from pcmelgan_jax.configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Variant: ``small`` (half-width generator, a mel-loss warm-up, 1420 steps)."""
    variant = common.parse_arg(arg, small=False)
    c = common.stage_config("vocoder")
    c.batch_size = 16
    c.learning_rate_generator = 1e-4
    c.learning_rate_discriminator = 1e-4
    c.feature_matching_weight = 10.0
    c.mel_loss_weight = 0.0  # optional mel-reconstruction L1 (off = the original's losses)
    # optional multi-resolution STFT loss against the real audio (off = the original's losses);
    # unlike the mel L1 it also constrains the fine spectral and temporal structure of the wave
    c.stft_loss_weight = 0.0
    # its (n_fft, hop, win) triples: 16, 32 and 64 ms Hann windows at 8 kHz, hop a quarter
    c.stft_resolutions = ((128, 32, 128), (256, 64, 256), (512, 128, 512))
    c.discriminator_start_step = 0  # > 0: G warms up on the mel/STFT losses alone for these steps
    c.generator = ml_collections.ConfigDict(
        {"ngf": 32, "n_residual_layers": 3, "ratios": (8, 8, 2, 2)}
    )
    c.discriminator = ml_collections.ConfigDict(
        {"num_scales": 3, "ndf": 16, "n_layers": 4, "downsampling_factor": 4}
    )
    c.num_epochs = 2120  # as the PCMelGAN authors' 8 kHz MelGAN
    if variant.small:
        c.batch_size = 8
        c.num_epochs = 1
        c.generator.ngf = 16  # half the width: more steps in the same time, as fast per step
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
