"""How far a run's stage outside training has got: preparing, extracting, merging, evaluating.

The workflow records little about these stages, so their progress is read from what they leave in
`runs/<id>/`: run.json's stage fields, the job log's progress lines and the evaluation wavs written
so far. No gradio import.
"""

from __future__ import annotations

import inspect
import re
import time
from datetime import datetime
from pathlib import Path

from pipeline.train.workflow import render_examples
from studio.logic.run_format import format_duration

TRAINING_PHASES = {"lora", "full", "speaker_lora"}
STAGES = ("prepare", "extract", "merge", "evaluate")  # the workflow's steps around the training phases
EVALUATION_SENTENCES = inspect.signature(render_examples).parameters["count"].default
# pipeline.cli's progress lines in the job log: " 30.0% VQ codes: 12/40 clips (0 cached)"
PROGRESS_LINE = re.compile(r"^\s*(\d{1,3}(?:\.\d+)?)% (.+)$")


def timestamp(value) -> float | None:
    """Seconds since the epoch of a run.json time (a number or an ISO string); None when neither."""
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return datetime.fromisoformat(str(value)).timestamp()
    except (TypeError, ValueError):
        return None


def stage_started(run: dict) -> float | None:
    """When the current stage began: `stage_started_at` when the workflow records it, else run.json's
    `updated` (the workflow writes run.json when a stage begins and not again until the next one)."""
    return timestamp(run.get("stage_started_at")) or timestamp(run.get("updated"))


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
