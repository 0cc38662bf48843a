"""PCMelGAN in JAX/Flax: adversarial privacy for speech (Ericsson et al., 2020)."""

__version__ = "0.1.0"
