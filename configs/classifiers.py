"""Fixed spectrogram and audio classifiers, paper settings (SPEC 8): batch 64, patience 100."""

from pcmelgan_jax.training import configs


def get_config():
    return configs.classifiers(small=False)
