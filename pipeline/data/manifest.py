"""The manifest: one row per clip with its quality numbers and an ok/rejected verdict.

Nothing about one clip can stop the build: every failure becomes a rejection whose reason
starts with its category ("too short: 0.31 s < 0.60 s", "duplicate of spk/clip01").
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from pipeline.atomic import replacing
from pipeline.data import text as text_module
from pipeline.data.audio import AudioError, file_hash, load_audio, measure, probe, to_training_audio
from pipeline.data.parallel import map_in_processes
from pipeline.data.source_spec import RawClip

Progress = Callable[[float, str], None] | None
MANIFEST_NAME = "manifest.parquet"
COLUMNS = ["id", "speaker", "text", "normalized_text", "source_path", "audio_path", "duration_s",
           "sample_rate", "channels", "loudness_db", "peak_db", "clipping_ratio", "lead_silence_s",
           "trail_silence_s", "snr_db", "speaking_rate", "status", "reason", "audio_hash"]
_FLOATS = ["duration_s", "loudness_db", "peak_db", "clipping_ratio", "lead_silence_s",
           "trail_silence_s", "snr_db", "speaking_rate"]

# (reason prefix, category) in match order: `summarize` counts rejections per category.
_CATEGORIES = [
    ("missing transcript", "missing transcript"), ("transcript is missing", "missing transcript"),
    ("transcript is empty", "empty transcript"), ("transcript", "bad transcript"),
    ("audio file", "missing audio"), ("no audio", "missing audio"),
    ("unreadable audio", "unreadable audio"), ("empty audio", "empty audio"),
    ("silent audio", "silent audio"), ("too short", "too short"), ("too long", "too long"),
    ("clipping", "clipping"), ("low snr", "low SNR"), ("duplicate", "duplicate"),
]


def reason_category(reason: str) -> str:
    """The short category of a rejection reason ("too short", "duplicate", ...)."""
    low = reason.lower()
    for prefix, category in _CATEGORIES:
        if low.startswith(prefix):
            return category
    return low.split(":")[0].strip() or "other"


@dataclass(frozen=True)
class Limits:
    min_duration_s: float
    max_duration_s: float
    max_clipping_ratio: float
    min_snr_db: float

    @classmethod
    def from_config(cls, config) -> "Limits":
        ds = config.dataset
        return cls(ds.min_duration_s, ds.max_duration_s, ds.max_clipping_ratio, ds.min_snr_db)


def _empty_row(clip: RawClip) -> dict:
    row = {c: math.nan for c in _FLOATS}
    row.update(id=clip.id, speaker=str(clip.speaker), text=clip.text or "", normalized_text="",
               source_path=clip.source_path, audio_path="", sample_rate=0, channels=0,
               status="ok", reason="", audio_hash="")
    return row


def _normalized(text: str | None) -> str:
    if not text:
        return ""
    try:
        return text_module.normalize(text)
    except Exception:  # a normalizer bug must not drop the clip; the raw text still trains
        return " ".join(text.split())


def _audio_reason(row: dict, info, limits: Limits) -> str:
    """The first audio-quality rule the clip breaks, or ''."""
    if info.duration_s < limits.min_duration_s:
        return f"too short: {info.duration_s:.2f} s < {limits.min_duration_s:.2f} s"
    if info.duration_s > limits.max_duration_s:
        return f"too long: {info.duration_s:.1f} s > {limits.max_duration_s:.1f} s"
    if info.silent:
        return f"silent audio: peak {info.peak_db:.0f} dBFS"
    if info.clipping_ratio > limits.max_clipping_ratio:
        return f"clipping: {info.clipping_ratio:.2%} of samples at full scale (limit {limits.max_clipping_ratio:.2%})"
    if info.snr_db < limits.min_snr_db:
        return f"low SNR: {info.snr_db:.1f} dB < {limits.min_snr_db:.1f} dB"
    return ""


def measure_clip(clip: RawClip, audio_dir: Path, limits: Limits) -> dict:
    """One manifest row (before duplicate detection); never raises for a bad clip."""
    row = _empty_row(clip)
    row["normalized_text"] = _normalized(clip.text)
    reasons = [clip.problem] if clip.problem else []
    transcript_problem = None if clip.problem else text_module.check_transcript(clip.text)
    src = Path(clip.source_path)
    if not src.is_file():
        row.update(status="rejected", reason=clip.problem or f"audio file not found: {src.name}")
        return row
    try:
        row["audio_hash"] = file_hash(src)
        if src.stat().st_size == 0:
            raise AudioError("empty")
        header = probe(src)
        if header and header[0] > limits.max_duration_s * 2:  # don't decode hour-long files
            row.update(duration_s=header[0], sample_rate=header[1], channels=header[2])
            reasons.append(f"too long: {header[0]:.1f} s > {limits.max_duration_s:.1f} s")
            raise _Done
        data, sr = load_audio(src)
        info = measure(data, sr)
    except _Done:
        info = None
    except AudioError as exc:
        is_empty = src.stat().st_size == 0
        reasons.append("empty audio: 0-byte file" if is_empty else f"unreadable audio: {exc}")
        info = None
    if info is not None:
        row.update({k: v for k, v in info.as_dict().items() if k != "silent"})
        if info.speech_s > 0 and row["normalized_text"]:
            row["speaking_rate"] = len("".join(row["normalized_text"].split())) / info.speech_s
        if info.duration_s == 0:
            reasons.append("empty audio: no samples")
        if transcript_problem:
            reasons.append(transcript_problem)
        if audio_reason := _audio_reason(row, info, limits):
            reasons.append(audio_reason)
    if reasons:
        row.update(status="rejected", reason=reasons[0])
        return row
    try:
        row["audio_path"] = str(to_training_audio(src, audio_dir, audio=(data, sr), content_hash=row["audio_hash"]))
    except Exception as exc:  # disk full, resampler failure: reject this clip, keep going
        row.update(status="rejected", reason=f"conversion failed: {exc}")
    return row


class _Done(Exception):
    """Internal: measurement ended early (the verdict is already known)."""


def _mark_duplicates(rows: list[dict]) -> None:
    """A later clip with the same audio bytes, or the same speaker and text, is a duplicate."""
    by_hash: dict[str, str] = {}
    by_text: dict[tuple[str, str], str] = {}
    for row in rows:
        if row["status"] != "ok":
            continue
        text_key = (row["speaker"], " ".join(row["normalized_text"].lower().split()))
        if row["audio_hash"] in by_hash:
            row.update(status="rejected", reason=f"duplicate of {by_hash[row['audio_hash']]} (same audio)")
        elif text_key[1] and text_key in by_text:
            row.update(status="rejected", reason=f"duplicate of {by_text[text_key]} (same speaker and text)")
        else:
            by_hash[row["audio_hash"]] = row["id"]
            by_text[text_key] = row["id"]


def _measure_guarded(clip: RawClip, audio_dir: Path, limits: Limits) -> dict:
    """`measure_clip`, with an unforeseen error (a decoder's or resampler's bug) as the clip's rejection."""
    try:
        return measure_clip(clip, audio_dir, limits)
    except Exception as exc:
        row = _empty_row(clip)
        row.update(status="rejected", normalized_text=_normalized(clip.text),
                   reason=f"unreadable audio: {type(exc).__name__}: {str(exc)[:160]}")
        return row


def _crashed(clip: RawClip) -> dict:
    """The row of a clip whose decoding killed its worker process (twice)."""
    row = _empty_row(clip)
    row.update(status="rejected", normalized_text=_normalized(clip.text),
               reason="unreadable audio: decoding it crashed the process (a damaged or unsupported file)")
    return row


def measure_clips(clips: list[RawClip], audio_dir: Path, limits: Limits, progress: Progress = None,
                  workers: int | None = None) -> list[dict]:
    """`measure_clip` of every clip over `workers` processes (default: all cores, or
    PIPELINE_WORKERS; 1 = serial); rows in the clips' order, whatever order they finish in."""
    total = len(clips)

    def done(n: int) -> None:
        if progress and (n % 10 == 0 or n == total):
            progress(n / max(total, 1), f"Checked {n}/{total} clips")

    measure_one = functools.partial(_measure_guarded, audio_dir=Path(audio_dir), limits=limits)
    return map_in_processes(measure_one, clips, workers=workers, on_done=done, on_crash=_crashed)


def build_manifest(clips: list[RawClip], dataset_dir: Path, config, progress: Progress = None,
                   workers: int | None = None) -> pd.DataFrame:
    """Measure and judge every clip, convert accepted audio, write `<dataset_dir>/manifest.parquet`.

    The clips are measured in parallel (`measure_clips`; `workers` processes, default all cores);
    the manifest is the same, row for row, as a serial build's."""
    dataset_dir = Path(dataset_dir)
    limits = Limits.from_config(config)
    rows = measure_clips(clips, dataset_dir / "audio", limits, progress, workers)
    _mark_duplicates(rows)
    manifest = pd.DataFrame(rows, columns=COLUMNS)
    manifest = manifest.astype({c: "float64" for c in _FLOATS} | {"sample_rate": "int64", "channels": "int64"})
    save_manifest(manifest, dataset_dir / MANIFEST_NAME)
    return manifest


def save_manifest(manifest: pd.DataFrame, path: Path) -> Path:
    with replacing(path) as tmp:
        manifest.to_parquet(tmp, index=False)
    return Path(path)


def load_manifest(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path)


def summarize(manifest: pd.DataFrame) -> dict:
    """Counts for the UI and the CLI: clips, accepted minutes, rejections per category, speakers."""
    ok = manifest["status"] == "ok"
    rejected = manifest.loc[~ok, "reason"].map(reason_category)
    return {
        "total": int(len(manifest)),
        "accepted": int(ok.sum()),
        "rejected": int((~ok).sum()),
        "accepted_minutes": round(float(np.nansum(manifest.loc[ok, "duration_s"])) / 60.0, 2),
        "total_minutes": round(float(np.nansum(manifest["duration_s"])) / 60.0, 2),
        "reasons": {str(k): int(v) for k, v in rejected.value_counts().items()},
        "speakers": int(manifest["speaker"].nunique()),
        "accepted_speakers": int(manifest.loc[ok, "speaker"].nunique()),
    }
