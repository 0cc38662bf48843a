"""PCMelGAN, paper settings (SPEC 6): batch 128, 1000 epochs, eps 0.05, lambda 100."""

from pcmelgan_jax.training import configs


def get_config():
    return configs.pcmelgan(small=False)
