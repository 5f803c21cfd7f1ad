"""Predicted naturalness: DNSMOS P.835 (SIG speech quality, BAK background, OVRL overall; 1-5).

`speechmos` ships Microsoft's DNSMOS ONNX models in its wheel and runs them on CPU through
onnxruntime. A clip without signal gets no score but the flag "silent": DNSMOS of silence is
not a quality judgement.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipeline.data.audio import resample

DNSMOS_RATE = 16000
SILENT_PEAK_DB = -50.0  # a clip whose loudest sample is below this has no speech to judge


@dataclass(frozen=True)
class Dnsmos:
    sig: float
    bak: float
    ovrl: float
    p808: float
    flag: str = ""  # "silent" when not scored


def peak_db(audio: np.ndarray) -> float:
    peak = float(np.abs(audio).max()) if audio.size else 0.0
    return 20 * math.log10(peak) if peak > 0 else -math.inf


def dnsmos(audio: np.ndarray, sample_rate: int) -> Dnsmos:
    """DNSMOS of one clip (any sample rate, float in [-1, 1])."""
    audio = np.nan_to_num(np.asarray(audio, dtype=np.float32))
    if peak_db(audio) < SILENT_PEAK_DB:
        nan = float("nan")
        return Dnsmos(nan, nan, nan, nan, flag="silent")
    audio = resample(audio, sample_rate, DNSMOS_RATE)
    from speechmos import dnsmos as model

    window = int(model.INPUT_LENGTH * DNSMOS_RATE)
    if audio.size < window:
        # DNSMOS repeats a short clip to fill its 9 s window and then slides by 1 s over the
        # repeats; one window of the repeated clip is the same judgement at a seventh of the cost
        audio = np.resize(audio, window + 1)
    scores = model.run(np.clip(audio, -1.0, 1.0).astype(np.float32), DNSMOS_RATE)
    return Dnsmos(float(scores["sig_mos"]), float(scores["bak_mos"]), float(scores["ovrl_mos"]),
                  float(scores["p808_mos"]))
