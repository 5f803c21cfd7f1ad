"""VQ extraction: every usable clip → codec codes `(num_codebooks, frames)`, cached by content.

Cache key = sha256(decoded float32 samples at the codec's rate + codec identity + rate), so a
re-run, a renamed file or another dataset holding the same audio computes nothing, an edited
clip or another codec gets a new key, and an interrupted run resumes where it stopped. Files are
written to a temporary name and renamed, so a killed run never leaves a half-written `.npy`.

The fish-speech codec (`DAC`) is causal end to end (causal convolutions, causal window-limited
attention, causal down/up-sampling in the quantizer), so frame k depends only on samples before
the end of frame k. Right-padding a clip inside a batch therefore cannot change its frames:
batched and single encodes agree exactly on the clip's ceil(len / frame_length) frames
(tests/test_codes.py checks this, for the tiny codec; the real codec's structure with random
weights gave identical codes too on CPU). On a GPU, cuDNN may choose other kernels for other
batch shapes, so a code at a near-tie can differ in rare frames; that is float noise, not
padding leaking in. Clips are sorted by length so little compute is wasted on padding.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from pipeline.atomic import replacing
from pipeline.data.audio import AudioError, load_audio
from pipeline.model.checkpoints import codec_identity, load_codec

Progress = Callable[[float, str], None] | None


class CodesError(ValueError):
    """Bad input to extraction (missing manifest columns, unreadable codes file)."""


@dataclass
class ExtractReport:
    total: int  # clips with status "ok"
    hits: int  # found in the cache
    computed: int  # encoded in this run
    failed: dict[str, str]  # clip id → reason (unreadable audio, too long for the codec, ...)
    audio_seconds: float  # audio of all total clips
    computed_seconds: float  # audio encoded in this run
    wall_seconds: float
    codes_paths: dict[str, str]  # clip id → .npy path
    manifest: pd.DataFrame = field(repr=False)  # copy of the input with a `codes_path` column

    @property
    def throughput(self) -> float:
        """Seconds of audio encoded per wall-clock second in this run (0 when nothing was encoded)."""
        return self.computed_seconds / self.wall_seconds if self.wall_seconds > 0 and self.computed else 0.0

    def summary(self) -> str:
        return (
            f"{self.total} clips: {self.hits} cached, {self.computed} encoded, {len(self.failed)} failed; "
            f"{self.computed_seconds:.0f} s of audio in {self.wall_seconds:.1f} s "
            f"({self.throughput:.0f}× real time)"
        )


# -- cache ------------------------------------------------------------------------------------


def cache_key(audio: np.ndarray, sample_rate: int, codec_id: str) -> str:
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(audio, dtype=np.float32).tobytes())
    digest.update(f"\0{codec_id}\0{int(sample_rate)}".encode())
    return digest.hexdigest()


def cache_path(cache_dir: str | Path, key: str) -> Path:
    return Path(cache_dir) / key[:2] / f"{key}.npy"


def _valid_cached(path: Path, num_codebooks: int | None) -> bool:
    """True when `path` is a complete codes file (reads the header only)."""
    if not path.is_file():
        return False
    try:
        arr = np.load(path, mmap_mode="r")
        return arr.ndim == 2 and arr.shape[1] > 0 and num_codebooks in (None, arr.shape[0])
    except (ValueError, OSError, EOFError):
        return False


def save_codes(path: str | Path, codes: np.ndarray | torch.Tensor) -> Path:
    """Atomic write (pipeline.atomic): a reader never sees half an array."""
    path = Path(path)
    if isinstance(codes, torch.Tensor):
        codes = codes.detach().cpu().numpy()
    dtype = np.int16 if codes.size == 0 or int(codes.max()) < 2**15 else np.int32
    with replacing(path) as tmp, open(tmp, "wb") as fh:  # a handle: np.save would append .npy to a name
        np.save(fh, codes.astype(dtype, copy=False))
    return path


def load_codes(path: str | Path) -> torch.LongTensor:
    """Codes `(num_codebooks, frames)` as a LongTensor."""
    try:
        arr = np.load(path)
    except (OSError, ValueError, EOFError) as exc:
        raise CodesError(f"{path}: not a readable codes file ({exc}); re-run extraction.") from None
    if arr.ndim != 2:
        raise CodesError(f"{path}: codes must be 2-D (num_codebooks, frames), got shape {arr.shape}.")
    return torch.from_numpy(arr.astype(np.int64))


# -- encoding ---------------------------------------------------------------------------------


def load_for_codec(path: str | Path, sample_rate: int) -> np.ndarray:
    """Mono float32 samples at `sample_rate` (resampled with soxr when the file's rate differs)."""
    data, sr = load_audio(path)
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if sr != sample_rate:
        import librosa

        mono = librosa.resample(mono, orig_sr=sr, target_sr=sample_rate, res_type="soxr_hq")
    return np.ascontiguousarray(mono, dtype=np.float32)


def codec_num_codebooks(codec) -> int | None:
    """Semantic + residual codebooks of a fish-speech DAC (None for an unknown codec)."""
    residual = getattr(getattr(codec.quantizer, "quantizer", None), "n_codebooks", None)
    return None if residual is None else 1 + int(residual)


def frames_for(codec, n_samples: int) -> int:
    """Code frames of a clip of `n_samples`: ceil(len / frame_length), as DAC.encode reports."""
    return math.ceil(n_samples / codec.frame_length)


@torch.inference_mode()
def encode_batch(codec, audios: list[np.ndarray], device: str | torch.device | None = None) -> list[torch.Tensor]:
    """Encode clips together (zero right-padding) and cut each to its own frame count."""
    device = device or next(codec.parameters()).device
    lengths = torch.tensor([len(a) for a in audios], dtype=torch.long)
    batch = torch.zeros((len(audios), 1, int(lengths.max())), dtype=torch.float32)
    for i, audio in enumerate(audios):
        batch[i, 0, : len(audio)] = torch.from_numpy(audio)
    indices, frame_lens = codec.encode(batch.to(device), lengths.to(device))
    return [indices[i, :, : int(frame_lens[i])].to("cpu", torch.long) for i in range(len(audios))]


def encode_audio(codec, audio: np.ndarray) -> torch.Tensor:
    """Codes `(num_codebooks, frames)` of one mono clip at the codec's rate."""
    return encode_batch(codec, [audio])[0]


def _encode_resilient(codec, audios: list[np.ndarray]) -> list[torch.Tensor]:
    """encode_batch, halving the batch on CUDA out-of-memory."""
    try:
        return encode_batch(codec, audios)
    except torch.cuda.OutOfMemoryError:
        if len(audios) == 1:
            raise
        torch.cuda.empty_cache()
        half = len(audios) // 2
        return _encode_resilient(codec, audios[:half]) + _encode_resilient(codec, audios[half:])


def _duration_of(row) -> float:
    value = row.get("duration_s")
    if value is not None and np.isfinite(value):
        return float(value)
    try:
        import soundfile as sf

        return float(sf.info(str(row["audio_path"])).duration)
    except Exception:
        return 0.0


def _batches(items: list[dict], batch_seconds: float) -> list[list[dict]]:
    """Consecutive groups (items are sorted by duration) whose padded size stays ≤ batch_seconds."""
    groups, current = [], []
    for item in items:
        longest = max([item["duration"]] + [c["duration"] for c in current])
        if current and longest * (len(current) + 1) > batch_seconds:
            groups.append(current)
            current = []
        current.append(item)
    if current:
        groups.append(current)
    return groups


def extract_codes(
    manifest: pd.DataFrame,
    ckpt_dir: str | Path,
    cache_dir: str | Path,
    device: str | torch.device | None = None,
    batch_seconds: float = 120.0,
    progress: Progress = None,
    codec=None,
) -> ExtractReport:
    """Encode every `status == "ok"` clip of `manifest`; cached clips are not recomputed.

    `codec` lets a caller pass an already-loaded codec (it is loaded from `ckpt_dir` otherwise).
    """
    from tqdm.auto import tqdm

    for column in ("id", "audio_path"):
        if column not in manifest.columns:
            raise CodesError(f"The manifest has no '{column}' column; rebuild the dataset.")
    started = time.perf_counter()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    codec_id = codec_identity(ckpt_dir)
    codec = codec if codec is not None else load_codec(ckpt_dir, device=device)
    sample_rate = int(codec.sample_rate)
    cache_dir = Path(cache_dir)
    num_codebooks = codec_num_codebooks(codec)

    ok = manifest[manifest["status"] == "ok"] if "status" in manifest.columns else manifest
    items = [
        {"id": str(row["id"]), "path": str(row["audio_path"]), "duration": _duration_of(row)}
        for _, row in ok.iterrows()
    ]
    items.sort(key=lambda it: it["duration"])
    groups = _batches(items, batch_seconds)

    codes_paths: dict[str, str] = {}
    failed: dict[str, str] = {}
    hits = computed = 0
    audio_seconds = computed_seconds = 0.0
    done = 0
    bar = tqdm(total=len(items), desc="VQ codes", unit="clip", disable=progress is not None or not items)
    for group in groups:
        to_encode = []
        for item in group:
            try:
                audio = load_for_codec(item["path"], sample_rate)
            except (AudioError, OSError, ValueError) as exc:
                failed[item["id"]] = str(exc)
                continue
            if len(audio) == 0:
                failed[item["id"]] = f"{item['path']}: no samples"
                continue
            seconds = len(audio) / sample_rate
            audio_seconds += seconds
            key = cache_key(audio, sample_rate, codec_id)
            path = cache_path(cache_dir, key)
            if _valid_cached(path, num_codebooks):
                codes_paths[item["id"]] = str(path)
                hits += 1
            else:
                to_encode.append((item, audio, path, seconds))
        if to_encode:
            try:
                encoded = _encode_resilient(codec, [a for _, a, _, _ in to_encode])
            except (RuntimeError, IndexError):
                # One clip can spoil a batch (e.g. longer than the codec's attention table,
                # IndexError): encode one by one so only that clip is rejected.
                encoded = []
                for it, audio, _, _ in to_encode:
                    try:
                        encoded.extend(_encode_resilient(codec, [audio]))
                    except (RuntimeError, IndexError) as single:
                        seconds = len(audio) / sample_rate
                        failed[it["id"]] = f"the codec cannot encode this clip ({seconds:.1f} s): {str(single)[:160]}"
                        encoded.append(None)
            for (item, _, path, seconds), codes in zip(to_encode, encoded):
                if codes is None:
                    continue
                save_codes(path, codes)
                codes_paths[item["id"]] = str(path)
                computed += 1
                computed_seconds += seconds
        done += len(group)
        bar.update(len(group))
        if progress:
            progress(done / max(len(items), 1), f"VQ codes: {done}/{len(items)} clips ({hits} cached)")
    bar.close()
    if progress and not items:
        progress(1.0, "VQ codes: no usable clips")

    out = manifest.copy()
    out["codes_path"] = out["id"].astype(str).map(codes_paths)
    return ExtractReport(
        total=len(items),
        hits=hits,
        computed=computed,
        failed=failed,
        audio_seconds=audio_seconds,
        computed_seconds=computed_seconds,
        wall_seconds=time.perf_counter() - started,
        codes_paths=codes_paths,
        manifest=out,
    )
