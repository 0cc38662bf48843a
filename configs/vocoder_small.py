"""MelGAN, small CPU config: ngf 16, batch 8, 1400 mel-loss warm-up steps, then 20 adversarial."""

from pcmelgan_jax.training import configs


def get_config():
    return configs.vocoder(small=True)
