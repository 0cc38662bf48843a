"""The paper's Filter baseline (F and FD only), paper settings; = --config.filter_only=True."""

from pcmelgan_jax.training import configs


def get_config():
    config = configs.pcmelgan(small=False)
    config.filter_only = True
    return config
