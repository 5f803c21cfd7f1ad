"""The scorecard panels: a run's (Training tab) and every model's beside the blind votes (Playground).

UI wiring only: the tables, sentences, curves and agreement come from `studio.logic.scorecards`,
scoring from `pipeline.quality.overview.score_run`. API names: score_run, run_scorecard,
scorecard_sentences, model_scorecards.
"""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from pipeline.quality.overview import score_run
from pipeline.train.jobs import JobError, compile_warmup, current_job
from pipeline.train.lock import warmup_busy_message
from studio.logic import scorecards as sc
from studio.logic.training_html import note
from studio.logic.training_plan import training_config
from studio.tabs.training_view import checked_run_id, failure

# model, CER, similarity, DNSMOS OVRL, quality score, flagged, note (as studio.logic.scorecards.table)
TABLE_WIDTHS = ["24%", "14%", "14%", "14%", "8%", "7%", "19%"]


# -- a run's scorecard (Training tab) --------------------------------------------------------------
@dataclass
class RunScorecard:
    message: gr.HTML
    table: gr.Dataframe
    score: gr.Button
    model: gr.Dropdown
    sentences: gr.Dataframe
    players: list[gr.Audio]

    @property
    def outputs(self) -> list:
        return [self.message, self.table, self.model, self.sentences, *self.players]


def build_run_scorecard() -> RunScorecard:
    """The Scorecard accordion: the table, "Score this run", and one model's sentences worst first."""
    with gr.Accordion("Scorecard: measured voice quality of this run", open=True, elem_id="run-scorecard"):
        with gr.Row(equal_height=True):
            message = gr.HTML(elem_id="scorecard-message")
            score = gr.Button("Score this run", variant="secondary", scale=0, min_width=180, elem_id="score-run")
        table = gr.Dataframe(interactive=False, wrap=True, show_label=False, column_widths=TABLE_WIDTHS,
                             elem_id="scorecard-table")
        model = gr.Dropdown(label="Sentences of", choices=[], interactive=True, elem_id="scorecard-model",
                            info="worst first: highest CER (else lowest similarity, else lowest OVRL)")
        with gr.Row():
            players = [gr.Audio(type="filepath", interactive=False, visible=False, buttons=["download"],
                                elem_id=f"scorecard-audio-{i}") for i in range(sc.WORST_PLAYERS)]
        sentences = gr.Dataframe(interactive=False, wrap=True, show_label=False, max_height=360,
                                 elem_id="scorecard-sentences")
    return RunScorecard(message, table, score, model, sentences, players)


def _sentence_updates(config, out_dir: str | None) -> list:
    """The sentences table and the worst sentences' players of one scorecard folder."""
    shown, players = sc.sentences(config, out_dir) if out_dir else (None, [])
    return [shown, *[gr.update(value=players[i][0], label=players[i][1], visible=True) if i < len(players)
                     else gr.update(value=None, visible=False) for i in range(sc.WORST_PLAYERS)]]


def run_scorecard_updates(config, run_id: str | None, message: str | None = None) -> list:
    """Everything the panel shows for `run_id`; an unreadable scorecard becomes a note, never a traceback."""
    try:
        rows = sc.run_rows(config, run_id)
        text, kind = sc.status_note(rows, run_id)
        chosen = sc.default_model(rows, run_id)
        sentences = _sentence_updates(config, chosen)
    except Exception as exc:  # noqa: BLE001 - a scorecard being written right now, a bad file
        return [note(failure(exc), "error"), None, gr.update(choices=[], value=None), *_sentence_updates(config, None)]
    return [(message or "") + note(text, kind), sc.table(rows) if rows else None,
            gr.update(choices=sc.model_choices(rows), value=chosen), *sentences]


def wire_run_scorecard(panel: RunScorecard, config, run_dd: gr.Dropdown, refresh: gr.Button, demo: gr.Blocks) -> None:
    """Shows the picked run's scorecard when the run changes or on ↻ Refresh; scores on request."""

    def on_show(run_id):
        return run_scorecard_updates(config, run_id or None)

    def on_model(out_dir):
        try:
            return [gr.skip(), *_sentence_updates(config, out_dir)]
        except Exception as exc:  # noqa: BLE001 - a folder outside the workspace, a scorecard being rewritten
            return [note(failure(exc), "error"), *_sentence_updates(config, None)]

    def on_score(run_id, progress=gr.Progress()):
        try:
            run_id = checked_run_id(config, run_id)
            job, warming = current_job(config), compile_warmup(config)
            if job:  # both on one GPU: the job could run out of memory
                raise JobError(f"Run {job['run_id']} is training now: score once it has finished, so that scoring "
                               "does not take the GPU's memory from it.")
            if warming:
                raise JobError(warmup_busy_message(warming["pid"], then="score"))
            progress(0.0, desc="loading the models")
            rows = score_run(training_config(config), run_id,
                             progress=lambda fraction, text: progress(fraction, desc=text))
        except Exception as exc:  # noqa: BLE001 - shown in the panel, never as a traceback
            gr.Warning(failure(exc))
            return [note(failure(exc), "error"), *[gr.skip()] * (len(panel.outputs) - 1)]
        scored = ", ".join(row.get("label", "") for row in rows)
        return run_scorecard_updates(config, run_id, note(f"Scored: {scored}.", "ok"))

    gr.on([run_dd.change, refresh.click, demo.load], on_show, inputs=run_dd, outputs=panel.outputs,
          api_name="run_scorecard", show_progress="hidden")
    panel.model.input(on_model, inputs=panel.model, outputs=[panel.message, panel.sentences, *panel.players],
                      api_name="scorecard_sentences")
    panel.score.click(on_score, inputs=run_dd, outputs=panel.outputs, api_name="score_run", concurrency_limit=1,
                      show_progress_on=[panel.table])


# -- every model beside the blind votes (Playground's A/B view) ------------------------------------
@dataclass
class ModelScorecards:
    agreement: gr.HTML
    table: gr.Dataframe
    refresh: gr.Button

    @property
    def outputs(self) -> list:
        return [self.agreement, self.table]


def build_model_scorecards() -> ModelScorecards:
    with gr.Accordion("Measured quality of every model, and your votes", open=True, elem_id="pg-scorecards"):
        with gr.Row(equal_height=True):
            agreement = gr.HTML(elem_id="pg-agreement")
            refresh = gr.Button("↻ Refresh", size="sm", scale=0, elem_id="pg-refresh-scorecards")
        table = gr.Dataframe(interactive=False, wrap=True, show_label=False, column_widths=TABLE_WIDTHS,
                             elem_id="pg-scorecard-table")
    return ModelScorecards(agreement, table, refresh)


def model_scorecard_updates(config) -> list:
    """The cross-model table and the agreement of the blind votes with it."""
    try:
        frame = sc.cross_model_table(config)
        text = sc.agreement_text(sc.ears_vs_metrics(config))
    except Exception as exc:  # noqa: BLE001
        return [note(failure(exc), "error"), None]
    if frame.empty:
        return [note("No model has a scorecard yet: score a run in the Training tab (“Score this run”) or run "
                     "`python -m pipeline evaluate`. " + text, "info"), None]
    return [note(text, "info"), frame]


def wire_model_scorecards(panel: ModelScorecards, config, triggers: list, after: list = ()) -> None:
    """Refreshes the panel on `triggers` (page load, the A/B tab opened), its own button, and once each
    event of `after` (a vote) has finished, so that the vote just recorded is counted."""
    def show():
        return model_scorecard_updates(config)

    gr.on([*triggers, panel.refresh.click], show, outputs=panel.outputs, api_name="model_scorecards",
          show_progress="hidden")
    for event in after:
        event.then(show, outputs=panel.outputs, api_visibility="private", show_progress="hidden")
