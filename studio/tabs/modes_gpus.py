"""The Modes & cost tab's GPU-count choice (UI wiring only; studio.logic.estimate_gpus does the work)."""

from __future__ import annotations

import html
import logging

import gradio as gr

from studio.logic import estimate_gpus

log = logging.getLogger(__name__)


def control(config) -> gr.Dropdown:
    """The count chooser, beside the GPU card choice, showing the saved count."""
    return gr.Dropdown([(str(n), n) for n in estimate_gpus.GPU_COUNTS], value=estimate_gpus.saved_gpu_count(config),
                       label=estimate_gpus.LABEL, info=estimate_gpus.INFO, scale=1, elem_id="gpu-count")


def wire(config, count: gr.Dropdown, message: gr.HTML, selection, estimate_outputs: list, show_estimate) -> None:
    """A new count is saved and the estimate redrawn; a count that cannot be saved is named in the message."""

    def on_count(value):
        try:
            saved = estimate_gpus.save_gpu_count(config, value)
        except ValueError as exc:
            return [f"<div class='note error'>Not saved: {html.escape(str(exc))}</div>", gr.skip(),
                    *[gr.skip()] * len(estimate_outputs)]
        return [f"<div class='note ok'>Saved: the estimate is for {value} GPU{'s' if value != 1 else ''}.</div>",
                saved, *show_estimate()]

    count.input(on_count, inputs=count, outputs=[message, selection, *estimate_outputs], api_visibility="private",
                show_progress="hidden")
