"""Streamed speech in the bench: time to first audio, total time and real-time factor of one short
Finnish sentence spoken through pipeline.generate.streaming.stream_audio (random weights of the
bench's shape; the fast decoder on CUDA, the wheel's generate elsewhere, as the Playground)."""

from __future__ import annotations

import statistics
import time

import torch

from pipeline.bench.common import SENTENCES, sync
from pipeline.generate import streaming

SENTENCE = SENTENCES[0]  # "Hyvää huomenta, tänään on aurinkoinen ja lämmin päivä." (~3 s of speech)


def bench_streaming(shapes, device, tiny: bool, speed=None, calls: int | None = None) -> dict:
    """{"ttfa_ms", "total_s", "audio_s", "real_time_factor", ...}: medians over `calls` streamed
    calls (default 1 tiny, 5 otherwise) after one warm-up call that compiles and captures."""
    synth = bench_synthesizer(shapes, device, speed)
    max_frames = 16 if tiny else 200  # random weights rarely stop by themselves: ~9 s at most
    warmup = _streamed_call(synth, SENTENCE, max_frames, device)
    runs = [_streamed_call(synth, SENTENCE, max_frames, device) for _ in range(calls or (1 if tiny else 5))]
    total = statistics.median(r["total_s"] for r in runs)
    audio = statistics.median(r["audio_s"] for r in runs)
    return {
        "sentence": SENTENCE,
        "decoder": "fast" if synth.fast else "fish-speech generate (per sentence chunk)",
        "first_frames": streaming.FIRST_FRAMES, "every_frames": streaming.EVERY_FRAMES,
        "left_context_frames": streaming.LEFT_CONTEXT,
        "calls": len(runs),
        "warmup_s": round(warmup["total_s"], 3),
        "ttfa_ms": round(statistics.median(r["ttfa_s"] for r in runs) * 1000, 1),
        "ttfa_ms_all": [round(r["ttfa_s"] * 1000, 1) for r in runs],
        "total_s": round(total, 4),
        "audio_s": round(audio, 3),
        "frames": runs[-1]["frames"],
        "pieces": runs[-1]["pieces"],
        "real_time_factor": round(total / audio, 4) if audio else None,  # < 1: faster than real time
    }


def bench_synthesizer(shapes, device, speed=None):
    """A Synthesizer over a random model and codec of the bench's shape (bf16 on CUDA)."""
    from fish_speech.models.text2semantic.llama import DualARTransformer

    from pipeline.generate.fastgen import DecodeOptions
    from pipeline.generate.synth import Synthesizer
    from pipeline.model.checkpoints import build_codec

    args, tokenizer, codec_config = shapes[:3]
    device = torch.device(device)
    torch.manual_seed(0)
    with torch.device(device):
        model = DualARTransformer(args, tokenizer=tokenizer)
    model = model.to(torch.bfloat16 if device.type == "cuda" else torch.float32).eval()
    codec = build_codec(codec_config).to(device).eval()
    return Synthesizer.from_parts(model, tokenizer, codec, device, fast=device.type == "cuda",
                                  decode_options=DecodeOptions.from_speed(speed))


def _streamed_call(synth, text: str, max_frames: int, device) -> dict:
    """One seeded streamed call: seconds to the first audio piece and to the result."""
    sync(device)
    started = time.perf_counter()
    first, pieces, result = None, 0, None
    for piece in streaming.stream_audio(synth, text, max_new_tokens=max_frames, seed=0):
        if piece.audio.size:
            pieces += 1
            first = first if first is not None else time.perf_counter() - started  # on the host: playable
        result = piece.result or result
    sync(device)
    total = time.perf_counter() - started
    return {"ttfa_s": total if first is None else first, "total_s": total, "audio_s": result.seconds,
            "frames": result.frames, "pieces": pieces}
