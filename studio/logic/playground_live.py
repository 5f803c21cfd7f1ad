"""The Playground's live speech, without gradio: the speech while it is sampled as 16-bit WAV
chunks for a streaming player, then the saved file (studio.logic.playground.speak_stream)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from pipeline.doctor.machine import live_playback_available
from pipeline.generate.synth import SpeechResult
from studio.logic.playground import Adapters, SynthCache, speak_stream


@dataclass
class LiveSpeech:
    """One update of the Playground's live generation: progress with maybe a `chunk` of audio to
    play next (a 16-bit WAV), or at the end the `result` and its saved `path`."""
    fraction: float
    message: str
    chunk: bytes | None = None
    result: SpeechResult | None = None
    path: Path | None = None


def live_speech(config, cache: SynthCache, model_path: str, adapters: Adapters, text: str,
                file_name: str | None = None, **options) -> Iterator[LiveSpeech]:
    """`speak_stream(live=True)` as the Playground shows it; closing it stops the sampling."""
    for piece, path in speak_stream(config, cache, model_path, adapters, text, file_name=file_name, live=True,
                                    **options):
        if path is not None:
            yield LiveSpeech(1.0, "done", result=piece.result, path=path)
            return
        chunk = wav_bytes(piece.audio, piece.sample_rate) if piece.audio.size else None
        yield LiveSpeech(piece.index / piece.total, piece.message, chunk)


def can_stream_audio() -> bool:
    """Gradio encodes streamed audio with ffmpeg (and probes files with ffprobe): without them the
    speech is shown when complete."""
    return live_playback_available()


def wav_bytes(audio, sample_rate: int) -> bytes:
    """A piece of speech as a 16-bit WAV (a streamed player's chunk; float pieces would each be
    scaled to their own peak)."""
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, audio, sample_rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()
