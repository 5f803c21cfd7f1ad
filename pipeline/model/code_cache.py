"""The content-addressed cache of VQ codes: `codes/<key[:2]>/<key>.npy`, key = sha256 of the
decoded samples at the codec's rate + the codec's identity + the rate; files written whole."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from pipeline.atomic import replacing


class CodesError(ValueError):
    """Bad input to extraction (missing manifest columns, unreadable codes file)."""


def cache_key(audio: np.ndarray, sample_rate: int, codec_id: str) -> str:
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(audio, dtype=np.float32).tobytes())
    digest.update(f"\0{codec_id}\0{int(sample_rate)}".encode())
    return digest.hexdigest()


def cache_path(cache_dir: str | Path, key: str) -> Path:
    return Path(cache_dir) / key[:2] / f"{key}.npy"


def valid_cached(path: Path, num_codebooks: int | None) -> bool:
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
