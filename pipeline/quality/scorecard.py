"""One model's scorecard over the evaluation sentences: speak, score, summarize, cache.

A model is the base, a merged/full model folder, or a model + LoRA adapters with strengths
(`ModelSpec`). Each sentence is spoken once per (model hash, sentence, seed, generation options)
and kept in the workspace's `eval/cache/` (wav + facts); its scores are kept there too, per
scorer set (ASR model, speaker encoder and references, DNSMOS). Re-evaluating the same model
therefore loads no model at all. Results go to `<out>/scores.parquet` (one row per sentence),
`<out>/summary.json` (means with 95 % bootstrap intervals) and `<out>/audio/NN.wav`; out is
`runs/<id>/eval/<model or step>/` for a run's models, `eval/<label>/` for others.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from pipeline.atomic import replacing, write_text
from pipeline.model.checkpoints import CODEC_CONFIG_NAME, LM_FILES, describe_checkpoint, is_random_weights
from pipeline.quality.asr import ASRError, Transcriber, error_rates
from pipeline.quality.naturalness import dnsmos
from pipeline.quality.signal_checks import check_signal, reached_end
from pipeline.quality.speaker import SpeakerEncoder, centroid, similarity
from pipeline.data.text import normalize

Progress = Callable[[float, str], None] | None
EVAL_DIR_NAME, CACHE_DIR_NAME = "eval", "cache"
SCORES_NAME, SUMMARY_NAME, AUDIO_DIR_NAME = "scores.parquet", "summary.json", "audio"
MODEL_FILES = (*LM_FILES, "codec.pth", CODEC_CONFIG_NAME)
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")  # peft's, as pipeline.model.adapters writes
# summary metrics; True where higher is better
METRICS = {"cer": False, "wer": False, "similarity": True, "ovrl": True, "sig": True, "bak": True,
           "duration_ratio": True, "silence_share": False}
CACHE_VERSION = 1  # bump when a cached row's meaning changes


class EvaluationError(ValueError):
    """A model or sentence set that cannot be evaluated; the message says what to do."""


# -- the model ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSpec:
    model_dir: str
    adapters: tuple[tuple[str, float], ...] = ()
    label: str = ""  # "base", "lora-step_000200", "merged"

    @property
    def name(self) -> str:
        if self.label:
            return self.label
        return Path(self.model_dir).name + "".join(f"+{Path(p).name}x{w:g}" for p, w in self.adapters)

    @property
    def random_weights(self) -> bool:
        return is_random_weights(self.model_dir)

    def description(self) -> str:
        """For labels: the checkpoint's description ("... random weights: produces noise") and adapters."""
        return describe_checkpoint(self.model_dir) + "".join(f" + {Path(p).name} x{w:g}" for p, w in self.adapters)


def parse_adapter(text: str) -> tuple[str, float]:
    """`PATH[:WEIGHT]` from the command line (weight 1 when left out)."""
    path, sep, weight = text.rpartition(":")
    if sep and path:
        try:
            return path, float(weight)
        except ValueError:
            pass
    return text, 1.0


_DIGESTS: dict[tuple, str] = {}


def _file_digest(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        with open(path, "rb") as handle:
            _DIGESTS[key] = hashlib.file_digest(handle, "sha256").hexdigest()
    return _DIGESTS[key]


def _folder_digest(folder: Path, names, what: str) -> dict[str, str]:
    present = {name: _file_digest(folder / name) for name in names if (folder / name).is_file()}
    if not present:
        raise EvaluationError(f"{what} {folder} holds none of {', '.join(names)}; choose a model or adapter folder.")
    return present


def model_hash(spec: ModelSpec) -> str:
    """Content hash of the weights that speak: model files, adapter files and strengths."""
    parts = {"model": _folder_digest(Path(spec.model_dir), MODEL_FILES, "Model folder"),
             "adapters": [[_folder_digest(Path(p), ADAPTER_FILES, "Adapter folder"), float(w)] for p, w in spec.adapters]}
    return _digest(parts)


def _digest(data) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


# -- generation options -------------------------------------------------------------------------
@dataclass(frozen=True)
class SpeakOptions:
    temperature: float = 0.7
    top_p: float = 0.8
    repetition_penalty: float = 1.1
    max_new_tokens: int = 1024
    reference_audio: str | None = None  # a voice prompt (its content hash enters the cache key)
    reference_text: str | None = None

    def identity(self) -> dict:
        data = asdict(self)
        if self.reference_audio:
            data["reference_audio"] = _file_digest(Path(self.reference_audio))
        return data

    def speak_kwargs(self) -> dict:
        return asdict(self)


# -- the scorers --------------------------------------------------------------------------------
class Scorers:
    """ASR (CER/WER), speaker similarity against reference clips, DNSMOS; each loaded on first use.

    `asr`: a model name/folder for `Transcriber.from_pretrained`, a ready `Transcriber`, or None
    (no CER). When the ASR cannot be loaded the scorecard goes on without CER and says why in
    `notes` (those rows are not cached, so a later run with the ASR fills them in).
    """

    def __init__(self, asr: str | Transcriber | None = None, language: str = "fi", speaker: bool = True,
                 references: list[str | Path] = (), naturalness: bool = True, device: str | None = None,
                 asr_loader: Callable[..., Transcriber] = Transcriber.from_pretrained):
        self._asr, self.language, self.speaker, self.naturalness = asr, language, speaker, naturalness
        self.references = [Path(p) for p in references]
        self.device, self._asr_loader = device, asr_loader
        self._encoder: SpeakerEncoder | None = None
        self._centroid: np.ndarray | None = None
        self._centroid_done = False
        self.asr_failed = False
        self.notes: list[str] = []
        self.loads = 0  # models loaded (ASR, speaker encoder): tests check that a cached run loads none
        self.timings: dict[str, float] = {}  # seconds per stage (asr, similarity, dnsmos), loads included

    @property
    def asr_name(self) -> str | None:
        return self._asr.name if isinstance(self._asr, Transcriber) else self._asr

    def identity(self) -> dict:
        return {"asr": self.asr_name, "language": self.language,
                "speaker": SpeakerEncoder.identity if self.speaker else None,
                "references": [_file_digest(p) for p in self.references] if self.speaker else [],
                "dnsmos": "speechmos-0.0.1.1-dnsmos" if self.naturalness else None}

    def transcriber(self) -> Transcriber | None:
        if isinstance(self._asr, str) and not self.asr_failed:
            try:
                self._asr = self._asr_loader(self._asr, language=self.language, device=self.device)
                self.loads += 1
            except ASRError as exc:
                self.asr_failed = True
                self.notes.append(str(exc))
        return self._asr if isinstance(self._asr, Transcriber) else None

    def reference(self) -> np.ndarray | None:
        if not self._centroid_done:
            self._centroid_done = True
            embeddings = [self.encoder().embed_file(p) for p in self.references]
            self._centroid = centroid(embeddings)
            if self.references and self._centroid is None:
                self.notes.append("No reference clip holds speech; speaker similarity is left out.")
        return self._centroid

    def encoder(self) -> SpeakerEncoder:
        if self._encoder is None:
            self._encoder = SpeakerEncoder(self.device)
            self.loads += 1
        return self._encoder

    def score(self, clips: list[tuple[np.ndarray, int, str]], progress: Progress = None) -> list[dict]:
        """Scores of (audio, sample rate, sentence) clips: cer, wer, hypothesis, similarity, sig, bak, ovrl."""
        nan = float("nan")
        rows = [{"hypothesis": "", "cer": nan, "wer": nan, "similarity": nan, "sig": nan, "bak": nan,
                 "ovrl": nan, "p808": nan} for _ in clips]
        with self._timed("asr"):
            asr = self.transcriber() if self.asr_name else None
            if asr is not None and clips:
                if progress:
                    progress(0.0, f"transcribing {len(clips)} clips with {asr.name}")
                for row, text, (_, _, sentence) in zip(rows, asr.transcribe([(a, r) for a, r, _ in clips]), clips):
                    rates = error_rates(sentence, text)
                    row.update(hypothesis=text, cer=rates.cer, wer=rates.wer)
        with self._timed("similarity"):
            reference = self.reference() if self.speaker and self.references else None
        for i, (row, (audio, rate, _)) in enumerate(zip(rows, clips)):
            if progress:
                progress((i + 1) / (len(clips) + 1), f"speaker similarity and DNSMOS: clip {i + 1}/{len(clips)}")
            if reference is not None:
                with self._timed("similarity"):
                    row["similarity"] = similarity(self.encoder().embed(audio, rate), reference)
            if self.naturalness:
                with self._timed("dnsmos"):
                    mos = dnsmos(audio, rate)
                row.update(sig=mos.sig, bak=mos.bak, ovrl=mos.ovrl, p808=mos.p808)
        return rows

    @contextmanager
    def _timed(self, stage: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - started

    @property
    def cacheable(self) -> bool:
        return not self.asr_failed


# -- files --------------------------------------------------------------------------------------
def _write_json(path: Path, data) -> Path:
    return write_text(path, json.dumps(data, indent=1, ensure_ascii=False, default=_json_default, allow_nan=False))


def _json_default(value):
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    return str(value)


def _clean(data):
    """JSON has no NaN: missing scores become null."""
    if isinstance(data, dict):
        return {k: _clean(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_clean(v) for v in data]
    if isinstance(data, (float, np.floating)) and not math.isfinite(float(data)):
        return None
    return data


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_wav(path: Path, audio: np.ndarray, sample_rate: int) -> Path:
    import soundfile as sf

    with replacing(path) as tmp:
        sf.write(str(tmp), audio, sample_rate, subtype="PCM_16", format="WAV")
    return path


def _read_wav(path: Path) -> tuple[np.ndarray, int]:
    import soundfile as sf

    audio, rate = sf.read(str(path), dtype="float32")
    return audio, int(rate)


def cache_dir(config) -> Path:
    return Path(config.workspace) / EVAL_DIR_NAME / CACHE_DIR_NAME


def slug(text: str) -> str:
    """A folder name from a label: safe characters only, at most 80."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")[:80] or "model"


def eval_dir(config, label: str, run_id: str | None = None) -> Path:
    """runs/<id>/eval/<label> for a run's models, else the workspace's eval/<label>."""
    root = Path(config.runs_dir) / run_id if run_id else Path(config.workspace)
    return root / EVAL_DIR_NAME / slug(label)


# -- statistics ---------------------------------------------------------------------------------
def bootstrap_interval(values, confidence: float = 0.95, resamples: int = 2000, seed: int = 0) -> dict | None:
    """Mean and percentile-bootstrap interval of the finite values; None when there is none."""
    data = np.asarray([v for v in values if v is not None and math.isfinite(float(v))], dtype=np.float64)
    if data.size == 0:
        return None
    mean = float(data.mean())
    if data.size == 1:
        return {"mean": mean, "low": mean, "high": mean, "n": 1}
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(resamples, data.size))].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return {"mean": mean, "low": float(low), "high": float(high), "n": int(data.size)}


# -- the evaluation -----------------------------------------------------------------------------
@dataclass
class Scorecard:
    out_dir: Path
    rows: pd.DataFrame
    summary: dict
    spoken: int = 0  # sentences synthesized by this call (0: all from the cache)
    scored: int = 0  # clips scored by this call
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # seconds: load, speak, asr, similarity, dnsmos


def _speak_all(spec: ModelSpec, missing: list[tuple[int, str, str]], sentences: list[str], seed: int,
               options: SpeakOptions, cache: Path, synth_factory, device, progress: Progress) -> dict[str, float]:
    """Speak the sentences not in the cache (one model load) and store wav + facts under their keys.
    Returns the seconds spent loading and speaking."""
    if not missing:
        return {}
    if progress:
        progress(0.0, f"loading {spec.name}")
    started = time.perf_counter()
    synth = synth_factory(spec.model_dir, device=device, adapters=[(p, w) for p, w in spec.adapters] or None)
    loaded = time.perf_counter()
    for n, (index, sentence, key) in enumerate(missing):
        if progress:
            progress(n / len(missing), f"speaking sentence {index + 1}/{len(sentences)}: {sentence[:50]}")
        result = synth.speak(sentence, seed=seed, **options.speak_kwargs())
        ended = reached_end([c.shape[1] for c in result.codes], options.max_new_tokens)
        checks = check_signal(result.audio, result.sample_rate, sentence, ended=ended)
        _write_wav(cache / f"{key}.wav", result.audio, result.sample_rate)
        _write_json(cache / f"{key}.json", _clean({
            "sentence": sentence, "normalized_text": result.normalized_text, "seed": seed, "frames": result.frames,
            "sample_rate": result.sample_rate, **asdict(checks), "flags": "; ".join(checks.flags)}))
    return {"load": loaded - started, "speak": time.perf_counter() - loaded}


def evaluate(spec: ModelSpec, out_dir: str | Path, cache: str | Path, sentences: list[str], seed: int = 1234,
             options: SpeakOptions = SpeakOptions(), scorers: Scorers | None = None, progress: Progress = None,
             synth_factory=None, device: str | None = None) -> Scorecard:
    """Speak and score `sentences` with `spec`; writes scores.parquet, summary.json and audio/ in out_dir."""
    if not sentences:
        raise EvaluationError("No evaluation sentences: assets/examples_fi.txt is missing or empty.")
    if synth_factory is None:
        from pipeline.generate.synth import Synthesizer as synth_factory
    scorers = scorers or Scorers()
    out_dir, cache = Path(out_dir), Path(cache)
    digest = model_hash(spec)
    speak_id = options.identity()
    score_id = _digest(scorers.identity())[:16]
    keys = [_digest([CACHE_VERSION, digest, sentence, seed, speak_id])[:32] for sentence in sentences]
    step = (lambda lo, hi: (lambda f, m: progress(lo + (hi - lo) * f, m))) if progress else (lambda lo, hi: None)

    missing = [(i, s, k) for i, (s, k) in enumerate(zip(sentences, keys))
               if not ((cache / f"{k}.wav").is_file() and _read_json(cache / f"{k}.json"))]
    timings = _speak_all(spec, missing, sentences, seed, options, cache, synth_factory, device, step(0.0, 0.6))
    before = dict(scorers.timings)

    to_score = [i for i, k in enumerate(keys) if _read_json(cache / f"{k}-{score_id}.json") is None]
    clips = {i: _read_wav(cache / f"{keys[i]}.wav") for i in to_score}
    scores = scorers.score([(*clips[i], sentences[i]) for i in to_score], step(0.6, 0.95)) if to_score else []
    fresh = dict(zip(to_score, scores))
    timings |= {k: v - before.get(k, 0.0) for k, v in scorers.timings.items() if v != before.get(k)}
    if scorers.cacheable:
        for i, row in fresh.items():
            _write_json(cache / f"{keys[i]}-{score_id}.json", _clean(row))

    rows = []
    for i, (sentence, key) in enumerate(zip(sentences, keys)):
        facts = _read_json(cache / f"{key}.json") or {}
        score = fresh.get(i) or _read_json(cache / f"{key}-{score_id}.json") or {}
        audio = out_dir / AUDIO_DIR_NAME / f"{i + 1:02d}.wav"
        source = cache / f"{key}.wav"
        if not audio.is_file() or audio.stat().st_size != source.stat().st_size:
            with replacing(audio) as tmp:
                shutil.copyfile(source, tmp)
        rows.append({"index": i + 1, "sentence": sentence, "normalized_text": facts.get("normalized_text") or normalize(sentence),
                     "seed": seed, "key": key, "audio_path": str(audio), **{k: v for k, v in facts.items()
                                                                            if k not in ("sentence", "normalized_text", "seed")},
                     **score})
    frame = pd.DataFrame(rows).astype({"flags": str, "hypothesis": str}, errors="ignore")
    for column in METRICS:
        if column in frame:
            frame[column] = pd.to_numeric(frame[column], errors="coerce")
    summary = _summary(spec, digest, frame, seed, options, scorers)
    with replacing(out_dir / SCORES_NAME) as tmp:
        frame.to_parquet(tmp, index=False)
    _write_json(out_dir / SUMMARY_NAME, _clean(summary))
    if progress:
        progress(1.0, f"{spec.name}: {len(missing)} spoken, {len(to_score)} scored, {len(sentences)} sentences")
    return Scorecard(out_dir, frame, summary, len(missing), len(to_score), list(scorers.notes), timings)


def _summary(spec: ModelSpec, digest: str, frame: pd.DataFrame, seed: int, options: SpeakOptions,
             scorers: Scorers) -> dict:
    flagged = frame["flags"].fillna("").astype(str) if "flags" in frame else pd.Series([""] * len(frame))
    return {
        "model": spec.name, "model_dir": str(spec.model_dir), "adapters": [list(a) for a in spec.adapters],
        "model_hash": digest, "description": spec.description(), "random_weights": spec.random_weights,
        "sentences": len(frame), "seed": seed, "options": asdict(options), "scorers": scorers.identity(),
        "metrics": {m: bootstrap_interval(frame[m]) if m in frame else None for m in METRICS},
        "higher_is_better": METRICS, "flagged": int((flagged != "").sum()),
        "cut_at_max_length": int((~frame["ended"].astype(bool)).sum()) if "ended" in frame else 0,
        "silent": int(flagged.str.contains("silent").sum()), "notes": list(scorers.notes),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def read_scorecard(out_dir: str | Path) -> tuple[pd.DataFrame, dict] | None:
    """(rows, summary) written by `evaluate`, or None when there is none (yet)."""
    out_dir = Path(out_dir)
    summary = _read_json(out_dir / SUMMARY_NAME)
    if summary is None or not (out_dir / SCORES_NAME).is_file():
        return None
    try:
        return pd.read_parquet(out_dir / SCORES_NAME), summary
    except (OSError, ValueError):
        return None
