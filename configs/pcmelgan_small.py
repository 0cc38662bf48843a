"""PCMelGAN, small CPU config: FD/GD width 0.25, batch 32, 8 epochs, G at 3e-4 (~7 min, 2 cores)."""

from pcmelgan_jax.training import configs


def get_config():
    return configs.pcmelgan(small=True)
