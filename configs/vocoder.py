"""MelGAN vocoder, paper settings (SPEC 5): batch 16, Adam 1e-4, hinge + feature matching."""

from pcmelgan_jax.training import configs


def get_config():
    return configs.vocoder(small=False)
