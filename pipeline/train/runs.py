"""A run's record, `runs/<id>/run.json`: the one module that names, reads and writes it.

run.json holds what the studio shows about a run: its id, mode and phases, the current phase and
status, the speaker choice, the artifacts, the error. The workflow (pipeline.train.workflow) and
the job launcher (pipeline.train.jobs) write it; the studio, the evaluation and the model cards
read it. Writes are atomic (pipeline.atomic), so a reader never sees half a record.
"""

from __future__ import annotations

import json
import re
import time
from datetime import datetime, timezone
from pathlib import Path

from pipeline.atomic import write_json
from pipeline.config import Config

RUN_FILE = "run.json"
RUN_ID = re.compile(r"^[\w.-]+$")
# the phases each mode trains, in order; a single phase started alone is its own mode
# speaker_lora: a new speaker on the language-adapted model of a finished full_finetune run
PHASES = {"quick_lora": ["lora"], "full_finetune": ["full", "speaker_lora"], "speaker_lora": ["speaker_lora"]}


class RunError(ValueError):
    """A run that cannot start or continue; the message says why and what to do."""


def new_run_id(mode: str) -> str:
    return f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{mode}"


def read_json(path: Path, default=None):
    """A JSON file of a run folder (run.json, a phase's state.json, job.json), or `default` when it
    is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return default


def run_file(run_dir: Path) -> Path:
    return Path(run_dir) / RUN_FILE


def is_run(run_dir: Path) -> bool:
    """True when `run_dir` holds a run's record."""
    return run_file(run_dir).is_file()


def read_run(run_dir: Path) -> dict:
    """The run's record; {} when there is none or it is unreadable."""
    state = read_json(run_file(run_dir), default={})
    return state if isinstance(state, dict) else {}


def update_run(run_dir: Path, **changes) -> dict:
    """Merge `changes` into the record and write it; returns the new record."""
    previous = read_run(run_dir)
    if "phase" in changes and changes["phase"] != previous.get("phase"):
        # a new stage: the Training view measures its progress and ETA from here
        changes = {"stage_started_at": time.time(), "stage_progress": None, "stage_message": None} | changes
    state = previous | changes | {"updated": datetime.now(timezone.utc).isoformat()}
    write_json(run_file(run_dir), state)
    return state


def run_dir_for(config: Config, run_id: str) -> Path:
    """The folder of run `run_id`, refusing ids that are not plain names inside `runs/`."""
    run_id = str(run_id or "")
    runs = config.runs_dir.resolve()
    run_dir = (runs / run_id).resolve()
    if not RUN_ID.match(run_id) or run_id in (".", "..") or run_dir.parent != runs:
        raise RunError(f"'{run_id[:80]}' is not a run id: use letters, digits, '_', '.' and '-' only "
                       "(a folder name under the workspace's runs/).")
    return config.runs_dir / run_id


def create_run(config: Config, run_id: str | None = None, mode: str | None = None) -> Path:
    """A new run directory with the configuration snapshot; an existing one is left as it is.

    `mode` is what the run really does when it is not the configured workflow (a single phase
    started by `python -m pipeline train`)."""
    mode = mode or config.training_mode.selected
    run_id = run_id or new_run_id(mode)
    run_dir = run_dir_for(config, run_id)
    if not (run_dir / "config.yaml").exists():
        config.save(run_dir / "config.yaml")
        update_run(run_dir, id=run_id, mode=mode, phases=PHASES.get(mode, [mode]), phase=None, status="created",
                   created=datetime.now(timezone.utc).isoformat())
    return run_dir


def list_runs(config: Config) -> list[dict]:
    """Every run under the workspace, newest first, with its recorded status."""
    return [read_run(path.parent) | {"dir": str(path.parent)}
            for path in sorted(config.runs_dir.glob(f"*/{RUN_FILE}"), reverse=True)]
