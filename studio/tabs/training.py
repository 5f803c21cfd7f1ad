"""The Training tab: start, watch, cancel and resume a run; its curves, log, cost, audio and scorecard.

Training runs in its own process (pipeline.train.jobs), so this tab only reads the run directory: a
`gr.Timer` refreshes the view every few seconds, and a browser reload re-attaches to the running
job (or shows the most recent run). What is shown comes from `studio.tabs.training_view` (with
`studio.logic.training_plan` and `studio.logic.training_html`); this module wires it. Start trains the mode chosen in Modes & cost, or, when a finished full fine-tune's
language-adapted model is picked, a new speaker's LoRA on it; Start and Resume run on the GPUs chosen
here. API names: start_training (its inputs: that pick's run id, empty for the mode, and the GPU
count), cancel_training, resume_training (the run id and the GPU count), show_run, and the JSON
endpoint run_status.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from pipeline.train.jobs import JobError, cancel_job, current_job, job_status
from studio.logic.runs_view import ACTIVE, PHASE_LABELS, run_progress
from studio.logic import run_charts, scorecards, training_gpus as gpu_logic
from studio.logic.training_html import note
from studio.logic.training_plan import FROM_BASE, language_model_choices, language_model_info, plan_html
from studio.tabs import scorecard_view, training_gpus

from studio.tabs.training_view import (AUDIO_SLOTS, CSS, LOG_LINES, REFRESH_SECONDS, RunView, checked_run_id,
                                       comparison_html, default_run, empty_view, failure, run_choices, run_view,
                                       start_label, start_run)

# Start and Resume both launch the one training job: one queue for the two, so that two requests
# sent at the same instant run one after the other and the second sees the first job
JOB_QUEUE = "training-job"


# -- the tab ----------------------------------------------------------------------------------------
def build(ctx) -> None:
    config = ctx.config

    gr.Markdown("### Start a run", elem_classes="section-title")
    with gr.Row(equal_height=False):
        with gr.Column(scale=3, min_width=360):
            plan = gr.HTML(plan_html(config), css_template=CSS, elem_id="training-plan")
            gr.Markdown("Change the mode and its settings in **Modes & cost**, the dataset and voice in "
                        "**Dataset**.", elem_classes="section-hint")
            # the reference project's second mode: reuse a finished full fine-tune's language model
            base_dd = gr.Dropdown(label="Train a new speaker on a language-adapted model",
                                  choices=language_model_choices(config), value=FROM_BASE[1],
                                  info=language_model_info(config), elem_id="language-model")
        with gr.Column(scale=2, min_width=280):
            gpu_dd = training_gpus.control(config)
            start_btn = gr.Button("Start training", variant="primary", elem_id="start-training")
            with gr.Row():
                cancel_btn = gr.Button("Cancel", variant="stop", interactive=False, elem_id="cancel-training")
                resume_btn = gr.Button("Resume", interactive=False, elem_id="resume-training")
            message = gr.HTML(elem_id="training-message")

    gr.Markdown("### Run", elem_classes="section-title")
    with gr.Row(equal_height=False):
        # custom values: runs created after the page was built are valid too (checked_run_id vets them)
        run_dd = gr.Dropdown(label="Run", choices=run_choices(config), scale=4, elem_id="run-choice",
                             allow_custom_value=True, info="the running job, or any past run to look at")
        phase_radio = gr.Radio(label="Phase", choices=[], visible=False, scale=3, elem_id="phase-choice")
        with gr.Column(scale=0, min_width=120):
            refresh_btn = gr.Button("↻ Refresh", size="md", elem_id="refresh-runs")
    progress = gr.HTML(css_template=CSS, elem_id="run-progress")
    curves = gr.Plot(show_label=False, elem_id="training-curves")
    quality = gr.Plot(show_label=False, elem_id="quality-curves")
    with gr.Row(equal_height=False):
        with gr.Column(scale=3, min_width=360):
            log_box = gr.Textbox(label="Log (last lines)", lines=LOG_LINES, max_lines=LOG_LINES, interactive=False,
                                 autoscroll=True, elem_id="run-log", buttons=["copy"])
        with gr.Column(scale=2, min_width=320):
            comparison = gr.HTML(css_template=CSS, elem_id="run-comparison")
    with gr.Row(equal_height=False):
        with gr.Column(scale=3, min_width=360):
            artifacts = gr.HTML(css_template=CSS, elem_id="run-artifacts")
        with gr.Column(scale=2, min_width=320):
            adapter_file = gr.File(label="Adapter (zip)", visible=False, interactive=False, elem_id="adapter-zip")
    scorecard = scorecard_view.build_run_scorecard()
    with gr.Column(visible=False, elem_id="eval-audio") as eval_group:
        gr.Markdown("#### Evaluation sentences spoken by the trained model", elem_classes="section-title")
        with gr.Row():
            eval_players = [gr.Audio(type="filepath", interactive=False, buttons=["download"],
                                     elem_id=f"eval-audio-{i}") for i in range(AUDIO_SLOTS)]
    with gr.Column(visible=False, elem_id="val-audio") as val_group:
        gr.Markdown("#### The evaluation sentences at each validation (hear progress, step by step)", elem_classes="section-title")
        val_step = gr.Dropdown(label="At step", choices=[], elem_id="val-step")
        with gr.Row():
            val_players = [gr.Audio(type="filepath", interactive=False, elem_id=f"val-audio-{i}")
                           for i in range(AUDIO_SLOTS)]
    timer = gr.Timer(REFRESH_SECONDS)
    signature = gr.State(())
    pinned_phase = gr.State(None)
    followed_job = gr.State(None)  # the job this page last switched to (it follows each new job once)

    # -- handlers ---------------------------------------------------------------------------------
    def audio_updates(view: RunView) -> list:
        updates = [gr.update(visible=bool(view.eval_audio))]
        for i in range(AUDIO_SLOTS):
            item = view.eval_audio[i] if i < len(view.eval_audio) else None
            updates.append(gr.update(value=item[0], label=item[1][:80], visible=True) if item
                           else gr.update(value=None, visible=False))
        steps = [step for step, _ in view.val_audio]
        updates.append(gr.update(visible=bool(steps)))
        updates.append(gr.update(choices=steps, value=steps[-1] if steps else None))
        wavs = view.val_audio[-1][1] if view.val_audio else []
        updates += [gr.update(value=wavs[i], label=Path(wavs[i]).stem, visible=True) if i < len(wavs)
                    else gr.update(value=None, visible=False) for i in range(AUDIO_SLOTS)]
        return updates

    view_outputs = [run_dd, phase_radio, progress, curves, log_box, comparison, artifacts,
                    adapter_file, cancel_btn, resume_btn, signature, eval_group, *eval_players, val_group,
                    val_step, *val_players, quality]

    def render(view: RunView, choices=None) -> list:
        dropdown = gr.update(value=view.run_id) if choices is None else gr.update(choices=choices, value=view.run_id)
        phases = [(PHASE_LABELS.get(p, p), p) for p in view.phases]
        return [dropdown, gr.update(choices=phases, value=view.phase, visible=len(phases) > 1),
                view.progress_html, view.figure, view.log,
                comparison_html(view),
                view.artifacts_html, gr.update(value=view.adapter_zip, visible=bool(view.adapter_zip)),
                gr.update(interactive=view.can_cancel), gr.update(interactive=view.can_resume),
                view.signature, *audio_updates(view), quality_plot(view)]

    def quality_plot(view: RunView):
        try:
            return scorecards.quality_figure(config.runs_dir / view.run_id if view.run_id else None, view.phase)
        except Exception as exc:  # noqa: BLE001 - a metrics file being written: said in the figure
            return run_charts.message_figure("Voice quality during training", failure(exc))

    def safe_view(run_id, phase=None) -> RunView:
        try:
            return run_view(config, run_id, phase)
        except Exception as exc:  # noqa: BLE001 - shown in the tab, never as a traceback
            return empty_view(config, run_id, failure(exc))

    def job_id() -> str | None:
        job = current_job(config)
        return job["run_id"] if job else None

    def base_updates(base_run=None) -> list:
        """The language-model dropdown (choices refreshed, the pick kept while still offered) and Start."""
        choices = language_model_choices(config)
        kept = base_run if base_run in [value for _, value in choices] else FROM_BASE[1]
        return [gr.update(choices=choices, value=kept, info=language_model_info(config)),
                gr.update(value=start_label(kept))]

    def on_open():
        followed = job_id()
        view = safe_view(followed or default_run(config))
        return [plan_html(config), *render(view, run_choices(config)), None, followed, *base_updates()]

    def on_base(base_run, gpus=None):
        return [plan_html(config, base_run or None, gpus), gr.update(value=start_label(base_run))]

    def on_start(base_run=None, gpus=None):
        try:
            job = start_run(config, base_run=base_run or None, gpus=gpus)
        except Exception as exc:  # noqa: BLE001 - JobError (one at a time, no dataset), ConfigError, ...
            gr.Warning(failure(exc))
            return [note(failure(exc), "error"), *[gr.skip()] * len(view_outputs), gr.skip()]
        view = safe_view(job["run_id"])
        what = (f"speaker run {job['run_id']} on {base_run}'s language-adapted model" if base_run
                else f"run {job['run_id']}")
        text = (f"Started {what}{gpu_logic.started_text(gpus)} (process {job['pid']}). "
                "It keeps going if you close the page.")
        return [note(text, "ok"), *render(view, run_choices(config)), None]

    def on_cancel(run_id):
        try:
            running = job_id()
            if run_id and running and checked_run_id(config, run_id) != running:
                raise JobError(f"Run '{run_id}' is not the running job ('{running}' is): pick it to cancel it.")
            state = cancel_job(config)
        except Exception as exc:  # noqa: BLE001
            return [note(failure(exc), "error"), *[gr.skip()] * len(view_outputs)]
        text = (f"Run {state.get('id', run_id)} stopped ({state.get('status')}). "
                f"{state.get('message') or ''} Resume continues from the last checkpoint.")
        return [note(text, "ok"), *render(safe_view(run_id), run_choices(config))]

    def on_resume(run_id, gpus=None):
        try:
            job = start_run(config, checked_run_id(config, run_id), gpus=gpus)
        except Exception as exc:  # noqa: BLE001
            return [note(failure(exc), "error"), *[gr.skip()] * len(view_outputs)]
        text = f"Resumed run {job['run_id']} from its last checkpoint{gpu_logic.started_text(gpus)}."
        return [note(text, "ok"), *render(safe_view(run_id), run_choices(config))]

    def on_pick(run_id):
        return [*render(safe_view(run_id)), None]

    def on_phase(run_id, phase):
        return [*render(safe_view(run_id, phase)), phase]

    def on_refresh(run_id, phase, base_run, gpus=None):
        base = base_updates(base_run)
        kept = base[0]["value"]
        return [plan_html(config, kept or None, gpus), *render(safe_view(run_id, phase), run_choices(config)), *base]

    def on_tick(run_id, phase, last, followed):
        running = job_id()
        if running and running != followed:  # a job started since this page last looked: show it
            return [*render(safe_view(running), run_choices(config)), None, running]
        keep = [gr.skip(), gr.skip()]  # pinned phase, followed job
        if not run_id:
            return [gr.skip()] * len(view_outputs) + keep
        view = safe_view(run_id, phase)
        if tuple(view.signature) == tuple(last or ()) and view.status not in ACTIVE:
            return [gr.skip()] * len(view_outputs) + keep
        if tuple(view.signature) == tuple(last or ()):  # only time and money moved: keep the plot's zoom
            updates = render(view)
            updates[view_outputs.index(curves)] = updates[view_outputs.index(quality)] = gr.skip()
            return updates + keep
        return render(view, run_choices(config)) + keep  # the run's status in the dropdown may have changed

    def on_val_step(run_id, phase, step):
        view = safe_view(run_id, phase)
        wavs = dict(view.val_audio).get(step, [])
        return [gr.update(value=wavs[i], label=Path(wavs[i]).stem, visible=True) if i < len(wavs)
                else gr.update(value=None, visible=False) for i in range(AUDIO_SLOTS)]

    def run_status(run_id: str) -> dict:
        """Progress of a run as JSON: status, phase, step, total, ETA, elapsed, money spent, points."""
        try:
            run_id = checked_run_id(config, run_id)
        except JobError as exc:
            raise gr.Error(str(exc)) from None
        view = run_view(config, run_id)
        run_dir = config.runs_dir / run_id
        return {**run_progress(run_dir, job_status(config, run_id), config).as_dict(), "points": view.points,
                "phase_shown": view.phase, "audio": [path for path, _ in view.eval_audio]}

    # -- wiring --------------------------------------------------------------------------------------
    start_btn.click(on_start, inputs=[base_dd, gpu_dd], outputs=[message, *view_outputs, pinned_phase],
                    api_name="start_training", concurrency_limit=1, concurrency_id=JOB_QUEUE)
    base_dd.input(on_base, inputs=[base_dd, gpu_dd], outputs=[plan, start_btn], api_visibility="private")
    gpu_dd.input(on_base, inputs=[base_dd, gpu_dd], outputs=[plan, start_btn], api_visibility="private")
    cancel_btn.click(on_cancel, inputs=run_dd, outputs=[message, *view_outputs], api_name="cancel_training",
                     concurrency_limit=1)
    resume_btn.click(on_resume, inputs=[run_dd, gpu_dd], outputs=[message, *view_outputs],
                     api_name="resume_training", concurrency_limit=1, concurrency_id=JOB_QUEUE)
    run_dd.input(on_pick, inputs=run_dd, outputs=[*view_outputs, pinned_phase], api_name="show_run")
    phase_radio.input(on_phase, inputs=[run_dd, phase_radio], outputs=[*view_outputs, pinned_phase],
                      api_visibility="private")
    refresh_btn.click(on_refresh, inputs=[run_dd, pinned_phase, base_dd, gpu_dd],
                      outputs=[plan, *view_outputs, base_dd, start_btn], api_visibility="private")
    timer.tick(on_tick, inputs=[run_dd, pinned_phase, signature, followed_job],
               outputs=[*view_outputs, pinned_phase, followed_job], show_progress="hidden",
               trigger_mode="once", api_visibility="private")
    val_step.input(on_val_step, inputs=[run_dd, pinned_phase, val_step], outputs=val_players,
                   api_visibility="private")
    ctx.selection.change(lambda base_run, gpus: plan_html(config, base_run or None, gpus),
                         inputs=[base_dd, gpu_dd], outputs=plan, api_visibility="private", show_progress="hidden")
    ctx.demo.load(on_open, outputs=[plan, *view_outputs, pinned_phase, followed_job, base_dd, start_btn],
                  api_visibility="private")
    scorecard_view.wire_run_scorecard(scorecard, config, run_dd, refresh_btn, ctx.demo)
    gr.api(run_status, api_name="run_status")
