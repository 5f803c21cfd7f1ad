"""Scoring during training: the evaluation sentences just spoken at a validation step, as means.

The training loop speaks the evaluation sentences at each validation and calls a `LiveScorer`
with (sentence, wav) pairs; the means (`val_similarity`, `val_ovrl`, and `val_cer` when an ASR is
available) join that step's validation row in metrics.jsonl, where `pipeline.train.select` can pick
the best checkpoint by them. Models load on the first call and stay loaded. Nothing here stops
training: a scorer that cannot load or run is left out, with one line in `notes` saying why.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np

from pipeline.quality.asr import Transcriber, error_rates
from pipeline.quality.naturalness import dnsmos
from pipeline.quality.scorecard import Scorers
from pipeline.quality.configured import speaker_references
from pipeline.quality.speaker import similarity

Clip = tuple[str, Path]  # (sentence, wav path)


def asr_source(name: str | None) -> tuple[bool, str]:
    """(usable, how or why not) for an ASR model: a local folder, the Hugging Face cache, or the Hub."""
    if not name:
        return False, "evaluation.asr_model is null: CER is left out of the training curves."
    if Path(name).is_dir():
        return True, "local folder"
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(name, "config.json"), str):
        return True, "Hugging Face cache"
    from pipeline.data.hub import unreachable_reason

    reason = unreachable_reason()
    if reason is None:
        return True, "Hugging Face Hub"
    return False, (f"ASR model {name} is neither a local folder nor in the Hugging Face cache and the Hub is "
                   f"unreachable ({reason}): CER is left out of the training curves. Run `python -m pipeline "
                   "evaluate` once on a machine that reaches the Hub, or set evaluation.asr_model to a local folder.")


def _mean(values: list[float]) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def _read(path: Path) -> tuple[np.ndarray, int]:
    import soundfile as sf

    audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    return audio.mean(axis=1), int(rate)


class LiveScorer:
    """Scores (sentence, wav) clips into {"val_similarity", "val_ovrl", "val_cer"} means.

    `asr`: a model name/folder, a ready `Transcriber`, or None (no CER); `references`: clips of the
    chosen speaker (none: no similarity). `notes` holds one line per scorer left out.
    """

    def __init__(self, asr: str | Transcriber | None = None, references: list[str | Path] = (), language: str = "fi",
                 device: str | None = None, local_files_only: bool = False, notes: list[str] = ()):
        loader = functools.partial(Transcriber.from_pretrained, local_files_only=local_files_only)
        self.scorers = Scorers(asr, language=language, references=references, device=device, asr_loader=loader)
        self.notes: list[str] = list(notes)
        self.off: set[str] = set()  # scorers that failed once: not tried again
        if not references:
            self._note("similarity", "No reference clips of the chosen speaker (no dataset selected?): "
                                     "speaker similarity is left out of the training curves.")

    def _note(self, part: str, line: str) -> None:
        self.off.add(part)
        if line not in self.notes:
            self.notes.append(line)

    def _guarded(self, part: str, what: str, work):
        """`work()`, or None when this scorer failed now or before (then it is off, with a note)."""
        if part in self.off:
            return None
        try:
            return work()
        except Exception as exc:  # noqa: BLE001 - a scorer that cannot run costs its curve, never the training
            detail = (str(exc).splitlines() or [""])[0][:200]
            self._note(part, f"{what} failed ({type(exc).__name__}: {detail}); left out of the training curves.")
            return None

    def _cer(self, clips: list[tuple[str, np.ndarray, int]]) -> float | None:
        asr = self.scorers.transcriber() if self.scorers.asr_name else None
        for note in self.scorers.notes:  # the ASR's load failure, said once
            self._note("cer", note)
        if asr is None:
            self.off.add("cer")
            return None
        texts = asr.transcribe([(audio, rate) for _, audio, rate in clips])
        return _mean([error_rates(sentence, text).cer for (sentence, _, _), text in zip(clips, texts)])

    def _similarity(self, clips) -> float | None:
        reference = self.scorers.reference()
        if reference is None:
            self._note("similarity", "No reference clip of the chosen speaker holds speech: "
                                     "speaker similarity is left out of the training curves.")
            return None
        encoder = self.scorers.encoder()
        return _mean([similarity(encoder.embed(audio, rate), reference) for _, audio, rate in clips])

    @staticmethod
    def _ovrl(clips) -> float | None:
        return _mean([dnsmos(audio, rate).ovrl for _, audio, rate in clips])

    def __call__(self, step: int, clips: list[Clip]) -> dict:
        """Means over the clips that could be scored; a key is absent when its scorer is off or no clip had a value."""
        loaded = [(sentence, *_read(Path(path))) for sentence, path in clips if Path(path).is_file()]
        if not loaded:
            return {}
        means = {"val_similarity": self._guarded("similarity", "speaker similarity", lambda: self._similarity(loaded)),
                 "val_ovrl": self._guarded("ovrl", "DNSMOS", lambda: self._ovrl(loaded)),
                 "val_cer": self._guarded("cer", "ASR (CER)", lambda: self._cer(loaded))}
        return {key: round(value, 6) for key, value in means.items() if value is not None}


def live_scorer(config, device: str | None = None, speaker: str | None = None,
                download: bool = True, dataset_id: str | None = None) -> LiveScorer | None:
    """The scorer of a training run from `evaluation:` (None when the training speaks no evaluation
    sentences). `speaker`: whose clips of `dataset_id` are the references (default: the configured
    or picked one of the studio's current dataset).
    `download=False`: an ASR model not already on disk is left out instead of fetched (data-parallel
    ranks cannot wait for a download)."""
    if config.training.eval_sentences == 0:
        return None
    if speaker is None and config.speaker.policy == "manual":
        speaker = config.speaker.name
    usable, how = asr_source(config.evaluation.asr_model)
    if usable and how == "Hugging Face Hub" and not download:
        usable, how = False, (f"ASR model {config.evaluation.asr_model} is not on disk and is not downloaded during "
                              "data-parallel training: CER is left out of the training curves. Run `python -m "
                              "pipeline evaluate` once to fetch it.")
    local_only = usable and how != "Hugging Face Hub"  # cached or a folder: never wait on an unreachable Hub
    return LiveScorer(config.evaluation.asr_model if usable else None, speaker_references(config, speaker, dataset_id),
                      language=config.evaluation.language, device=device, local_files_only=local_only,
                      notes=[] if usable else [how])
