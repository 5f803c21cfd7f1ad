"""The Playground's Artifacts tab: each run's downloads (adapter zip, merged model, evaluation
audio), the zips made on request, disk usage, deleting a run. UI wiring only: the files come from
`studio.logic.downloads`. API names: artifacts, run_files, delete_run, merged_zip, phase1_zip."""

from __future__ import annotations

from typing import Callable

import gradio as gr
import pandas as pd

from pipeline.train.jobs import delete_run
from studio.logic import downloads

RUN_COLUMNS = ["run", "mode", "status", "adapter zip", "merged model", "evaluation audio", "disk used"]


def build(config, artifacts_tab, failure: Callable[[Exception], str]) -> None:
    """The tab's contents, inside `artifacts_tab`; `failure` words an error for the UI."""
    with gr.Row(equal_height=True):
        usage = gr.HTML(elem_id="pg-usage")
        refresh_artifacts = gr.Button("↻ Refresh", size="sm", scale=0, elem_id="pg-refresh-artifacts")
    runs_table = gr.Dataframe(interactive=False, wrap=True, show_label=False, elem_id="pg-runs")
    with gr.Row(equal_height=True):
        run_choice = gr.Dropdown([], label="Files of run", interactive=True, elem_id="pg-run", scale=4)
        delete_button = gr.Button("🗑 Delete this run", variant="stop", size="sm", scale=0, elem_id="pg-delete-run")
        delete_confirmed = gr.Checkbox(False, visible=False)  # set by the browser's confirm dialog
    with gr.Row(equal_height=False):
        adapter_zip = gr.DownloadButton("Adapter zip", visible=False, variant="primary", elem_id="pg-adapter-zip")
        with gr.Column(scale=0, min_width=220):
            zip_merged = gr.Button("Zip the merged model", visible=False, elem_id="pg-zip-merged")
            merged_zip = gr.DownloadButton("Merged model zip", visible=False, variant="primary",
                                           elem_id="pg-merged-zip")
            zip_phase1 = gr.Button("Zip the language-adapted model", visible=False, elem_id="pg-zip-phase1")
            phase1_zip = gr.DownloadButton("Language-adapted model zip", visible=False, variant="primary",
                                           elem_id="pg-phase1-zip")
        merged_files = gr.File(label="Merged model files", file_count="multiple", interactive=False,
                               elem_id="pg-merged-files")
        audio_files = gr.File(label="Evaluation audio", file_count="multiple", interactive=False,
                              elem_id="pg-audio-files")

    def on_artifacts():
        runs = downloads.list_run_artifacts(config)
        total, shared_bytes = downloads.total_disk_usage(config)
        cards = [("Runs", str(len(runs))), ("Disk used by runs", downloads.format_bytes(total)),
                 ("Shared via hard links", downloads.format_bytes(shared_bytes))]
        html = "<div class='stat-cards'>" + "".join(
            f"<div class='stat-card'><div class='value'>{v}</div><div class='label'>{k}</div></div>" for k, v in cards) + "</div>"
        if not runs:
            html += "<p class='empty-note'>No runs yet: train one in the Training tab.</p>"
        table = pd.DataFrame(columns=RUN_COLUMNS, data=[{
            "run": r.run_id, "mode": r.mode, "status": r.status,
            "adapter zip": downloads.format_bytes(r.adapter_zip.stat().st_size) if r.adapter_zip else "—",
            "merged model": f"{len(r.merged_files)} files" if r.merged_files else "—",
            "evaluation audio": len(r.audio_files), "disk used": downloads.format_bytes(r.size_bytes)} for r in runs])
        ids = [r.run_id for r in runs]
        shown = next((r.run_id for r in runs if r.adapter_zip or r.merged_files or r.audio_files),
                     ids[0] if ids else None)  # newest run with files
        return html, table, gr.update(choices=ids, value=shown)

    def on_run_files(run_id):
        hidden = gr.update(visible=False)
        try:
            run = downloads.prepare_downloads(config, run_id) if run_id else None  # downloads carry the model card
        except Exception as exc:  # noqa: BLE001
            gr.Warning(failure(exc))
            run = None
        if run is None:
            return hidden, None, None, hidden, hidden, hidden, hidden
        zip_update = (gr.update(value=str(run.adapter_zip), visible=True,
                                label=f"Download adapter zip ({downloads.format_bytes(run.adapter_zip.stat().st_size)})")
                      if run.adapter_zip else hidden)
        return (zip_update, [str(p) for p in run.merged_files] or None, [str(p) for p in run.audio_files] or None,
                *_merged_zip_updates(run), *_merged_zip_updates(run, "phase1"))

    def on_zip(run_id, which, progress):
        progress(0.1, desc="Zipping the model (weights are stored, not compressed)")
        try:
            downloads.merged_zip(config, run_id, which)
            return _merged_zip_updates(downloads.run_artifacts(config, run_id), which)
        except Exception as exc:  # noqa: BLE001
            gr.Warning(failure(exc))
            return gr.skip(), gr.update(visible=False)

    def on_merged_zip(run_id, progress=gr.Progress()):
        return on_zip(run_id, "merged", progress)

    def on_phase1_zip(run_id, progress=gr.Progress()):
        return on_zip(run_id, "phase1", progress)

    def on_delete(run_id, confirmed):
        if not run_id or not confirmed:
            return gr.skip(), gr.skip(), gr.skip()
        try:
            deleted = delete_run(config, run_id)
            gr.Info(f"Deleted run {deleted.name} and all its files.")
        except Exception as exc:  # noqa: BLE001 - e.g. the run is training: said, not raised
            gr.Warning(failure(exc))
        return on_artifacts()

    file_outputs = [adapter_zip, merged_files, audio_files, zip_merged, merged_zip, zip_phase1, phase1_zip]
    gr.on([artifacts_tab.select, refresh_artifacts.click], on_artifacts, outputs=[usage, runs_table, run_choice],
          api_name="artifacts").then(on_run_files, inputs=run_choice, outputs=file_outputs, api_visibility="private")
    run_choice.input(on_run_files, inputs=run_choice, outputs=file_outputs, api_name="run_files")
    # the browser asks first: deleting removes checkpoints and artifacts for good
    delete_button.click(on_delete, inputs=[run_choice, delete_confirmed], outputs=[usage, runs_table, run_choice],
                     api_name="delete_run",
                     js="(run, ok) => [run, run ? confirm(`Delete run ${run} and all its files?`) : false]"
                     ).then(on_run_files, inputs=run_choice, outputs=file_outputs, api_visibility="private")
    zip_merged.click(on_merged_zip, inputs=run_choice, outputs=[zip_merged, merged_zip], api_name="merged_zip",
                     show_progress_on=[zip_merged])
    zip_phase1.click(on_phase1_zip, inputs=run_choice, outputs=[zip_phase1, phase1_zip], api_name="phase1_zip",
                     show_progress_on=[zip_phase1])


def _merged_zip_updates(run: downloads.RunArtifacts, which: str = "merged") -> tuple:
    """(zip button, download button) of the merged or the phase-1 model: the download once the zip
    exists, else the button making it."""
    folder, made = (run.merged_dir, run.merged_zip) if which == "merged" else (run.phase1_dir, run.phase1_zip)
    what = "merged model" if which == "merged" else "language-adapted model (phase 1)"
    if folder is None:
        return gr.update(visible=False), gr.update(visible=False)
    if made is not None:
        size = downloads.format_bytes(made.stat().st_size)
        return (gr.update(visible=False),
                gr.update(value=str(made), visible=True, label=f"Download {what} zip ({size})"))
    size = downloads.format_bytes(downloads.disk_usage(folder)[0])
    return gr.update(visible=True, value=f"Zip the {what} ({size})"), gr.update(visible=False)
