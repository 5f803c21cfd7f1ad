"""What the studio shows about a run, read from its directory: metrics, progress, time, money, audio.

Everything here is a pure read of `runs/<id>/` (layout in pipeline/train/workflow.py and
pipeline/train/loop.py), so a browser reload or a restarted studio sees exactly what a running job
has written. The stages around training are read in `studio.logic.run_stages`, the estimate's side
of the comparison in `studio.logic.run_estimate`, and numbers are worded by `studio.logic.run_format`.
No gradio import.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from pipeline.config import Config, ConfigError, load_config
from pipeline.estimate.cost import charge
from pipeline.train.metrics import read_metrics
from pipeline.data.text import example_sentences
from pipeline.train.runs import PHASES, read_json, read_run
from studio.logic.estimate_gpus import gpu_label
# the split-out modules' names stay importable from here, where the tabs and tests have read them
from studio.logic.run_estimate import estimate_texts, planned_steps, priced_table  # noqa: F401
from studio.logic.run_format import (format_duration, format_money, format_size, hourly_price,  # noqa: F401
                                     money_range, short_source, time_range)
from studio.logic.run_stages import (EVALUATION_SENTENCES, PROGRESS_LINE, STAGES, TRAINING_PHASES,  # noqa: F401
                                     log_lines, stage_progress, stage_started, timestamp)

PHASE_LABELS = {
    "prepare": "Preparing the dataset", "extract": "Extracting VQ codes",
    "lora": "LoRA on all clips", "full": "Full fine-tune on all clips",
    "speaker_lora": "Speaker LoRA on the chosen voice", "merge": "Merging the adapter into the model",
    "evaluate": "Rendering evaluation audio", "done": "Done",
}
NO_PHASE_LABELS = {  # run.json has no phase yet: say why, by status
    "created": "Waiting to start", "starting": "Waiting to start", "running": "Loading the base model",
    "failed": "Failed before the first stage", "cancelled": "Cancelled before the first stage",
}
MODE_LABELS = {"quick_lora": "Quick LoRA", "full_finetune": "Full fine-tune + speaker LoRA",
               # single phases started with `python -m pipeline train --mode …`
               "lora": "LoRA (one phase)", "full": "Full fine-tune (one phase)", "speaker_lora": "Speaker LoRA"}
ACTIVE = ("starting", "running")


# -- metrics ----------------------------------------------------------------------------------
def phase_dir(run_dir: str | Path, phase: str) -> Path:
    return Path(run_dir) / "phases" / phase


def phase_metrics(run_dir: str | Path, phase: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    return read_metrics(phase_dir(run_dir, phase) / "metrics.jsonl")


def run_phases(run: dict) -> list[str]:
    return list(run.get("phases") or PHASES.get(run.get("mode"), []))


def viewed_phase(run_dir: str | Path, run: dict) -> str | None:
    """The training phase to plot: the one running now, else the last one that wrote metrics."""
    phases = run_phases(run)
    if run.get("phase") in phases:
        return run["phase"]
    written = [p for p in phases if (phase_dir(run_dir, p) / "metrics.jsonl").is_file()]
    return written[-1] if written else (phases[0] if phases else None)


def seconds_per_step(train: pd.DataFrame, window: int = 20) -> float | None:
    """Recent wall time per optimizer step (validation included), from the rows' elapsed_s."""
    if len(train) < 2 or "elapsed_s" not in train:
        return None
    recent = train.tail(window + 1)
    steps = float(recent["step"].iloc[-1] - recent["step"].iloc[0])
    seconds = float(recent["elapsed_s"].iloc[-1] - recent["elapsed_s"].iloc[0])
    return seconds / steps if steps > 0 and seconds >= 0 else None


# -- progress, time and money ---------------------------------------------------------------------
@dataclass
class RunProgress:
    run_id: str
    mode: str
    status: str
    phase: str | None
    phase_label: str
    phase_number: int | None        # 1-based among the run's training phases, while in one
    phase_count: int
    step: int
    total_steps: int | None
    fraction: float | None          # of the current training phase or stage
    eta_s: float | None             # of the current training phase or stage (0: finishing it)
    eta_note: str
    elapsed_s: float
    gpu: str
    price_per_hour: float
    spent_usd: float
    message: str
    error: str
    speaker: str | None
    speaker_reason: str
    memory_plan: str = ""           # what pipeline.train.memory_plan chose for the card (GPU runs)
    stage_detail: str = ""          # done so far in a stage outside training, e.g. "12 / 40 clips"
    device: str | None = None       # "cuda…" or "cpu" when known (run_device)
    charge: str = ""                # spent_usd in words; "CPU: no charge" for CPU runs
    gpus: int = 1                   # GPUs of the latest attempt (run.json), each paid for

    @property
    def on_cpu(self) -> bool:
        return self.device is not None and not self.device.startswith("cuda")

    def as_dict(self) -> dict:
        return asdict(self)


def run_config(run_dir: str | Path, fallback: Config | None = None) -> Config | None:
    """The configuration snapshot a run was started with (None if unreadable and no fallback)."""
    try:
        return load_config(Path(run_dir) / "config.yaml")
    except ConfigError:
        return fallback


def elapsed_seconds(run_dir: str | Path, run: dict, now: float | None = None) -> float:
    """Wall time the run has used so far, over all its attempts (what the GPU is billed for)."""
    now = time.time() if now is None else now
    before = float(run.get("elapsed_before_s") or 0.0)
    started = timestamp(run.get("started_at"))
    if run.get("status") in ACTIVE and started:
        return max(0.0, before + now - started)
    if run.get("elapsed_s") is not None:
        return float(run["elapsed_s"])
    if started:  # killed without writing its end: up to the last line it logged
        log = Path(run_dir) / "log.txt"
        last = log.stat().st_mtime if log.is_file() else started
        return max(0.0, before + last - started)
    return before


def run_progress(run_dir: str | Path, run: dict | None = None, config: Config | None = None,
                 now: float | None = None) -> RunProgress:
    """Phase, step, ETA and money spent of a run (`run` = its run.json, read when omitted)."""
    run_dir = Path(run_dir)
    now = time.time() if now is None else now
    run = run if run is not None else read_run(run_dir)
    cfg = run_config(run_dir, config)
    phases = run_phases(run)
    phase, status = run.get("phase"), run.get("status", "unknown")
    shown = viewed_phase(run_dir, run)
    state = (read_json(phase_dir(run_dir, shown) / "state.json", {}) or {}) if shown else {}
    train = phase_metrics(run_dir, shown)[0] if shown else pd.DataFrame(columns=["step"])
    # state.json is written after a step's validation and checkpoint, the metrics row before them
    step = max(int(state.get("step") or 0), int(train["step"].iloc[-1]) if len(train) else 0)
    total = state.get("total_steps")
    fraction = min(1.0, step / total) if total else None
    eta, note, detail = None, "", ""
    if phase in TRAINING_PHASES and total and status in ACTIVE:
        per_step = seconds_per_step(train)
        eta = 0.0 if step >= total else ((total - step) * per_step if per_step is not None else None)
        note = _next_note(phases, phase, cfg)
    elif phase in STAGES and status in ACTIVE:
        fraction, eta, detail = stage_progress(run_dir, run, now)
        note = _next_note(phases, phase, cfg)
    elapsed = elapsed_seconds(run_dir, run, now)
    price = cfg.gpu.price_per_hour if cfg is not None else 0.0
    device = run_device(run_dir, run)
    gpus = run_gpus(run)
    spent, charge_text = charge(elapsed, price * gpus, device)
    label = PHASE_LABELS.get(phase, phase) if phase else NO_PHASE_LABELS.get(status, "Not started")
    return RunProgress(
        run_id=run.get("id") or run_dir.name, mode=run.get("mode", ""), status=status,
        phase=phase, phase_label=label,
        phase_number=phases.index(phase) + 1 if phase in phases else None, phase_count=len(phases),
        step=step, total_steps=total, fraction=fraction, eta_s=eta, eta_note=note, elapsed_s=elapsed,
        gpu=cfg.gpu.type if cfg is not None else "?", price_per_hour=price,
        spent_usd=spent, message=run.get("message") or state.get("message") or "",
        error=run.get("error") or "", speaker=run.get("speaker"), speaker_reason=run.get("speaker_reason") or "",
        memory_plan=state.get("memory_plan") or "", stage_detail=detail, device=device, charge=charge_text,
        gpus=gpus)


def run_gpus(run: dict) -> int:
    """The GPU count run.json records for the latest attempt (1 when none or not a count)."""
    value = run.get("gpus")
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 1


def run_device(run_dir: str | Path, run: dict) -> str | None:
    """Where the run trains ("cuda…" or "cpu"), from its phases' state.json: the device when the
    trainer records it, else the memory plan, which the trainer makes for a GPU only (null on the
    CPU). None when no phase has started: unknown, billed as GPU time."""
    for phase in run_phases(run):
        state = read_json(phase_dir(run_dir, phase) / "state.json", {}) or {}
        if state.get("device"):
            return str(state["device"])
        if "memory_plan" in state:
            return "cuda" if state["memory_plan"] else "cpu"
    return None


def _next_note(phases: list[str], phase: str, cfg: Config | None) -> str:
    """What follows the current phase or stage, in words."""
    if phase in ("prepare", "extract"):
        first = phases[0] if phases else None
        return (f"then phase 1 of {len(phases)}: {PHASE_LABELS.get(first, first)}" if first else "")
    if phase == "merge":
        return "then evaluation audio"
    if phase == "evaluate":
        return ""
    later = phases[phases.index(phase) + 1:] if phase in phases else []
    if later and cfg is not None:
        return (f"then phase {phases.index(later[0]) + 1} of {len(phases)}: {PHASE_LABELS.get(later[0], later[0])} "
                f"(up to {cfg.training.full_finetune.speaker_max_steps} steps, stops early when held-out loss "
                "stalls), merge and evaluation audio")
    return "then merge and evaluation audio (a few minutes)"


# -- after a run: estimate beside actual ---------------------------------------------------------
def actual_numbers(run_dir: str | Path, run: dict) -> dict:
    """Training steps, training seconds and median throughput over the run's phases."""
    steps, seconds, speeds = 0, 0.0, []
    for phase in run_phases(run):
        train, _ = phase_metrics(run_dir, phase)
        if len(train):
            steps += int(train["step"].iloc[-1])
            seconds += float(train["elapsed_s"].iloc[-1]) if "elapsed_s" in train else 0.0
            if "tokens_per_s" in train:
                speeds.extend(train["tokens_per_s"].dropna().tolist())
    return {"steps": steps, "training_s": seconds,
            "tokens_per_s": float(pd.Series(speeds).median()) if speeds else None}


def estimate_vs_actual(run_dir: str | Path, run: dict | None = None, config: Config | None = None) -> pd.DataFrame:
    """Rows time / cost / throughput / steps: the estimate for the run's GPU (a range where early
    stopping decides) beside this run. Raises ValueError when the run's dataset is no longer in the
    workspace."""
    from pipeline.estimate.cost import estimate
    from pipeline.data.dataset import open_dataset

    run_dir = Path(run_dir)
    run = run if run is not None else read_run(run_dir)
    cfg = run_config(run_dir, config)
    if cfg is None or not run.get("dataset"):
        raise ValueError(f"Run {run_dir.name} has no configuration or dataset recorded yet.")
    dataset = open_dataset(cfg, run["dataset"])
    gpus = run_gpus(run)
    table = estimate(cfg, dataset.manifest, run.get("speaker"), prices=priced_table(cfg), gpus=gpus)
    est = estimate_texts(table, cfg.gpu.type, run.get("mode"))
    progress = run_progress(run_dir, run, cfg)
    actual = actual_numbers(run_dir, run)
    speed = actual["tokens_per_s"]
    column = f"Estimate ({gpu_label({'gpu': cfg.gpu.type, 'gpus': gpus})})"
    return pd.DataFrame([
        {"": "Training time", column: est["training"], "This run": format_duration(actual["training_s"])},
        {"": "Wall time (all stages)", column: est["wall"], "This run": format_duration(progress.elapsed_s)},
        {"": f"Cost at {hourly_price(cfg.gpu.price_per_hour, gpus)}", column: est["cost"],
         "This run": progress.charge + ("" if progress.on_cpu else " (wall time)")},
        {"": "Training steps", column: planned_steps(cfg, run.get("mode")), "This run": str(actual["steps"])},
        {"": "Throughput", column: short_source(est["source"]),
         "This run": f"{speed:,.0f} tokens/s (median)" if speed else "—"},
    ])


# -- audio ----------------------------------------------------------------------------------------
def evaluation_audio(run_dir: str | Path, run: dict | None = None) -> list[tuple[str, str]]:
    """(wav path, the sentence it speaks) for the run's rendered evaluation examples."""
    run_dir = Path(run_dir)
    run = run if run is not None else read_run(run_dir)
    paths = [p for p in (run.get("audio") or []) if Path(p).is_file()]
    paths = paths or sorted(str(p) for p in (run_dir / "audio").glob("*.wav"))
    sentences = example_sentences()
    labelled = []
    for path in paths:
        stem = Path(path).stem  # example_<n>
        index = int(stem.rsplit("_", 1)[-1]) - 1 if stem.rsplit("_", 1)[-1].isdigit() else -1
        labelled.append((path, sentences[index] if 0 <= index < len(sentences) else Path(path).name))
    return labelled


def validation_audio(run_dir: str | Path, phase: str) -> list[tuple[int, list[str]]]:
    """(step, wav paths) per evaluation that rendered audio (phases/<phase>/audio/step_<n>/), if any."""
    root = phase_dir(run_dir, phase) / "audio"
    found = []
    for folder in root.glob("step_*"):
        number = folder.name.split("_", 1)[1]
        wavs = sorted(str(p) for p in folder.glob("*.wav"))
        if number.isdigit() and wavs:
            found.append((int(number), wavs))
    return sorted(found)
