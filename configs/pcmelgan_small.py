"""PCMelGAN, small CPU config: FD/GD width 0.25, batch 32, 12 epochs, G at 3e-4 (~10 min)."""

from pcmelgan_jax.training import configs


def get_config():
    return configs.pcmelgan(small=True)
