"""PCMelGAN, small CPU config for the synthetic corpus: batch 32, 3 epochs."""

from pcmelgan_jax.training import configs


def get_config():
    return configs.pcmelgan(small=True)
