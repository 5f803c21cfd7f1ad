"""Speech as it is generated: audio pieces while the codes are sampled, then the whole result.

`stream_audio` speaks like `Synthesizer.stream` (same chunks, prompts and random draws: a seed
gives `speak`'s codes) but hands out the audio as it goes. With the fast decoder (CUDA) a chunk's
frames arrive in blocks (the first after FIRST_FRAMES, then every EVERY_FRAMES); the wheel's
generate (no fast decoder, e.g. on a CPU) gives a chunk's frames at once, so there the pieces
come per sentence chunk.

`WindowDecoder` turns the blocks into audio: each new window is decoded with LEFT_CONTEXT frames
before it and only the window's samples are kept, so the pieces join to (nearly) one decode of
all the codes. The codec is causal (its convolutions and windowed attention look back only), so
frames after a window do not change it: measured on the tiny codec, holding back 2-8 frames of
look-ahead changes nothing, so every frame is played as soon as it is decoded. The final result
is decoded in one piece per chunk, exactly as `speak` decodes.
"""

from __future__ import annotations

from contextlib import closing
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch

from pipeline.generate.seeded import SeededRandom
from pipeline.generate.synth import SpeechStep, Synthesizer
from pipeline.model.tokens import Utterance

FIRST_FRAMES = 8  # ~0.37 s of audio: the first piece comes early
EVERY_FRAMES = 16  # later pieces: fewer, longer decodes
# Frames decoded before each window. On the tiny codec (tests/generate/test_streaming.py) the
# joined pieces differ from one decode by 7e-2 (of peaks ~0.1) with none, 4e-5 with 4, 5e-6 with 32:
# what is left comes from the windowed attention, whose window (128 latent steps = 32 frames in
# the real codec's configuration) 32 frames cover.
LEFT_CONTEXT = 32


@dataclass
class AudioPiece(SpeechStep):
    """One step of `stream_audio`: a SpeechStep with the `audio` to play next (empty when chunk
    `index` is announced, before its work starts, and with the finished `result`)."""
    audio: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    sample_rate: int = 0


class WindowDecoder:
    """Audio of codes that arrive in blocks; each window decoded with `context` frames before it."""

    def __init__(self, decode: Callable[[torch.Tensor], np.ndarray], hop: int, context: int = LEFT_CONTEXT):
        self.decode, self.hop, self.context = decode, hop, context
        self.blocks: list[torch.Tensor] = []
        self.frames = 0  # frames received
        self.played = 0  # frames whose audio was handed out

    def push(self, block: torch.Tensor) -> np.ndarray:
        """Add `(num_codebooks, n)` codes; the audio of the frames now final (maybe none)."""
        self.blocks.append(block)
        self.frames += block.shape[1]
        return self._emit(self.frames)

    def finish(self) -> np.ndarray:
        """The audio of every frame not handed out yet."""
        return self._emit(self.frames)

    def _emit(self, until: int) -> np.ndarray:
        if until <= self.played:
            return np.zeros(0, np.float32)
        codes = torch.cat(self.blocks, dim=1)
        self.blocks = [codes]
        start = max(0, self.played - self.context)
        audio = self.decode(codes[:, start:until])
        piece = audio[(self.played - start) * self.hop:(until - start) * self.hop]
        self.played = until
        return np.clip(np.nan_to_num(piece), -1.0, 1.0).astype(np.float32)


def stream_audio(synth: Synthesizer, text: str, reference_audio=None, reference_text: str | None = None,
                 temperature: float = 0.7, top_p: float = 0.8, repetition_penalty: float = 1.1,
                 max_new_tokens: int = 1024, seed: int | None = None, first: int = FIRST_FRAMES,
                 every: int = EVERY_FRAMES) -> Iterator[AudioPiece]:
    """Speak `text` (options as `Synthesizer.stream`): yields an empty piece before each chunk, the
    audio pieces as frames arrive (a pause before every chunk after the first), then once the
    result, `speak`'s for the same options. Closing the iterator stops the sampling."""
    chunks, notes, prompt = synth.plan(text, reference_audio, reference_text, temperature, top_p,
                                       repetition_penalty, max_new_tokens)
    hop, rate = int(synth.codec.frame_length), synth.sample_rate
    pieces, all_codes = [], []
    with SeededRandom(synth.device, seed) as rng:
        for i, chunk in enumerate(chunks):
            yield from _held(rng, AudioPiece(i, len(chunks), chunk, sample_rate=rate))
            if i:
                yield from _held(rng, AudioPiece(i, len(chunks), chunk, audio=synth.pause(), sample_rate=rate))
            window = WindowDecoder(synth.decode, hop)
            with closing(synth.code_blocks(chunk, prompt, temperature, top_p, repetition_penalty, max_new_tokens,
                                           first=first, every=every)) as blocks:
                for block in blocks:
                    audio = window.push(block)
                    if audio.size:
                        yield from _held(rng, AudioPiece(i, len(chunks), chunk, audio=audio, sample_rate=rate))
            audio = window.finish()
            if audio.size:
                yield from _held(rng, AudioPiece(i, len(chunks), chunk, audio=audio, sample_rate=rate))
            codes = torch.cat(window.blocks, dim=1) if window.blocks else torch.zeros((synth.num_codebooks, 0),
                                                                                       dtype=torch.long)
            if not prompt and codes.shape[1] > 0:
                prompt = [Utterance(chunk, codes)]  # later chunks continue in this voice
            all_codes.append(codes.numpy().astype(np.int32))
            pieces.append(synth.decode(codes))
    yield AudioPiece(len(chunks), len(chunks), result=synth.result(chunks, notes, pieces, all_codes), sample_rate=rate)


def _held(rng: SeededRandom, piece: AudioPiece) -> Iterator[AudioPiece]:
    """Yield `piece` with the seeded random state kept across the yield (and the lock let go)."""
    state = rng.pause()
    yield piece
    rng.resume(state)
