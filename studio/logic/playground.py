"""The Playground's logic: models on offer, warm synthesizers, A/B bookkeeping.

Models are found on disk, never registered: the base model, each run's merged model and phase-1
full models (`run.json` artifacts, `runs/<id>/artifacts/merged`, model dirs under
`runs/<id>/phases/*/checkpoints/`). Adapters are the peft dirs under `runs/<id>/artifacts/` and
`runs/<id>/phases/*/checkpoints/`; any number stack on a model, each with a weight, unmerged.
A/B votes are JSON lines in `runs/<id>/preferences.jsonl` of each run compared (else
`workspace/preferences.jsonl`). The runs' downloads are studio.logic.downloads."""

from __future__ import annotations

import gc
import json
import random
import re
import threading
import time
import uuid
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from pipeline.model.checkpoints import LM_FILES, describe_checkpoint, is_random_weights
from pipeline.config import PROJECT_ROOT
from pipeline.quality.agreement import model_id
from pipeline.generate.streaming import AudioPiece, stream_audio
from pipeline.generate.synth import SpeechResult, SpeechStep, Synthesizer, save_wav
from pipeline.train.runs import read_run
from studio.logic.playground_base import ADAPTER_FILES, PlaygroundError, has_files, run_dirs

MODEL_FILES = (*LM_FILES, "codec.pth")
PREFERENCES_NAME = "preferences.jsonl"
OUTPUT_DIR_NAME = "playground"  # workspace/playground/*.wav: generated speech, newest kept
KEEP_OUTPUTS = 60
MAX_TEXT_CHARS = 1000  # ~1 min of speech, ~20 chunks: longer texts belong in a batch job, not a web request
LOCAL_MODELS_DIR = PROJECT_ROOT / "checkpoints"  # other model folders offered beside the base (e.g. tiny-random)
TINY_MODEL_DIR = LOCAL_MODELS_DIR / "tiny-random"  # `python -m pipeline tiny-model`'s default output
Adapters = list[tuple[str, float]]


# -- what is on offer -------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelOption:
    path: str  # checkpoint directory: the UI's value
    kind: str  # base | local | merged | phase1
    title: str  # "Run <id> · merged"
    label: str  # title + describe_checkpoint ("…random weights: produces noise" for tiny models)
    run_id: str | None = None
    random_weights: bool = False


@dataclass(frozen=True)
class AdapterOption:
    path: str
    label: str
    run_id: str | None = None
    where: str = ""  # inside its run: "lora step 200", "artifacts/adapter"


def _checkpoint_dirs(run_dir: Path) -> list[Path]:
    return sorted(p for p in run_dir.glob("phases/*/checkpoints/*") if p.is_dir() and not p.name.endswith(".tmp"))


def _where(run_dir: Path, path: Path) -> str:
    """'lora step 200' for a training checkpoint, else the path inside the run."""
    inside = path.resolve().relative_to(run_dir.resolve()).as_posix() if path.resolve().is_relative_to(
        run_dir.resolve()) else path.name
    match = re.fullmatch(r"phases/(\w+)/checkpoints/step_0*(\d+)", inside)
    return f"{match[1]} step {match[2]}" if match else inside


def list_models(config) -> list[ModelOption]:
    """Every model directory the Playground can load: base first, then runs newest first."""
    options: dict[Path, ModelOption] = {}

    def add(path: Path, kind: str, title: str, run_id: str | None = None) -> None:
        path = Path(path)
        if has_files(path, MODEL_FILES) and path.resolve() not in options:
            options[path.resolve()] = ModelOption(str(path), kind, title, f"{title} · {describe_checkpoint(path)}",
                                                  run_id, is_random_weights(path))

    add(config.base_model_dir, "base", f"Base model {config.base_model.repo}")
    for path in sorted(LOCAL_MODELS_DIR.glob("*")) if LOCAL_MODELS_DIR.is_dir() else []:
        random_weights = is_random_weights(path)
        add(path, "local", "Tiny offline model" if random_weights else f"Local model {path.name}")
    for run_dir in run_dirs(config):
        recorded = read_run(run_dir).get("artifacts") or {}
        for path in (recorded.get("merged"), run_dir / "artifacts" / "merged"):
            if path:
                add(Path(path), "merged", f"Run {run_dir.name} · merged", run_dir.name)
        if recorded.get("phase1_model"):
            add(Path(recorded["phase1_model"]), "phase1", f"Run {run_dir.name} · phase-1 model", run_dir.name)
        for path in _checkpoint_dirs(run_dir):
            add(path, "phase1", f"Run {run_dir.name} · phase-1 model, {_where(run_dir, path)}", run_dir.name)
    return list(options.values())


def list_adapters(config) -> list[AdapterOption]:
    """Every LoRA adapter (peft format) of every run, newest run first."""
    options: dict[Path, AdapterOption] = {}

    def add(run_dir: Path, path: Path, final: str = "") -> None:
        if has_files(path, ADAPTER_FILES) and path.resolve() not in options:
            where = _where(run_dir, path)
            options[path.resolve()] = AdapterOption(str(path), f"{run_dir.name} · {where}{final}", run_dir.name, where)

    for run_dir in run_dirs(config):
        final = (read_run(run_dir).get("artifacts") or {}).get("adapter")
        if final:
            add(run_dir, Path(final), " · final")
        for path in [*sorted((run_dir / "artifacts").glob("*")), *reversed(_checkpoint_dirs(run_dir))]:
            add(run_dir, path)
    return list(options.values())


def no_model_help(config) -> str:
    return (f"No model yet. Download the base model with ./setup.sh (set HF_TOKEN to a Hugging Face "
            f"token whose account accepted the licence at https://huggingface.co/{config.base_model.repo}; "
            f"it goes to {config.base_model_dir}), or train a run in the Training tab. To try the studio "
            f"offline, create the tiny offline model (random weights: it produces noise, not speech) with "
            f"`python -m pipeline tiny-model` or the button below.")


def create_tiny_model() -> ModelOption:
    """Write the tiny random-weights model to TINY_MODEL_DIR (kept when already there)."""
    from pipeline.model.tiny_checkpoint import write_tiny_checkpoint

    if not has_files(TINY_MODEL_DIR, MODEL_FILES):
        write_tiny_checkpoint(TINY_MODEL_DIR)
    return ModelOption(str(TINY_MODEL_DIR), "local", "Tiny offline model",
                       f"Tiny offline model · {describe_checkpoint(TINY_MODEL_DIR)}", None, True)


def check_text(text: str | None) -> str:
    """The text to speak, refused with the limit named when it is too long for one request."""
    text = text or ""
    if len(text) > MAX_TEXT_CHARS:
        raise PlaygroundError(f"The text has {len(text):,} characters; the Playground speaks at most "
                              f"{MAX_TEXT_CHARS:,} at a time. Shorten it or split it into several generations.")
    return text


def resolve_model(config, path: str | None) -> ModelOption:
    """The listed model whose directory is `path` (refuses paths that are not on offer)."""
    models = list_models(config)
    if not models:
        raise PlaygroundError(no_model_help(config))
    if not path:
        raise PlaygroundError("Choose a model first.")
    for option in models:
        if Path(option.path).resolve() == Path(path).resolve():
            return option
    raise PlaygroundError(f"Model {path} is not available (deleted or not a complete checkpoint); refresh the list.")


def resolve_adapters(config, chosen: Adapters) -> list[tuple[AdapterOption, float]]:
    """Listed adapters with their weights; empty paths are skipped, weights must be in [0, 1.5]."""
    known = {Path(a.path).resolve(): a for a in list_adapters(config)}
    resolved = []
    for path, weight in chosen:
        if not path:
            continue
        option = known.get(Path(path).resolve())
        if option is None:
            raise PlaygroundError(f"Adapter {path} is not available (deleted or not a peft adapter); refresh the list.")
        if not 0.0 <= float(weight) <= 1.5:
            raise PlaygroundError(f"Adapter strength must be between 0 and 1.5, got {weight}.")
        if any(a.path == option.path for a, _ in resolved):
            raise PlaygroundError(f"Adapter {option.label} is chosen twice; pick it once with the strength you want.")
        resolved.append((option, float(weight)))
    return resolved


# -- warm synthesizers ------------------------------------------------------------------------
def _set_adapter_weights(synth: Synthesizer, weights: list[float]) -> None:
    """Re-weight the stacked adapters in place (names as pipeline.model.adapters.load_adapters gives them)."""
    from peft.tuners.lora import LoraLayer

    for module in synth.model.modules():
        if isinstance(module, LoraLayer):
            for i, weight in enumerate(weights):
                module.set_scale(f"adapter_{i}", float(weight))
    synth.adapters = [(path, w) for (path, _), w in zip(synth.adapters, weights)]
    synth.weights_changed()


@dataclass
class _Entry:
    synth: Synthesizer
    lock: threading.Lock = field(default_factory=threading.Lock)


class SynthCache:
    """At most `size` loaded Synthesizers, least recently used evicted first.

    Keyed by (model dir, adapter dirs); the adapters' weights are applied on each use, so moving a
    strength slider re-weights the warm model instead of loading it again. One request at a time
    uses a given Synthesizer (its KV caches are per model).
    """

    def __init__(self, size: int = 2, factory: Callable[..., Synthesizer] = Synthesizer, device: str | None = None,
                 decode_options=None):
        self.size, self.factory, self.device = max(1, size), factory, device
        self.decode_options = decode_options
        self._entries: OrderedDict[tuple, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0  # how many Synthesizers were built (tests, logs)

    def __len__(self) -> int:
        return len(self._entries)

    @contextmanager
    def use(self, model_dir: str | Path, adapters: Adapters = ()) -> Iterator[Synthesizer]:
        adapters = [(str(p), float(w)) for p, w in adapters]
        key = (str(Path(model_dir).resolve()), tuple(str(Path(p).resolve()) for p, _ in adapters))
        with self._lock:  # loads happen one at a time; generation on other models goes on meanwhile
            entry = self._entries.get(key)
            if entry is None:
                self._evict(keep=self.size - 1)  # make room first: two models, never three, in memory
                extra = {"decode_options": self.decode_options} if self.decode_options is not None else {}
                entry = _Entry(self.factory(model_dir, device=self.device, adapters=adapters or None, **extra))
                self.loads += 1
                self._entries[key] = entry
            self._entries.move_to_end(key)
        with entry.lock:
            if adapters and [w for _, w in entry.synth.adapters] != [w for _, w in adapters]:
                _set_adapter_weights(entry.synth, [w for _, w in adapters])
            yield entry.synth

    def _evict(self, keep: int) -> None:
        evicted = False
        for old in list(self._entries):
            if len(self._entries) <= keep:
                break
            if self._entries[old].lock.acquire(blocking=False):  # never drop a model mid-generation
                self._entries.pop(old).lock.release()
                evicted = True
        if evicted:
            gc.collect()
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def _slug(text: str, limit: int) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].strip("-")


def output_name(model: ModelOption, adapters: list[tuple[AdapterOption, float]]) -> str:
    """A short file-name part naming the model and each stacked adapter with its strength:
    'base__20250101-120000-quick-lora-lora-step-4-x0.8' (URL-safe: it ends up in download links)."""
    name = _slug(model.run_id or model.kind, 40)
    for adapter, weight in adapters:
        where = _slug(adapter.where or Path(adapter.path).name, 20)
        name += f"__{_slug(adapter.run_id or '', 30)}-{where}" + (f"-x{weight:g}" if weight != 1 else "")
    return name[:150]


def speak_stream(config, cache: SynthCache, model_path: str, adapters: Adapters, text: str,
                 file_name: str | None = None, live: bool = False,
                 **options) -> Iterator[tuple[SpeechStep | AudioPiece, Path | None]]:
    """Speak `text` with a listed model (+ adapters) chunk by chunk: yields (step, None) before each
    chunk and (step with result, wav path) at the end, into workspace/playground/<time>-<name>-<id>.wav
    (name: `file_name`, else the model and adapters; blind tests pass a neutral one). `live`: the
    steps are pipeline.generate.streaming.stream_audio's pieces, with the audio while it is sampled.
    A caller that stops iterating stops the work before the next chunk (`live`: block of frames)."""
    text = check_text(text)
    model = resolve_model(config, model_path)
    resolved = resolve_adapters(config, adapters)
    chosen = [(a.path, w) for a, w in resolved]
    with cache.use(model.path, chosen) as synth:
        for step in (stream_audio(synth, text, **options) if live else synth.stream(text, **options)):
            if step.result is None:
                yield step, None
                continue
            out_dir = Path(config.workspace) / OUTPUT_DIR_NAME
            slug = _slug(file_name, 40) if file_name else output_name(model, resolved)
            stamp = time.strftime("%Y%m%d-%H%M%S")
            path = save_wav(step.result, out_dir / f"{stamp}-{slug}-{uuid.uuid4().hex[:6]}.wav")
            for old in sorted(out_dir.glob("*.wav"))[:-KEEP_OUTPUTS]:  # names start with the time
                old.unlink(missing_ok=True)
            yield step, path


def speak_to_file(config, cache: SynthCache, model_path: str, adapters: Adapters, text: str,
                  progress=None, file_name: str | None = None, **options) -> tuple[SpeechResult, Path]:
    """`speak_stream` to the end: (result, wav path)."""
    for step, path in speak_stream(config, cache, model_path, adapters, text, file_name=file_name, **options):
        if path is not None:
            return step.result, path
        if progress:
            progress(step.index / step.total, step.message)
    raise AssertionError("speak_stream ended without a file")  # Synthesizer.stream always ends with a result


# -- A/B and blind tests ------------------------------------------------------------------------
def vote_roots(config) -> tuple[Path, Path]:
    """Where a vote's model paths are relative to (the same rule as the scorecards' model ids)."""
    return Path(config.workspace), PROJECT_ROOT


def model_identity(config, model: ModelOption, adapters: list[tuple[AdapterOption, float]]) -> dict:
    """What a preference line records about one side: a stable id string, a label and its runs."""
    ident = model_id(model.path, [(a.path, w) for a, w in adapters], vote_roots(config))
    label = model.label + "".join(f" + {a.label} x{w:g}" for a, w in adapters)
    name = model.title + "".join(f" + {a.label} x{w:g}" for a, w in adapters)
    runs = [r for r in dict.fromkeys([model.run_id, *(a.run_id for a, _ in adapters)]) if r]
    return {"id": ident, "name": name, "label": label, "runs": runs}


def new_trial(text: str, seed: int, a: dict, b: dict, blind: bool, rng: random.Random | None = None) -> dict:
    """One comparison; `order` says which model plays as sample 1 and 2 (random when blind)."""
    if a["id"] == b["id"]:
        raise PlaygroundError("Models A and B are the same; choose two different models (or strengths) to compare.")
    order = ["A", "B"]
    if blind:
        (rng or random.SystemRandom()).shuffle(order)
    return {"trial": uuid.uuid4().hex, "text": text, "seed": int(seed), "blind": bool(blind),
            "models": {"A": a, "B": b}, "order": order, "choice": None}


def preference_paths(config, trial: dict) -> list[Path]:
    runs = dict.fromkeys(r for side in ("A", "B") for r in trial["models"][side]["runs"])
    return [Path(config.runs_dir) / r / PREFERENCES_NAME for r in runs] or [Path(config.workspace) / PREFERENCES_NAME]


def record_preference(config, trial: dict, sample: int | None) -> dict:
    """Record the listener's pick: sample 1 or 2 (as played), or None for no preference."""
    if trial.get("choice"):
        raise PlaygroundError("This comparison already has a vote; generate a new pair to vote again.")
    if sample not in (1, 2, None):
        raise PlaygroundError(f"Vote for sample 1 or 2 (or no preference), not {sample!r}.")
    choice = trial["order"][sample - 1] if sample else "tie"
    models = trial["models"]
    record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "trial": trial["trial"], "text": trial["text"],
              "seed": trial["seed"], "blind": trial["blind"], "model_a": models["A"]["id"],
              "model_b": models["B"]["id"], "choice": choice,
              "preferred": models[choice]["id"] if choice != "tie" else None, "order": trial["order"]}
    line = json.dumps(record, ensure_ascii=False) + "\n"
    for path in preference_paths(config, trial):
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:  # one short append per vote
            f.write(line)
    trial["choice"] = choice
    return record


def read_preferences(paths: list[Path]) -> list[dict]:
    """Records of these files, each trial once (a vote is written to every run it involves)."""
    records: dict = {}
    for path in (Path(p) for p in paths if Path(p).is_file()):
        try:  # a line torn inside a character (a crash mid-write) is not valid UTF-8: replaced, then skipped
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue  # unreadable: its votes are not counted rather than the tab failing
        for line in text.splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a torn line from a crash: skip it
            if isinstance(record, dict):
                records.setdefault(record.get("trial"), record)
    return list(records.values())


def preference_tally(config, trial: dict) -> dict:
    """Votes so far for this pair of models (either order): wins per model id, ties, total."""
    a, b = trial["models"]["A"]["id"], trial["models"]["B"]["id"]
    tally = {a: 0, b: 0, "tie": 0, "total": 0}
    for record in read_preferences(preference_paths(config, trial)):
        if {record.get("model_a"), record.get("model_b")} != {a, b}:
            continue
        tally["total"] += 1
        preferred = record.get("preferred")
        tally[preferred if preferred in (a, b) else "tie"] += 1
    return tally
