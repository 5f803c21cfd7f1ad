"""Batches of clips through the codec: padding, encoding, and the encoder threads that keep the
GPU busy while the caller loads audio and writes codes (pipeline.model.codes.extract_codes).

The codec's `encode` spends much of each call on the host (Python, kernel launches, small
synchronising steps inside the wheel), while the GPU waits. With one encoder per GPU that wait
is the GPU's idle time; with CODECS_PER_GPU encoders on one GPU, each on its own CUDA stream, one
encoder's host side overlaps the other's kernels. The codes do not depend on which encoder, or
which stream, encoded a clip.
"""

from __future__ import annotations

import contextlib
import queue
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

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


def encode_resilient(codec, audios: list[np.ndarray], padded=None) -> list[torch.Tensor]:
    """encode_batch, halving the batch on CUDA out-of-memory. The halves are tried after the
    handler: inside it, the exception's traceback keeps the failed attempt's tensors allocated."""
    try:
        return encode_batch(codec, audios, padded=padded)
    except torch.cuda.OutOfMemoryError:
        if len(audios) == 1:
            raise
    padded = None
    torch.cuda.empty_cache()
    half = len(audios) // 2
    return encode_resilient(codec, audios[:half]) + encode_resilient(codec, audios[half:])


def encode_group(codec, to_encode: list, sample_rate: int, failed: dict[str, str], padded=None) -> list:
    """Codes of each (item, audio, path, seconds), None where the codec cannot encode the clip;
    `padded`: the group's pad_batch, built ahead."""
    try:
        return encode_resilient(codec, [a for _, a, _, _ in to_encode], padded)
    except (RuntimeError, IndexError):
        pass  # one clip can spoil a batch (e.g. longer than the codec's attention table: IndexError)
    # one by one, after the handler (its traceback would keep the batch's tensors), so that only
    # the clip that fails is rejected
    padded = None
    encoded = []
    for item, audio, _, _ in to_encode:
        try:
            encoded.extend(encode_resilient(codec, [audio]))
        except (RuntimeError, IndexError) as single:
            seconds = len(audio) / sample_rate
            failed[item["id"]] = f"the codec cannot encode this clip ({seconds:.1f} s): {str(single)[:160]}"
            encoded.append(None)
    return encoded


def _stream_for(codec) -> torch.cuda.Stream | None:
    """A CUDA stream of its own for a codec on a GPU (None on the CPU)."""
    device = next(codec.parameters()).device
    if device.type != "cuda":
        return None
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))  # the weights' copies, queued on the default stream
    return stream


# Encoders per GPU (one per CPU device): two overlap one's host side with the other's kernels.
CODECS_PER_GPU = 2


def codec_slots(devices: list[torch.device]) -> list[torch.device]:
    """One entry per codec to load: CODECS_PER_GPU per GPU, one per other device."""
    return [d for d in devices for _ in range(CODECS_PER_GPU if d.type == "cuda" else 1)]


def codec_devices(device=None, devices: list | None = None) -> list[torch.device]:
    """Where codecs run: `devices`, else `device`, else every visible GPU (the CPU without one)."""
    if devices:
        return [torch.device(d) for d in devices]
    if device is not None:
        return [torch.device(device)]
    count = torch.cuda.device_count()
    return [torch.device("cuda", i) for i in range(count)] if count else [torch.device("cpu")]


class BatchEncoder:
    """Batches to the codecs, on a thread per codec (codec_slots: CODECS_PER_GPU per GPU, each
    with its own CUDA stream), finished batches returned in order. Besides the batches the codecs
    encode, one more waits queued: while the codecs encode, the caller writes the codes of the
    batches before and builds the next, so a codec never waits for the disk or for Python."""

    def __init__(self, codecs: list):
        self.free: queue.SimpleQueue = queue.SimpleQueue()
        for codec in codecs:
            self.free.put(codec)
        self.count = len(codecs)
        self.pinned = any(next(codec.parameters()).is_cuda for codec in codecs)
        self.step = PAD_STEP_FRAMES * int(codecs[0].frame_length)  # samples
        self.streams = {id(codec): _stream_for(codec) for codec in codecs}
        self.pool = ThreadPoolExecutor(max_workers=self.count, thread_name_prefix="codes-encoder")
        self.in_flight: deque = deque()

    def _encode(self, to_encode: list, sample_rate: int, failed: dict, padded) -> tuple[list, list, float]:
        codec = self.free.get()
        started = time.perf_counter()
        stream = self.streams[id(codec)]
        try:
            with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
                encoded = encode_group(codec, to_encode, sample_rate, failed, padded)
            return to_encode, encoded, time.perf_counter() - started
        finally:
            self.free.put(codec)

    def submit(self, to_encode: list, sample_rate: int, failed: dict) -> list[tuple[list, list, float]]:
        """Encode a batch; returns the batches finished by now (in submission order). The padded
        batch is built here, while the codecs still encode the batches before it."""
        padded = pad_batch([audio for _, audio, _, _ in to_encode], pin=self.pinned, step=self.step)
        self.in_flight.append(self.pool.submit(self._encode, to_encode, sample_rate, failed, padded))
        finished = []
        # one batch more than the codecs queued: a codec that finishes finds its next batch waiting
        while len(self.in_flight) > self.count + 1 or (self.in_flight and self.in_flight[0].done()):
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
    """As many seconds per batch as half the smallest GPU's free memory holds, shared by the
    batches that GPU's codecs encode at once (one per entry of `devices` on it), within the
    bounds; 120 s on the CPU."""
    gpus = [d for d in devices if d.type == "cuda"]
    if not gpus:
        return 120.0
    sharing = max(gpus.count(d) for d in gpus)
    free_gb = min(torch.cuda.mem_get_info(d)[0] for d in gpus) / 1e9
    per_batch = 0.5 * free_gb / sharing
    return float(min(max(per_batch / GB_PER_BATCH_SECOND, MIN_BATCH_SECONDS), MAX_BATCH_SECONDS))
