"""Privacy and utility evaluation: anonymisers (PCMelGAN, Filter, training-free baselines)
against fixed, informed, linear, feature and speaker attackers on held-out test speakers,
with bootstrap intervals. ``protocol.run_evaluation`` is the entry point; ``eval.py`` and
``pcmelgan-jax baselines`` call it."""

from pcmelgan_jax.evaluation.data import heldout_repetitions
from pcmelgan_jax.evaluation.inference import (
    audio_predict,
    batch_noise,
    mel_features,
    spec_predict,
    unet_apply,
    vocode,
)
from pcmelgan_jax.evaluation.protocol import run_evaluation
from pcmelgan_jax.evaluation.report import (
    markdown_tables,
    plot_privacy_utility,
    reference_warnings,
    summarize_trees,
    vocoder_warnings,
)
from pcmelgan_jax.evaluation.runs import (
    EvaluationError,
    RunInfo,
    find_runs,
    is_run_dir,
    resolve_run,
)

__all__ = [
    "EvaluationError", "RunInfo", "audio_predict", "batch_noise", "find_runs",
    "heldout_repetitions", "is_run_dir", "markdown_tables", "mel_features",
    "plot_privacy_utility", "reference_warnings", "resolve_run",
    "run_evaluation", "spec_predict", "summarize_trees", "unet_apply", "vocode",
    "vocoder_warnings",
]
