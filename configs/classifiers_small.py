"""Small CPU classifiers: 10 epochs; AlexNet width 0.25, smoothing 0.1; AudioNet 0.5, warm-up."""

from pcmelgan_jax.training import configs


def get_config():
    return configs.classifiers(small=True)
