"""Fixed classifiers, small CPU config: AlexNet width 0.25, AudioNet width 0.5, 10 epochs."""

from pcmelgan_jax.training import configs


def get_config():
    return configs.classifiers(small=True)
