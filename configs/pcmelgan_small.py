"""PCMelGAN, small CPU config: width 0.25 FD/GD, batch 32, 8 epochs (about 8 min on 2 cores)."""

from pcmelgan_jax.training import configs


def get_config():
    return configs.pcmelgan(small=True)
