"""Cheap checks of a synthesized clip: length against the text, silence, clipping, cut off.

The expected duration assumes a usual Finnish speaking rate (characters of normalized text per
second, as the manifest's `speaking_rate`); a clip far from it is mumbling, stuttering or
truncated.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipeline.quality.naturalness import SILENT_PEAK_DB, peak_db
from pipeline.data.text import normalize

CHARS_PER_SECOND = 14.0  # normal read Finnish: ~12-16 characters of normalized text per second
DURATION_RATIO_RANGE = (0.5, 2.0)
FRAME_SECONDS = 0.02
SILENCE_BELOW_PEAK_DB = 40.0  # a frame this far under the clip's peak counts as silence
MAX_SILENCE_SHARE = 0.5
CLIPPING_LEVEL = 0.999
MAX_CLIPPING_RATIO = 0.001


@dataclass(frozen=True)
class SignalChecks:
    duration_s: float
    expected_s: float
    duration_ratio: float
    silence_share: float
    clipping_ratio: float
    peak_db: float
    ended: bool  # generation stopped by itself, not at the token limit
    flags: list[str] = field(default_factory=list)


def expected_seconds(text: str) -> float:
    return max(len(normalize(text)), 1) / CHARS_PER_SECOND


def silence_share(audio: np.ndarray, sample_rate: int) -> float:
    """Share of 20 ms frames more than 40 dB under the clip's peak (all of a silent clip)."""
    frame = max(1, int(FRAME_SECONDS * sample_rate))
    n = audio.size // frame
    if n == 0 or peak_db(audio) < SILENT_PEAK_DB:
        return 1.0
    rms = np.sqrt(np.mean(audio[: n * frame].reshape(n, frame).astype(np.float64) ** 2, axis=1))
    threshold = np.abs(audio).max() * 10 ** (-SILENCE_BELOW_PEAK_DB / 20)
    return float(np.mean(rms < threshold))


def reached_end(chunk_frames: list[int], max_new_tokens: int) -> bool:
    """False when any chunk used all its allowed frames: generation was cut, not finished."""
    return all(frames < max_new_tokens for frames in chunk_frames)


def check_signal(audio: np.ndarray, sample_rate: int, text: str, ended: bool = True) -> SignalChecks:
    audio = np.nan_to_num(np.asarray(audio, dtype=np.float32))
    duration = audio.size / sample_rate
    expected = expected_seconds(text)
    ratio = duration / expected
    silence = silence_share(audio, sample_rate)
    clipping = float(np.mean(np.abs(audio) >= CLIPPING_LEVEL)) if audio.size else 0.0
    peak = peak_db(audio)
    flags = []
    if peak < SILENT_PEAK_DB:
        flags.append("silent")
    elif silence > MAX_SILENCE_SHARE:
        flags.append(f"mostly silence ({silence:.0%})")
    if ratio < DURATION_RATIO_RANGE[0]:
        flags.append(f"too short ({duration:.1f} s for ~{expected:.1f} s of text)")
    elif ratio > DURATION_RATIO_RANGE[1]:
        flags.append(f"too long ({duration:.1f} s for ~{expected:.1f} s of text)")
    if clipping > MAX_CLIPPING_RATIO:
        flags.append(f"clipping ({clipping:.2%} of samples)")
    if not ended:
        flags.append("cut at max length")
    return SignalChecks(duration, expected, ratio, silence, clipping, peak, ended, flags)
