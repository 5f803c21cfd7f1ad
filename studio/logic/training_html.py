"""The Training tab's HTML of a run: its progress card, its outputs, and the tab's one-line notes.

Plain strings built from `studio.logic.runs_view.RunProgress` and run.json, styled by the tab's CSS
(`studio.tabs.training_view.CSS`). No gradio import.
"""

from __future__ import annotations

import html
from pathlib import Path

from pipeline.estimate.cost import CPU_CHARGE
from studio.logic.run_format import format_duration, format_money, hourly_price
from studio.logic.runs_view import ACTIVE, MODE_LABELS, STAGES, RunProgress


def esc(value) -> str:
    return html.escape("" if value is None else str(value))


def note(message: str, kind: str = "info") -> str:
    return f"<div class='note {kind}'>{esc(message)}</div>"


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
    facts_html = "".join(f"<div class='fact'><div class='value'>{esc(v)}</div><div class='label'>{esc(k)}</div></div>"
                         for k, v in facts)
    voice = f" · voice {esc(progress.speaker)}" if progress.speaker else ""
    sub = [f"{esc(where)}" + (f" — {esc(progress.eta_note)}" if progress.eta_note else ""),
           (f"{CPU_CHARGE}: this run trains on the CPU; the price (${progress.price_per_hour:.2f}/h, "
            f"{esc(progress.gpu)}) is for GPU time only." if progress.on_cpu else
            f"Cost at {hourly_price(progress.price_per_hour, progress.gpus)} ({esc(progress.gpu)}): elapsed × price.")]
    if progress.speaker_reason:
        sub.append(f"Voice: {esc(progress.speaker)} — {esc(progress.speaker_reason)}")
    if progress.memory_plan:
        sub.append(f"Memory plan for this GPU: {esc(progress.memory_plan)}")
    if progress.message and status != "failed":
        sub.append(esc(progress.message))
    extra = ""
    if status == "failed":
        why = progress.error or progress.message or "see the log below"
        # settings that define a run stay on resume: a run that needs other settings starts anew
        then = ("" if "start a new run" in why else
                " Fix the cause, then Resume to continue from the last checkpoint.")
        extra = note(f"The run failed: {why.rstrip('.')}.{then}", "error")
    return (f"<div class='run-card' id='run-card'><div class='run-head'><span class='badge {esc(status)}'>"
            f"{esc(status)}</span><span class='id'>{esc(progress.run_id)}</span>"
            f"<span>· {esc(MODE_LABELS.get(progress.mode, progress.mode))}{voice}</span></div>"
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


def outputs_html(run: dict) -> tuple[str, str | None]:
    """The Outputs table of run.json's artifacts ("" when none yet), and the adapter zip if it exists."""
    artifacts = run.get("artifacts") or {}
    if not artifacts:
        return "", None
    rows = [("Merged model (for the Playground)", artifacts.get("merged")),
            ("Adapter", artifacts.get("adapter")),
            ("Phase 1 full model", artifacts.get("phase1_model")),
            ("Language-adapted model it was trained on", artifacts.get("language_model"))]
    body = "".join(f"<tr><td>{esc(k)}</td><td><code>{esc(v)}</code></td></tr>" for k, v in rows if v)
    zip_path = artifacts.get("adapter_zip")
    return (f"<div class='plan artifacts'><div class='title'>Outputs</div><table>{body}</table></div>",
            zip_path if zip_path and Path(zip_path).is_file() else None)
