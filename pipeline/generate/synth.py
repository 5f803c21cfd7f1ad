"""Finnish text to speech with a checkpoint (base, merged, or base + LoRA adapters).

`Synthesizer` loads the LM and the codec once and keeps them warm. Each call normalizes the text
(`pipeline.data.text.normalize`), splits it into sentence-sized chunks, builds each chunk's prompt with
`pipeline.model.tokens.build_sequence(..., for_generation=True)` (the layout training uses), samples
codes with fish-speech's own `generate`, decodes them with the codec and joins the chunks with a
short pause.

Voice prompt: a reference clip + its transcript are encoded by the codec and put in front of
every chunk. Without one, the first chunk's own output becomes the prompt of the later chunks,
so a long text keeps one voice (as fish-speech's older iterative prompting did).

`stream` yields before each chunk, so a caller that stops iterating (a web request whose client
went away) stops the work between chunks; `speak` runs it to the end.
pipeline.generate.streaming.stream_audio yields the audio itself while the codes are sampled.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from pipeline.model.checkpoints import load_codec, load_lm
from pipeline.model.codes import encode_audio, load_for_codec
from pipeline.data.text import normalize, normalize_report, split_sentences
from pipeline.model.tokens import Utterance, build_sequence
from pipeline.generate.seeded import SeededRandom

Progress = Callable[[float, str], None] | None
PAUSE_SECONDS = 0.25  # silence between chunks
MAX_CHUNK_CHARS = 200
MIN_NEW_TOKENS_ROOM = 64  # a prompt must leave at least this many positions to generate into
MAX_REFERENCE_SECONDS = 30.0  # references of 10-30 s are usual; longer ones crowd the context


class SynthError(ValueError):
    """Input that cannot be spoken (empty text, reference without transcript, prompt too long)."""


@dataclass
class SpeechResult:
    sample_rate: int
    audio: np.ndarray  # float32 mono in [-1, 1]
    normalized_text: str
    frames: int  # code frames generated (all chunks)
    seconds: float
    chunks: list[str] = field(default_factory=list)
    codes: list[np.ndarray] = field(default_factory=list, repr=False)  # per chunk, (num_codebooks, frames)
    notes: list[str] = field(default_factory=list)  # what the normalizer removed or could not read


@dataclass
class SpeechStep:
    """One step of `Synthesizer.stream`: chunk `index` of `total` is next, or `result` is ready."""
    index: int
    total: int
    chunk: str = ""
    result: SpeechResult | None = None

    @property
    def message(self) -> str:
        return f"chunk {self.index + 1}/{self.total}: {self.chunk[:60]}" if self.result is None else "done"


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _triton_errors() -> tuple[type[Exception], ...]:
    """Triton's compile and launch errors (not RuntimeErrors), if Triton is installed."""
    try:
        from triton.errors import TritonError
    except ImportError:
        return ()
    return (TritonError,)


class Synthesizer:
    """Loaded models, kept warm between `speak` calls."""

    def __init__(
        self,
        ckpt_dir: str | Path,
        device: str | torch.device | None = None,
        adapters: list[tuple[str, float]] | None = None,
        codec_dir: str | Path | None = None,
        dtype: torch.dtype | None = None,
        fast: bool | None = None,
        decode_options=None,
    ):
        """fast: decode with pipeline.generate.fastgen (compiled step in a CUDA graph); default on CUDA.
        decode_options: its pipeline.generate.fastgen.DecodeOptions (None: from the defaults and the
        environment, DecodeOptions.from_speed)."""
        self.decode_options = decode_options
        self.ckpt_dir = Path(ckpt_dir)
        self.device = torch.device(device or _default_device())
        self.dtype = dtype or (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        # The DualARTransformer itself: peft injects adapter layers into it in place, so generate()
        # runs through them without going via the PeftModel wrapper.
        self.model, self.tokenizer = load_lm(self.ckpt_dir, device=self.device, dtype=self.dtype)
        self.adapters = list(adapters or [])
        if self.adapters:
            from pipeline.model.adapters import load_adapters

            load_adapters(self.model, [(str(p), float(w)) for p, w in self.adapters])
            self.model.eval()
        self._finish_init(load_codec(Path(codec_dir) if codec_dir else self.ckpt_dir, device=self.device), fast)

    @classmethod
    def from_model(cls, model, tokenizer, codec_dir: str | Path, device: str | torch.device) -> "Synthesizer":
        """Speak with a model already in memory (e.g. mid-training), without loading weights again.

        Eager decoding only: a compiled decoder would capture weights that training keeps changing.
        """
        self = cls.from_parts(model, tokenizer, load_codec(Path(codec_dir), device=device), device, fast=False)
        self.ckpt_dir = Path(codec_dir)
        return self

    @classmethod
    def from_parts(cls, model, tokenizer, codec, device: str | torch.device, fast: bool | None = None,
                   decode_options=None) -> "Synthesizer":
        """Speak with a model and a codec already built (the bench: random weights of the real shape)."""
        self = cls.__new__(cls)
        self.decode_options = decode_options
        self.ckpt_dir, self.device = None, torch.device(device)
        self.model, self.tokenizer, self.adapters = model, tokenizer, []
        self.dtype = next(model.parameters()).dtype
        self._finish_init(codec, fast)
        return self

    def weights_changed(self) -> None:
        """Call after changing adapter strengths in place: the fast decoder merged the old ones."""
        if self._fastgen is not None:
            self._fastgen.refresh_weights()

    def _finish_init(self, codec, fast: bool | None) -> None:
        self.codec = codec
        self.sample_rate = int(self.codec.sample_rate)
        self.num_codebooks = self.model.config.num_codebooks
        self._im_end = self.tokenizer.get_token_id("<|im_end|>")
        self._reference_cache: dict[tuple, torch.Tensor] = {}
        self.fast = self.device.type == "cuda" if fast is None else bool(fast)
        self._fastgen = None

    # -- pieces ---------------------------------------------------------------------------------

    def reference_codes(self, path: str | Path) -> torch.Tensor:
        """Codes of a reference clip, cached per (path, size, mtime)."""
        path = Path(path)
        if not path.is_file():
            raise SynthError(f"Reference audio {path} does not exist.")
        stat = path.stat()
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        if key not in self._reference_cache:
            audio = load_for_codec(path, self.sample_rate)
            if audio.size == 0:
                raise SynthError(f"Reference audio {path} has no samples.")
            seconds = audio.size / self.sample_rate
            if seconds > MAX_REFERENCE_SECONDS:
                raise SynthError(
                    f"Reference audio {path.name} is {seconds:.0f} s long; use a clip of at most "
                    f"{MAX_REFERENCE_SECONDS:.0f} s (5-15 s of clean speech works best)."
                )
            self._reference_cache[key] = encode_audio(self.codec, audio)
        return self._reference_cache[key]

    def _check_codes_fit(self, codes: torch.Tensor, where: str) -> None:
        if codes.shape[0] != self.num_codebooks:
            raise SynthError(
                f"{where}: the codec gives {codes.shape[0]} codebooks but the model expects "
                f"{self.num_codebooks}; use the codec of this model (codec_dir)."
            )

    def _prompt_tokens(self, text: str, prompt: list[Utterance], max_new_tokens: int) -> tuple[torch.Tensor, int]:
        """One chunk's prompt tokens on the device, and how many frames fit after them."""
        seq = build_sequence(self.tokenizer, self.num_codebooks, [*prompt, Utterance(text, None)],
                             for_generation=True)
        prompt_tokens = seq.tokens.to(device=self.device, dtype=torch.int)
        length, limit = prompt_tokens.shape[1], self.model.config.max_seq_len
        if length + MIN_NEW_TOKENS_ROOM > limit:
            raise SynthError(
                f"The prompt takes {length} of the model's {limit} positions; use a shorter "
                "reference clip or shorter text."
            )
        return prompt_tokens, min(max_new_tokens, limit - length)

    def generate_codes(
        self,
        text: str,
        prompt: list[Utterance],
        temperature: float,
        top_p: float,
        repetition_penalty: float,
        max_new_tokens: int,
    ) -> torch.Tensor:
        """Codes `(num_codebooks, frames)` for one already normalized chunk."""
        prompt_tokens, room = self._prompt_tokens(text, prompt, max_new_tokens)
        length = prompt_tokens.shape[1]
        if self.fast:
            new = self._fast_generate(prompt_tokens, room, temperature, top_p, repetition_penalty)
            if new is not None:
                return new
        from fish_speech.models.text2semantic.inference import decode_one_token_ar, generate

        out = generate(
            model=self.model,
            prompt=prompt_tokens,
            max_new_tokens=room,
            audio_masks=None,
            audio_parts=None,
            decode_one_token=decode_one_token_ar,
            temperature=temperature,
            top_p=top_p,
            repetition_penalty=repetition_penalty,
        )
        new = out[:, length:].to("cpu", torch.long)
        # Generation stops at <|im_end|>; neither it nor anything after it is audio.
        ends = (new[0] == self._im_end).nonzero()
        if len(ends):
            new = new[:, : int(ends[0])]
        return new[1:]

    def _fast_generate(self, prompt_tokens, max_new_tokens, temperature, top_p, repetition_penalty):
        """Codes from pipeline.generate.fastgen, or None when it cannot run here (then the wheel's generate)."""
        import logging

        fused = None  # FastGenerator's choice (the Triton layers on CUDA), then the compiled layers
        while True:
            try:
                self._warm_fastgen(fused)
                rows = self._fastgen.generate([prompt_tokens], max_new_tokens, temperature, top_p,
                                              repetition_penalty)[0]
                break
            except (RuntimeError, NotImplementedError, *_triton_errors()) as exc:  # compiler/graph trouble
                failed, self._fastgen = self._fastgen, None
                if failed is not None and failed.fused:
                    logging.getLogger(__name__).warning("fused decoder failed (%s); using the compiled layers", exc)
                    fused = False
                    continue
                logging.getLogger(__name__).warning("fast generation unavailable (%s); using fish-speech's generate",
                                                    exc)
                self.fast = False
                return None
        if rows.shape[1] and int(rows[0, -1]) == self._im_end:
            rows = rows[:, :-1]  # <|im_end|> is not audio
        return rows[1:].to(torch.long)

    def _warm_fastgen(self, fused: bool | None = None):
        """The fast decoder, built and warmed up on first use."""
        if self._fastgen is None:
            from pipeline.generate.fastgen import FastGenerator

            self._fastgen = FastGenerator(self.model, batch_size=1, fused=fused, options=self.decode_options)
            self._fastgen.warmup(max_position=2048)  # longer contexts are captured when first needed
        return self._fastgen

    def code_blocks(self, text: str, prompt: list[Utterance], temperature: float, top_p: float,
                    repetition_penalty: float, max_new_tokens: int, first: int = 8,
                    every: int = 16) -> Iterator[torch.Tensor]:
        """One normalized chunk's codes as blocks `(num_codebooks, n)` while they are sampled: with the
        fast decoder the first after `first` frames, then every `every`; else the whole chunk as one
        block (the wheel's generate hands out no frames). Joined, the blocks are `generate_codes`'
        codes for the same random state."""
        if self.fast:
            prompt_tokens, room = self._prompt_tokens(text, prompt, max_new_tokens)
            try:  # compile and graph errors surface before the first block
                frames = self._warm_fastgen().generate_stream(prompt_tokens, room, temperature, top_p,
                                                              repetition_penalty, first=first, every=every)
                head = next(frames, None)
            except (RuntimeError, NotImplementedError, *_triton_errors()):
                head = frames = None  # generate_codes falls back through the other decoders, as speak does
            if frames is not None:
                yield from self._blocks_after_head(head, frames)
                return
        yield self.generate_codes(text, prompt, temperature, top_p, repetition_penalty, max_new_tokens)

    def _blocks_after_head(self, head, frames) -> Iterator[torch.Tensor]:
        """The fast decoder's blocks. Audio already heard cannot be taken back, so a decoder error
        after the first block ends the call with a clear message instead of a silent restart; the
        decoder is built again on the next call, which falls back to the others if it fails again."""
        try:
            for rows in ([] if head is None else [head]):
                yield rows[1:].to(torch.long)
            for rows in frames:
                yield rows[1:].to(torch.long)
        except (RuntimeError, NotImplementedError, *_triton_errors()) as exc:
            self._fastgen = None
            raise SynthError(f"Live decoding stopped partway through this sentence ({type(exc).__name__}: "
                             f"{str(exc)[:160]}). Speak again: the decoder is rebuilt, and a slower one takes over if "
                             "it fails again.") from exc

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor) -> np.ndarray:
        """Audio samples (float32) of codes `(num_codebooks, frames)`."""
        if codes.shape[1] == 0:
            return np.zeros(0, dtype=np.float32)
        audio, _ = self.codec.decode(codes[None].to(self.device), torch.tensor([codes.shape[1]], device=self.device))
        return audio[0, 0].float().cpu().numpy()

    # -- the call -------------------------------------------------------------------------------

    def speak(self, text: str, progress: Progress = None, **options) -> SpeechResult:
        """Speak `text` (Finnish); same seed and inputs give the same audio. Options as `stream`."""
        started = time.perf_counter()
        for step in self.stream(text, **options):
            if step.result is not None:
                if progress:
                    progress(1.0, f"{step.result.frames} frames in {time.perf_counter() - started:.1f} s")
                return step.result
            if progress:
                progress(step.index / step.total, step.message)
        raise AssertionError("stream ended without a result")  # stream always yields one

    def _chunks(self, text: str) -> tuple[list[str], list[str]]:
        """Sentence-sized chunks of the normalized text, and notes on what was removed or kept."""
        report = normalize_report(text or "")
        if not report.speakable:
            if report.removed:
                raise SynthError(f"Nothing to say: {report.notes()[0]} Write a sentence in Finnish.")
            raise SynthError("There is no text to speak: write a sentence.")
        return split_sentences(report.text, max_chars=MAX_CHUNK_CHARS), report.notes()

    def stream(
        self,
        text: str,
        reference_audio: str | Path | None = None,
        reference_text: str | None = None,
        temperature: float = 0.7,
        top_p: float = 0.8,
        repetition_penalty: float = 1.1,
        max_new_tokens: int = 1024,
        seed: int | None = None,
    ) -> Iterator[SpeechStep]:
        """Speak `text` chunk by chunk: yields before each chunk, then once with the result.

        The random state is kept per call across yields, so whatever runs between two chunks
        does not change the audio of a seeded call.
        """
        chunks, notes, prompt = self.plan(text, reference_audio, reference_text, temperature, top_p,
                                          repetition_penalty, max_new_tokens)
        pieces, all_codes = [], []
        with SeededRandom(self.device, seed) as rng:
            for i, chunk in enumerate(chunks):
                state = rng.pause()
                yield SpeechStep(i, len(chunks), chunk)
                rng.resume(state)
                codes = self.generate_codes(chunk, prompt, temperature, top_p, repetition_penalty, max_new_tokens)
                if not prompt and codes.shape[1] > 0:
                    prompt = [Utterance(chunk, codes)]  # later chunks continue in this voice
                all_codes.append(codes.numpy().astype(np.int32))
                pieces.append(self.decode(codes))
        yield SpeechStep(len(chunks), len(chunks), result=self.result(chunks, notes, pieces, all_codes))

    def plan(self, text: str, reference_audio: str | Path | None, reference_text: str | None, temperature: float,
             top_p: float, repetition_penalty: float, max_new_tokens: int) -> tuple[list[str], list[str], list]:
        """A call's options checked: its chunks, the normalizer's notes and the voice prompt."""
        if not 0 < temperature < 2:
            raise SynthError(f"temperature must be in (0, 2), got {temperature}.")
        if not 0 < top_p <= 1:
            raise SynthError(f"top_p must be in (0, 1], got {top_p}.")
        if not 0 < repetition_penalty < 2:
            raise SynthError(f"repetition_penalty must be in (0, 2), got {repetition_penalty}.")
        if max_new_tokens < 1:
            raise SynthError(f"max_new_tokens must be at least 1, got {max_new_tokens}.")
        chunks, notes = self._chunks(text)

        prompt: list[Utterance] = []
        if reference_audio is not None:
            if not reference_text or not reference_text.strip():
                raise SynthError("A reference clip needs its transcript (reference_text).")
            ref_codes = self.reference_codes(reference_audio)
            self._check_codes_fit(ref_codes, f"reference {reference_audio}")
            prompt = [Utterance(normalize(reference_text), ref_codes)]
        return chunks, notes, prompt

    def pause(self) -> np.ndarray:
        """The silence between two chunks."""
        return np.zeros(int(PAUSE_SECONDS * self.sample_rate), dtype=np.float32)

    def result(self, chunks: list[str], notes: list[str], pieces: list[np.ndarray],
               codes: list[np.ndarray]) -> SpeechResult:
        """The chunks' audio joined with pauses, as one SpeechResult."""
        joined = [part for i, piece in enumerate(pieces) for part in ([self.pause()] if i else []) + [piece]]
        audio = np.concatenate(joined).astype(np.float32) if joined else np.zeros(0, np.float32)
        audio = np.clip(np.nan_to_num(audio), -1.0, 1.0)
        return SpeechResult(
            sample_rate=self.sample_rate,
            audio=audio,
            normalized_text=" ".join(chunks),
            frames=sum(c.shape[1] for c in codes),
            seconds=len(audio) / self.sample_rate,
            chunks=chunks,
            codes=codes,
            notes=notes,
        )



def save_wav(result: SpeechResult, path: str | Path) -> Path:
    """Write the result as 16-bit PCM WAV."""
    import soundfile as sf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), result.audio, result.sample_rate, subtype="PCM_16")
    return path
