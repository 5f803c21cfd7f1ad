"""Test helpers that write good and deliberately bad audio/transcript files."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import soundfile as sf

from pipeline.config import Config


def speech_like(seconds: float = 1.5, sr: int = 22_050, f0: float = 140.0, amplitude: float = 0.3,
                noise: float = 3e-4, pad_s: float = 0.2, seed: int = 0) -> np.ndarray:
    """Harmonic 'syllables' (150 ms on, 60 ms off) between silent pads, over a faint noise floor."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    t = np.arange(n) / sr
    voice = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6))
    gate = ((t % 0.21) < 0.15).astype(float)
    pad = int(pad_s * sr)
    gate[:pad] = 0.0
    gate[n - pad:] = 0.0
    y = amplitude * voice / np.max(np.abs(voice)) * gate + noise * rng.standard_normal(n)
    return y.astype(np.float32)


def write_audio(path: Path, data: np.ndarray, sr: int = 22_050, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), data, sr, **kwargs)
    return path


def write_clip(folder: Path, speaker: str, name: str, text: str | None = "Hyvää huomenta, Suomi.",
               data: np.ndarray | None = None, sr: int = 22_050, ext: str = ".wav",
               transcript_suffix: str = ".lab", seed: int = 0, **kwargs) -> Path:
    """`<folder>/<speaker>/<name><ext>` plus its transcript (None: no transcript file)."""
    audio = write_audio(folder / speaker / f"{name}{ext}",
                        speech_like(sr=sr, seed=seed) if data is None else data, sr, **kwargs)
    if text is not None:
        audio.with_suffix(transcript_suffix).write_text(text, encoding="utf-8")
    return audio


def wav_bytes(data: np.ndarray, sr: int = 16_000, fmt: str = "WAV") -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, data, sr, format=fmt)
    return buffer.getvalue()


def test_config(tmp_path: Path, **dataset) -> Config:
    """A Config whose workspace is under tmp_path (dataset settings overridable)."""
    config = Config().with_overrides({"studio.workspace": str(tmp_path / "workspace")})
    return config.with_overrides({f"dataset.{k}": v for k, v in dataset.items()}) if dataset else config


test_config.__test__ = False  # not a test, despite the name
