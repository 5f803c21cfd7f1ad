"""The Training tab's GPU line and count choice (UI wiring only; studio.logic.training_gpus does the work)."""

from __future__ import annotations

import gradio as gr

from studio.logic import training_gpus
from studio.logic.training_plan import training_config


def control(config) -> gr.Dropdown:
    """'GPUs found: …' and the count chooser (hidden with one GPU or none: there is nothing to choose).
    The GPUs are looked for once, when the page is built: they do not change while the studio runs."""
    devices = training_gpus.visible_gpus()  # the logic module's lookup: the tab and the start checks see the same GPUs
    gr.Markdown(training_gpus.found_text(devices), elem_id="gpus-found", elem_classes="section-hint")
    try:
        default = training_gpus.default_count(training_config(config), devices)
    except ValueError:  # invalid saved settings: the plan says so; the choice falls back to all GPUs
        default = max(len(devices), 1)
    return gr.Dropdown([(str(n), n) for n in training_gpus.counts(devices)], value=default,
                       label=training_gpus.LABEL, info=training_gpus.INFO, visible=training_gpus.selectable(devices),
                       elem_id="training-gpus")
