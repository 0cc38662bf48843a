"""Flax Linen modules of PCMelGAN and MelGAN (channels-last, PyTorch numerics)."""

from pcmelgan_jax.models.classifiers import (
    AlexNet,
    AudioNet,
    LinearClassifier,
    softmax_cross_entropy,
)
from pcmelgan_jax.models.layers import BatchNorm, Conv, ConvTranspose1d
from pcmelgan_jax.models.melgan import MelGANDiscriminator, MelGANGenerator, NLayerDiscriminator
from pcmelgan_jax.models.unet import UNet

__all__ = [
    "AlexNet",
    "AudioNet",
    "BatchNorm",
    "Conv",
    "ConvTranspose1d",
    "LinearClassifier",
    "MelGANDiscriminator",
    "MelGANGenerator",
    "NLayerDiscriminator",
    "UNet",
    "softmax_cross_entropy",
]
