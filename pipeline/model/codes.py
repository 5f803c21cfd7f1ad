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

import math
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from pipeline.data.audio import AudioError, load_audio
from pipeline.data.parallel import worker_count
from pipeline.model.checkpoints import codec_config_path, codec_copy, codec_identity, load_codec
from pipeline.model.codec_batches import (  # noqa: F401  (encode_batch, pad_batch, ...: this module's API too)
    MAX_BATCH_SECONDS,
    MIN_BATCH_SECONDS,
    PAD_STEP_FRAMES,
    BatchEncoder,
    codec_devices,
    codec_slots,
    default_batch_seconds,
    encode_audio,
    encode_batch,
    pad_batch,
)
from pipeline.model.code_cache import (  # noqa: F401  (the cache's names are this module's API too)
    CodesError,
    cache_key,
    cache_path,
    load_codes,
    save_codes,
    valid_cached,
)

Progress = Callable[[float, str], None] | None


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
    load_wait_seconds: float = 0.0  # the encoder waiting for audio (decode, resample, hash), in all
    first_load_seconds: float = 0.0  # of which before the first batch (nothing to overlap with yet)
    busy_span_seconds: float = 0.0  # from the first batch loaded to the end
    encode_seconds: float = 0.0  # in the codecs (GPU busy), cache writes excluded; summed over codecs
    codecs: int = 1  # codecs encoding at once (codec_batches.CODECS_PER_GPU per GPU)
    loader_threads: int = 0

    @property
    def gpu_idle_share(self) -> float:
        """Share of the time after the first batch was loaded that the codecs were not encoding
        (waiting for audio, for the cache writes, or for Python between batches). With two codecs
        on one GPU this is the codecs' idle share, not the GPU's: `python -m pipeline bench`
        measures the GPU's own (NVML)."""
        span = self.busy_span_seconds * max(self.codecs, 1)
        return min(max(1.0 - self.encode_seconds / span, 0.0), 1.0) if span > 0 and self.computed else 0.0

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


def _duration_of(row) -> float:
    value = row.get("duration_s")
    if value is not None and np.isfinite(value):
        return float(value)
    try:
        import soundfile as sf

        return float(sf.info(str(row["audio_path"])).duration)
    except Exception:
        return 0.0


def _batches(items: list[dict], batch_seconds: float, step_seconds: float = 0.0) -> list[list[dict]]:
    """Consecutive groups (items are sorted by duration) whose padded size stays ≤ batch_seconds.
    With `step_seconds`, clips are padded to whole steps and a group holds clips of one step
    only, as many as fit: the groups of a step share one shape."""
    groups, current, current_pad = [], [], 0.0
    for item in items:
        duration = item["duration"]
        padded = math.ceil(duration / step_seconds - 1e-9) * step_seconds if step_seconds > 0 else duration
        longest = max(padded, current_pad)
        if current and (longest * (len(current) + 1) > batch_seconds or (step_seconds > 0 and padded != current_pad)):
            groups.append(current)
            current, longest = [], padded
        current.append(item)
        current_pad = longest
    if current:
        groups.append(current)
    return groups


MAX_LOADER_THREADS = 8  # decoding, resampling and hashing release the GIL; more only contend for it
LOOK_AHEAD_GROUPS = 2  # batches loaded ahead beyond one per codec (each ≤ batch_seconds of audio in memory)


@dataclass
class _Loaded:
    audio: np.ndarray
    seconds: float
    path: Path
    cached: bool


@dataclass
class _ClipLoader:
    """One clip read for the codec (runs on a loader thread): its samples, cache entry and whether
    that entry exists, or the reason it cannot be used (a str)."""

    sample_rate: int
    codec_id: str
    cache_dir: Path
    num_codebooks: int | None

    def __call__(self, item: dict) -> _Loaded | str:
        try:
            audio = load_for_codec(item["path"], self.sample_rate)
        except (AudioError, OSError, ValueError) as exc:
            return str(exc)
        if len(audio) == 0:
            return f"{item['path']}: no samples"
        path = cache_path(self.cache_dir, cache_key(audio, self.sample_rate, self.codec_id))
        return _Loaded(audio, len(audio) / self.sample_rate, path, valid_cached(path, self.num_codebooks))


def _submit_next(pool: ThreadPoolExecutor, groups, load: _ClipLoader, ahead: deque) -> None:
    group = next(groups, None)
    if group is not None:
        ahead.append((group, [pool.submit(load, item) for item in group]))


def extract_codes(
    manifest: pd.DataFrame,
    ckpt_dir: str | Path,
    cache_dir: str | Path,
    device: str | torch.device | None = None,
    batch_seconds: float | None = None,
    progress: Progress = None,
    codec=None,
    loader_threads: int | None = None,
    devices: list | None = None,
) -> ExtractReport:
    """Encode every `status == "ok"` clip of `manifest`; cached clips are not recomputed.

    `codec` lets a caller pass an already-loaded codec, or a list of them to encode at once (loaded
    from `ckpt_dir` otherwise: codec_batches.CODECS_PER_GPU per device).
    `batch_seconds`: audio per batch (default: default_batch_seconds, from the GPUs' free memory).
    Audio is read on `loader_threads` threads (default: the cores, or PIPELINE_WORKERS; at most
    MAX_LOADER_THREADS) up to LOOK_AHEAD_GROUPS batches ahead of the codec; the report says how
    long the codec waited for them (`load_wait_seconds`, `gpu_idle_share`).
    Several GPUs (`devices`, default: every visible GPU when `device` is not given) each get a
    codec and encode batches in turn; the codes do not depend on which one encoded a clip.
    """
    from tqdm.auto import tqdm

    for column in ("id", "audio_path"):
        if column not in manifest.columns:
            raise CodesError(f"The manifest has no '{column}' column; rebuild the dataset.")
    started = time.perf_counter()
    codec_id = codec_identity(ckpt_dir)
    first: dict = {}
    if codec is None:  # the checkpoint read once per device, the other codecs there copied
        codecs = []
        for slot in codec_slots(codec_devices(device, devices)):
            codecs.append(codec_copy(first[slot], codec_config_path(ckpt_dir)) if slot in first
                          else first.setdefault(slot, load_codec(ckpt_dir, device=slot)))
    else:
        codecs = list(codec) if isinstance(codec, (list, tuple)) else [codec]
    codec = codecs[0]
    encoder = BatchEncoder(codecs)
    encoder_count = encoder.count
    sample_rate = int(codec.sample_rate)
    cache_dir = Path(cache_dir)
    num_codebooks = codec_num_codebooks(codec)

    ok = manifest[manifest["status"] == "ok"] if "status" in manifest.columns else manifest
    items = [
        {"id": str(row["id"]), "path": str(row["audio_path"]), "duration": _duration_of(row)}
        for _, row in ok.iterrows()
    ]
    items.sort(key=lambda it: it["duration"])
    if batch_seconds is None:
        batch_seconds = default_batch_seconds([next(c.parameters()).device for c in codecs])
    groups = _batches(items, batch_seconds, PAD_STEP_FRAMES * codec.frame_length / sample_rate)

    codes_paths: dict[str, str] = {}
    failed: dict[str, str] = {}
    tally = {"hits": 0, "computed": 0, "done": 0, "audio_s": 0.0, "computed_s": 0.0, "encode_s": 0.0}
    wait_s = first_wait_s = 0.0
    load = _ClipLoader(sample_rate, codec_id, cache_dir, num_codebooks)
    threads = min(MAX_LOADER_THREADS, worker_count(loader_threads))
    bar = tqdm(total=len(items), desc="VQ codes", unit="clip", disable=progress is not None or not items)
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="codes-loader")
    first_ready = None

    def count_done(clips: int) -> None:
        tally["done"] += clips
        bar.update(clips)
        if progress:
            progress(tally["done"] / max(len(items), 1),
                     f"VQ codes: {tally['done']}/{len(items)} clips ({tally['hits']} cached)")

    def store(finished: list, announce: bool = True) -> None:
        """Write the codes of finished batches; their clips count as done only once on disk. All
        are written before progress is told: a stop raised from it loses no encoded batch."""
        for done_group, encoded, seconds_encoding in finished:
            tally["encode_s"] += seconds_encoding
            for (item, _, path, seconds), codes in zip(done_group, encoded):
                if codes is None:
                    continue
                save_codes(path, codes)
                codes_paths[item["id"]] = str(path)
                tally["computed"] += 1
                tally["computed_s"] += seconds
        if announce and finished:
            count_done(sum(len(done_group) for done_group, _, _ in finished))

    try:
        # the next groups decode, resample and hash on the loader threads while the codec encodes this one
        ahead: deque = deque()
        upcoming = iter(groups)
        for _ in range(LOOK_AHEAD_GROUPS + encoder_count):
            _submit_next(pool, upcoming, load, ahead)
        try:
            while ahead:
                group, futures = ahead.popleft()
                _submit_next(pool, upcoming, load, ahead)
                waited = time.perf_counter()
                loaded = [f.result() for f in futures]
                waited = time.perf_counter() - waited
                wait_s += waited
                if first_ready is None:
                    first_wait_s, first_ready = waited, time.perf_counter()
                to_encode, settled = [], 0
                for item, clip in zip(group, loaded):
                    if isinstance(clip, str):
                        failed[item["id"]] = clip
                        settled += 1
                        continue
                    tally["audio_s"] += clip.seconds
                    if clip.cached:
                        codes_paths[item["id"]] = str(clip.path)
                        tally["hits"] += 1
                        settled += 1
                    else:
                        to_encode.append((item, clip.audio, clip.path, clip.seconds))
                if settled:
                    count_done(settled)
                if to_encode:
                    store(encoder.submit(to_encode, sample_rate, failed))
            store(encoder.drain())  # the batches other GPUs, or the codec, still encode
        except BaseException:
            # a stop request keeps the batches already encoding: their codes are written (not
            # recomputed by the next run), without progress calls that would stop again
            store(encoder.drain(), announce=False)
            raise
    finally:  # a stop request must not wait for the loads queued ahead
        pool.shutdown(wait=True, cancel_futures=True)
        encoder.close()
        bar.close()
        # every reference to the codecs this call loaded (`first` too), also after an error: the
        # training ranks that follow are other processes, and the GPU memory goes back to them
        codecs = codec = encoder = first = None
        if torch.cuda.is_available():
            import gc

            gc.collect()
            torch.cuda.empty_cache()
    busy_span = time.perf_counter() - first_ready if first_ready is not None else 0.0
    if progress and not items:
        progress(1.0, "VQ codes: no usable clips")
    out = manifest.copy()
    out["codes_path"] = out["id"].astype(str).map(codes_paths)
    out["codes_error"] = out["id"].astype(str).map(failed)  # why a clip has no codes: training lists it
    return ExtractReport(
        total=len(items),
        hits=tally["hits"],
        computed=tally["computed"],
        failed=failed,
        audio_seconds=tally["audio_s"],
        computed_seconds=tally["computed_s"],
        wall_seconds=time.perf_counter() - started,
        codes_paths=codes_paths,
        manifest=out,
        load_wait_seconds=wait_s,
        first_load_seconds=first_wait_s,
        busy_span_seconds=busy_span,
        encode_seconds=tally["encode_s"],
        codecs=encoder_count,
        loader_threads=threads,
    )
