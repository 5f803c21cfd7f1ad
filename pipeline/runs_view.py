"""What the studio shows about a run, read from its directory: metrics, progress, time, money.

Everything here is a pure read of `runs/<id>/` (layout in pipeline/workflow.py and
pipeline/train.py), so a browser reload or a restarted studio sees exactly what a running job
has written. No gradio import.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd

from pipeline.config import Config, ConfigError, load_config
from pipeline.text import example_sentences
from pipeline.workflow import PHASES, read_json, read_run

TRAINING_PHASES = {"lora", "full", "speaker_lora"}
PHASE_LABELS = {
    "prepare": "Preparing the dataset", "extract": "Extracting VQ codes",
    "lora": "LoRA on all clips", "full": "Full fine-tune on all clips (phase 1)",
    "speaker_lora": "Speaker LoRA (phase 3)", "merge": "Merging the adapter into the model",
    "evaluate": "Rendering evaluation audio", "done": "Done",
}
MODE_LABELS = {"quick_lora": "Quick LoRA", "full_finetune": "Full fine-tune + speaker LoRA"}
ACTIVE = ("starting", "running")


# -- formatting shared by both tabs ---------------------------------------------------------------
def format_duration(seconds: float | None) -> str:
    """`3 h 58 min`, `12 min`, `45 s`; an em dash when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "—"
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = seconds / 60
    if minutes < 60:
        return f"{minutes:.0f} min" if minutes >= 10 else f"{minutes:.1f} min"
    hours, rest = divmod(round(minutes), 60)
    return f"{hours} h {rest:02d} min"


def format_money(usd: float | None) -> str:
    if usd is None or not math.isfinite(usd):
        return "—"
    return f"${usd:,.2f}" if usd >= 0.01 or usd == 0 else "< $0.01"


def format_size(gb: float) -> str:
    return f"{gb:.1f} GB" if gb >= 1 else f"{gb * 1000:.0f} MB"


def short_source(text: str) -> str:
    """`estimated: <long reference> × 0.35` → `estimated: reference × 0.35` (for narrow tables)."""
    if text.startswith("estimated:") and "×" in text:
        return "estimated: reference × " + text.rsplit("×", 1)[1].strip()
    return text


# -- metrics ----------------------------------------------------------------------------------
def read_metrics(path: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train rows, validation rows) of a metrics.jsonl, sorted by step; empty frames when absent.

    The file is appended to while we read it: a half-written last line is skipped.
    """
    rows = []
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(row, dict) and "step" in row:
                    rows.append(row)
    except OSError:
        pass
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=["step"]), pd.DataFrame(columns=["step"])
    kinds = frame.get("kind", pd.Series("train", index=frame.index))
    train = frame[kinds != "val"].dropna(axis=1, how="all").sort_values("step", kind="stable")
    val = frame[kinds == "val"].dropna(axis=1, how="all").sort_values("step", kind="stable")
    return train.reset_index(drop=True), val.reset_index(drop=True)


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
    fraction: float | None          # of the current training phase
    eta_s: float | None             # of the current training phase
    eta_note: str
    elapsed_s: float
    gpu: str
    price_per_hour: float
    spent_usd: float
    message: str
    error: str
    speaker: str | None
    speaker_reason: str
    memory_plan: str = ""           # what pipeline.memory_plan chose for the card (GPU runs)

    def as_dict(self) -> dict:
        return asdict(self)


def run_config(run_dir: str | Path, fallback: Config | None = None) -> Config | None:
    """The configuration snapshot a run was started with (None if unreadable and no fallback)."""
    try:
        return load_config(Path(run_dir) / "config.yaml")
    except ConfigError:
        return fallback


def _timestamp(value) -> float | None:
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return datetime.fromisoformat(str(value)).timestamp()
    except (TypeError, ValueError):
        return None


def elapsed_seconds(run_dir: str | Path, run: dict, now: float | None = None) -> float:
    """Wall time the run has used so far, over all its attempts (what the GPU is billed for)."""
    now = time.time() if now is None else now
    before = float(run.get("elapsed_before_s") or 0.0)
    started = _timestamp(run.get("started_at"))
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
    run = run if run is not None else read_run(run_dir)
    cfg = run_config(run_dir, config)
    phases = run_phases(run)
    phase = run.get("phase")
    shown = viewed_phase(run_dir, run)
    state = (read_json(phase_dir(run_dir, shown) / "state.json", {}) or {}) if shown else {}
    train = phase_metrics(run_dir, shown)[0] if shown else pd.DataFrame(columns=["step"])
    step = int(state.get("step") or (train["step"].iloc[-1] if len(train) else 0))
    total = state.get("total_steps")
    fraction = min(1.0, step / total) if total else None
    eta, note = None, ""
    if phase in TRAINING_PHASES and total and run.get("status") in ACTIVE:
        per_step = seconds_per_step(train)
        eta = (total - step) * per_step if per_step is not None else None
        later = phases[phases.index(phase) + 1:] if phase in phases else []
        if later and cfg is not None:
            note = (f"then {PHASE_LABELS.get(later[0], later[0])} (up to "
                    f"{cfg.training.full_finetune.speaker_max_steps} steps, stops early when held-out "
                    "loss stalls), merge and evaluation audio")
        else:
            note = "then merge and evaluation audio (a few minutes)"
    elapsed = elapsed_seconds(run_dir, run, now)
    price = cfg.gpu.price_per_hour if cfg is not None else 0.0
    return RunProgress(
        run_id=run.get("id") or run_dir.name, mode=run.get("mode", ""), status=run.get("status", "unknown"),
        phase=phase, phase_label=PHASE_LABELS.get(phase, phase or "Waiting to start"),
        phase_number=phases.index(phase) + 1 if phase in phases else None, phase_count=len(phases),
        step=step, total_steps=total, fraction=fraction, eta_s=eta, eta_note=note, elapsed_s=elapsed,
        gpu=cfg.gpu.type if cfg is not None else "?", price_per_hour=price,
        spent_usd=elapsed / 3600 * price, message=run.get("message") or state.get("message") or "",
        error=run.get("error") or "", speaker=run.get("speaker"), speaker_reason=run.get("speaker_reason") or "",
        memory_plan=state.get("memory_plan") or "",
    )


# -- after a run: estimate beside actual ---------------------------------------------------------
def priced_table(config: Config) -> dict:
    """The GPU price table with the configured hourly price for the configured GPU."""
    from pipeline.cost import load_price_table

    prices = load_price_table()
    row = prices.get("gpus", {}).get(config.gpu.type)
    if row is not None:
        row["price_per_hour"] = config.gpu.price_per_hour
    return prices


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
    """Rows time / cost / throughput / steps: the estimate for the configured GPU beside this run.

    Raises ValueError when the run's dataset is no longer in the workspace.
    """
    from pipeline.cost import estimate
    from pipeline.dataset import open_dataset

    run_dir = Path(run_dir)
    run = run if run is not None else read_run(run_dir)
    cfg = run_config(run_dir, config)
    if cfg is None or not run.get("dataset"):
        raise ValueError(f"Run {run_dir.name} has no configuration or dataset recorded yet.")
    dataset = open_dataset(cfg, run["dataset"])
    table = estimate(cfg, dataset.manifest, run.get("speaker"), prices=priced_table(cfg))
    row = table[(table["gpu"] == cfg.gpu.type) & (table["mode"] == run.get("mode"))]
    progress = run_progress(run_dir, run, cfg)
    actual = actual_numbers(run_dir, run)
    if row.empty:
        est = {"time": "—", "cost": "—", "source": f"{cfg.gpu.type} is not in the price table"}
    else:
        r = row.iloc[0]
        tiny = r["cost_usd"] < 0.01 and r["minutes"] > 0  # rounded to 0.00 by the estimate
        est = {"time": format_duration(r["minutes"] * 60), "cost": "< $0.01" if tiny else format_money(r["cost_usd"]),
               "source": r["throughput_source"]}
    speed = actual["tokens_per_s"]
    column = f"Estimate ({cfg.gpu.type})"
    return pd.DataFrame([
        {"": "Training time", column: est["time"], "This run": format_duration(actual["training_s"])},
        {"": "Wall time (all stages)", column: "not estimated",
         "This run": format_duration(progress.elapsed_s)},
        {"": f"Cost at ${cfg.gpu.price_per_hour:.2f}/h", column: est["cost"] + " (training)",
         "This run": format_money(progress.spent_usd) + " (wall time)"},
        {"": "Training steps", column: _planned_steps(cfg, run.get("mode")), "This run": str(actual["steps"])},
        {"": "Throughput", column: short_source(est["source"]),
         "This run": f"{speed:,.0f} tokens/s (median)" if speed else "—"},
    ])


def _planned_steps(cfg: Config, mode: str | None) -> str:
    if mode == "quick_lora":
        return str(cfg.training.quick_lora.steps)
    ff = cfg.training.full_finetune
    return f"{ff.epochs:g} epochs + up to {ff.speaker_max_steps}"


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
