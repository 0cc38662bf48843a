"""Fixed classifiers, small CPU config for the synthetic corpus (batch 32, 3 epochs, patience 2)."""

from pcmelgan_jax.training import configs


def get_config():
    return configs.classifiers(small=True)
