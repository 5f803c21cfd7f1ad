"""What the studio shows about a run, read from its directory: metrics, progress, time, money.

Everything here is a pure read of `runs/<id>/` (layout in pipeline/train/workflow.py and
pipeline/train/loop.py), so a browser reload or a restarted studio sees exactly what a running job
has written. No gradio import.
"""

from __future__ import annotations

import inspect
import math
import re
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd

from pipeline.config import Config, ConfigError, load_config
from pipeline.estimate.cost import charge
from pipeline.train.metrics import read_metrics
from pipeline.data.text import example_sentences
from pipeline.train.runs import PHASES, read_json, read_run
from pipeline.train.workflow import render_examples
from studio.logic.estimate_gpus import gpu_label

TRAINING_PHASES = {"lora", "full", "speaker_lora"}
STAGES = ("prepare", "extract", "merge", "evaluate")  # the workflow's steps around the training phases
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
EVALUATION_SENTENCES = inspect.signature(render_examples).parameters["count"].default
# pipeline.cli's progress lines in the job log: " 30.0% VQ codes: 12/40 clips (0 cached)"
PROGRESS_LINE = re.compile(r"^\s*(\d{1,3}(?:\.\d+)?)% (.+)$")
MODE_LABELS = {"quick_lora": "Quick LoRA", "full_finetune": "Full fine-tune + speaker LoRA",
               # single phases started with `python -m pipeline train --mode …`
               "lora": "LoRA (one phase)", "full": "Full fine-tune (one phase)", "speaker_lora": "Speaker LoRA"}
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


def _money(usd: float) -> str:
    return "< $0.01" if 0 < usd < 0.01 else format_money(usd)


def _approx_time(minutes: float) -> str:
    return "< 1 min" if minutes < 1 else format_duration(minutes * 60)


def time_range(low: float, high: float) -> str:
    """Minutes as `12–40 min`, `1 h 05 min – 3 h 10 min`, or one value when both ends agree."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return "not measured"
    if abs(high - low) <= 0.02 * max(high, 1e-9):
        return _approx_time(high)
    a, b = _approx_time(low), _approx_time(high)
    if a.endswith(" min") and b.endswith(" min") and "h" not in a + b:
        return f"{a[:-4]}–{b}"
    return f"{a} – {b}"


def money_range(low: float, high: float) -> str:
    """Dollars as `$0.40–$1.20`, or one value when both ends agree."""
    if abs(high - low) <= 0.02 * max(high, 1e-9):
        return _money(high)
    return f"{_money(low)}–{_money(high)}"


def format_size(gb: float) -> str:
    return f"{gb:.1f} GB" if gb >= 1 else f"{gb * 1000:.0f} MB"


def short_source(text: str) -> str:
    """`estimated: <long reference> × 0.35` → `estimated: reference × 0.35` (for narrow tables)."""
    if text.startswith("estimated:") and "×" in text:
        return "estimated: reference × " + text.rsplit("×", 1)[1].strip()
    return text


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


def hourly_price(price: float, gpus: int) -> str:
    return f"${price:.2f}/h" if gpus == 1 else f"{gpus} × ${price:.2f}/h"


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


# -- progress of the stages around training -----------------------------------------------------
def stage_started(run: dict) -> float | None:
    """When the current stage began: `stage_started_at` when the workflow records it, else run.json's
    `updated` (the workflow writes run.json when a stage begins and not again until the next one)."""
    return _timestamp(run.get("stage_started_at")) or _timestamp(run.get("updated"))


def log_lines(run_dir: str | Path, max_bytes: int = 65536) -> list[str]:
    """The last lines of the run's log, a carriage return (a progress bar's update) read as a new line."""
    path = Path(run_dir) / "log.txt"
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, path.stat().st_size - max_bytes))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text).replace("\r", "\n").split("\n")


def _logged_progress(lines: list[str], stage: str) -> tuple[float, str] | None:
    """(fraction, message) of the last progress line the job logged for `stage`."""
    for line in reversed(lines):
        match = PROGRESS_LINE.match(line)
        if not match:
            continue
        message = match.group(2).strip()
        codes = message.startswith("VQ codes")
        if (stage == "extract") == codes and not message.startswith("step "):
            return min(float(match.group(1)) / 100, 1.0), message
    return None


def _remaining(fraction: float | None, seconds: float | None) -> float | None:
    """Time left in a stage at a steady pace: `seconds` spent on `fraction` of it."""
    if fraction is None or seconds is None or fraction <= 0:
        return None
    return max(0.0, seconds * (1 - fraction) / fraction)


def stage_progress(run_dir: str | Path, run: dict, now: float | None = None) -> tuple[float | None, float | None, str]:
    """(fraction, ETA in seconds, what is done) of the stage the run is in outside training.

    Read from run.json's `stage_progress`/`stage_message` when the workflow records them, else from
    the job log's progress lines (dataset, VQ codes) or the evaluation wavs written so far.
    """
    run_dir, now = Path(run_dir), time.time() if now is None else now
    stage = run.get("phase")
    started = stage_started(run)
    spent = max(0.0, now - started) if started else None
    if isinstance(run.get("stage_progress"), (int, float)):
        fraction = min(max(float(run["stage_progress"]), 0.0), 1.0)
        return fraction, _remaining(fraction, spent), _detail(str(run.get("stage_message") or ""), fraction)
    if stage == "evaluate":
        return _evaluation_progress(run_dir, started, spent)
    logged = _logged_progress(log_lines(run_dir), stage) if stage in ("prepare", "extract") else None
    if logged is None:  # nothing measurable (merge, or before the first progress line)
        return None, None, f"running for {format_duration(spent)}" if spent and spent >= 1 else "starting…"
    fraction, message = logged
    return fraction, _remaining(fraction, spent), _detail(message, fraction)


def _detail(message: str, fraction: float) -> str:
    """`VQ codes: 12/40 clips (3 cached)` → `12 / 40 clips`; otherwise the percentage."""
    match = re.search(r"(\d+)/(\d+) clips", message)
    return f"{match.group(1)} / {match.group(2)} clips" if match else f"{fraction:.0%}"


def _evaluation_progress(run_dir: Path, started: float | None, spent: float | None):
    total = EVALUATION_SENTENCES
    written = [p for p in (run_dir / "audio").glob("example_*.wav")
               if started is None or p.stat().st_mtime >= started - 1]
    done = min(len(written), total)
    fraction = done / total if total else None
    if done:
        eta = _remaining(fraction, spent)
    else:  # nothing spoken yet: the pace of the last validation audio, if training rendered some
        per_sentence = _seconds_per_sentence(run_dir)
        eta = max(0.0, per_sentence * total - (spent or 0.0)) if per_sentence else None
    return fraction, eta, f"{done} / {total} sentences"


def _seconds_per_sentence(run_dir: Path) -> float | None:
    """Seconds between consecutive validation wavs of the latest step that rendered several."""
    folders = sorted((run_dir / "phases").glob("*/audio/step_*"), key=lambda p: p.stat().st_mtime)
    for folder in reversed(folders):
        times = sorted(p.stat().st_mtime for p in folder.glob("*.wav"))
        if len(times) >= 2 and times[-1] > times[0]:
            return (times[-1] - times[0]) / (len(times) - 1)
    return None


# -- after a run: estimate beside actual ---------------------------------------------------------
def priced_table(config: Config) -> dict:
    """The GPU price table with the configured hourly price for the configured GPU."""
    from pipeline.estimate.cost import load_price_table

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
        {"": "Training steps", column: _planned_steps(cfg, run.get("mode")), "This run": str(actual["steps"])},
        {"": "Throughput", column: short_source(est["source"]),
         "This run": f"{speed:,.0f} tokens/s (median)" if speed else "—"},
    ])


def estimate_texts(table: pd.DataFrame, gpu: str, mode: str | None) -> dict[str, str]:
    """The estimate of one GPU and mode in words: training time, wall time and cost (ranges), and
    where the throughput came from. A speaker run is the speaker phase of a full fine-tune's row."""
    rows = table[table["gpu"] == gpu] if not table.empty else table
    looked_up = "full_finetune" if mode == "speaker_lora" else mode
    row = rows[rows["mode"] == looked_up] if not rows.empty else rows
    if row.empty:
        why = f"{gpu} is not in the price table" if rows.empty else f"no estimate for mode {mode}"
        return {"training": "—", "wall": "—", "cost": "—", "source": why}
    r = row.iloc[0]
    phases = [p for p in r["phases"] if p["phase"] in TRAINING_PHASES
              and (mode != "speaker_lora" or p["phase"] == "speaker_lora")]
    train_low = sum(p["seconds_min"] for p in phases) / 60
    train_high = r["train_minutes"] if mode != "speaker_lora" else sum(p["seconds_max"] for p in phases) / 60
    source = r["throughput_source"]
    if mode == "speaker_lora":  # its own stages are not estimated apart: training only
        cost = money_range(sum(p["cost_min"] for p in phases), sum(p["cost_max"] for p in phases))
        return {"training": time_range(train_low, train_high), "wall": "not estimated for a speaker run",
                "cost": f"{cost} (training)", "source": source}
    return {"training": time_range(train_low, train_high), "wall": time_range(r["minutes_min"], r["minutes"]),
            "cost": f"{money_range(r['cost_usd_min'], r['cost_usd'])} (all stages)", "source": source}


def _planned_steps(cfg: Config, mode: str | None) -> str:
    if mode == "quick_lora":
        return str(cfg.training.quick_lora.steps)
    ff = cfg.training.full_finetune
    if mode == "speaker_lora":
        return f"up to {ff.speaker_max_steps}"
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
