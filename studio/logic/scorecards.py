"""Voice-quality scorecards as the studio shows them: a run's table, one model's sentences worst
first, the quality curves of training, the cross-model table and how blind votes agree with them.

Read-only over the files `pipeline.quality.overview` and the training loop write; scoring itself
is `pipeline.quality.overview.score_run`. No gradio import.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from pipeline.quality.agreement import Agreement, agreement, scores_by_model, summary_score
from pipeline.quality.overview import all_scorecards, run_scorecards, sentence_rows
from pipeline.quality.configured import scorecard_table
from pipeline.train.runs import list_runs
from studio.logic import run_charts
from studio.logic.playground import PREFERENCES_NAME, read_preferences, vote_roots
from studio.logic.runs_view import PHASE_LABELS, phase_metrics

WORST_PLAYERS = 4  # the worst sentences of a scorecard get a player each
SENTENCE_HEADERS = {"index": "#", "sentence": "sentence", "cer": "CER", "similarity": "similarity",
                    "ovrl": "DNSMOS OVRL", "flags": "flags"}
NO_RUN = "Pick a run to see its scorecard."
NOT_SCORED = ("This run has no scorecard yet: “Score this run” speaks the evaluation sentences with its merged "
              "model (or newest checkpoint) and with the base model, and measures CER, speaker similarity and "
              "DNSMOS naturalness.")


# -- a run's scorecard -----------------------------------------------------------------------------
def table(rows: list[dict]) -> pd.DataFrame:
    """One row per model (its label), CER / similarity / DNSMOS OVRL as 'mean [low, high]', the combined
    quality score (higher is better), flagged sentences and a note ("random weights: produces noise")."""
    frame = scorecard_table([{**row, "model": row.get("label") or row.get("model", "")} for row in rows])
    if not frame.empty:
        scores = [summary_score(row) for row in rows]
        frame.insert(4, "quality score", ["–" if s is None else f"{s:.3f}" for s in scores])
    return frame


def run_rows(config, run_id: str | None) -> list[dict]:
    """The baseline and the run's scorecards (`run_scorecards`); none without a run."""
    return run_scorecards(config, run_id) if run_id else []


def status_note(rows: list[dict], run_id: str | None) -> tuple[str, str]:
    """(text, kind) above the table: why it is empty, or what the scorers could not do."""
    if not run_id:
        return NO_RUN, "info"
    if not any(row.get("run_id") == run_id for row in rows):
        return NOT_SCORED, "info"
    notes = list(dict.fromkeys(n for row in rows for n in row.get("notes") or []))
    if notes:
        return " ".join(notes), "info"
    return "Means over the evaluation sentences with 95 % bootstrap intervals; quality score: 1 − CER, similarity " \
           "and OVRL mapped to 0–1, averaged (higher is better).", "ok"


def model_choices(rows: list[dict]) -> list[tuple[str, str]]:
    """(label, scorecard folder) of each scored model, for the per-sentence view."""
    return [(row.get("label") or row.get("model") or Path(row["out_dir"]).name, row["out_dir"]) for row in rows]


def default_model(rows: list[dict], run_id: str | None) -> str | None:
    """The run's last scorecard (merged model, else newest checkpoint), else the baseline."""
    own = [row for row in rows if row.get("run_id") == run_id]
    chosen = own[-1] if own else (rows[0] if rows else None)
    return chosen["out_dir"] if chosen else None


def _number(value) -> str:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return "–"
    return f"{value:.3f}" if math.isfinite(value) else "–"


def scorecard_dir(config, out_dir: str | Path) -> Path:
    """A scorecard folder from the page, accepted only inside the workspace (where `evaluate` writes)."""
    path = Path(str(out_dir or "")).resolve()
    if not out_dir or not path.is_relative_to(Path(config.workspace).resolve()):
        raise ValueError(f"{out_dir!r} is not a scorecard folder of this workspace: pick a model from “Sentences of”.")
    return path


def sentences(config, out_dir: str | Path) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """A scorecard's sentences worst first (CER, else similarity, else OVRL) for a table, and
    (wav path, caption) of the worst WORST_PLAYERS whose audio is on disk."""
    rows = sentence_rows(scorecard_dir(config, out_dir))
    shown = rows[list(SENTENCE_HEADERS)].copy()
    for column in ("cer", "similarity", "ovrl"):
        shown[column] = shown[column].map(_number)
    shown = shown.rename(columns=SENTENCE_HEADERS)
    players = []
    for row in rows.itertuples(index=False):
        if len(players) == WORST_PLAYERS:
            break
        if row.audio_path and Path(row.audio_path).is_file():
            caption = (f"#{row.index} · CER {_number(row.cer)} · sim {_number(row.similarity)} · "
                       f"OVRL {_number(row.ovrl)} · {row.sentence[:60]}")
            players.append((str(row.audio_path), caption))
    return shown, players


# -- voice quality during training ---------------------------------------------------------------
def quality_figure(run_dir: str | Path | None, phase: str | None) -> go.Figure:
    """The validations' CER, similarity and DNSMOS OVRL of the phase shown (a message when none)."""
    title = "Voice quality during training" + (f" — {PHASE_LABELS.get(phase, phase)}" if phase else "")
    if not run_dir or not phase:
        return run_charts.quality_curves(None, title)
    return run_charts.quality_curves(phase_metrics(run_dir, phase)[1], title)


# -- every model, and the listeners' votes -------------------------------------------------------
def cross_model_table(config) -> pd.DataFrame:
    """The baseline and each run's merged model, one row each."""
    return table(all_scorecards(config))


def preference_files(config) -> list[Path]:
    """Every file the Playground writes votes to (each run's, and the workspace's for the base alone)."""
    return [Path(run["dir"]) / PREFERENCES_NAME for run in list_runs(config)] + \
        [Path(config.workspace) / PREFERENCES_NAME]


def every_scorecard(config) -> list[dict]:
    """The baseline, each run's merged model and each run's other scorecards (checkpoints)."""
    rows = list(all_scorecards(config))
    for run in list_runs(config):
        rows += run_scorecards(config, Path(run["dir"]).name)
    return list({row["out_dir"]: row for row in rows}.values())


def ears_vs_metrics(config) -> Agreement:
    """The blind votes recorded in the Playground set beside the models' quality scores."""
    scores = scores_by_model(every_scorecard(config), vote_roots(config))
    return agreement(read_preferences(preference_files(config)), scores)


def agreement_text(result: Agreement) -> str:
    """'Ears vs metrics: 5 votes, agreement 60 %' with what was left out."""
    left_out = [f"{n} {what}" for n, what in ((result.no_preference, "without a preference"),
                                              (result.equal_scores, "between equal scores"),
                                              (result.unscored, "with a model not scored yet")) if n]
    extra = f" ({', '.join(left_out)} not counted)" if left_out else ""
    how = (" Agreement: the share of votes whose preferred model has the higher quality score."
           if result.counted else "")
    return f"Ears vs metrics: {result.text()}{extra}.{how}"
