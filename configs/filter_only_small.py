"""The Filter baseline (F and FD only) with the small CPU settings of pcmelgan_small."""

from pcmelgan_jax.training import configs


def get_config():
    config = configs.pcmelgan(small=True)
    config.filter_only = True
    return config
