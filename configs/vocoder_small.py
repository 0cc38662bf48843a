"""MelGAN vocoder, small CPU config: batch 8, 120 steps, mel-reconstruction loss on."""

from pcmelgan_jax.training import configs


def get_config():
    return configs.vocoder(small=True)
