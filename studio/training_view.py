"""What the Training tab shows, as plain values: the run plan, a run's progress card, curves,
log, estimate-vs-actual table, outputs and audio, and the Start/Resume entry point.

Pure functions of the config and the run directories (pipeline.runs_view, pipeline.jobs), kept
apart from the event wiring in `training_tab.py` so they can be tested without a server.
"""

from __future__ import annotations

import html
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from pipeline import run_charts
from pipeline.checkpoints import describe_checkpoint
from pipeline.config import Config
from pipeline.dataset import list_datasets
from pipeline.jobs import JobError, current_job, job_status, log_tail, start_job
from pipeline.runs_view import (ACTIVE, MODE_LABELS, PHASE_LABELS, RunProgress, estimate_vs_actual,
                                evaluation_audio, format_duration, format_money, phase_metrics, run_phases,
                                run_progress, validation_audio, viewed_phase)
from pipeline.selection import apply_selection, load_selection
from pipeline.workflow import list_runs

log = logging.getLogger(__name__)
REFRESH_SECONDS = 3.0
AUDIO_SLOTS = 3
LOG_LINES = 14
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


def _esc(value) -> str:
    return html.escape("" if value is None else str(value))


def failure(exc: Exception) -> str:
    """A one-line message for the UI; an unexpected error's traceback goes to the console only."""
    if isinstance(exc, ValueError):
        return str(exc)
    log.exception("Training tab: unexpected error")
    return f"Unexpected error ({type(exc).__name__}): {exc}. The server console has the details."


def note(message: str, kind: str = "info") -> str:
    return f"<div class='note {kind}'>{_esc(message)}</div>"


# -- what Start will run --------------------------------------------------------------------------
def training_config(config: Config) -> Config:
    """The studio config + the saved selection (dataset, speaker, Modes & cost settings)."""
    return apply_selection(config, load_selection(config))


def plan_html(config: Config) -> str:
    """A compact table of what the Start button will train, with the base model's state."""
    selection = load_selection(config)
    try:
        cfg = training_config(config)
    except ValueError as exc:
        return note(f"The saved settings are invalid: {exc}", "error")
    t, mode = cfg.training, cfg.training_mode.selected
    dataset = selection.get("dataset_id")
    if not dataset or dataset not in list_datasets(config):
        dataset_text = "<span class='warn'>none loaded: load one in the Dataset tab first</span>"
    else:
        dataset_text = _esc(dataset)
    voice = selection.get("speaker") or "the recommended speaker"
    if mode == "quick_lora":
        recipe = f"{t.quick_lora.steps} steps at learning rate {t.quick_lora.learning_rate:g}"
    else:
        ff = t.full_finetune
        recipe = (f"{ff.epochs:g} epochs at {ff.learning_rate:g}, then up to {ff.speaker_max_steps} speaker "
                  f"steps at {ff.speaker_learning_rate:g}")
    base = cfg.base_model_dir
    if (base / "model.pth").is_file():
        model_text = _esc(describe_checkpoint(base))
        if "random weights" in model_text:
            model_text = f"<span class='warn'>{model_text}</span>"
    else:
        model_text = (f"<span class='warn'>not downloaded yet: {_esc(cfg.base_model.repo)} is fetched at start "
                      "(needs HF_TOKEN of an account that accepted the licence)</span>")
    rows = [("Mode", _esc(MODE_LABELS.get(mode, mode))), ("Dataset", dataset_text), ("Voice", _esc(voice)),
            ("Recipe", _esc(recipe)),
            ("Batch", _esc(f"{t.batch_size} × {t.max_length} tokens, LoRA rank {t.lora.rank}")),
            ("Base model", model_text), ("Billed at", _esc(f"{cfg.gpu.type}, ${cfg.gpu.price_per_hour:.2f}/h"))]
    body = "".join(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in rows)
    return f"<div class='plan'><table>{body}</table></div>"


def start_run(config: Config, run_id: str | None = None) -> dict:
    """Start a new run (or resume `run_id`) as a job; raises JobError/ValueError with the reason."""
    if run_id:
        return start_job(config, run_id=run_id)
    dataset = load_selection(config).get("dataset_id")
    if not dataset or dataset not in list_datasets(config):
        raise JobError("No dataset is loaded: load one in the Dataset tab (the bundled sample works offline), "
                       "then start the run.")
    return start_job(training_config(config))  # refuses (JobError) while another job runs


def run_choices(config: Config) -> list[tuple[str, str]]:
    """(label, run id) of every run, newest first."""
    return [(f"{r.get('id', Path(r['dir']).name)} · {r.get('status', '?')}", r.get("id", Path(r["dir"]).name))
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


def clean_log(text: str) -> str:
    """Keep what a terminal would show: the last state of each carriage-return-updated line."""
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)
    return "\n".join(line.rsplit("\r", 1)[-1] for line in text.split("\n")).strip("\n")


def _signature(run_dir: Path, phase: str | None) -> tuple:
    def stamp(path: Path):
        try:
            info = path.stat()
            return info.st_mtime_ns, info.st_size
        except OSError:
            return None
    files = [run_dir / "run.json", run_dir / "log.txt"]
    if phase:
        files += [run_dir / "phases" / phase / "metrics.jsonl", run_dir / "phases" / phase / "state.json"]
    return tuple(stamp(f) for f in files)


def progress_html(progress: RunProgress) -> str:
    status = progress.status
    fraction = progress.fraction if progress.fraction is not None else (1.0 if status == "finished" else 0.0)
    if progress.phase_number:
        where = f"Phase {progress.phase_number} of {progress.phase_count}: {progress.phase_label}"
    else:
        where = progress.phase_label
    steps = f"{progress.step} / {progress.total_steps}" if progress.total_steps else "—"
    eta = format_duration(progress.eta_s) if progress.eta_s is not None else ("done" if status == "finished" else "—")
    facts = [("step", steps), ("ETA (this phase)", eta), ("elapsed", format_duration(progress.elapsed_s)),
             ("spent so far", format_money(progress.spent_usd))]
    facts_html = "".join(f"<div class='fact'><div class='value'>{_esc(v)}</div><div class='label'>{_esc(k)}</div></div>"
                         for k, v in facts)
    voice = f" · voice {_esc(progress.speaker)}" if progress.speaker else ""
    sub = [f"{_esc(where)}" + (f" — {_esc(progress.eta_note)}" if progress.eta_note else ""),
           f"Cost at ${progress.price_per_hour:.2f}/h ({_esc(progress.gpu)}): elapsed × price."]
    if progress.speaker_reason:
        sub.append(f"Voice: {_esc(progress.speaker)} — {_esc(progress.speaker_reason)}")
    if progress.memory_plan:
        sub.append(f"Memory plan for this GPU: {_esc(progress.memory_plan)}")
    if progress.message and status != "failed":
        sub.append(_esc(progress.message))
    extra = ""
    if status == "failed":
        extra = note(f"The run failed: {progress.error or progress.message or 'see the log below'}. "
                      "Fix the cause, then Resume to continue from the last checkpoint.", "error")
    return (f"<div class='run-card' id='run-card'><div class='run-head'><span class='badge {_esc(status)}'>"
            f"{_esc(status)}</span><span class='id'>{_esc(progress.run_id)}</span>"
            f"<span>· {_esc(MODE_LABELS.get(progress.mode, progress.mode))}{voice}</span></div>"
            f"<div class='bar'><div class='fill' style='width: {100 * fraction:.1f}%'></div></div>"
            f"<div class='facts'>{facts_html}</div>"
            + "".join(f"<div class='sub'>{line}</div>" for line in sub) + extra + "</div>")


def comparison_html(view: "RunView") -> str:
    """The estimate-vs-actual table (or why there is none) as a compact HTML table."""
    if view.comparison is None:
        return note(view.comparison_note, "info") if view.comparison_note else ""
    frame = view.comparison
    head = "".join(f"<th>{_esc(c)}</th>" for c in frame.columns)
    body = "".join("<tr>" + "".join(f"<td>{_esc(v)}</td>" for v in row) + "</tr>"
                   for row in frame.itertuples(index=False))
    return (f"<div class='plan compare'><div class='title'>Estimate vs this run</div>"
            f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>")


def _artifacts(run: dict) -> tuple[str, str | None]:
    artifacts = run.get("artifacts") or {}
    if not artifacts:
        return "", None
    rows = [("Merged model (for the Playground)", artifacts.get("merged")),
            ("Adapter", artifacts.get("adapter")),
            ("Phase 1 full model", artifacts.get("phase1_model"))]
    body = "".join(f"<tr><td>{_esc(k)}</td><td><code>{_esc(v)}</code></td></tr>" for k, v in rows if v)
    zip_path = artifacts.get("adapter_zip")
    return (f"<div class='plan artifacts'><div class='title'>Outputs</div><table>{body}</table></div>",
            zip_path if zip_path and Path(zip_path).is_file() else None)


def run_view(config: Config, run_id: str | None, phase: str | None = None) -> RunView:
    """Everything the tab shows about one run (corrected by pipeline.jobs: a dead job is failed)."""
    if not run_id:
        return RunView(None, progress_html=note("No runs yet: start one above.", "info"),
                       figure=run_charts.training_curves(None, None))
    run_dir = config.runs_dir / run_id
    run = job_status(config, run_id)  # raises JobError for an unknown run
    phases = run_phases(run)
    shown = phase if phase in phases else viewed_phase(run_dir, run)
    progress = run_progress(run_dir, run, config)
    train, val = phase_metrics(run_dir, shown) if shown else (pd.DataFrame(columns=["step"]),) * 2
    title = f"{PHASE_LABELS.get(shown, shown or '')} — {run_id}" if shown else run_id
    status = run.get("status", "")
    running_job = current_job(config)
    view = RunView(run_id, status=status, progress_html=progress_html(progress),
                   figure=run_charts.training_curves(train, val, title), log=clean_log(log_tail(run_dir, LOG_LINES)),
                   phases=phases, phase=shown, eval_audio=evaluation_audio(run_dir, run),
                   val_audio=validation_audio(run_dir, shown) if shown else [],
                   can_cancel=bool(running_job and running_job["run_id"] == run_id),
                   can_resume=status in ("cancelled", "failed") and running_job is None,
                   points=len(train))
    # files and the job: a process still exiting after writing "finished" must not freeze Cancel on
    view.signature = (*_signature(run_dir, shown), running_job and running_job["run_id"])
    view.artifacts_html, view.adapter_zip = _artifacts(run)
    if status not in ACTIVE and len(train):
        try:
            view.comparison = estimate_vs_actual(run_dir, run, config)
        except ValueError as exc:
            view.comparison_note = f"No estimate to compare with: {exc}"
    return view


