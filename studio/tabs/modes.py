"""The Modes & cost tab: the two training modes in plain words, their settings, and the computed
time / money / memory comparison for the selected dataset on every GPU of the price table.

Settings are saved as dotted config keys in `workspace/selection.json` (pipeline.data.selection), which
the Training tab applies when it starts a run. The views are plain functions of the config in
studio.logic (modes_view, modes_settings, modes_estimate; tested without a server); `build` only
wires them. API names: save_settings, cost_estimate (JSON).
"""

from __future__ import annotations

import json
import logging

import gradio as gr
import pandas as pd

from studio.logic import estimate_gpus, run_charts
from studio.logic.modes_estimate import estimate_view
from studio.logic.modes_settings import (FIELD_INFO, FIELD_LABELS, apply_scaled_recipe, current_settings,
                                         effective_config, field_infos, gpu_choices, list_price,
                                         save_valid_settings, settings_message)
from studio.logic.modes_view import display_table, modes_html, note
from studio.logic.runs_view import MODE_LABELS
from studio.tabs import modes_gpus

log = logging.getLogger(__name__)

CSS = """
.mode-cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(300px, 1fr)); gap: 14px; }
.mode-card { border: 1px solid var(--border-color-primary); border-radius: 12px; padding: 14px 16px;
             background: var(--background-fill-secondary); }
.mode-card h4 { margin: 0 0 4px 0; font-size: 1.05rem; }
.mode-card .tag { display: inline-block; font-size: 0.75rem; padding: 1px 8px; border-radius: 999px;
                  background: #e7f5f2; color: #155e55; margin-left: 6px; vertical-align: middle; }
.mode-card.full .tag { background: #e8eef3; color: #264653; }
.mode-card ul { margin: 6px 0 0 0; padding-left: 18px; font-size: 0.92rem; }
.mode-card li { margin: 2px 0; }
.mode-card .when { margin-top: 8px; font-size: 0.9rem; color: var(--body-text-color-subdued); }
"""
HEADLINE_CSS = """
.headline { border: 1px solid #b6e0d8; background: #f3faf8; border-radius: 12px; padding: 10px 14px; }
.headline .big { font-size: 1.05rem; }
.headline .src { font-size: 0.85rem; color: var(--body-text-color-subdued); margin-top: 4px; }
.headline .warn, .recipe .warn { color: #8a1c0c; }
.headline .quote { font-size: 0.9rem; margin-top: 4px; }
.headline details { margin-top: 6px; }
table.phases { width: 100%; border-collapse: collapse; font-size: 0.88rem; table-layout: auto; }
table.phases th, table.phases td { text-align: left; padding: 2px 8px 2px 0; vertical-align: top;
                                   overflow-wrap: anywhere; }
table.phases td.detail { color: var(--body-text-color-subdued); }
.recipe ul { margin: 0 0 6px 0; padding-left: 18px; }
.recipe .src { font-size: 0.85rem; color: var(--body-text-color-subdued); margin-top: 4px; }
"""


# -- the tab ----------------------------------------------------------------------------------------
def build(ctx) -> None:
    config = ctx.config
    start = current_settings(config)

    gr.Markdown("### Two ways to train", elem_classes="section-title")
    cards = gr.HTML(modes_html(effective_config(config)), css_template=CSS, elem_id="mode-explainer")

    # No minimum/maximum on the numbers: Gradio's own range check raises an error that names no
    # field and fails every event that reads the field; save_valid_settings checks each one instead.
    gr.Markdown("### Your run", elem_classes="section-title")
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=320):
            mode = gr.Radio([(MODE_LABELS[m], m) for m in ("quick_lora", "full_finetune")], value=start["mode"],
                            label=FIELD_LABELS["mode"], elem_id="mode-choice")
            with gr.Row():
                gpu = gr.Dropdown(gpu_choices(), value=start["gpu"], label=FIELD_LABELS["gpu"], scale=2,
                                  elem_id="gpu-choice", info=FIELD_INFO["gpu"])
                price = gr.Number(start["price"], label=FIELD_LABELS["price"], step=0.01, scale=1,
                                  elem_id="gpu-price", info=FIELD_INFO["price"])
                gpu_count = modes_gpus.control(config)
        with gr.Column(scale=3, min_width=360):
            with gr.Group(visible=start["mode"] == "quick_lora") as quick_group:
                with gr.Row():
                    quick_steps = gr.Number(start["quick_steps"], label=FIELD_LABELS["quick_steps"], precision=0,
                                            elem_id="quick-steps", info=FIELD_INFO["quick_steps"])
                    quick_lr = gr.Number(start["quick_lr"], label=FIELD_LABELS["quick_lr"], elem_id="quick-lr",
                                         info=FIELD_INFO["quick_lr"])
            with gr.Group(visible=start["mode"] == "full_finetune") as full_group:
                with gr.Row():
                    full_epochs = gr.Number(start["full_epochs"], label=FIELD_LABELS["full_epochs"],
                                            elem_id="full-epochs", info=FIELD_INFO["full_epochs"])
                    full_lr = gr.Number(start["full_lr"], label=FIELD_LABELS["full_lr"], elem_id="full-lr",
                                        info=FIELD_INFO["full_lr"])
                    speaker_steps = gr.Number(start["speaker_steps"], label=FIELD_LABELS["speaker_steps"],
                                              precision=0, elem_id="speaker-steps", info=FIELD_INFO["speaker_steps"])
            with gr.Row():
                batch_size = gr.Number(start["batch_size"], label=FIELD_LABELS["batch_size"], precision=0,
                                       elem_id="batch-size", info=FIELD_INFO["batch_size"])
                rank = gr.Number(start["rank"], label=FIELD_LABELS["rank"], precision=0, elem_id="lora-rank",
                                 info=FIELD_INFO["rank"])
            with gr.Row():
                val_every = gr.Number(start["val_every"], label=FIELD_LABELS["val_every"], precision=0,
                                      elem_id="val-every", info=FIELD_INFO["val_every"])
                save_every = gr.Number(start["save_every"], label=FIELD_LABELS["save_every"], precision=0,
                                       elem_id="save-every", info=FIELD_INFO["save_every"])
            saved = gr.HTML(elem_id="settings-message")

    gr.Markdown("### Is the recipe right for this dataset?", elem_classes="section-title")
    recipe = gr.HTML(elem_id="recipe-check")
    apply_recipe = gr.Button("Use the recipe scaled to my data", elem_id="apply-scaled-recipe", size="sm")

    gr.Markdown("### Estimate for your dataset", elem_classes="section-title")
    message = gr.HTML(elem_id="estimate-message")
    headline = gr.HTML(css_template=HEADLINE_CSS, elem_id="estimate-headline")
    workload = gr.HTML(elem_id="estimate-workload")
    chart = gr.Plot(show_label=False, elem_id="chart-cost")
    # six narrow columns that wrap: the table fits the page without horizontal scrolling
    table = gr.Dataframe(interactive=False, wrap=True, max_height=900, show_label=False, elem_id="estimate-table",
                         column_widths=["21%", "17%", "15%", "12%", "15%", "20%"])

    controls = [mode, gpu, price, quick_steps, quick_lr, full_epochs, full_lr, speaker_steps, rank, batch_size,
                val_every, save_every]
    names = ["mode", "gpu", "price", "quick_steps", "quick_lr", "full_epochs", "full_lr", "speaker_steps",
             "rank", "batch_size", "val_every", "save_every"]
    estimate_outputs = [message, headline, workload, table, chart, cards, recipe]

    def show_estimate():
        try:
            view = estimate_view(config)
        except Exception as exc:  # noqa: BLE001 - e.g. an unreadable manifest: a message, not a traceback
            log.exception("Modes & cost tab: estimate failed")
            return [note(f"No estimate ({type(exc).__name__}): {exc}", "error"), "", "",
                    display_table(pd.DataFrame()), run_charts.cost_comparison(pd.DataFrame()), gr.skip(), ""]
        return [view.message, view.headline, view.workload, view.table, view.figure, view.cards, view.recipe]

    def infos(errors: dict) -> list:
        text = field_infos(errors)
        return [gr.update(info=text[name]) if FIELD_INFO[name] is not None or name in errors else gr.skip()
                for name in names]

    def on_change(*values):
        try:
            selection, errors = save_valid_settings(config, **dict(zip(names, values)))
        except Exception as exc:  # noqa: BLE001 - shown in the tab, the traceback in the console
            log.exception("Modes & cost tab: unexpected error")
            return [note(f"Not saved: unexpected error ({type(exc).__name__}): {exc}", "error"), gr.skip(),
                    *[gr.skip()] * len(names), *[gr.skip()] * len(estimate_outputs)]
        return [settings_message(errors), selection, *infos(errors), *show_estimate()]

    def on_mode(value):
        return gr.update(visible=value == "quick_lora"), gr.update(visible=value == "full_finetune")

    def on_gpu(*values):
        """A new GPU brings its list price with it; then everything is saved as for any change."""
        values = list(values)
        listed = list_price(values[names.index("gpu")])
        if listed is not None:
            values[names.index("price")] = listed
        return [values[names.index("price")], *on_change(*values)]

    def on_apply():
        try:
            selection, values = apply_scaled_recipe(config)
        except ValueError as exc:
            return [note(f"Recipe not applied: {exc}", "error"), gr.skip(), *[gr.skip()] * 3,
                    *[gr.skip()] * len(estimate_outputs)]
        text = ("Saved the recipe scaled to your data: " + ", ".join(
            f"{FIELD_LABELS[name]} {value:g}" for name, value in values.items()) + ". The next run uses it.")
        return [note(text, "ok"), selection, values["quick_steps"], values["full_epochs"], values["speaker_steps"],
                *show_estimate()]

    def on_open():
        values = current_settings(config)
        return [*(values[n] for n in names), estimate_gpus.saved_gpu_count(config), *on_mode(values["mode"]),
                *show_estimate()]

    def cost_estimate() -> dict:
        """The comparison as JSON: one record per GPU × mode (pipeline.estimate.cost.estimate) and the workload."""
        view = estimate_view(config)
        rows = json.loads(view.raw.to_json(orient="records")) if not view.raw.empty else []  # plain JSON types
        return {"dataset_id": view.dataset_id, "rows": rows}

    mode.change(on_mode, inputs=mode, outputs=[quick_group, full_group], queue=False, api_visibility="private")
    change_outputs = [saved, ctx.selection, *controls, *estimate_outputs]
    gr.on([c.input for c in controls if c is not gpu], on_change, inputs=controls, outputs=change_outputs,
          api_name="save_settings", trigger_mode="always_last", show_progress="hidden")
    gpu.input(on_gpu, inputs=controls, outputs=[price, *change_outputs], api_visibility="private",
              show_progress="hidden")
    apply_recipe.click(on_apply, outputs=[saved, ctx.selection, quick_steps, full_epochs, speaker_steps,
                                          *estimate_outputs], api_name="apply_scaled_recipe")
    ctx.selection.change(show_estimate, outputs=estimate_outputs, api_visibility="private", show_progress="hidden")
    modes_gpus.wire(config, gpu_count, saved, ctx.selection, estimate_outputs, show_estimate)
    ctx.demo.load(on_open, outputs=[*controls, gpu_count, quick_group, full_group, *estimate_outputs],
                  api_visibility="private")
    gr.api(cost_estimate, api_name="cost_estimate")
