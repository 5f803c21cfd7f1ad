"""The Modes & cost tab: the two training modes in plain words, their settings, and the computed
time / money / memory comparison for the selected dataset on every GPU of the price table.

Settings are saved as dotted config keys in `workspace/selection.json` (pipeline.selection), which
the Training tab applies when it starts a run. The view functions at the top are plain
functions of the config (tested without a server); `build` only wires them. API names:
save_settings, cost_estimate (JSON).
"""

from __future__ import annotations

import html
import json
import logging
from dataclasses import dataclass

import gradio as gr
import pandas as pd
import plotly.graph_objects as go

from pipeline import run_charts
from pipeline.config import Config, ConfigError
from pipeline.cost import describe_workload, estimate, load_price_table
from pipeline.dataset import list_datasets, open_dataset
from pipeline.runs_view import (MODE_LABELS, format_duration, format_money, format_size, priced_table,
                                short_source)
from pipeline.selection import apply_selection, load_selection, save_selection

log = logging.getLogger(__name__)

# control name → dotted config key it is saved under
SETTING_KEYS = {
    "mode": "training_mode.selected", "gpu": "gpu.type", "price": "gpu.price_per_hour",
    "quick_steps": "training.quick_lora.steps", "quick_lr": "training.quick_lora.learning_rate",
    "full_epochs": "training.full_finetune.epochs", "full_lr": "training.full_finetune.learning_rate",
    "speaker_steps": "training.full_finetune.speaker_max_steps", "rank": "training.lora.rank",
    "batch_size": "training.batch_size",
}
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
.headline .warn { color: #8a1c0c; }
"""


def _esc(value) -> str:
    return html.escape("" if value is None else str(value))


def _note(message: str, kind: str = "info") -> str:
    return f"<div class='note {kind}'>{_esc(message)}</div>"


def modes_html(config: Config) -> str:
    """The two modes side by side: what each does, what it produces, when to choose it."""
    t = config.training
    return f"""
<div class='mode-cards'>
 <div class='mode-card quick'>
  <h4>Quick LoRA <span class='tag'>fast · cheap</span></h4>
  <ul>
   <li>Trains a small adapter (LoRA) on all clips of all speakers: {t.quick_lora.steps} steps by default.</li>
   <li>Produces a <b>small adapter</b> (tens of MB) and a merged model ready to speak.</li>
   <li>The base model's weights stay as they are; the adapter nudges them.</li>
  </ul>
  <div class='when'>Choose it when the base model already speaks Finnish decently and you want a
  voice: it is the quickest way to hear a result.</div>
 </div>
 <div class='mode-card full'>
  <h4>Full fine-tune + speaker LoRA <span class='tag'>thorough</span></h4>
  <ul>
   <li>Phase 1 teaches the language to the <b>whole model</b> on all clips ({t.full_finetune.epochs:g} epochs).</li>
   <li>Then one speaker is chosen (yours from the Dataset tab, or the recommended one) and a LoRA
       learns that voice until held-out loss stops improving.</li>
   <li>Produces a <b>full language-adapted model</b> (GBs) and a speaker adapter.</li>
  </ul>
  <div class='when'>Choose it when the base model's Finnish is weak and you have enough data for the
  language: slower and dearer, bigger output.</div>
 </div>
</div>"""


# -- settings -------------------------------------------------------------------------------------
def effective_config(config: Config) -> Config:
    """The studio config with the saved selection (dataset, speaker, settings) applied."""
    return apply_selection(config, load_selection(config))


def current_settings(config: Config) -> dict:
    """Control values (keys of SETTING_KEYS) from the effective configuration."""
    cfg = effective_config(config)
    t = cfg.training
    return {"mode": cfg.training_mode.selected, "gpu": cfg.gpu.type, "price": cfg.gpu.price_per_hour,
            "quick_steps": t.quick_lora.steps, "quick_lr": t.quick_lora.learning_rate,
            "full_epochs": t.full_finetune.epochs, "full_lr": t.full_finetune.learning_rate,
            "speaker_steps": t.full_finetune.speaker_max_steps, "rank": t.lora.rank,
            "batch_size": t.batch_size}


def save_settings(config: Config, **values) -> dict:
    """Validate the settings against the config schema, then save them into the selection.

    Raises ConfigError (a ValueError) naming the setting when a value is not allowed; nothing
    is saved then. The LoRA alpha follows the rank (2 × rank) to keep the update scale.
    """
    overrides = {}
    for name, value in values.items():
        if name not in SETTING_KEYS:
            raise ValueError(f"Unknown setting '{name}'; known: {', '.join(SETTING_KEYS)}.")
        if value is None or value == "":
            raise ConfigError(f"'{SETTING_KEYS[name]}' is empty; enter a value.")
        if name in ("quick_steps", "speaker_steps", "rank", "batch_size"):
            if float(value) != int(float(value)):
                raise ConfigError(f"'{SETTING_KEYS[name]}' must be a whole number (got {value}).")
            value = int(float(value))
        elif name in ("price", "quick_lr", "full_lr", "full_epochs"):
            value = float(value)
        overrides[SETTING_KEYS[name]] = value
    if "training.lora.rank" in overrides:
        overrides["training.lora.alpha"] = 2 * overrides["training.lora.rank"]
    effective_config(config).with_overrides(overrides)  # raises ConfigError naming the key
    return save_selection(config, **overrides)


def gpu_choices() -> list[tuple[str, str]]:
    table = load_price_table()
    return [(f"{name} · ${row['price_per_hour']:.2f}/h · {row['memory_gb']} GB", name)
            for name, row in table["gpus"].items()]


def list_price(gpu: str) -> float | None:
    row = load_price_table()["gpus"].get(gpu)
    return row["price_per_hour"] if row else None


# -- the estimate ---------------------------------------------------------------------------------
@dataclass
class EstimateView:
    message: str                 # HTML note (empty when all is well)
    headline: str                # HTML: the configured GPU's numbers and where they came from
    workload: str                # HTML stat cards from describe_workload
    table: pd.DataFrame          # one row per GPU × mode, formatted for people
    raw: pd.DataFrame            # cost.estimate's own table
    figure: go.Figure
    dataset_id: str | None


def display_table(table: pd.DataFrame, selected_gpu: str | None = None) -> pd.DataFrame:
    """cost.estimate's rows in words: one row per GPU × mode, the configured GPU marked ★."""
    if table.empty:
        return pd.DataFrame(columns=["GPU", "Mode", "Time", "Cost", "Peak memory", "Fits", "Batch plan", "Output",
                                     "$/h", "Throughput from"])
    ordered = table.assign(_mode=table["mode"].map({"quick_lora": 0, "full_finetune": 1}))
    ordered = ordered.sort_values(["_mode", "cost_usd"], kind="stable")
    return pd.DataFrame({
        "GPU": [("★ " if g == selected_gpu else "") + g for g in ordered["gpu"]],
        "Mode": ordered["mode"].map(MODE_LABELS).fillna(ordered["mode"]),
        "Time": [_approx_time(m) for m in ordered["minutes"]],
        "Cost": ["< $0.01" if c < 0.01 else format_money(c) for c in ordered["cost_usd"]],
        "Peak memory": [f"{p:.1f} GB" for p in ordered["peak_gb"]],
        "Fits": ["yes" if f else "no — too little memory" for f in ordered["fits"]],
        "Batch plan": list(ordered["plan_brief"]) if "plan_brief" in ordered else [""] * len(ordered),
        "Output": [format_size(gb) for gb in ordered["output_gb"]],
        "$/h": [f"${p:.2f}" for p in ordered["price_per_hour"]],
        "Throughput from": [short_source(text) for text in ordered["throughput_source"]],
    }).reset_index(drop=True)


def _approx_time(minutes: float) -> str:
    return "< 1 min" if minutes < 1 else format_duration(minutes * 60)


def workload_html(work: dict) -> str:
    cards = [
        (f"{work['accepted_clips']}", "accepted clips"), (f"{work['accepted_minutes']:g}", "usable minutes"),
        (f"{work['epoch_tokens']:,}", "tokens per epoch"), (f"{work['step_tokens']:,}", "tokens per step"),
        (f"{work['quick_lora_steps']:,}", "quick LoRA steps"), (f"{work['full_epochs']:g}", "full fine-tune epochs"),
        (f"{work['lora_adapter_mb']:g} MB", "LoRA adapter"), (_esc(work.get("speaker") or "recommended"), "voice"),
    ]
    return "<div class='stat-cards'>" + "".join(
        f"<div class='stat-card'><div class='value'>{value}</div><div class='label'>{label}</div></div>"
        for value, label in cards) + "</div>"


def headline_html(raw: pd.DataFrame, cfg: Config) -> str:
    rows = raw[raw["gpu"] == cfg.gpu.type]
    if rows.empty:
        return (f"<div class='headline'><span class='warn'>{_esc(cfg.gpu.type)} is not in the price table "
                "(assets/gpu_prices.yaml); choose a listed GPU.</span></div>")
    parts = []
    for _, row in rows.iterrows():
        chosen = row["mode"] == cfg.training_mode.selected
        cost = "< $0.01" if row["cost_usd"] < 0.01 else format_money(row["cost_usd"])
        text = (f"{MODE_LABELS.get(row['mode'], row['mode'])}: ≈ {_approx_time(row['minutes'])}, {cost}"
                + ("" if row["fits"] else " (does not fit in memory)"))
        parts.append(f"<b>{_esc(text)}</b>" if chosen else _esc(text))
    source = rows.iloc[0]["throughput_source"]
    return (f"<div class='headline'><div class='big'>On one <b>{_esc(cfg.gpu.type)}</b> at "
            f"${cfg.gpu.price_per_hour:.2f}/h — {' · '.join(parts)}</div>"
            f"<div class='src'>Throughput {_esc(source)} · prices from assets/gpu_prices.yaml "
            f"({_esc(rows.iloc[0]['price_source'])}); your hourly price replaces the list price for this GPU. "
            "Time is training only: add a few minutes for data preparation, merge and evaluation audio.</div></div>")


def estimate_view(config: Config) -> EstimateView:
    """The comparison for the dataset and speaker selected in the Dataset tab, with the saved settings."""
    selection = load_selection(config)
    dataset_id = selection.get("dataset_id")
    empty = pd.DataFrame()
    if not dataset_id or dataset_id not in list_datasets(config):
        text = ("No dataset loaded yet: load one in the Dataset tab (the bundled sample works offline) "
                "and the estimate appears here.")
        return EstimateView(_note(text, "info"), "", "", display_table(empty), empty,
                            run_charts.cost_comparison(empty), None)
    try:
        cfg = apply_selection(config, selection)
        dataset = open_dataset(cfg, dataset_id)
        speaker = selection.get("speaker") or dataset.recommendation.speaker
        raw = estimate(cfg, dataset.manifest, speaker, prices=priced_table(cfg))
        work = describe_workload(cfg, dataset.manifest, speaker)
    except ValueError as exc:
        return EstimateView(_note(str(exc), "error"), "", "", display_table(empty), empty,
                            run_charts.cost_comparison(empty), dataset_id)
    note = _note(f"Dataset “{dataset_id}”, voice {speaker} "
                 f"({'your pick' if selection.get('speaker') else 'recommended'}).", "ok")
    return EstimateView(note, headline_html(raw, cfg), workload_html(work), display_table(raw, cfg.gpu.type),
                        raw, run_charts.cost_comparison(raw, cfg.gpu.type, cfg.training_mode.selected), dataset_id)


# -- the tab ----------------------------------------------------------------------------------------
def build(ctx) -> None:
    config = ctx.config
    start = current_settings(config)

    gr.Markdown("### Two ways to train", elem_classes="section-title")
    gr.HTML(modes_html(config), css_template=CSS, elem_id="mode-explainer")

    gr.Markdown("### Your run", elem_classes="section-title")
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=320):
            mode = gr.Radio([(MODE_LABELS[m], m) for m in ("quick_lora", "full_finetune")], value=start["mode"],
                            label="Training mode", elem_id="mode-choice")
            with gr.Row():
                gpu = gr.Dropdown(gpu_choices(), value=start["gpu"], label="GPU", scale=2, elem_id="gpu-choice",
                                  info="from assets/gpu_prices.yaml")
                price = gr.Number(start["price"], label="Price per hour (USD)", minimum=0, step=0.01, scale=1,
                                  elem_id="gpu-price", info="list price; edit for yours")
        with gr.Column(scale=3, min_width=360):
            with gr.Group(visible=start["mode"] == "quick_lora") as quick_group:
                with gr.Row():
                    quick_steps = gr.Number(start["quick_steps"], label="Quick LoRA: steps", precision=0,
                                            minimum=1, elem_id="quick-steps", info="reference recipe: 2800")
                    quick_lr = gr.Number(start["quick_lr"], label="Learning rate", minimum=0, elem_id="quick-lr",
                                         info="upstream: 1e-4")
            with gr.Group(visible=start["mode"] == "full_finetune") as full_group:
                with gr.Row():
                    full_epochs = gr.Number(start["full_epochs"], label="Phase 1: epochs", minimum=0.01,
                                            elem_id="full-epochs", info="reference: 3")
                    full_lr = gr.Number(start["full_lr"], label="Phase 1: learning rate", minimum=0,
                                        elem_id="full-lr", info="full fine-tune: 1e-5")
                    speaker_steps = gr.Number(start["speaker_steps"], label="Speaker LoRA: max steps", precision=0,
                                              minimum=1, elem_id="speaker-steps", info="stops early on held-out loss")
            with gr.Row():
                batch_size = gr.Number(start["batch_size"], label="Batch size", precision=0, minimum=1,
                                       elem_id="batch-size", info="sequences per step (both modes)")
                rank = gr.Number(start["rank"], label="LoRA rank", precision=0, minimum=1, elem_id="lora-rank",
                                 info="alpha follows: 2 × rank")
            saved = gr.HTML(elem_id="settings-message")

    gr.Markdown("### Estimate for your dataset", elem_classes="section-title")
    message = gr.HTML(elem_id="estimate-message")
    headline = gr.HTML(css_template=HEADLINE_CSS, elem_id="estimate-headline")
    workload = gr.HTML(elem_id="estimate-workload")
    chart = gr.Plot(show_label=False, elem_id="chart-cost")
    table = gr.Dataframe(interactive=False, wrap=True, max_height=900, show_label=False, elem_id="estimate-table",
                         column_widths=["13%", "17%", "9%", "8%", "10%", "12%", "7%", "7%", "17%"])

    controls = [mode, gpu, price, quick_steps, quick_lr, full_epochs, full_lr, speaker_steps, rank, batch_size]
    names = ["mode", "gpu", "price", "quick_steps", "quick_lr", "full_epochs", "full_lr", "speaker_steps",
             "rank", "batch_size"]
    estimate_outputs = [message, headline, workload, table, chart]

    def show_estimate():
        try:
            view = estimate_view(config)
        except Exception as exc:  # noqa: BLE001 - e.g. an unreadable manifest: a message, not a traceback
            log.exception("Modes & cost tab: estimate failed")
            return [_note(f"No estimate ({type(exc).__name__}): {exc}", "error"), "", "",
                    display_table(pd.DataFrame()), run_charts.cost_comparison(pd.DataFrame())]
        return [view.message, view.headline, view.workload, view.table, view.figure]

    def on_change(*values):
        try:
            selection = save_settings(config, **dict(zip(names, values)))
        except ValueError as exc:  # ConfigError: the message names the setting
            return [_note(str(exc), "error"), gr.skip(), *[gr.skip()] * len(estimate_outputs)]
        except Exception as exc:  # noqa: BLE001 - shown in the tab, the traceback in the console
            log.exception("Modes & cost tab: unexpected error")
            return [_note(f"Unexpected error ({type(exc).__name__}): {exc}", "error"), gr.skip(),
                    *[gr.skip()] * len(estimate_outputs)]
        text = "Saved: the Training tab starts runs with these settings."
        return [_note(text, "ok"), selection, *show_estimate()]

    def on_mode(value):
        return gr.update(visible=value == "quick_lora"), gr.update(visible=value == "full_finetune")

    def on_gpu(*values):
        """A new GPU brings its list price with it; then everything is saved as for any change."""
        values = list(values)
        listed = list_price(values[names.index("gpu")])
        if listed is not None:
            values[names.index("price")] = listed
        return [values[names.index("price")], *on_change(*values)]

    def on_open():
        values = current_settings(config)
        return [*(values[n] for n in names), *on_mode(values["mode"]), *show_estimate()]

    def cost_estimate() -> dict:
        """The comparison as JSON: one record per GPU × mode (pipeline.cost.estimate) and the workload."""
        view = estimate_view(config)
        rows = json.loads(view.raw.to_json(orient="records")) if not view.raw.empty else []  # plain JSON types
        return {"dataset_id": view.dataset_id, "rows": rows}

    mode.change(on_mode, inputs=mode, outputs=[quick_group, full_group], queue=False, api_visibility="private")
    change_outputs = [saved, ctx.selection, *estimate_outputs]
    gr.on([c.input for c in controls if c is not gpu], on_change, inputs=controls, outputs=change_outputs,
          api_name="save_settings", trigger_mode="always_last", show_progress="hidden")
    gpu.input(on_gpu, inputs=controls, outputs=[price, *change_outputs], api_visibility="private",
              show_progress="hidden")
    ctx.selection.change(show_estimate, outputs=estimate_outputs, api_visibility="private", show_progress="hidden")
    ctx.demo.load(on_open, outputs=[*controls, quick_group, full_group, *estimate_outputs],
                  api_visibility="private")
    gr.api(cost_estimate, api_name="cost_estimate")
