"""Audio loading, quality measurement and conversion to the training format (44.1 kHz mono).

One decode per clip: `load_audio` gives the samples, `measure` computes every quality number
the manifest stores, and `to_training_audio` writes a converted copy only when needed.
"""

from __future__ import annotations

import hashlib
import math
import re
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from pipeline.atomic import replacing

TARGET_SR = 44_100
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".opus")
CLIP_LEVEL = 0.999          # |x| at or above this counts as a clipped sample
SILENT_PEAK_DB = -60.0      # a file whose loudest frame is below this is silence
ACTIVE_RANGE_DB = 40.0      # frames within this many dB of the loudest frame count as active
_FRAME, _HOP = 2048, 512    # at 44.1 kHz: 46 ms frames, 12 ms hop (scaled for other rates)
_POWER_FLOOR = 1e-10        # -100 dBFS: the noise floor of digital silence


class AudioError(ValueError):
    """A file that cannot be decoded as audio; the message names the file."""


@dataclass(frozen=True)
class AudioInfo:
    duration_s: float
    sample_rate: int
    channels: int
    loudness_db: float
    peak_db: float
    clipping_ratio: float
    lead_silence_s: float
    trail_silence_s: float
    snr_db: float
    silent: bool

    @property
    def speech_s(self) -> float:
        """Duration without the leading and trailing silence."""
        return max(self.duration_s - self.lead_silence_s - self.trail_silence_s, 0.0)

    def as_dict(self) -> dict:
        return asdict(self)


def file_hash(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of the file's bytes (duplicate detection and the conversion cache key)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def probe(path: str | Path) -> tuple[float, int, int] | None:
    """(duration_s, sample_rate, channels) from the header without decoding, or None if unknown."""
    try:
        info = sf.info(str(path))
    except Exception:
        return None
    if info.samplerate <= 0:
        return None
    return info.frames / info.samplerate, int(info.samplerate), int(info.channels)


def load_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """Samples as float32 `[frames, channels]` and the sample rate; AudioError if undecodable."""
    path = Path(path)
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
        return data, int(sr)
    except Exception as first:
        # libsndfile lacks some codecs (e.g. mp3 in older builds, m4a); librosa tries audioread.
        try:
            import librosa

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                y, sr = librosa.load(str(path), sr=None, mono=False)
            y = np.atleast_2d(np.asarray(y, dtype=np.float32))
            return y.T, int(sr)
        except Exception:
            raise AudioError(f"cannot decode {path.name} ({_short(first)})") from None


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = re.sub(r"^Error opening .*?: ", "", text)  # libsndfile repeats the full path
    return text.rstrip(".")[:160]


def _frame_power(mono: np.ndarray, sr: int) -> tuple[np.ndarray, int]:
    """Mean power per frame and the hop length in samples (frames scale with the sample rate)."""
    hop = max(int(_HOP * sr / TARGET_SR), 1)
    frame = max(int(_FRAME * sr / TARGET_SR), hop)
    if len(mono) < frame:
        padded = np.pad(mono, (0, frame - len(mono)))
        return np.array([np.mean(padded**2)]), hop
    windows = np.lib.stride_tricks.sliding_window_view(mono, frame)[::hop]
    return np.mean(windows.astype(np.float64) ** 2, axis=1), hop


def _db(power: float) -> float:
    return float(10.0 * np.log10(max(power, _POWER_FLOOR)))


def measure(data: np.ndarray, sr: int) -> AudioInfo:
    """Quality numbers of decoded audio `[frames, channels]` (see the manifest schema)."""
    frames, channels = data.shape if data.ndim == 2 else (len(data), 1)
    data = data.reshape(frames, channels)
    duration = frames / sr if sr else 0.0
    if frames == 0:
        return AudioInfo(0.0, sr, channels, -100.0, -100.0, 0.0, 0.0, 0.0, math.nan, True)
    peak = float(np.max(np.abs(data)))
    clipping = float(np.mean(np.abs(data) >= CLIP_LEVEL))
    mono = data.mean(axis=1) if channels > 1 else data[:, 0]

    power, hop = _frame_power(mono, sr)
    power_db = 10.0 * np.log10(np.maximum(power, _POWER_FLOOR))
    loudest = float(power_db.max())
    silent = loudest < SILENT_PEAK_DB or peak == 0.0
    active = power_db > loudest - ACTIVE_RANGE_DB
    if silent or not active.any():
        lead = trail = duration / 2
        return AudioInfo(duration, sr, channels, _db(float(np.mean(mono**2))), _db(peak**2),
                         clipping, lead, trail, math.nan, True)

    idx = np.flatnonzero(active)
    lead = min(idx[0] * hop / sr, duration)
    trail = max(duration - ((idx[-1] * hop + hop) / sr), 0.0)
    loudness = _db(float(np.mean(power[active])))

    # SNR: active-frame power against the quietest 10 % of frames (pauses carry the noise floor).
    quiet = np.sort(power)[: max(len(power) // 10, 1)]
    noise = max(float(np.mean(quiet)), _POWER_FLOOR)
    signal = max(float(np.mean(power[active])) - noise, _POWER_FLOOR)
    snr = float(10.0 * np.log10(signal / noise))
    return AudioInfo(duration, sr, channels, loudness, _db(peak**2), clipping,
                     float(lead), float(trail), snr, False)


def analyze_audio(path: str | Path) -> AudioInfo:
    """Decode `path` and measure it; AudioError if it is not audio."""
    data, sr = load_audio(path)
    return measure(data, sr)


def needs_conversion(path: str | Path) -> bool:
    """True unless the file already is 44.1 kHz mono WAV or FLAC."""
    path = Path(path)
    if path.suffix.lower() not in (".wav", ".flac"):
        return True
    try:
        info = sf.info(str(path))
    except Exception:
        return True
    return not (info.samplerate == TARGET_SR and info.channels == 1 and info.format in ("WAV", "FLAC"))


def to_training_audio(src: str | Path, dst_dir: str | Path, *, audio: tuple[np.ndarray, int] | None = None,
                      content_hash: str | None = None) -> Path:
    """The path training reads: `src` itself when already 44.1 kHz mono WAV/FLAC, else a
    converted float WAV in `dst_dir` named by the source's content hash (so it is reused).

    `audio` (decoded samples, rate) and `content_hash` may be passed to skip a second decode/hash.
    """
    src = Path(src)
    if not needs_conversion(src):
        return src
    dst_dir = Path(dst_dir)
    digest = content_hash or file_hash(src)
    dst = dst_dir / f"{digest[:24]}.wav"
    if dst.exists() and dst.stat().st_size > 0:
        return dst
    data, sr = audio if audio is not None else load_audio(src)
    mono = data.mean(axis=1) if data.ndim == 2 else data
    mono = np.ascontiguousarray(mono, dtype=np.float32)
    mono = resample(mono, sr, TARGET_SR)
    with replacing(dst) as tmp:
        sf.write(str(tmp), mono.astype(np.float32), TARGET_SR, subtype="FLOAT", format="WAV")
    return dst


def resample(audio: np.ndarray, sample_rate: int, target_rate: int) -> np.ndarray:
    """Mono float32 `audio` at `target_rate` (the same array when the rate already matches).

    soxr directly: librosa's resample wraps the same library, but its first call in a process also
    compiles librosa's numba functions (17 s on a GPU machine)."""
    audio = np.asarray(audio, dtype=np.float32)
    if sample_rate == target_rate or audio.size == 0:
        return audio
    import soxr

    return soxr.resample(audio, sample_rate, target_rate, quality="HQ").astype(np.float32, copy=False)
