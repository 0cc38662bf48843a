"""A synthetic spoken-digit corpus in the exact AudioMNIST layout, spoken by eSpeak NG.

``pcmelgan-jax synth-data --out DIR [--speakers 24] [--reps 10] [--seed 0]`` writes
``DIR/NN/<digit>_<NN>_<rep>.wav`` (16-bit PCM, mono, 22050 Hz: eSpeak NG's native rate; the
TFDS builder resamples to 8 kHz) and ``DIR/audioMNIST_meta.txt`` (JSON with the real file's
fields), so ``pcmelgan-jax prepare --manual-dir DIR`` ingests it like the real corpus.

Speech: eSpeak NG from the ``espeakng-loader`` wheel (library + data) through ctypes, in
synchronous mode with a callback that collects the samples. Each speaker is an eSpeak voice
variant (``en+f3``, ``en-us+m2``, ...) with its own base pitch, pitch range, rate and English
accent; each repetition varies pitch, rate, amplitude, leading silence and added white noise
(SNR 25-40 dB) a little. Only variants whose F0 was measured to be gender-typical are used
(median F0 with eSpeak's default pitch, pyin: male variants 75-110 Hz, female 155-235 Hz;
child-like "male" variants such as ``zac`` (~300 Hz), whispering, robotic and unstable ones are
left out), and the pitch parameter stays within 35-60 (male) / 40-62 (female), which keeps
males below ~120 Hz and females above ~140 Hz.

Genders: with fewer than 60 speakers, ids 01..N alternate male (odd) / female (even), so the
default 24 speakers are 12 F / 12 M. With 60 or more, the female ids are the real corpus's 12
(ids above 60 alternate), so the paper's 24-speaker subset (the ``paper`` config) can be built
from it.

Determinism: eSpeak NG keeps internal state between utterances in a process (its output for a
word depends on what was spoken before), so each speaker is synthesised in a fresh spawned
process, in a fixed order, with the library's random seed set per utterance: the corpus is a
pure function of (speakers, reps, seed).

Safety: nothing is written outside ``--out``; a non-empty ``--out`` is refused unless it holds
a previous synthetic corpus (marker file ``.pcmelgan_synth.json``), whose files are then
replaced. Each file is written to a temporary name and renamed.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np

from pcmelgan_jax.data.corpus import REAL_FEMALE_SPEAKERS
from pcmelgan_jax.workdir import atomic_path, read_json, write_json_atomic

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
MARKER = ".pcmelgan_synth.json"
METADATA_FILE = "audioMNIST_meta.txt"
DEFAULT_SPEAKERS = 24
DEFAULT_REPS = 10
DEFAULT_SEED = 0

# eSpeak NG voice variants (espeak-ng-data/voices/!v) with gender-typical F0, measured here.
FEMALE_VARIANTS = (
    "f1", "f2", "f3", "f4", "f5", "Alicia", "Andrea", "Annie", "anika", "aunty", "belinda",
    "linda", "steph", "steph2", "steph3",
)  # fmt: skip
MALE_VARIANTS = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "iven", "iven2", "iven3", "iven4", "Reed",
    "Alex", "Jacky", "sandro", "victor", "michel", "miguel", "norbert", "Denis", "Hugo",
    "Diogo", "edward", "adam", "Gene", "travis", "klatt4", "klatt5", "klatt6", "Andy", "Lee",
)  # fmt: skip
ACCENTS = {  # eSpeak language -> the "accent" written to the metadata
    "en": "english (british)",
    "en-us": "english (american)",
    "en-gb-scotland": "english (scottish)",
    "en-gb-x-rp": "english (received pronunciation)",
    "en-us-nyc": "english (new york)",
}
PITCH_RANGE = {0: (40, 62), 1: (35, 60)}  # eSpeak pitch parameter (0-100) per gender

# speak_lib.h constants
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_espeakRATE, _espeakVOLUME, _espeakPITCH, _espeakRANGE = 1, 2, 3, 4


class SynthError(RuntimeError):
    """Synthesis or output-folder problem; the message names the path or voice."""


@dataclass(frozen=True)
class SpeakerVoice:
    """One synthetic speaker: eSpeak voice and base prosody (pitch/range 0-100, rate wpm)."""

    speaker: int
    gender: int  # 0 female, 1 male
    language: str
    variant: str
    pitch: int
    pitch_range: int
    rate: int
    age: int

    @property
    def voice_name(self) -> str:
        return f"{self.language}+{self.variant}"


def speaker_genders(speakers: int) -> dict[int, int]:
    """Speaker id -> gender (0 F, 1 M) for a corpus of ``speakers`` speakers (see module doc)."""
    if speakers < 2:
        raise ValueError(f"need at least 2 speakers (one per gender), got {speakers}")
    genders = {}
    for s in range(1, speakers + 1):
        if speakers >= 60 and s <= 60:
            genders[s] = 0 if s in REAL_FEMALE_SPEAKERS else 1
        else:
            genders[s] = 0 if s % 2 == 0 else 1
    return genders


def plan_speakers(speakers: int, seed: int) -> list[SpeakerVoice]:
    """The voices of a corpus: deterministic in (speakers, seed)."""
    rng = np.random.default_rng([seed, 7919])
    pools = {
        0: [FEMALE_VARIANTS[i] for i in rng.permutation(len(FEMALE_VARIANTS))],
        1: [MALE_VARIANTS[i] for i in rng.permutation(len(MALE_VARIANTS))],
    }
    used = {0: 0, 1: 0}
    languages = list(ACCENTS)
    plan = []
    for s, g in speaker_genders(speakers).items():
        variant = pools[g][used[g] % len(pools[g])]
        used[g] += 1
        lo, hi = PITCH_RANGE[g]
        plan.append(
            SpeakerVoice(
                speaker=s,
                gender=g,
                language=languages[int(rng.integers(len(languages)))],
                variant=variant,
                pitch=int(rng.integers(lo, hi + 1)),
                pitch_range=int(rng.integers(35, 66)),
                rate=int(rng.integers(140, 186)),
                age=int(rng.integers(19, 62)),
            )
        )
    return plan


class _ESpeak:
    """Minimal ctypes binding of eSpeak NG (synchronous mode). One per process."""

    _CALLBACK = ctypes.CFUNCTYPE(
        ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
    )

    def __init__(self):
        import espeakng_loader

        self.data_path = espeakng_loader.get_data_path()
        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self.lib.espeak_Initialize.restype = ctypes.c_int
        self.lib.espeak_Initialize.argtypes = [
            ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int,
        ]  # fmt: skip
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self.lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        self.lib.espeak_Synth.argtypes = [
            ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
            ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]  # fmt: skip
        self.lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        self.sample_rate = self.lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, self.data_path.encode(), 0
        )
        if self.sample_rate <= 0:
            raise SynthError(f"espeak_Initialize failed (data path {self.data_path})")
        self._chunks: list[np.ndarray] = []

        def collect(wav, n, _events):
            if n > 0:
                self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
            return 0

        self._callback = self._CALLBACK(collect)  # keep a reference
        self.lib.espeak_SetSynthCallback(self._callback)

    def variant_exists(self, variant: str) -> bool:
        return os.path.isfile(os.path.join(self.data_path, "voices", "!v", variant))

    def speak(
        self, text: str, voice: str, rate: int, pitch: int, pitch_range: int, seed: int
    ) -> np.ndarray:
        """Text -> float32 (samples,) in [-1, 1] at ``self.sample_rate``."""
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise SynthError(f"eSpeak NG has no voice {voice!r}")
        for param, value in (
            (_espeakRATE, rate), (_espeakPITCH, pitch), (_espeakRANGE, pitch_range),
            (_espeakVOLUME, 100),
        ):  # fmt: skip
            self.lib.espeak_SetParameter(param, int(value), 0)
        self.lib.espeak_ng_SetRandSeed(seed)
        self._chunks = []
        data = text.encode() + b"\0"
        err = self.lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, 0, None, None)
        if err != 0 or not self._chunks:
            raise SynthError(f"espeak_Synth failed for {text!r} with voice {voice!r} ({err})")
        return np.concatenate(self._chunks).astype(np.float32) / 32768.0


def _utterance(engine: _ESpeak, voice: SpeakerVoice, digit: int, rep: int, seed: int) -> np.ndarray:
    """One repetition: jittered prosody, gain, leading/trailing silence and noise."""
    rng = np.random.default_rng([seed, voice.speaker, digit, rep])
    lo, hi = PITCH_RANGE[voice.gender]
    pitch = int(np.clip(voice.pitch + rng.integers(-3, 4), lo, hi))
    rate = int(voice.rate + rng.integers(-8, 9))
    pitch_range = int(np.clip(voice.pitch_range + rng.integers(-5, 6), 0, 100))
    speech = engine.speak(
        WORDS[digit], voice.voice_name, rate, pitch, pitch_range,
        seed=int(rng.integers(1, 2**31 - 1)),
    )  # fmt: skip
    nz = np.flatnonzero(np.abs(speech) > 1e-4)
    if nz.size:
        speech = speech[nz[0] : nz[-1] + 1]  # eSpeak's own padding; ours follows
    sr = engine.sample_rate
    lead = np.zeros(int(rng.uniform(0.02, 0.25) * sr), np.float32)
    tail = np.zeros(int(rng.uniform(0.02, 0.12) * sr), np.float32)
    peak = float(np.max(np.abs(speech))) or 1.0
    speech = speech * (rng.uniform(0.3, 0.9) / peak)
    clip = np.concatenate([lead, speech, tail])
    rms = float(np.sqrt(np.mean(speech**2))) or 1e-3
    snr_db = rng.uniform(25.0, 40.0)
    clip = clip + rng.normal(0.0, rms / 10 ** (snr_db / 20), clip.shape).astype(np.float32)
    return np.clip(clip, -1.0, 1.0).astype(np.float32)


def _write_wav(path: str, audio: np.ndarray, sample_rate: int) -> None:
    """16-bit PCM wav, written atomically (``workdir.atomic_path``)."""
    import soundfile as sf

    with atomic_path(path) as tmp:
        sf.write(tmp, audio, sample_rate, subtype="PCM_16", format="WAV")


def _synthesize_speaker(out_dir: str, voice: SpeakerVoice, reps: int, seed: int) -> dict:
    """Worker (fresh process): all digits x reps of one speaker -> NN/*.wav. Returns stats."""
    engine = _ESpeak()
    if not engine.variant_exists(voice.variant):
        raise SynthError(f"eSpeak NG voice variant {voice.variant!r} not found")
    folder = os.path.join(out_dir, f"{voice.speaker:02d}")
    os.makedirs(folder, exist_ok=True)
    seconds = 0.0
    for digit in range(10):
        for rep in range(reps):
            audio = _utterance(engine, voice, digit, rep, seed)
            seconds += audio.size / engine.sample_rate
            name = f"{digit}_{voice.speaker:02d}_{rep}.wav"
            _write_wav(os.path.join(folder, name), audio, engine.sample_rate)
    return {"speaker": voice.speaker, "files": 10 * reps, "seconds": seconds,
            "sample_rate": engine.sample_rate}  # fmt: skip


def _metadata(plan: list[SpeakerVoice], seed: int) -> dict:
    """audioMNIST_meta.txt content: the real file's fields and value styles."""
    meta = {}
    for v in plan:
        day = (seed * 37 + v.speaker) % 28 + 1
        meta[f"{v.speaker:02d}"] = {
            "accent": ACCENTS[v.language],
            "age": str(v.age),
            "gender": "female" if v.gender == 0 else "male",
            "native speaker": "yes" if v.language in ("en", "en-us") else "no",
            "origin": f"Synthetic, eSpeak NG, {v.voice_name}",
            "recordingdate": f"24-01-{day:02d}-12-{v.speaker % 60:02d}-00",
            "recordingroom": "synthetic",
        }
    return meta


def _clear_previous(out_dir: str) -> None:
    """Removes the files of a previous synthetic corpus in ``out_dir`` (only ours)."""
    previous = read_json(os.path.join(out_dir, MARKER))
    # our wavs and the temporary files of an interrupted write (older ones end in .tmp-PID)
    name_re = re.compile(r"^\d_\d+_\d+\.wav$|^\..*\.tmp(-\d+)?$")
    for s in previous.get("speakers", []):
        folder = os.path.join(out_dir, f"{int(s):02d}")
        if not os.path.isdir(folder):
            continue
        for name in os.listdir(folder):
            if name_re.match(name):
                os.remove(os.path.join(folder, name))
        if os.listdir(folder):
            raise SynthError(
                f"{folder}: holds files that the synthetic corpus did not write; not touching it"
            )
        os.rmdir(folder)
    meta = os.path.join(out_dir, METADATA_FILE)
    if os.path.exists(meta):
        os.remove(meta)


def _claim_out_dir(out_dir: str) -> None:
    """Creates ``out_dir``, emptying a previous synthetic corpus there; refuses other content."""
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        if not os.path.isfile(os.path.join(out_dir, MARKER)):
            raise SynthError(
                f"{out_dir} is not empty and is not a synthetic corpus written by "
                f"synth-data (no {MARKER}); refusing to write into it"
            )
        _clear_previous(out_dir)
    os.makedirs(out_dir, exist_ok=True)


def _synthesize_speakers(out_dir: str, plan: list[SpeakerVoice], reps: int, seed: int,
                         workers: int | None) -> list[dict]:
    """Each speaker's files, one per spawned process (``workers`` at a time); their stats."""
    import multiprocessing

    workers = max(1, min(workers or os.cpu_count() or 1, len(plan)))
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx, max_tasks_per_child=1) as pool:
        futures = [pool.submit(_synthesize_speaker, out_dir, v, reps, seed) for v in plan]
        return [f.result() for f in futures]


def synthesize_corpus(
    out_dir: str | os.PathLike,
    speakers: int = DEFAULT_SPEAKERS,
    reps: int = DEFAULT_REPS,
    seed: int = DEFAULT_SEED,
    workers: int | None = None,
) -> dict:
    """Writes a synthetic AudioMNIST-layout corpus; returns a JSON-serialisable summary.

    ``speakers`` x 10 digits x ``reps`` wav files (22050 Hz, 16-bit) plus the metadata file.
    ``workers`` spawned processes (default: CPU count) synthesise one speaker each; the
    output does not depend on it. Raises ``SynthError`` for a non-empty ``out_dir`` that is
    not a previous synthetic corpus.
    """
    if reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps}")
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    out_dir = os.path.abspath(os.fspath(out_dir))
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise SynthError(f"{out_dir} exists and is not a directory")
    plan = plan_speakers(speakers, seed)
    _claim_out_dir(out_dir)
    marker = {
        "generator": "pcmelgan_jax.data.synth",
        "complete": False,
        "speakers": [v.speaker for v in plan],
        "reps": reps,
        "seed": seed,
        "voices": [asdict(v) for v in plan],
    }
    write_json_atomic(os.path.join(out_dir, MARKER), marker, indent=4)
    t0 = time.perf_counter()
    stats = _synthesize_speakers(out_dir, plan, reps, seed, workers)
    write_json_atomic(os.path.join(out_dir, METADATA_FILE), _metadata(plan, seed), indent=4)
    marker["complete"] = True
    write_json_atomic(os.path.join(out_dir, MARKER), marker, indent=4)
    genders = speaker_genders(speakers)
    return {
        "out_dir": out_dir,
        "speakers": len(plan),
        "female": sum(1 for g in genders.values() if g == 0),
        "male": sum(1 for g in genders.values() if g == 1),
        "files": sum(s["files"] for s in stats),
        "audio_seconds": round(sum(s["seconds"] for s in stats), 2),
        "sample_rate": stats[0]["sample_rate"],
        "seed": seed,
        "reps": reps,
        "wall_seconds": round(time.perf_counter() - t0, 2),
    }


def _run(args: argparse.Namespace) -> int:
    try:
        summary = synthesize_corpus(args.out, args.speakers, args.reps, args.seed, args.workers)
    except (SynthError, ValueError) as e:
        print(f"synth-data: error: {e}", file=sys.stderr)
        return 2
    print(
        f"wrote {summary['files']} files ({summary['audio_seconds']:.0f} s of audio at "
        f"{summary['sample_rate']} Hz) by {summary['speakers']} speakers "
        f"({summary['female']} F / {summary['male']} M) to {summary['out_dir']} "
        f"in {summary['wall_seconds']:.1f} s"
    )
    return 0


def add_parser(subparsers) -> None:
    """Registers ``synth-data``."""
    p = subparsers.add_parser(
        "synth-data",
        help="write a synthetic spoken-digit corpus (eSpeak NG) in the AudioMNIST layout",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--out", required=True, help="output folder (new, empty, or a previous one)")
    p.add_argument("--speakers", type=int, default=DEFAULT_SPEAKERS,
                   help="number of speakers (>= 60: the real corpus's female ids)")  # fmt: skip
    p.add_argument("--reps", type=int, default=DEFAULT_REPS, help="repetitions per digit")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED)
    p.add_argument("--workers", type=int, default=None, help="processes (default: CPU count)")
    p.set_defaults(func=_run)


if __name__ == "__main__":  # worker processes are spawned; keep the guard
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command", required=True))
    sys.exit(_run(parser.parse_args(["synth-data", *sys.argv[1:]])))
