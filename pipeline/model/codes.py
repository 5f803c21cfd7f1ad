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
import queue
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
from pipeline.model.checkpoints import codec_identity, load_codec
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
    codecs: int = 1  # codecs encoding in turn (one per GPU)
    loader_threads: int = 0

    @property
    def gpu_idle_share(self) -> float:
        """Share of the time after the first batch was loaded that the codecs were not encoding
        (waiting for audio, for the cache writes, or for Python between batches)."""
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


# Padded batches are a whole number of these frames long. Every new input shape costs the codec
# host-side work (the convolutions' plans are chosen per shape) while the GPU waits: with lengths
# in steps and `_batches` giving every group of a step the same clip count, shapes repeat. The
# codec is causal, so the extra right padding leaves the codes unchanged.
PAD_STEP_FRAMES = 32  # 1.49 s at the real codec's 2,048 samples per frame


def pad_batch(audios: list[np.ndarray], pin: bool = False, step: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Clips as one zero right-padded (clips, 1, samples) batch, its length a multiple of `step`
    samples, and their lengths; in pinned host memory for a GPU, so the copy runs asynchronously
    at full bus speed."""
    lengths = torch.tensor([len(a) for a in audios], dtype=torch.long)
    width = -(-int(lengths.max()) // step) * step
    batch = torch.zeros((len(audios), 1, width), dtype=torch.float32, pin_memory=pin)
    for i, audio in enumerate(audios):
        batch[i, 0, : len(audio)] = torch.from_numpy(audio)
    return batch, lengths


@torch.inference_mode()
def encode_batch(codec, audios: list[np.ndarray], device: str | torch.device | None = None,
                 padded: tuple[torch.Tensor, torch.Tensor] | None = None) -> list[torch.Tensor]:
    """Encode clips together (zero right-padding) and cut each to its own frame count; `padded`:
    their pad_batch, when already built."""
    device = torch.device(device or next(codec.parameters()).device)
    batch, lengths = padded or pad_batch(audios, pin=device.type == "cuda")
    indices, frame_lens = codec.encode(batch.to(device, non_blocking=True), lengths.to(device))
    # one copy back (one wait for the GPU), not one per clip
    indices, frame_lens = indices.to("cpu", torch.long), frame_lens.cpu()
    return [indices[i, :, : int(frame_lens[i])].clone() for i in range(len(audios))]


def encode_audio(codec, audio: np.ndarray) -> torch.Tensor:
    """Codes `(num_codebooks, frames)` of one mono clip at the codec's rate."""
    return encode_batch(codec, [audio])[0]


def _encode_resilient(codec, audios: list[np.ndarray], padded=None) -> list[torch.Tensor]:
    """encode_batch, halving the batch on CUDA out-of-memory."""
    try:
        return encode_batch(codec, audios, padded=padded)
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
LOOK_AHEAD_GROUPS = 2  # batches loaded ahead of the codec (each ≤ batch_seconds of audio in memory)


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


def _encode_group(codec, to_encode: list, sample_rate: int, failed: dict[str, str], padded=None) -> list:
    """Codes of each (item, audio, path, seconds), None where the codec cannot encode the clip;
    `padded`: the group's pad_batch, built ahead."""
    try:
        return _encode_resilient(codec, [a for _, a, _, _ in to_encode], padded)
    except (RuntimeError, IndexError):
        # One clip can spoil a batch (e.g. longer than the codec's attention table,
        # IndexError): encode one by one so only that clip is rejected.
        encoded = []
        for item, audio, _, _ in to_encode:
            try:
                encoded.extend(_encode_resilient(codec, [audio]))
            except (RuntimeError, IndexError) as single:
                seconds = len(audio) / sample_rate
                failed[item["id"]] = f"the codec cannot encode this clip ({seconds:.1f} s): {str(single)[:160]}"
                encoded.append(None)
        return encoded


def codec_devices(device=None, devices: list | None = None) -> list[torch.device]:
    """Where codecs run: `devices`, else `device`, else every visible GPU (the CPU without one)."""
    if devices:
        return [torch.device(d) for d in devices]
    if device is not None:
        return [torch.device(device)]
    count = torch.cuda.device_count()
    return [torch.device("cuda", i) for i in range(count)] if count else [torch.device("cpu")]


class _Encoder:
    """Batches to the codecs, on a thread per codec (one per GPU), finished batches returned in
    order. One batch more than there are codecs is in flight: while a codec encodes, the caller
    writes the codes of the batch before and hands over the next, so the GPU never waits for the
    disk or for Python between batches."""

    def __init__(self, codecs: list):
        self.free: queue.SimpleQueue = queue.SimpleQueue()
        for codec in codecs:
            self.free.put(codec)
        self.count = len(codecs)
        self.pinned = any(next(codec.parameters()).is_cuda for codec in codecs)
        self.step = PAD_STEP_FRAMES * int(codecs[0].frame_length)  # samples
        self.pool = ThreadPoolExecutor(max_workers=self.count, thread_name_prefix="codes-encoder")
        self.in_flight: deque = deque()

    def _encode(self, to_encode: list, sample_rate: int, failed: dict, padded) -> tuple[list, list, float]:
        codec = self.free.get()
        started = time.perf_counter()
        try:
            return to_encode, _encode_group(codec, to_encode, sample_rate, failed, padded), time.perf_counter() - started
        finally:
            self.free.put(codec)

    def submit(self, to_encode: list, sample_rate: int, failed: dict) -> list[tuple[list, list, float]]:
        """Encode a batch; returns the batches finished by now (in submission order). The padded
        batch is built here, while the codecs still encode the batches before it."""
        padded = pad_batch([audio for _, audio, _, _ in to_encode], pin=self.pinned, step=self.step)
        self.in_flight.append(self.pool.submit(self._encode, to_encode, sample_rate, failed, padded))
        finished = []
        while len(self.in_flight) > self.count or (self.in_flight and self.in_flight[0].done()):
            finished.append(self.in_flight.popleft().result())
        return finished

    def drain(self) -> list[tuple[list, list, float]]:
        finished = [future.result() for future in self.in_flight]
        self.in_flight.clear()
        return finished

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


# Audio seconds per batch: the codec's host-side cost per call is large, so big batches keep the
# GPU busy (H200, clips of 2-20 s: 163x real time and the GPU idle 67 % of the time at 120 s per
# batch, 473x and 13 % at 360 s); a 120 s batch of 10 s clips peaked at 10.1 GB.
MIN_BATCH_SECONDS, MAX_BATCH_SECONDS = 60.0, 360.0
GB_PER_BATCH_SECOND = 12.0 / 120.0  # peak memory per second of audio in a batch, with margin


def default_batch_seconds(devices: list[torch.device]) -> float:
    """As many seconds per batch as half the smallest GPU's free memory holds, within the bounds;
    120 s on the CPU."""
    gpus = [d for d in devices if d.type == "cuda"]
    if not gpus:
        return 120.0
    free_gb = min(torch.cuda.mem_get_info(d)[0] for d in gpus) / 1e9
    return float(min(max(0.5 * free_gb / GB_PER_BATCH_SECOND, MIN_BATCH_SECONDS), MAX_BATCH_SECONDS))


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

    `codec` lets a caller pass an already-loaded codec (it is loaded from `ckpt_dir` otherwise).
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
    codecs = [codec] if codec is not None else [load_codec(ckpt_dir, device=d) for d in codec_devices(device, devices)]
    codec = codecs[0]
    encoder = _Encoder(codecs)
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
        """Write the codes of finished batches; their clips count as done only once on disk."""
        for done_group, encoded, seconds_encoding in finished:
            tally["encode_s"] += seconds_encoding
            for (item, _, path, seconds), codes in zip(done_group, encoded):
                if codes is None:
                    continue
                save_codes(path, codes)
                codes_paths[item["id"]] = str(path)
                tally["computed"] += 1
                tally["computed_s"] += seconds
            if announce:
                count_done(len(done_group))

    try:
        # the next groups decode, resample and hash on the loader threads while the codec encodes this one
        ahead: deque = deque()
        upcoming = iter(groups)
        for _ in range(LOOK_AHEAD_GROUPS + 1):
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
    busy_span = time.perf_counter() - first_ready if first_ready is not None else 0.0
    if progress and not items:
        progress(1.0, "VQ codes: no usable clips")

    codecs = codec = encoder = None
    if torch.cuda.is_available():  # the training ranks that follow are other processes: give the memory back
        import gc

        gc.collect()
        torch.cuda.empty_cache()
    out = manifest.copy()
    out["codes_path"] = out["id"].astype(str).map(codes_paths)
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
