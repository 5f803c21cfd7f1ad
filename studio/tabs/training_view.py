"""What the Training tab shows about a run, as plain values: the run list, a run's view (progress
card, curves, log, estimate-vs-actual table, outputs and audio) and the Start/Resume entry point.

Pure functions of the config and the run directories (studio.logic.runs_view, pipeline.train.jobs), kept
apart from the event wiring in `training.py` so they can be tested without a server. The plan of what
Start trains is `studio.logic.training_plan`, the run's HTML `studio.logic.training_html`, the log's
cleaning `studio.logic.job_log`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from studio.logic import run_charts, training_gpus
from pipeline.config import Config
from pipeline.data.dataset import list_datasets
from pipeline.train.jobs import JobError, current_job, job_status, log_tail, shown_status, start_job
from studio.logic.runs_view import (ACTIVE, PHASE_LABELS, estimate_vs_actual, evaluation_audio, phase_metrics,
                                    run_phases, run_progress, validation_audio, viewed_phase)
from pipeline.data.selection import load_selection
from pipeline.train.runs import is_run, list_runs, run_dir_for, run_file
# the split-out modules' names stay importable from here, where the tabs and tests have read them
from studio.logic.job_log import TQDM_LINE, WARNING_LINE, clean_log  # noqa: F401
from studio.logic.training_html import esc, eta_text, note, outputs_html, progress_html  # noqa: F401
from studio.logic.training_plan import (FROM_BASE, NO_LANGUAGE_MODELS, language_model,  # noqa: F401
                                        language_model_choices, language_model_info, plan_html, training_config)

log = logging.getLogger(__name__)
REFRESH_SECONDS = 3.0
AUDIO_SLOTS = 3
LOG_LINES = 14
LOG_SCAN_LINES = 400  # read this many, so that repeated warnings and bar states filtered out leave LOG_LINES
CSS = """
.run-card { border: 1px solid var(--border-color-primary); border-radius: 12px; padding: 12px 16px;
            background: var(--background-fill-secondary); }
.run-head { display: flex; flex-wrap: wrap; gap: 8px; align-items: center; font-size: 1rem; }
.run-head .id { font-family: var(--font-mono); font-size: 0.9rem; }
.badge { display: inline-block; border-radius: 999px; padding: 1px 10px; font-size: 0.8rem; font-weight: 600;
         text-transform: uppercase; letter-spacing: 0.03em; background: #e5e7eb; color: #374151; }
.badge.running, .badge.starting { background: #e0f2fe; color: #075985; }
.badge.finished { background: #e7f5f2; color: #155e55; }
.badge.failed { background: #fdecea; color: #8a1c0c; }
.badge.cancelled { background: #fef3c7; color: #92400e; }
.bar { height: 12px; border-radius: 999px; background: var(--border-color-primary); margin: 10px 0 8px 0;
       overflow: hidden; }
.bar .fill { height: 100%; background: linear-gradient(90deg, #2a9d8f, #38b2a3); border-radius: 999px;
             transition: width 0.6s ease; }
.facts { display: grid; grid-template-columns: repeat(auto-fit, minmax(140px, 1fr)); gap: 8px; }
.fact .value { font-size: 1.15rem; font-weight: 700; font-variant-numeric: tabular-nums; }
.fact .label { font-size: 0.75rem; color: var(--body-text-color-subdued); text-transform: uppercase;
               letter-spacing: 0.03em; }
.sub { margin-top: 8px; font-size: 0.88rem; color: var(--body-text-color-subdued); }
.plan { border: 1px solid var(--border-color-primary); border-radius: 12px; padding: 10px 14px; }
.plan table { width: 100%; border-collapse: collapse; font-size: 0.92rem; margin: 0 !important;
              border: none !important; }
.plan tr { border: none !important; background: transparent !important; }
.plan td { padding: 3px 6px !important; border: none !important;
           border-bottom: 1px solid var(--border-color-primary) !important; }
.plan tr:last-child td { border-bottom: none !important; }
.plan td:first-child { color: var(--body-text-color-subdued); width: 34%; }
.plan .warn { color: #92400e; }
.plan code { overflow-wrap: anywhere; font-size: 0.82rem; }
.plan .title { font-weight: 600; margin: 2px 0 6px 0; }
.compare th { text-align: left; font-size: 0.8rem; color: var(--body-text-color-subdued); padding: 3px 6px !important;
              border: none !important; border-bottom: 1px solid var(--border-color-primary) !important;
              background: transparent !important; }
.compare td:first-child { width: 30%; }
.artifacts { margin-top: 10px; }
"""

def failure(exc: Exception) -> str:
    """A one-line message for the UI; an unexpected error's traceback goes to the console only."""
    if isinstance(exc, ValueError):
        return str(exc)
    log.exception("Training tab: unexpected error")
    return f"Unexpected error ({type(exc).__name__}): {exc}. The server console has the details."

def start_label(base_run: str | None) -> str:
    return "Start speaker run" if base_run else "Start training"


def start_run(config: Config, run_id: str | None = None, base_run: str | None = None, gpus=None) -> dict:
    """Start a new run (or resume `run_id`) as a job on `gpus` GPUs (None: training.gpus); with
    `base_run`, a new speaker's LoRA on that finished full fine-tune's language-adapted model.
    Raises JobError/ValueError with the reason (a global batch that does not split over the GPUs too)."""
    if run_id:
        return start_job(config, run_id=run_id, gpus=training_gpus.resume_count(config, run_id, gpus))
    dataset = load_selection(config).get("dataset_id")
    if not dataset or dataset not in list_datasets(config):
        raise JobError("No dataset is loaded: load one in the Dataset tab (the bundled sample works offline), "
                       "then start the run.")
    gpus = training_gpus.checked_count(training_config(config), gpus)
    if base_run:
        model = language_model(config, base_run)
        if model is None:
            raise JobError(f"'{base_run}' is not a finished full fine-tune with a language-adapted model: pick one "
                           "from “Train a new speaker on a language-adapted model” (↻ Refresh lists new ones).")
        return start_job(training_config(config), model_dir=model["path"], mode="speaker_lora", gpus=gpus)
    return start_job(training_config(config), gpus=gpus)  # refuses (JobError) while another job runs


def run_choices(config: Config) -> list[tuple[str, str]]:
    """(label, run id) of every run, newest first."""
    return [(f"{r.get('id', Path(r['dir']).name)} · {shown_status(r)}", r.get("id", Path(r["dir"]).name))
            for r in list_runs(config)]


def default_run(config: Config) -> str | None:
    """The run a fresh page shows: the running job's, else the newest."""
    job = current_job(config)
    if job:
        return job["run_id"]
    runs = list_runs(config)
    return runs[0].get("id") if runs else None


# -- what a run looks like ------------------------------------------------------------------------
@dataclass
class RunView:
    run_id: str | None
    status: str = ""
    progress_html: str = ""
    figure: go.Figure | None = None
    log: str = ""
    phases: list[str] = field(default_factory=list)
    phase: str | None = None
    comparison: pd.DataFrame | None = None        # estimate vs actual, once the run has stopped
    comparison_note: str = ""
    eval_audio: list[tuple[str, str]] = field(default_factory=list)
    val_audio: list[tuple[int, list[str]]] = field(default_factory=list)
    artifacts_html: str = ""
    adapter_zip: str | None = None
    can_cancel: bool = False
    can_resume: bool = False
    points: int = 0                               # training rows plotted (for tests and the timer)
    signature: tuple = ()


def _signature(run_dir: Path, phase: str | None) -> tuple:
    def stamp(path: Path):
        try:
            info = path.stat()
            return info.st_mtime_ns, info.st_size
        except OSError:
            return None
    files = [run_file(run_dir), run_dir / "log.txt"]
    if phase:
        files += [run_dir / "phases" / phase / "metrics.jsonl", run_dir / "phases" / phase / "state.json"]
    return tuple(stamp(f) for f in files)


def comparison_html(view: "RunView") -> str:
    """The estimate-vs-actual table (or why there is none) as a compact HTML table."""
    if view.comparison is None:
        return note(view.comparison_note, "info") if view.comparison_note else ""
    frame = view.comparison
    head = "".join(f"<th>{esc(c)}</th>" for c in frame.columns)
    body = "".join("<tr>" + "".join(f"<td>{esc(v)}</td>" for v in row) + "</tr>"
                   for row in frame.itertuples(index=False))
    return (f"<div class='plan compare'><div class='title'>Estimate vs this run</div>"
            f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>")


def checked_run_id(config: Config, run_id) -> str:
    """A run id from the page or the API, accepted only when it names a run folder under runs/
    (the dropdown takes any typed value, so that runs created after the page was built work)."""
    try:
        run_dir = run_dir_for(config, str(run_id or "").strip())
    except ValueError as exc:
        raise JobError(f"{exc} Pick a run from the Run list.") from None
    if not is_run(run_dir):
        raise JobError(f"There is no run '{run_dir.name}' in the workspace's runs folder: pick one from the Run list "
                       "(↻ Refresh lists new runs).")
    return run_dir.name


def empty_view(config: Config, run_id: str | None, message: str) -> RunView:
    """What is shown when a run cannot be read at all: the message, the run still selected, and
    Cancel still usable while a job runs (the job does not depend on the page reading its files)."""
    job = current_job(config)
    return RunView(run_id, progress_html=note(message, "error"),
                   figure=run_charts.message_figure(run_id or "Training curves", "The curves cannot be shown now."),
                   can_cancel=bool(job and (run_id is None or job["run_id"] == run_id)))


def run_view(config: Config, run_id: str | None, phase: str | None = None) -> RunView:
    """Everything the tab shows about one run (corrected by pipeline.train.jobs: a dead job is failed).

    Each part is read on its own: a file the job is writing right now can spoil one part (shown as
    a note), never the whole view, the selected run or the Cancel button.
    """
    if not run_id:
        return RunView(None, progress_html=note("No runs yet: start one above.", "info"),
                       figure=run_charts.training_curves(None, None))
    run_id = checked_run_id(config, run_id)
    run_dir = config.runs_dir / run_id
    run = job_status(config, run_id)  # raises JobError for an unknown run
    phases = run_phases(run)
    shown = phase if phase in phases else viewed_phase(run_dir, run)
    status = run.get("status", "")
    running_job = current_job(config)
    view = RunView(run_id, status=status, phases=phases, phase=shown,
                   can_cancel=bool(running_job and running_job["run_id"] == run_id),
                   can_resume=status in ("cancelled", "failed") and running_job is None)
    problems: list[str] = []

    def part(what: str, read, default):
        try:
            return read()
        except Exception as exc:  # noqa: BLE001 - one unreadable part must not hide the others
            log.exception("Training tab: cannot show the %s of run %s", what, run_id)
            problems.append(f"The {what} cannot be shown now ({type(exc).__name__}: {exc}); it is retried "
                            "at the next refresh.")
            return default

    empty = pd.DataFrame(columns=["step"])
    train, val = part("metrics", lambda: phase_metrics(run_dir, shown) if shown else (empty, empty), (empty, empty))
    title = f"{PHASE_LABELS.get(shown, shown or '')} — {run_id}" if shown else run_id
    view.figure = part("curves", lambda: run_charts.training_curves(train, val, title),
                       run_charts.message_figure(title, "The curves cannot be shown now."))
    view.points = len(train)
    view.progress_html = part("progress", lambda: progress_html(run_progress(run_dir, run, config)), "")
    view.log = part("log", lambda: clean_log(log_tail(run_dir, LOG_SCAN_LINES), keep=LOG_LINES), "")
    view.eval_audio = part("evaluation audio", lambda: evaluation_audio(run_dir, run), [])
    view.val_audio = part("validation audio", lambda: validation_audio(run_dir, shown) if shown else [], [])
    view.artifacts_html, view.adapter_zip = part("outputs", lambda: outputs_html(run), ("", None))
    # files and the job: a process still exiting after writing "finished" must not freeze Cancel on
    view.signature = (*_signature(run_dir, shown), running_job and running_job["run_id"])
    if status not in ACTIVE and len(train):
        try:
            view.comparison = estimate_vs_actual(run_dir, run, config)
        except ValueError as exc:
            view.comparison_note = f"No estimate to compare with: {exc}"
        except Exception as exc:  # noqa: BLE001
            view.comparison_note = f"No estimate to compare with: {failure(exc)}"
    view.progress_html += "".join(note(text, "error") for text in problems)
    return view
