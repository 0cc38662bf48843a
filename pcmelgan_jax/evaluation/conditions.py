"""The anonymisers under attack, each applied to every split: what a spectrogram-domain and
an audio-domain attacker gets to see.

A condition's output for a split is ``Outputs``: ``spec`` (N, 80, 32) the normalised
log-mel the spectrogram-domain attackers see, ``audio`` (N, 8192) the waveform the
audio-domain attackers hear, ``audio_x`` its log-mel (the linear attacker's audio-domain
input). PCMelGAN's F and G output spectrograms, vocoded for the audio domain; waveform
anonymisers (the baselines) output audio, whose log-mel is the spectrogram.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax.numpy as jnp
import numpy as np

from pcmelgan_jax.evaluation.data import SplitData, log_mels, pad_rows, padded_batches
from pcmelgan_jax.evaluation.inference import Vocoder, batch_noise, unet_apply
from pcmelgan_jax.models.unet import generator_input, output_statistics

# Batch-index offsets of the F/G noise per split: the test split keeps batch i's noise
# fold_in(key(seed), i), so every run of a group sees the same z and s'.
NOISE_OFFSETS = {"test": 0, "train": 1_000_000, "validation": 2_000_000}

WaveformTransform = Callable[[SplitData], np.ndarray]  # a split -> its anonymised audio


@dataclasses.dataclass(frozen=True)
class Outputs:
    """One anonymiser's output for one split (see the module docstring)."""

    spec: np.ndarray
    audio: np.ndarray
    audio_x: np.ndarray
    sampled_gender: np.ndarray | None = None  # G's condition s' (PCMelGAN only)

    def subset(self, index: np.ndarray) -> Outputs:
        sampled = None if self.sampled_gender is None else self.sampled_gender[index]
        return Outputs(self.spec[index], self.audio[index], self.audio_x[index], sampled)


def real(split: SplitData) -> Outputs:
    """The untransformed utterances."""
    return Outputs(split.x, split.clips, split.x)


def from_waveform(audio: np.ndarray, batch_size: int) -> Outputs:
    """Outputs of an anonymiser that produces audio: the spectrogram is its log-mel."""
    audio = np.asarray(audio, np.float32)
    x = log_mels(audio, batch_size)[0]
    return Outputs(x, audio, x)


def waveform_condition(transform: WaveformTransform, batch_size: int):
    """A split -> Outputs function from a transform of the split to audio (N, 8192)."""

    def apply(split: SplitData) -> Outputs:
        return from_waveform(transform(split), batch_size)

    return apply


def vocode_all(vocoder: Vocoder, x: np.ndarray, mean: np.ndarray, std: np.ndarray,
               batch_size: int) -> np.ndarray:
    """Audio (N, 8192) of normalised log-mels de-normalised with mean/std (N,)."""
    out = [np.zeros((0, 8192), np.float32)]
    for _, rows, n in padded_batches(len(x), batch_size):
        audio = vocoder(*(jnp.asarray(pad_rows(a[rows], batch_size)) for a in (x, mean, std)))
        out.append(np.asarray(audio)[:n])
    return np.concatenate(out)


def vocoded_outputs(vocoder: Vocoder, x: np.ndarray, split: SplitData, batch_size: int,
                    sampled_gender: np.ndarray | None = None,
                    level: tuple[float, float] | None = None) -> Outputs:
    """Outputs of spectrograms ``x`` of ``split``'s utterances: vocoded with the utterances'
    normalisation statistics (or one ``level`` for all, ``unet.output_statistics``), the
    audio analysed again into log-mels."""
    audio = vocode_all(vocoder, x, *output_statistics(level, split.mean, split.std), batch_size)
    return Outputs(x, audio, log_mels(audio, batch_size)[0], sampled_gender)


def vocoded(vocoder: Vocoder, batch_size: int):
    """The vocoded original (identity through the vocoder): the vocoder's own leak."""

    def apply(split: SplitData) -> Outputs:
        return from_waveform(vocode_all(vocoder, split.x, split.mean, split.std, batch_size),
                             batch_size)

    return apply


def filter_and_generator_spectrograms(
    filt: tuple, gen: tuple | None, seed: int, batch_size: int, split: SplitData,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(x1 = F(x, z1), x2 = G(x1, z2, s') (G(x, z2, s') for a G fed the original), s') for
    one split: (N, 80, 32), (N, 80, 32), (N,) (x2 and s' None without ``gen``), with the
    noise of ``batch_noise(seed, offset + i)`` for batch i."""
    noise_dim = filt[0].noise_dim
    x1s, x2s, sampled = [], [], []
    for i, rows, n in padded_batches(len(split), batch_size):
        z1, z2, s_new = batch_noise(seed, NOISE_OFFSETS[split.name] + i, batch_size, noise_dim)
        x = jnp.asarray(pad_rows(split.x[rows], batch_size))
        x1 = unet_apply(filt[0], filt[1], x, jnp.asarray(z1), None)
        x1s.append(np.asarray(x1)[:n])
        if gen is not None:
            x2 = unet_apply(gen[0], gen[1], generator_input(gen[0], x, x1), jnp.asarray(z2),
                            jnp.asarray(s_new))
            x2s.append(np.asarray(x2)[:n])
            sampled.append(s_new[:n])
    if gen is None:
        return np.concatenate(x1s), None, None
    return np.concatenate(x1s), np.concatenate(x2s), np.concatenate(sampled)


def filter_and_generator(
    filt: tuple, gen: tuple | None, vocoder: Vocoder, seed: int, batch_size: int,
    split: SplitData, vocode_filter: bool = True,
) -> tuple[Outputs | None, Outputs | None]:
    """F's output x1 = F(x, z1) (None with ``vocode_filter`` False: nobody attacks it) and
    G's x2 = G(x1, z2, s') (None for a filter-only run) for one split
    (``filter_and_generator_spectrograms``), vocoded."""
    x1, x2, sampled = filter_and_generator_spectrograms(filt, gen, seed, batch_size, split)
    first = vocoded_outputs(vocoder, x1, split, batch_size) if vocode_filter else None
    second = (vocoded_outputs(vocoder, x2, split, batch_size, sampled, gen[0].output_level)
              if x2 is not None else None)
    return first, second


def sampled_genders(seed: int, split: SplitData, batch_size: int) -> np.ndarray:
    """s' (N,) of ``split``: batch i's draw of ``batch_noise``, the one PCMelGAN's G gets."""
    return np.concatenate([batch_noise(seed, NOISE_OFFSETS[split.name] + i, batch_size, 1)[2][:n]
                           for i, _, n in padded_batches(len(split), batch_size)])


def digit_template(templates: np.ndarray, spec_digit: tuple, vocoder: Vocoder, seed: int,
                   batch_size: int, level: tuple[float, float]):
    """A split -> Outputs function: each utterance replaced by ``templates[d, s']``
    (``baselines.digit_templates``), d the fixed digit AlexNet's prediction (``spec_digit``:
    module, variables), s' sampled as for PCMelGAN; vocoded at ``level`` (the training
    speakers' average statistics): nothing of the utterance but its digit is left."""
    from pcmelgan_jax.evaluation.classifier import predict

    def apply(split: SplitData) -> Outputs:
        digit = predict("alexnet", *spec_digit, split.x, batch_size)
        sampled = sampled_genders(seed, split, batch_size)
        return vocoded_outputs(vocoder, templates[digit, sampled], split, batch_size, sampled,
                               level)

    return apply


def linearly_erased(outs: dict[str, Outputs], splits: dict[str, SplitData], vocoder: Vocoder,
                    batch_size: int, shrinkage: float) -> dict[str, Outputs]:
    """A condition's spectrograms after a linear gender eraser fitted on its training-split
    output (``erasure``), vocoded again: blind to attackers that learn from the training
    speakers by construction, so it tells what they can and cannot show."""
    from pcmelgan_jax.evaluation.erasure import fit_linear_eraser

    eraser = fit_linear_eraser(outs["train"].spec, splits["train"].gender, shrinkage)
    return {name: vocoded_outputs(vocoder, eraser(out.spec), splits[name], batch_size,
                                  out.sampled_gender) for name, out in outs.items()}
