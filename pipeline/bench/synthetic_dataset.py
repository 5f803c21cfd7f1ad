"""A synthetic speech dataset of realistic size for the workflow bench, written in seconds.

`<speaker>/<clip>.flac` + `<clip>.lab` (the folder source's layout), 16 kHz mono 16-bit FLAC as
VoxPopuli ships it (so preparation resamples to the codec's 44.1 kHz), clips of harmonic
'syllables' at a pitch per speaker over a faint noise floor (they pass every quality check),
Finnish transcripts from the project's evaluation sentences, each clip's text unique.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf

from pipeline.data.text import example_sentences

SAMPLE_RATE = 16_000
SPEAKER_F0 = (110.0, 145.0, 190.0, 230.0)  # four speakers: low to high voices
_NUMBERS = ("yksi", "kaksi", "kolme", "neljä", "viisi", "kuusi", "seitsemän", "kahdeksan", "yhdeksän", "kymmenen")


def _voice(f0: float, seconds: float) -> np.ndarray:
    """A harmonic tone (5 partials) one speaker's clips are cut from."""
    t = np.arange(int(seconds * SAMPLE_RATE), dtype=np.float64) / SAMPLE_RATE
    wave = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6))
    return (wave / np.max(np.abs(wave))).astype(np.float32)


def _clip_audio(voice: np.ndarray, seconds: float, seed: int) -> np.ndarray:
    """Syllables (gated voice, random lengths and levels) between silent pads, plus noise."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SAMPLE_RATE)
    start = int(rng.integers(0, len(voice) - n))
    gate = np.zeros(n, np.float32)
    pos = int(0.2 * SAMPLE_RATE)
    while pos < n - int(0.2 * SAMPLE_RATE):
        length = int(rng.integers(int(0.08 * SAMPLE_RATE), int(0.25 * SAMPLE_RATE)))
        gate[pos:min(pos + length, n)] = rng.uniform(0.4, 1.0)
        pos += length + int(rng.integers(int(0.03 * SAMPLE_RATE), int(0.12 * SAMPLE_RATE)))
    noise = rng.standard_normal(n, dtype=np.float32) * np.float32(3e-4)
    return 0.3 * voice[start:start + n] * gate + noise


def _text(sentences: list[str], i: int) -> str:
    """A unique transcript per clip: a sentence and a spelled-out clip number."""
    words = " ".join(_NUMBERS[int(d)] for d in str(i))
    return f"{sentences[i % len(sentences)]} Numero {words}."


def write_dataset(folder: Path, clips: int, min_s: float = 2.0, max_s: float = 20.0, speakers: int = 4,
                  seed: int = 0, threads: int = 8) -> dict:
    """Write `clips` clips into `folder`; returns {"clips", "speakers", "audio_hours", "sample_rate"}."""
    folder = Path(folder)
    sentences = example_sentences() or ["Hyvää huomenta, tänään on aurinkoinen päivä."]
    rng = np.random.default_rng(seed)
    durations = rng.uniform(min_s, max_s, clips)
    voices = [_voice(SPEAKER_F0[s % len(SPEAKER_F0)] * (1 + 0.03 * (s // len(SPEAKER_F0))), max_s + 1.0)
              for s in range(speakers)]
    for s in range(speakers):
        (folder / f"spk{s}").mkdir(parents=True, exist_ok=True)

    def write(i: int) -> None:
        path = folder / f"spk{i % speakers}" / f"clip{i:05d}.flac"
        sf.write(str(path), _clip_audio(voices[i % speakers], float(durations[i]), seed * 100_003 + i),
                 SAMPLE_RATE, subtype="PCM_16", format="FLAC")
        path.with_suffix(".lab").write_text(_text(sentences, i), encoding="utf-8")

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:  # numpy and libsndfile release the GIL
        list(pool.map(write, range(clips)))
    return {"clips": clips, "speakers": speakers, "audio_hours": round(float(durations.sum()) / 3600, 3),
            "sample_rate": SAMPLE_RATE, "format": "FLAC 16-bit mono"}
