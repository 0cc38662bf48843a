"""MelGAN vocoder, small CPU config: batch 8, 300 mel-loss warm-up steps, then 20 adversarial."""

from pcmelgan_jax.training import configs


def get_config():
    return configs.vocoder(small=True)
