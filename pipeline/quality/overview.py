"""Scorecards side by side: the base model's baseline, a run's checkpoints and merged model, every run.

The baseline is the base model's scorecard for the studio's current dataset and speaker (its
reference clips decide the speaker similarity), kept in `eval/base-<dataset>-<speaker>/`; the
evaluation cache makes a second `ensure_baseline` speak and score nothing. Reading functions
(`read_baseline`, `run_scorecards`, `all_scorecards`, `sentence_rows`) load no model.
"""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path

import pandas as pd

from pipeline.quality.scorecard import (
    EVAL_DIR_NAME,
    METRICS,
    SUMMARY_NAME,
    EvaluationError,
    ModelSpec,
    Progress,
    Scorecard,
    Scorers,
    eval_dir,
    read_scorecard,
    slug,
)
from pipeline.quality.configured import config_scorers, evaluate_config_model, run_models, speaker_references
from pipeline.train.runs import list_runs, read_json, read_run

BASE_LABEL = "base"
MERGED_LABEL = "merged"
SENTENCE_COLUMNS = ["index", "sentence", "cer", "similarity", "ovrl", "flags", "audio_path"]
_STEP_LABEL = re.compile(r"^(?P<phase>.+)-step_(?P<step>\d+)$")  # run_models' "<phase>-step_000200"


# -- the baseline -------------------------------------------------------------------------------
def _selection(config, dataset_id: str | None, speaker: str | None) -> tuple[str | None, str | None]:
    """Dataset and speaker: those given, else the studio's current dataset and its speaker (the pick,
    else the one whose clips `speaker_references` would use)."""
    from pipeline.data.selection import load_selection, picked_speaker, reference_clips

    selection = load_selection(config)
    current = selection.get("dataset_id")
    dataset_id = dataset_id or current
    if dataset_id and not speaker:
        speaker = picked_speaker(selection, dataset_id)
        if not speaker and dataset_id == current:
            speaker = reference_clips(config, limit=1).speaker
    return dataset_id, speaker


def run_selection(config, run: dict) -> tuple[str | None, str | None]:
    """The dataset and speaker a run was trained and is judged on: run.json's (the dataset it
    extracted, a speaker phase's speaker), else the studio's current ones."""
    return _selection(config, run.get("dataset"), run.get("speaker"))


def _part(name: str | None) -> str:
    """A name as a folder-name part; one that slugging changed keeps a short hash of the original,
    so that "anna/b" and "anna-b" get baselines of their own."""
    if not name:
        return "none"
    safe = slug(name)[:40]
    return safe if safe == name else f"{safe}-{hashlib.sha256(name.encode()).hexdigest()[:6]}"


def baseline_dir(config, dataset_id: str | None = None, speaker: str | None = None) -> Path:
    """workspace/eval/base-<dataset>-<speaker> (base-none-none without a selected dataset)."""
    dataset_id, speaker = _selection(config, dataset_id, speaker)
    return eval_dir(config, f"{BASE_LABEL}-{_part(dataset_id)}-{_part(speaker)}")


def read_baseline(config) -> dict | None:
    """The base model's summary.json for the current dataset and speaker, None before `ensure_baseline`."""
    return read_json(baseline_dir(config) / SUMMARY_NAME)


def ensure_baseline(config, progress: Progress = None, device: str | None = None, synth_factory=None,
                    scorers: Scorers | None = None, dataset_id: str | None = None,
                    speaker: str | None = None) -> Scorecard:
    """The base model's scorecard for a dataset and speaker (default: the studio's current ones):
    evaluated once, then from the cache."""
    from pipeline.model.checkpoints import CheckpointError, ensure_base_model

    dataset_id, speaker = _selection(config, dataset_id, speaker)
    try:
        model_dir = ensure_base_model(config)
    except CheckpointError as exc:
        raise EvaluationError(f"The baseline needs the base model: {exc}") from exc
    scorers = scorers or config_scorers(config, speaker_references(config, speaker, dataset_id), device=device)
    return evaluate_config_model(config, ModelSpec(str(model_dir), (), BASE_LABEL), scorers=scorers,
                                 progress=progress, synth_factory=synth_factory, device=device,
                                 out_dir=baseline_dir(config, dataset_id, speaker))


# -- reading scorecards -------------------------------------------------------------------------
def _order(label: str, phases: list[str]) -> tuple:
    """Sort key of a run's scorecard folder: checkpoints by phase then step, others after, merged last."""
    found = _STEP_LABEL.match(label)
    if found:
        phase = found["phase"]
        rank = phases.index(phase) if phase in phases else len(phases)
        return 0, rank, phase, int(found["step"])
    return (2, 0, label, 0) if label == MERGED_LABEL else (1, 0, label, 0)


def _label(folder: str, mode: str) -> str:
    """Human label: "quick_lora merged", "lora step 200", else the folder's name."""
    found = _STEP_LABEL.match(folder)
    if found:
        return f"{found['phase']} step {int(found['step'])}"
    if folder == MERGED_LABEL:
        return f"{mode} merged" if mode else MERGED_LABEL
    return folder


def _row(summary: dict, label: str, out_dir: Path, **extra) -> dict:
    return {**summary, "label": label, "out_dir": str(out_dir), **extra}


def _baseline_rows(config, dataset_id: str | None = None, speaker: str | None = None) -> list[dict]:
    folder = baseline_dir(config, dataset_id, speaker)
    summary = read_json(folder / SUMMARY_NAME)
    return [_row(summary | {"model": BASE_LABEL}, BASE_LABEL, folder)] if isinstance(summary, dict) else []


def _run_dir(config, run_id: str) -> Path:
    run_dir = Path(config.runs_dir) / str(run_id or "")
    if not run_id or not run_dir.is_dir():
        raise EvaluationError(f"Run {run_id!r} does not exist under {config.runs_dir}; pick a run from the list.")
    return run_dir


def run_scorecards(config, run_id: str) -> list[dict]:
    """The baseline, then each scorecard under runs/<id>/eval/ (checkpoints by step, merged last).

    Each row is the summary.json plus "label" and "out_dir"; reads files only.
    """
    run_dir = _run_dir(config, run_id)
    run = read_run(run_dir)
    mode, phases = str(run.get("mode") or ""), list(run.get("phases") or [])
    rows = []
    for folder in sorted((p for p in (run_dir / EVAL_DIR_NAME).glob("*") if p.is_dir()),
                         key=lambda p: _order(p.name, phases)):
        summary = read_json(folder / SUMMARY_NAME)
        if isinstance(summary, dict):
            rows.append(_row(summary, _label(folder.name, mode), folder, run_id=run_id))
    return _baseline_rows(config, *run_selection(config, run)) + rows


def all_scorecards(config) -> list[dict]:
    """The baseline and each run's merged model ("<mode> (<run id>)"): base vs quick_lora vs full_finetune ..."""
    rows = _baseline_rows(config)
    for run in reversed(list_runs(config)):  # oldest first
        run_dir = Path(run["dir"])
        folder = run_dir / EVAL_DIR_NAME / MERGED_LABEL
        summary = read_json(folder / SUMMARY_NAME)
        if isinstance(summary, dict):
            rows.append(_row(summary, f"{run.get('mode') or 'run'} ({run_dir.name})", folder, run_id=run_dir.name))
    return rows


# -- scoring a run ------------------------------------------------------------------------------
def _newest(specs: list[ModelSpec], phases: list[str]) -> ModelSpec:
    """The merged model, else the last checkpoint of the last phase."""
    merged = [s for s in specs if s.label == MERGED_LABEL]
    return merged[0] if merged else max(specs, key=lambda s: _order(s.label, phases))


def score_run(config, run_id: str, progress: Progress = None, device: str | None = None, synth_factory=None,
              scorers: Scorers | None = None) -> list[dict]:
    """Ensure the baseline, score the run's merged model (or its newest checkpoint), return `run_scorecards`."""
    run_dir = _run_dir(config, run_id)
    run = read_run(run_dir)
    spec = _newest(run_models(config, run_id), list(run.get("phases") or []))
    dataset_id, speaker = run_selection(config, run)
    # one set of scorers: the ASR and the speaker encoder load once for both models
    scorers = scorers or config_scorers(config, speaker_references(config, speaker, dataset_id), device=device)
    part = (lambda lo, hi: (lambda f, m: progress(lo + (hi - lo) * f, m))) if progress else (lambda lo, hi: None)
    ensure_baseline(config, part(0.0, 0.5), device, synth_factory, scorers, dataset_id, speaker)
    evaluate_config_model(config, spec, run_id, scorers=scorers, progress=part(0.5, 1.0),
                          synth_factory=synth_factory, device=device)
    return run_scorecards(config, run_id)


# -- one scorecard's sentences ------------------------------------------------------------------
def _has_values(frame: pd.DataFrame, column: str) -> bool:
    return column in frame and pd.to_numeric(frame[column], errors="coerce").notna().any()


def sentence_rows(out_dir: str | Path, worst_by: str = "cer") -> pd.DataFrame:
    """Per-sentence rows of a scorecard, worst first: by `worst_by` when it has values, else by CER,
    else lowest similarity, else lowest OVRL. Columns: index, sentence, cer, similarity, ovrl, flags, audio_path."""
    if worst_by not in METRICS:
        raise EvaluationError(f"worst_by {worst_by!r} is not a scorecard metric; choose one of {', '.join(METRICS)}.")
    found = read_scorecard(out_dir)
    if found is None:
        raise EvaluationError(f"No scorecard in {out_dir} (scores.parquet and summary.json); evaluate the model first.")
    frame = found[0].copy()
    for column in SENTENCE_COLUMNS:
        if column not in frame:
            frame[column] = "" if column in ("sentence", "flags", "audio_path") else math.nan
    frame["flags"] = frame["flags"].fillna("").astype(str)
    by = next((c for c in (worst_by, "cer", "similarity", "ovrl") if _has_values(frame, c)), None)
    if by is not None:
        frame = frame.sort_values([by, "index"], ascending=[METRICS[by], True], na_position="last", kind="stable")
    return frame[SENTENCE_COLUMNS].reset_index(drop=True)
