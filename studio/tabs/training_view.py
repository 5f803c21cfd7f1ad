"""What the Training tab shows, as plain values: the run plan, a run's progress card, curves,
log, estimate-vs-actual table, outputs and audio, and the Start/Resume entry point.

Pure functions of the config and the run directories (studio.logic.runs_view, pipeline.train.jobs), kept
apart from the event wiring in `training_tab.py` so they can be tested without a server.
"""

from __future__ import annotations

import html
import logging
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from studio.logic import run_charts, training_gpus
from pipeline.model.checkpoints import describe_checkpoint
from pipeline.config import Config
from pipeline.estimate.cost import CPU_CHARGE
from pipeline.data.dataset import list_datasets
from pipeline.train.jobs import JobError, current_job, job_status, log_tail, start_job
from studio.logic.runs_view import (ACTIVE, MODE_LABELS, PHASE_LABELS, STAGES, RunProgress, estimate_vs_actual,
                                evaluation_audio, format_duration, format_money, hourly_price, phase_metrics,
                                run_phases, run_progress, validation_audio, viewed_phase)
from pipeline.data.selection import apply_selection, load_selection
from pipeline.train.runs import is_run, list_runs, run_dir_for, run_file
from pipeline.train.workflow import language_models

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


def plan_html(config: Config, base_run: str | None = None, gpus=None) -> str:
    """A compact table of what the Start button will train, with the base model's state; with
    `base_run` (a finished full fine-tune) a new speaker's LoRA on that run's language-adapted model;
    on `gpus` GPUs (None: training.gpus)."""
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
    picked_voice = selection.get("speaker") or "the recommended speaker"
    if base_run:
        rows = _speaker_run_rows(config, cfg, base_run, picked_voice)
    else:
        rows = _mode_rows(cfg, mode, picked_voice)
    rows.insert(1, ("Dataset", dataset_text))
    rows += [("Batch", _esc(f"{t.batch_size} × {t.max_length} tokens, LoRA rank {t.lora.rank}")),
             ("Billed at", _billing_text(cfg)), *training_gpus.plan_rows(cfg, gpus)]
    body = "".join(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in rows)
    return f"<div class='plan'><table>{body}</table></div>"


def _mode_rows(cfg: Config, mode: str, picked_voice: str) -> list[tuple[str, str]]:
    """Mode, voice, recipe and base model of the mode chosen in Modes & cost."""
    t = cfg.training
    if mode == "quick_lora":  # one LoRA over every clip: no speaker is picked
        voice = "all speakers (every accepted clip)"
        recipe = f"{t.quick_lora.steps} steps at learning rate {t.quick_lora.learning_rate:g}"
    else:
        voice = picked_voice + (" (speaker LoRA after the full fine-tune)" if mode == "full_finetune" else "")
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
    return [("Mode", _esc(MODE_LABELS.get(mode, mode))), ("Voice", _esc(voice)), ("Recipe", _esc(recipe)),
            ("Base model", model_text)]


def _speaker_run_rows(config: Config, cfg: Config, base_run: str, picked_voice: str) -> list[tuple[str, str]]:
    """What a new speaker run on `base_run`'s language-adapted model trains."""
    ff = cfg.training.full_finetune
    model = language_model(config, base_run)
    if model is None:
        trains = (f"<span class='warn'>{_esc(base_run)} is not a finished full fine-tune with a language-adapted "
                  "model (any more): pick another, or ↻ Refresh</span>")
        base_text = "—"
    else:
        trains = _esc(f"a speaker LoRA on {base_run}'s language-adapted model (phase 1 of that full fine-tune), "
                      "then merge and evaluation audio")
        base_text = _esc(f"{model['path']} (its own voice was {model.get('speaker') or '?'})")
    recipe = (f"up to {ff.speaker_max_steps} steps at learning rate {ff.speaker_learning_rate:g}, stopping early "
              "when held-out loss stalls")
    return [("Mode", _esc(MODE_LABELS["speaker_lora"] + " on a language-adapted model")), ("Trains", trains),
            ("Voice", _esc(f"{picked_voice} (new speaker)")), ("Recipe", _esc(recipe)),
            ("Base model", base_text)]


def _billing_text(cfg: Config) -> str:
    text = _esc(f"{cfg.gpu.type}, ${cfg.gpu.price_per_hour:.2f}/h")
    if not _has_gpu():
        text += _esc(f" — {CPU_CHARGE}: this machine has no GPU, a run here trains on the CPU")
    return text


def _has_gpu() -> bool:
    import torch

    return bool(torch.cuda.is_available())


# -- new speakers on a finished full fine-tune's language-adapted model ----------------------------
NO_LANGUAGE_MODELS = ("None yet: a finished “Full fine-tune + speaker LoRA” run provides one (its phase-1, "
                      "language-adapted model); ↻ Refresh lists it once that run has finished.")
FROM_BASE = ("— no: train the mode chosen in Modes & cost —", "")


def language_model(config: Config, run_id: str | None) -> dict | None:
    """The language-adapted model of finished full fine-tune `run_id`, if it has one."""
    return next((m for m in language_models(config) if m["run_id"] == run_id), None) if run_id else None


def language_model_choices(config: Config) -> list[tuple[str, str]]:
    """The dropdown's choices: train from the base model, or (run id · its voice · date) of each
    finished full fine-tune's language-adapted model, newest first."""
    return [FROM_BASE] + [(f"{m['run_id']} · voice {m.get('speaker') or '?'} · {_date(m.get('created'))}",
                           m["run_id"]) for m in language_models(config)]


def language_model_info(config: Config) -> str:
    """The dropdown's help line: what picking one does, or where one comes from when there is none."""
    if not language_models(config):
        return NO_LANGUAGE_MODELS
    return ("Trains only a speaker LoRA for the voice picked in the Dataset tab on that run's language-adapted "
            "model: no second full fine-tune.")


def _date(value) -> str:
    try:
        return datetime.fromisoformat(str(value)).strftime("%Y-%m-%d %H:%M")
    except (TypeError, ValueError):
        return "date unknown"


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


# a Python warning's first line: "/path/file.py:12: FutureWarning: message"
WARNING_LINE = re.compile(r"^\S.*?:\d+: (\w*Warning): (.*)$")
# a tqdm bar's state: "desc: 40%|####      | 4/10 [00:02<00:03, 2.00it/s]"
TQDM_LINE = re.compile(r"^(?P<desc>.*?)\s*(?P<pct>\d{1,3})%\|[^|]*\|\s*(?P<rest>.*)$")


def clean_log(text: str, keep: int | None = None) -> str:
    """The log as a terminal would leave it, readable in a text box: the last state of each
    carriage-return-updated line, progress bars as plain lines, each distinct Python warning once
    (its source line dropped); the last `keep` lines."""
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)
    lines, warned, after_warning = [], set(), False
    for raw in text.split("\n"):
        line = raw.rsplit("\r", 1)[-1].rstrip()
        warning = WARNING_LINE.match(line)
        if warning:
            after_warning = True
            key = (warning.group(1), warning.group(2).strip())
            if key not in warned:
                warned.add(key)
                lines.append(f"{key[0]}: {key[1]} (shown once)")
            continue
        if after_warning and raw.startswith((" ", "\t")):  # the warning's source line
            continue
        after_warning = False
        bar = TQDM_LINE.match(line)
        if bar:
            desc = bar.group("desc").strip().rstrip(":")
            line = f"{desc + ': ' if desc else ''}{bar.group('pct')}% {bar.group('rest')}".strip()
        lines.append(line)
    while lines and not lines[0]:
        lines.pop(0)
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines[-keep:] if keep else lines)


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


def progress_html(progress: RunProgress) -> str:
    status = progress.status
    fraction = progress.fraction if progress.fraction is not None else (1.0 if status == "finished" else 0.0)
    in_stage = progress.phase in STAGES and status in ACTIVE
    if progress.phase_number:
        where = f"Phase {progress.phase_number} of {progress.phase_count}: {progress.phase_label}"
    else:
        where = progress.phase_label
    if in_stage:
        done = ("progress", progress.stage_detail or "—")
    else:
        done = ("step", f"{progress.step} / {progress.total_steps}" if progress.total_steps else "—")
    facts = [done, (f"ETA (this {'stage' if in_stage else 'phase'})", eta_text(progress)),
             ("elapsed", format_duration(progress.elapsed_s)),
             ("spent so far", progress.charge or format_money(progress.spent_usd))]
    facts_html = "".join(f"<div class='fact'><div class='value'>{_esc(v)}</div><div class='label'>{_esc(k)}</div></div>"
                         for k, v in facts)
    voice = f" · voice {_esc(progress.speaker)}" if progress.speaker else ""
    sub = [f"{_esc(where)}" + (f" — {_esc(progress.eta_note)}" if progress.eta_note else ""),
           (f"{CPU_CHARGE}: this run trains on the CPU; the price (${progress.price_per_hour:.2f}/h, "
            f"{_esc(progress.gpu)}) is for GPU time only." if progress.on_cpu else
            f"Cost at {hourly_price(progress.price_per_hour, progress.gpus)} ({_esc(progress.gpu)}): elapsed × price.")]
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


def eta_text(progress: RunProgress) -> str:
    """The ETA fact: a duration, "finishing" once the last step or item is done, "done" at the end."""
    if progress.status == "finished":
        return "done"
    if progress.eta_s is None or progress.status not in ACTIVE:
        return "—"
    if progress.eta_s < 1:
        return "finishing" if progress.phase in STAGES else "finishing (validation, checkpoint)"
    return format_duration(progress.eta_s)


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
            ("Phase 1 full model", artifacts.get("phase1_model")),
            ("Language-adapted model it was trained on", artifacts.get("language_model"))]
    body = "".join(f"<tr><td>{_esc(k)}</td><td><code>{_esc(v)}</code></td></tr>" for k, v in rows if v)
    zip_path = artifacts.get("adapter_zip")
    return (f"<div class='plan artifacts'><div class='title'>Outputs</div><table>{body}</table></div>",
            zip_path if zip_path and Path(zip_path).is_file() else None)


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
    view.artifacts_html, view.adapter_zip = part("outputs", lambda: _artifacts(run), ("", None))
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
