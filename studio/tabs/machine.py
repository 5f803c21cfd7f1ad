"""The Machine tab: "Check this machine" runs `python -m pipeline doctor` on the base model and shows
its rows as a table (✓ / ⚠ / ✗, the result, one line of advice). The last report of this model is
shown when the page opens. The view functions are plain functions of the config (tested without a
server); `build` only wires them. API name: check_machine.
"""

from __future__ import annotations

import html

import gradio as gr

from pipeline.doctor.checks import exit_code
from pipeline.doctor.command import doctor
from pipeline.doctor.report import load_report, report_rows, summary_line

COLUMNS = ["", "check", "result", "what to do"]
QUICK, FULL = "Quick (a minute)", "Full: also speaks a sentence and trains 20 LoRA steps (a few minutes)"


def table_rows(report: dict | None) -> list[list[str]]:
    if not report:
        return []
    return [[r.status, f"{r.group}: {r.name}", r.detail, r.advice] for r in report_rows(report)]


def summary_html(report: dict | None) -> str:
    if not report:
        return ("<div class='note info'>No check of this model yet: press <b>Check this machine</b> "
                "(the quick check takes about a minute).</div>")
    kind = "ok" if exit_code(report_rows(report)) == 0 else "error"
    when = html.escape(str(report.get("created", "")).replace("T", " "))
    return (f"<div class='note {kind}'>{html.escape(summary_line(report))} — checked {when} on "
            f"{html.escape(str(report.get('host', '')))}; report: <code>{html.escape(str(report.get('path', '')))}</code></div>")


def cached_view(config) -> tuple[str, list[list[str]]]:
    """(summary, table) of the saved report of the configured base model, if any."""
    report = load_report(config, config.base_model_dir)
    return summary_html(report), table_rows(report)


def check_view(config, kind: str, progress=None) -> tuple[str, list[list[str]]]:
    """Run the doctor (quick unless `kind` is FULL) and return (summary, table)."""
    try:
        report = doctor(config, config.base_model_dir, quick=kind != FULL, progress=progress)
    except Exception as exc:  # noqa: BLE001 - the page shows why instead of a traceback
        return f"<div class='note error'>The check could not run: {html.escape(str(exc))}</div>", []
    return summary_html(report), table_rows(report)


def build(ctx) -> None:
    config = ctx.config
    gr.Markdown("Proves that this machine and the base model match what the training and speech code assume: "
                "GPU, drivers, disk, Hub access, the checkpoint's files and shape, and the model's own logits. "
                "Run it once on a new machine before the first training.")
    with gr.Row():
        kind = gr.Radio([QUICK, FULL], value=QUICK, label="Check", elem_id="machine-check-kind")
        run = gr.Button("Check this machine", variant="primary", elem_id="machine-check")
    summary = gr.HTML(elem_id="machine-summary")
    table = gr.Dataframe(headers=COLUMNS, value=[], interactive=False, wrap=True, elem_id="machine-table",
                         column_widths=["3%", "20%", "47%", "30%"])

    def on_check(choice, progress=gr.Progress()):
        return check_view(config, choice, progress=lambda f, m: progress(f, desc=m))

    run.click(on_check, inputs=[kind], outputs=[summary, table], api_name="check_machine")
    ctx.demo.load(lambda: cached_view(config), outputs=[summary, table], api_visibility="private")
