"""Intelligibility: a Finnish-capable ASR's transcript against the sentence, as CER and WER.

Both sides are normalized the same way (`pipeline.data.text.normalize`: numbers, dates and symbols
spelled out; then lower case, punctuation dropped), so "6.12.1917" and "kuudes joulukuuta ..."
compare equal. jiwer does the alignment. The ASR is any Whisper-style (model, processor) pair of
`transformers`; `Transcriber.from_pretrained` gets one from the Hugging Face Hub (usual cache).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

import numpy as np

from pipeline.data.text import normalize
from pipeline.data.audio import resample

ASR_SAMPLE_RATE = 16000
_NOT_WORD = re.compile(r"[^\w]+")
_START_TOKENS = 4


class ASRError(ValueError):
    """The ASR model cannot be loaded or used; the message says which model and what to do."""


def cer_text(text: str) -> str:
    """The form both reference and transcript are compared in: spoken words, lower case, no punctuation."""
    spoken = unicodedata.normalize("NFC", normalize(text or "")).lower()
    return " ".join(_NOT_WORD.sub(" ", spoken).replace("_", " ").split())


@dataclass(frozen=True)
class ErrorRates:
    cer: float
    wer: float
    reference: str  # as compared
    hypothesis: str


def error_rates(reference: str, hypothesis: str) -> ErrorRates:
    """CER and WER of `hypothesis` against `reference`, both normalized by `cer_text`."""
    import jiwer

    ref, hyp = cer_text(reference), cer_text(hypothesis)
    if not ref:
        raise ValueError(f"The reference sentence {reference!r} has no words to compare against.")
    if not hyp:  # nothing recognised: every reference character and word is an error
        return ErrorRates(1.0, 1.0, ref, hyp)
    return ErrorRates(float(jiwer.cer(ref, hyp)), float(jiwer.wer(ref, hyp)), ref, hyp)


def _resample(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    return resample(audio, sample_rate, ASR_SAMPLE_RATE)


class Transcriber:
    """A Whisper-style (model, processor) pair transcribing clips in batches.

    `processor` turns 16 kHz audio into `input_features` and decodes token ids (`batch_decode`);
    `language` is passed to `generate` when the model's generation config knows languages.
    """

    def __init__(self, model, processor, name: str, language: str = "fi", batch_size: int = 32,
                 max_new_tokens: int = 128):
        self.model, self.processor, self.name = model.eval(), processor, name
        self.language, self.batch_size, self.max_new_tokens = language, max(1, batch_size), max_new_tokens

    @classmethod
    def from_pretrained(cls, name: str, language: str = "fi", device: str | None = None,
                        local_files_only: bool = False) -> "Transcriber":
        """Load `name` (a Hub repo or a local folder) with transformers; downloads into the usual cache."""
        import torch
        from transformers import AutoModelForSpeechSeq2Seq, AutoProcessor

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.float16 if str(device).startswith("cuda") else torch.float32
        try:
            processor = AutoProcessor.from_pretrained(name, local_files_only=local_files_only)
            model = AutoModelForSpeechSeq2Seq.from_pretrained(name, dtype=dtype, local_files_only=local_files_only)
        except (OSError, ValueError) as exc:  # huggingface_hub's errors are OSErrors/ValueErrors
            raise ASRError(
                f"ASR model {name} could not be loaded ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}). "
                "Run once on a machine that reaches the Hugging Face Hub (it is cached), or set "
                "evaluation.asr_model to a local Whisper folder; CER and WER are left out meanwhile."
            ) from exc
        return cls(model.to(device), processor, name, language)

    def _generate_kwargs(self) -> dict:
        config = getattr(self.model, "generation_config", None)
        # the decoder's positions hold the start tokens (start, language, task, no timestamps) too
        positions = getattr(self.model.config, "max_target_positions", None)
        limit = self.max_new_tokens if positions is None else min(self.max_new_tokens, positions - _START_TOKENS)
        kwargs = {"max_new_tokens": max(1, limit)}
        if self.language and getattr(config, "lang_to_id", None):
            kwargs.update(language=self.language, task="transcribe")
        return kwargs

    def transcribe(self, clips: list[tuple[np.ndarray, int]]) -> list[str]:
        """Transcripts of (audio, sample rate) clips, in order."""
        import torch

        texts: list[str] = []
        device = next(self.model.parameters()).device
        dtype = next(self.model.parameters()).dtype
        for start in range(0, len(clips), self.batch_size):
            batch = [_resample(audio, rate) for audio, rate in clips[start:start + self.batch_size]]
            batch = [a if a.size else np.zeros(ASR_SAMPLE_RATE // 10, np.float32) for a in batch]
            features = self.processor(batch, sampling_rate=ASR_SAMPLE_RATE, return_tensors="pt").input_features
            with torch.inference_mode():
                ids = self.model.generate(features.to(device, dtype), **self._generate_kwargs())
            texts.extend(t.strip() for t in self.processor.batch_decode(ids, skip_special_tokens=True))
        return texts
