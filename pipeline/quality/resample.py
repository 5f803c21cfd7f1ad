"""Resampling for the scorers (ASR, speaker encoder and DNSMOS all take 16 kHz).

soxr directly: librosa's resample wraps the same library, but its first call in a process also
compiles librosa's numba functions (17 s on a GPU machine), which would count against every
first scorecard.
"""

from __future__ import annotations

import numpy as np


def resample(audio: np.ndarray, sample_rate: int, target_rate: int) -> np.ndarray:
    """Mono float32 `audio` at `target_rate` (the same array when the rate already matches)."""
    audio = np.asarray(audio, dtype=np.float32)
    if sample_rate == target_rate or audio.size == 0:
        return audio
    import soxr

    return soxr.resample(audio, sample_rate, target_rate, quality="HQ").astype(np.float32, copy=False)
