"""Shared by the quality tests (import the fixture by name): a tiny random Whisper built offline,
the bundled sample's clips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pipeline.quality.asr import Transcriber
from pipeline.quality.tiny_asr import tiny_transcriber

SAMPLE = Path(__file__).resolve().parents[2] / "assets" / "sample"


def sample_clip(speaker: str, n: int = 0) -> tuple[np.ndarray, int]:
    audio, rate = sf.read(sorted((SAMPLE / speaker).glob("*.ogg"))[n], dtype="float32")
    return audio, rate


@pytest.fixture(scope="module")
def tiny_asr(tmp_path_factory) -> Transcriber:
    return tiny_transcriber(tmp_path_factory.mktemp("tiny-asr"))
