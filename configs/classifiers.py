"""The fixed classifiers: spectrogram AlexNets and raw-audio AudioNets for digit and gender.

    python train.py --config configs/classifiers.py --workdir DIR          # the paper's settings
    python train.py --config configs/classifiers.py:small --workdir DIR    # CPU settings

Paper settings: Adam 1e-4 (0.5, 0.9), batch 64, early stopping after 100 epochs without a
better validation loss.
"""

from __future__ import annotations

import ml_collections

from pcmelgan_jax.configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Variant: ``small`` (narrower nets, 10 epochs, a larger learning rate)."""
    variant = common.parse_arg(arg, small=False)
    c = common.stage_config("classifiers")
    c.classifiers = ("spec_digit", "spec_gender", "audio_digit", "audio_gender")
    c.learning_rate = 1e-4
    c.patience = 100  # evaluations (epochs) without a better validation loss
    c.spec_width = 1.0  # AlexNet width multiplier (1.0 = the original architecture)
    c.audio_width = 1.0  # AudioNet width multiplier
    # label smoothing of the training loss (validation loss stays plain cross-entropy)
    c.spec_label_smoothing = 0.0
    c.audio_label_smoothing = 0.0
    # "torch" (PyTorch's default, the original) or "he" (He-normal kernels, zero biases: the
    # activations keep their scale through the layers)
    c.spec_init = "torch"
    c.audio_init = "torch"
    # linear learning-rate warm-up over the first N updates (0 = the original's constant rate)
    c.spec_warmup_steps = 0
    c.audio_warmup_steps = 0
    if variant.small:
        c.batch_size = 32
        c.learning_rate = 1e-3
        # keeps the validation loss (the early-stopping criterion) from rising while accuracy
        # still climbs; not for AudioNet, whose digit classifier then stayed at chance
        c.spec_label_smoothing = 0.1
        c.num_epochs = 10  # at 5 the digit classifiers were still learning
        c.patience = 3
        c.log_every_steps = 10
        c.spec_width = 0.25
        c.audio_width = 0.5  # at 0.25 AudioNet did not learn gender from raw audio
        c.audio_warmup_steps = 100  # at a constant 1e-3 the digit AudioNet can stay at chance
        c.audio_init = "he"  # at PyTorch's init its logits barely depend on the waveform
    return c
