"""The Dataset tab: choose a source, load it with progress, inspect clips, pick the voice.

UI wiring only: loading, statistics and the recommendation come from `pipeline.data.dataset`, the
charts from `studio.logic.charts`, the formatting from `studio.tabs.dataset_view`. API names of the events
(for gradio_client): load_dataset, open_selection, filter_clips, snr_chart, speaker_details,
reshuffle_clips, use_speaker, plus the JSON endpoints dataset_summary and speaker_stats. The
"Prepared dataset" source lists `pipeline.data.dataset.list_prepared_datasets` (datasets built earlier,
e.g. by `python -m pipeline prepare`) and opens the chosen one from the workspace.
"""

from __future__ import annotations

import json
import logging
import random

import gradio as gr

from studio.logic import charts
from pipeline.data import dataset as datasets
from pipeline.data.dataset import list_datasets, load_dataset, open_dataset
from pipeline.data.selection import load_selection, picked_speaker, save_selection

from studio.tabs import dataset_view as view

log = logging.getLogger(__name__)
SOURCE_CHOICES = [("Bundled sample", "sample"), ("Folder on the server", "folder"),
                  ("Upload a zip", "zip"), ("Hugging Face", "huggingface"),
                  ("Prepared dataset", "prepared")]
GALLERY_SIZE = 3


def _failure(exc: Exception) -> str:
    """A one-line message for the UI; the traceback goes to the console only."""
    if isinstance(exc, ValueError):
        return str(exc)
    log.exception("Dataset tab: unexpected error")
    return f"Unexpected error ({type(exc).__name__}): {exc}. The server console has the details."


def _reasons_chart(manifest):
    """At least as tall as the SNR chart plus the colour switch above it, so the row lines up."""
    fig = charts.rejection_reasons(manifest)
    return fig.update_layout(height=max(fig.layout.height or 0, 398))


def _records(frame) -> list[dict]:
    return json.loads(frame.to_json(orient="records"))  # plain JSON types (no numpy, NaN → null)


def _prepared(config) -> list[dict]:
    """Datasets already built in the workspace (attribute looked up per call: tests replace it)."""
    return datasets.list_prepared_datasets(config)


def build(ctx) -> None:
    config, ds_cfg = ctx.config, ctx.config.dataset
    configured_speaker = ctx.config.speaker.name if ctx.config.speaker.policy == "manual" else None
    policy = view.ranking_policy(ctx.config.speaker.policy)

    # -- source form and summary ---------------------------------------------------------------
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=320):
            gr.Markdown("### Source", elem_classes="section-title")
            kind = gr.Radio(SOURCE_CHOICES, value=ds_cfg.source, show_label=False, elem_id="source-kind")
            with gr.Group(visible=ds_cfg.source == "sample") as sample_group:
                gr.Markdown(view.sample_description(), elem_classes="section-hint", padding=True)
            with gr.Group(visible=ds_cfg.source == "folder") as folder_group:
                folder = gr.Textbox(label="Folder on the server", placeholder="/data/my_voice",
                                    value=ds_cfg.path if ds_cfg.source == "folder" else None,
                                    info=view.FOLDER_INFO, elem_id="source-folder")
            with gr.Group(visible=ds_cfg.source == "zip") as zip_group:
                zip_file = gr.File(label="Zip of clips", file_types=[".zip"], type="filepath",
                                   elem_id="source-zip")
            with gr.Group(visible=ds_cfg.source == "huggingface") as hf_group:
                with gr.Row():
                    hf_repo = gr.Textbox(label="Repository", value=ds_cfg.hf_repo, scale=2)
                    hf_config = gr.Textbox(label="Config", value=ds_cfg.hf_config, scale=1)
                with gr.Row():
                    hf_split = gr.Textbox(label="Split", value=ds_cfg.hf_split)
                    hf_revision = gr.Textbox(label="Revision", value=ds_cfg.hf_revision)
                with gr.Row():
                    col_audio = gr.Textbox(label="Audio column", value=ds_cfg.columns.audio)
                    col_text = gr.Textbox(label="Text column", value=ds_cfg.columns.text)
                    col_speaker = gr.Textbox(label="Speaker column", value=ds_cfg.columns.speaker)
            with gr.Group(visible=False) as prepared_group:
                with gr.Row(equal_height=True):
                    prepared = gr.Dropdown(label="Prepared dataset", choices=[], scale=5,
                                           info="Built earlier in this workspace, e.g. by "
                                                "python -m pipeline prepare; opened as it was built",
                                           elem_id="prepared-dataset")
                    refresh_btn = gr.Button("Refresh list", scale=1, min_width=80, elem_id="prepared-refresh")
            with gr.Row(equal_height=True):
                max_clips = gr.Number(label="Max clips", value=ds_cfg.max_clips, precision=0,
                                      minimum=1, scale=1, elem_id="max-clips")
                force = gr.Checkbox(label="Re-analyse even if cached", value=False, scale=1)
            load_btn = gr.Button("Load dataset", variant="primary", elem_id="load-dataset")
            message = gr.HTML(elem_id="dataset-message")
        with gr.Column(scale=3, min_width=360):
            gr.Markdown("### Summary", elem_classes="section-title")
            summary = gr.HTML(view.empty_summary_html(), elem_id="dataset-summary")
            dataset_id = gr.Textbox(label="Dataset id", visible=False, elem_id="dataset-id")

    # -- results (hidden until a dataset is loaded) ------------------------------------------------
    with gr.Column(visible=False, elem_id="dataset-results") as results:
        gr.Markdown("### Overview", elem_classes="section-title")
        with gr.Row(equal_height=False):
            overview_plot = gr.Plot(show_label=False, elem_id="chart-speakers")
            duration_plot = gr.Plot(show_label=False, elem_id="chart-durations")
        with gr.Row(equal_height=False):
            with gr.Column():
                color_by = gr.Radio([("Colour by status", "status"), ("Colour by speaker", "speaker")],
                                    value="status", show_label=False, elem_id="snr-color")
                snr_plot = gr.Plot(show_label=False, elem_id="chart-snr")
            reasons_plot = gr.Plot(show_label=False, elem_id="chart-reasons")

        gr.Markdown("### Choose the voice", elem_classes="section-title")
        recommendation = gr.Markdown(elem_id="recommendation")
        rankings = gr.Dataframe(interactive=False, max_height=240, elem_id="speaker-ranking",
                                label="Speaker rankings: by usable minutes (recommended) and by clips "
                                      "(most_clips)")
        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=300):
                # allow_custom_value: API clients in a fresh session pass names the empty initial
                # choices do not hold; the handlers check the name against the dataset instead.
                speaker = gr.Dropdown(label="Speaker for single-speaker training", choices=[],
                                      interactive=True, allow_custom_value=True, elem_id="speaker-choice")
                speaker_card = gr.HTML(elem_id="speaker-card")
                with gr.Row():
                    reshuffle_btn = gr.Button("Reshuffle clips", elem_id="reshuffle")
                    use_btn = gr.Button("Use this speaker", variant="primary", elem_id="use-speaker")
                confirmation = gr.HTML(elem_id="speaker-confirmation")
            with gr.Column(scale=3, min_width=320, elem_id="speaker-gallery"):
                players, captions = [], []
                for i in range(GALLERY_SIZE):
                    players.append(gr.Audio(type="filepath", interactive=False, label=f"Clip {i + 1}",
                                            buttons=["download"], elem_id=f"gallery-audio-{i}"))
                    captions.append(gr.Markdown(elem_classes="clip-caption", elem_id=f"gallery-text-{i}"))

        with gr.Tabs(elem_id="dataset-tables"):
            with gr.Tab("Clips", elem_id="tab-clips"):
                with gr.Row():
                    filter_speaker = gr.Dropdown(label="Speaker", choices=[view.ALL_SPEAKERS],
                                                 value=view.ALL_SPEAKERS, allow_custom_value=True,
                                                 elem_id="filter-speaker")
                    filter_status = gr.Radio(view.STATUS_FILTERS, value="all", label="Status",
                                             elem_id="filter-status")
                    filter_text = gr.Textbox(label="Search text, id or reason", placeholder="e.g. kiitos",
                                             elem_id="filter-text")
                clips_table = gr.Dataframe(interactive=False, wrap=True, max_height=460,
                                           column_widths=["19%", "9%", "25%", "8%", "8%", "9%", "7%", "6%", "9%"],
                                           elem_id="clip-table", show_label=False)
            with gr.Tab("Rejected clips", elem_id="tab-rejected"):
                rejected_table = gr.Dataframe(interactive=False, wrap=True, max_height=460,
                                              elem_id="rejected-table", show_label=False)
            with gr.Tab("Speaker statistics", elem_id="tab-speaker-stats"):
                speakers_table = gr.Dataframe(interactive=False, max_height=460,
                                              elem_id="speaker-table", show_label=False)

    # -- event handlers ----------------------------------------------------------------------------
    def gallery_updates(ds, name, seed):
        updates = {}
        for (path, label, caption), player, text in zip(view.gallery_items(ds, name, seed, GALLERY_SIZE),
                                                        players, captions):
            updates[player] = gr.update(value=path, label=label)
            updates[text] = caption
        return updates

    def source_form(spec) -> dict:
        """The form showing the source a dataset came from (an uploaded zip cannot be re-shown)."""
        form = {kind: spec.kind, max_clips: spec.max_clips}
        if spec.kind == "folder":
            form[folder] = spec.path
        if spec.kind == "huggingface" and not spec.path:
            columns = spec.columns or {}
            form.update({hf_repo: spec.hf_repo, hf_config: spec.hf_config, hf_split: spec.hf_split,
                         hf_revision: spec.hf_revision, col_audio: columns.get("audio"),
                         col_text: columns.get("text"), col_speaker: columns.get("speaker")})
        return form

    def prepared_update(value=None):
        """The picker's entries now; listing problems become the picker's message, not an error."""
        try:
            return gr.update(choices=view.prepared_choices(_prepared(config)), value=value)
        except Exception as exc:  # noqa: BLE001 - a broken meta.json must not break the tab
            return gr.update(choices=[], value=None, info=_failure(exc))

    def dataset_view(ds, selection: dict) -> dict:
        saved = picked_speaker(selection, ds.id)
        chosen = view.initial_speaker(ds, saved, configured_speaker, policy)
        speakers = sorted(ds.manifest["speaker"].astype(str).unique())
        picked = (view.note(f"Current pick: {saved}.", "ok") if saved else
                  view.note(f"No speaker picked yet: training uses the one ranked first by "
                            f"{view.POLICY_LABELS[policy]}.", "info"))
        return {
            dataset_id: ds.id, summary: view.summary_html(ds), results: gr.update(visible=True),
            overview_plot: charts.speaker_overview(ds.manifest),
            duration_plot: charts.duration_histogram(ds.manifest),
            snr_plot: charts.snr_scatter(ds.manifest, "status"), color_by: "status",
            reasons_plot: _reasons_chart(ds.manifest),
            recommendation: view.recommendation_md(ds, policy), rankings: view.ranking_table(ds),
            speaker: gr.update(choices=view.speaker_choices(ds), value=chosen),
            speaker_card: view.speaker_card_html(ds, chosen), confirmation: picked,
            **gallery_updates(ds, chosen, 0),
            filter_speaker: gr.update(choices=[view.ALL_SPEAKERS, *speakers], value=view.ALL_SPEAKERS),
            filter_status: "all", filter_text: "",
            clips_table: view.clip_table(ds.manifest), rejected_table: view.rejected_table(ds.manifest),
            speakers_table: view.speaker_table(ds), ctx.selection: selection, **source_form(ds.spec),
            prepared: prepared_update(ds.id),
        }

    def open_prepared(choice, progress):
        known = [str(entry["id"]) for entry in _prepared(config)]
        dataset_id = view.check_prepared(choice, known)
        progress(0.0, desc=f"Opening {dataset_id}…")
        return open_dataset(config, dataset_id)

    def on_load(kind_value, folder_value, zip_value, repo, hf_conf, split, revision, c_audio, c_text,
                c_speaker, max_value, force_value, prepared_value=None, progress=gr.Progress()):
        try:
            if kind_value == "prepared":
                ds = open_prepared(prepared_value, progress)
            else:
                spec = view.make_spec(kind_value, folder_value, zip_value, repo, hf_conf, split, revision,
                                      c_audio, c_text, c_speaker, max_value)
                progress(0.0, desc="Reading the source…")
                ds = load_dataset(spec, config, progress=lambda f, msg: progress(f, desc=msg),
                                  force=bool(force_value))
            selection = save_selection(config, dataset_id=ds.id)  # brings back this dataset's pick
        except Exception as exc:  # noqa: BLE001 - shown to the user, never as a traceback
            text = _failure(exc)
            gr.Warning(text)
            return {message: view.note(text, "error")}
        done = view.note(f"Loaded {len(ds.manifest)} clips into dataset “{ds.id}”.", "ok")
        shown = dataset_view(ds, selection)
        if kind_value == "prepared":
            shown[kind] = "prepared"  # stay on the picker; the other fields still show its source
        return {**shown, message: done}

    def on_open_selection():
        selection = load_selection(config)
        wanted = selection.get("dataset_id")
        if not wanted or wanted not in list_datasets(config):
            return {message: gr.skip()}  # nothing saved yet: leave the tab as built
        try:
            ds = open_dataset(config, wanted)
        except Exception as exc:  # noqa: BLE001
            return {message: view.note(_failure(exc), "error")}
        return {**dataset_view(ds, selection),
                message: view.note(f"Re-opened dataset “{ds.id}”.", "info")}

    def on_filter(ds_id, name, status, query):
        if not ds_id:
            return gr.skip()
        return view.clip_table(open_dataset(config, ds_id).manifest, name, status, query)

    def on_color(ds_id, mode):
        if not ds_id:
            return gr.skip()
        return charts.snr_scatter(open_dataset(config, ds_id).manifest, mode)

    def speaker_view(ds_id, name, seed):
        if not ds_id or not name:
            return {speaker_card: gr.skip()}
        ds = open_dataset(config, ds_id)
        return {speaker_card: view.speaker_card_html(ds, name), **gallery_updates(ds, name, seed)}

    def on_speaker(ds_id, name):
        saved = picked_speaker(load_selection(config), ds_id)
        status = (view.note(f"Current pick: {saved}.", "ok") if saved == name else
                  view.note(f"Listening to {name}: press “Use this speaker” to pick this voice.", "info"))
        return {**speaker_view(ds_id, name, 0), confirmation: status}

    def on_reshuffle(ds_id, name):
        return speaker_view(ds_id, name, random.randrange(1 << 30))

    def on_use(ds_id, name):
        if not ds_id or not name:
            gr.Warning("Load a dataset and choose a speaker first.")
            return {confirmation: view.note("Load a dataset and choose a speaker first.", "error")}
        try:
            known = set(open_dataset(config, ds_id).manifest["speaker"].astype(str))
        except ValueError as exc:
            return {confirmation: view.note(str(exc), "error")}
        if name not in known:
            text = f"Speaker '{name}' is not in dataset {ds_id}; choose one from the list."
            gr.Warning(text)
            return {confirmation: view.note(text, "error")}
        selection = save_selection(config, dataset_id=ds_id, speaker=name)
        text = f"Saved: {name} will be the voice for single-speaker training."
        gr.Info(text)
        return {confirmation: view.note(text, "ok"), ctx.selection: selection}

    def dataset_summary(dataset_id: str) -> dict:
        """Totals, rejection reasons and the recommendation of a loaded dataset."""
        ds = open_dataset(config, dataset_id)
        rec = ds.recommendation
        return {"dataset_id": ds.id, **view.summary_numbers(ds),
                "recommendation": {"speaker": getattr(rec, "speaker", None), "reason": getattr(rec, "reason", "")}}

    def speaker_stats(dataset_id: str) -> dict:
        """Per-speaker statistics (one record per speaker) and the recommended speaker."""
        ds = open_dataset(config, dataset_id)
        rec = ds.recommendation
        return {"dataset_id": ds.id, "speakers": _records(ds.speakers),
                "recommendation": {"speaker": getattr(rec, "speaker", None), "reason": getattr(rec, "reason", "")}}

    # -- wiring --------------------------------------------------------------------------------------
    groups = [sample_group, folder_group, zip_group, hf_group, prepared_group]
    kind.change(lambda k: [gr.update(visible=k == value) for _, value in SOURCE_CHOICES],
                inputs=kind, outputs=groups, api_visibility="private", queue=False)
    kind.input(lambda k, current: prepared_update(current) if k == "prepared" else gr.skip(),
               inputs=[kind, prepared], outputs=prepared, api_visibility="private")
    refresh_btn.click(prepared_update, inputs=prepared, outputs=prepared, api_name="prepared_datasets")
    view_outputs = [dataset_id, summary, results, overview_plot, duration_plot, snr_plot, color_by,
                    reasons_plot, recommendation, rankings, speaker, speaker_card, confirmation, *players, *captions,
                    filter_speaker, filter_status, filter_text, clips_table, rejected_table,
                    speakers_table, ctx.selection, message, kind, folder, max_clips, hf_repo, hf_config,
                    hf_split, hf_revision, col_audio, col_text, col_speaker, prepared]
    load_btn.click(on_load, inputs=[kind, folder, zip_file, hf_repo, hf_config, hf_split, hf_revision,
                                    col_audio, col_text, col_speaker, max_clips, force, prepared],
                   outputs=view_outputs, api_name="load_dataset", concurrency_limit=1,
                   show_progress_on=summary)
    ctx.demo.load(on_open_selection, outputs=view_outputs, api_name="open_selection", show_progress="hidden")
    gr.on([filter_speaker.input, filter_status.input, filter_text.submit, filter_text.blur], on_filter,
          inputs=[dataset_id, filter_speaker, filter_status, filter_text], outputs=clips_table,
          api_name="filter_clips", trigger_mode="always_last")
    color_by.input(on_color, inputs=[dataset_id, color_by], outputs=snr_plot, api_name="snr_chart")
    gallery_outputs = [speaker_card, *players, *captions]
    speaker.input(on_speaker, inputs=[dataset_id, speaker], outputs=[*gallery_outputs, confirmation],
                  api_name="speaker_details")
    reshuffle_btn.click(on_reshuffle, inputs=[dataset_id, speaker], outputs=gallery_outputs,
                        api_name="reshuffle_clips")
    use_btn.click(on_use, inputs=[dataset_id, speaker], outputs=[confirmation, ctx.selection],
                  api_name="use_speaker")
    gr.api(dataset_summary, api_name="dataset_summary")
    gr.api(speaker_stats, api_name="speaker_stats")
