"""The Modes & cost tab: the two training modes in plain words, their settings, and the computed
time / money / memory comparison for the selected dataset on every GPU of the price table.

Settings are saved as dotted config keys in `workspace/selection.json` (pipeline.data.selection), which
the Training tab applies when it starts a run. The view functions at the top are plain
functions of the config (tested without a server); `build` only wires them. API names:
save_settings, cost_estimate (JSON).
"""

from __future__ import annotations

import html
import json
import logging
import re
from dataclasses import dataclass

import gradio as gr
import pandas as pd
import plotly.graph_objects as go

from studio.logic import estimate_gpus, run_charts
from studio.tabs import modes_gpus
from pipeline.config import Config, ConfigError
from pipeline.estimate.cost import CPU_CHARGE, CPU_NAME, REFERENCE_QUOTE, describe_workload, estimate, load_price_table
from pipeline.data.dataset import list_datasets, open_dataset
from studio.logic.runs_view import (MODE_LABELS, money_range, priced_table, time_range,
                                short_source)
from pipeline.estimate.recipe import OVERFIT_EPOCHS, REFERENCE_RECIPE, TARGET_EPOCHS, check_recipe, format_epochs
from pipeline.data.selection import apply_selection, load_selection, save_selection

log = logging.getLogger(__name__)

# control name → dotted config key it is saved under
SETTING_KEYS = {
    "mode": "training_mode.selected", "gpu": "gpu.type", "price": "gpu.price_per_hour",
    "quick_steps": "training.quick_lora.steps", "quick_lr": "training.quick_lora.learning_rate",
    "full_epochs": "training.full_finetune.epochs", "full_lr": "training.full_finetune.learning_rate",
    "speaker_steps": "training.full_finetune.speaker_max_steps", "rank": "training.lora.rank",
    "batch_size": "training.batch_size", "val_every": "training.val_every", "save_every": "training.save_every",
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


def _esc(value) -> str:
    return html.escape("" if value is None else str(value))


def _note(message: str, kind: str = "info") -> str:
    return f"<div class='note {kind}'>{_esc(message)}</div>"


OPPOSITE = {"slower": "faster", "faster": "slower", "dearer": "cheaper", "cheaper": "dearer",
            "about as fast": "about as fast", "about as dear": "about as dear"}


def _compare(full: float, quick: float, more: str, less: str, same: str) -> str:
    """Full fine-tune against quick LoRA in one word; `same` within 10 %."""
    if quick > 0 and abs(full - quick) / quick < 0.1:
        return same
    return more if full > quick else less


def mode_words(raw: pd.DataFrame, gpu: str) -> dict | None:
    """Speed and price of each mode against the other on `gpu` for this dataset (upper ends)."""
    rows = raw[raw["gpu"] == gpu].set_index("mode") if not raw.empty else raw
    if rows.empty or not {"quick_lora", "full_finetune"} <= set(rows.index):
        return None
    quick, full = rows.loc["quick_lora"], rows.loc["full_finetune"]
    speed = _compare(full["minutes"], quick["minutes"], "slower", "faster", "about as fast")
    price = _compare(full["cost_usd"], quick["cost_usd"], "dearer", "cheaper", "about as dear")
    return {"full": f"{speed} and {price}", "quick": f"{OPPOSITE[speed]} and {OPPOSITE[price]}",
            "quick_tag": f"{OPPOSITE[speed]} · {OPPOSITE[price]}", "full_tag": f"{speed} · {price}",
            "quick_figures": f"{time_range(quick['minutes_min'], quick['minutes'])}, "
                             f"{money_range(quick['cost_usd_min'], quick['cost_usd'])}",
            "full_figures": f"{time_range(full['minutes_min'], full['minutes'])}, "
                            f"{money_range(full['cost_usd_min'], full['cost_usd'])}"}


def modes_html(config: Config, raw: pd.DataFrame | None = None, work: dict | None = None) -> str:
    """The two modes side by side: what each does, what it produces, when to choose it; the time and
    money words come from the estimate for this dataset on the configured GPU."""
    t = config.training
    words = mode_words(raw, config.gpu.type) if raw is not None else None
    on = f"on {_esc(estimate_gpus.on_gpus(estimate_gpus.rows_gpus(raw), config.gpu.type))} for this dataset"
    if words:
        quick_cost = f"<li>≈ {_esc(words['quick_figures'])} {on}: {_esc(words['quick'])} than full fine-tune.</li>"
        full_cost = f"<li>≈ {_esc(words['full_figures'])} {on}: {_esc(words['full'])} than quick LoRA.</li>"
        full_when = f"{_esc(words['full'])} here, bigger output."
    else:
        quick_cost = full_cost = ""
        full_when = "bigger output; load a dataset to see its time and cost."
    quick_epochs = f" ({format_epochs(work['quick_lora_epochs'])} epochs of this dataset)" if work else ""
    full_epochs = f" = {work['full_steps']:,} steps here" if work else ""
    speaker = (f" — {work['speaker_steps'][0]:,}–{work['speaker_steps'][1]:,} steps, "
               f"{format_epochs(work['speaker_epochs'][0])}–{format_epochs(work['speaker_epochs'][1])} epochs of "
               "that voice") if work else f" (at most {t.full_finetune.speaker_max_steps:,} steps)"
    quick_tag = words["quick_tag"] if words else "small adapter"
    full_tag = words["full_tag"] if words else "thorough"
    return f"""
<div class='mode-cards'>
 <div class='mode-card quick'>
  <h4>Quick LoRA <span class='tag'>{_esc(quick_tag)}</span></h4>
  <ul>
   <li>Trains a small adapter (LoRA) on all clips of all speakers: {t.quick_lora.steps:,} steps{quick_epochs}.</li>
   <li>Produces a <b>small adapter</b> (tens of MB) and a merged model ready to speak.</li>
   <li>The base model's weights stay as they are; the adapter nudges them.</li>
   {quick_cost}
  </ul>
  <div class='when'>Choose it when the base model already speaks Finnish decently and you want a
  voice.</div>
 </div>
 <div class='mode-card full'>
  <h4>Full fine-tune + speaker LoRA <span class='tag'>{_esc(full_tag)}</span></h4>
  <ul>
   <li>Phase 1 teaches the language to the <b>whole model</b> on all clips ({t.full_finetune.epochs:g} epochs{full_epochs}).</li>
   <li>Then one speaker is chosen (yours from the Dataset tab, or the recommended one) and a LoRA
       learns that voice until held-out loss stops improving{speaker}.</li>
   <li>Produces a <b>full language-adapted model</b> (GBs) and a speaker adapter.</li>
   {full_cost}
  </ul>
  <div class='when'>Choose it when the base model's Finnish is weak and you have enough data for the
  language: {full_when}</div>
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
            "batch_size": t.batch_size, "val_every": t.val_every, "save_every": t.save_every}


FIELD_LABELS = {
    "mode": "Training mode", "gpu": "GPU", "price": "Price per hour (USD)", "quick_steps": "Quick LoRA: steps",
    "quick_lr": "Learning rate", "full_epochs": "Phase 1: epochs", "full_lr": "Phase 1: learning rate",
    "speaker_steps": "Speaker LoRA: max steps", "rank": "LoRA rank", "batch_size": "Batch size",
    "val_every": "Evaluate every (steps)", "save_every": "Save a checkpoint every (steps)",
}
FIELD_INFO = {
    "mode": None, "gpu": "from assets/gpu_prices.yaml", "price": "list price; edit for yours",
    "quick_steps": "reference recipe: 2800", "quick_lr": "upstream: 1e-4", "full_epochs": "reference: 3",
    "full_lr": "full fine-tune: 1e-5", "speaker_steps": "stops early on held-out loss",
    "rank": "alpha follows: 2 × rank", "batch_size": "sequences per step (both modes)",
    "val_every": "held-out loss, example audio, best checkpoint", "save_every": "resume point; the best is always kept",
}
WHOLE = ("quick_steps", "speaker_steps", "rank", "batch_size", "val_every", "save_every")
REAL = ("price", "quick_lr", "full_lr", "full_epochs")


def _coerce(name: str, value):
    """The control's value as the config wants it; ConfigError naming the field when it cannot be."""
    key = SETTING_KEYS[name]
    if value is None or value == "":
        raise ConfigError(f"'{key}' is empty; enter a value.")
    try:
        if name in WHOLE:
            if float(value) != int(float(value)):
                raise ConfigError(f"'{key}' must be a whole number (got {value}).")
            return int(float(value))
        if name in REAL:
            return float(value)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"'{key}' must be a number (got {value!r}).") from None
    return value


def _overrides(values: dict) -> dict:
    overrides = {}
    for name, value in values.items():
        if name not in SETTING_KEYS:
            raise ValueError(f"Unknown setting '{name}'; known: {', '.join(SETTING_KEYS)}.")
        overrides[SETTING_KEYS[name]] = _coerce(name, value)
    if "training.lora.rank" in overrides:
        overrides["training.lora.alpha"] = 2 * overrides["training.lora.rank"]
    return overrides


def save_settings(config: Config, **values) -> dict:
    """Validate the settings against the config schema, then save them into the selection.

    Raises ConfigError (a ValueError) naming the setting when a value is not allowed; nothing
    is saved then. The LoRA alpha follows the rank (2 × rank) to keep the update scale.
    """
    overrides = _overrides(values)
    effective_config(config).with_overrides(overrides)  # raises ConfigError naming the key
    return save_selection(config, **overrides)


def save_valid_settings(config: Config, **values) -> tuple[dict, dict[str, str]]:
    """Each setting checked on its own: the valid ones are saved, the invalid ones are left as they
    were. Returns (the selection, {control name: why it was not saved}) so one bad field never
    blocks a change of another."""
    errors, good = {}, {}
    base = effective_config(config)
    for name, value in values.items():
        try:
            overrides = _overrides({name: value})
            base.with_overrides(overrides)
        except ValueError as exc:
            errors[name] = str(exc)
            continue
        good |= overrides
    selection = save_selection(config, **good) if good else load_selection(config)
    return selection, errors


def settings_message(errors: dict[str, str]) -> str:
    """The settings' status: saved, or which fields were not saved and why."""
    if not errors:
        return _note("Saved: the Training tab starts runs with these settings.", "ok")
    items = "".join(f"<li><b>{_esc(FIELD_LABELS[name])}</b>: {_esc(text)}</li>" for name, text in errors.items())
    return (f"<div class='note error'>Not saved — fix {'this field' if len(errors) == 1 else 'these fields'} "
            f"(the other settings were saved and the estimate uses them):<ul>{items}</ul></div>")


def field_infos(errors: dict[str, str]) -> dict[str, str | None]:
    """Each control's help line: its error when it has one (shown under the field), else its usual hint."""
    return {name: (f"⚠ not saved: {errors[name]}" if name in errors else FIELD_INFO[name]) for name in SETTING_KEYS}


def apply_scaled_recipe(config: Config) -> tuple[dict, dict]:
    """Save the recipe scaled to the selected dataset; returns (the selection, the new control values)."""
    selection = load_selection(config)
    dataset_id = selection.get("dataset_id")
    if not dataset_id or dataset_id not in list_datasets(config):
        raise ValueError("No dataset loaded: load one in the Dataset tab first; the recipe is scaled to it.")
    cfg = apply_selection(config, selection)
    dataset = open_dataset(cfg, dataset_id)
    speaker = selection.get("speaker") or dataset.recommendation.speaker
    report = check_recipe(cfg, dataset.manifest, speaker)
    names = {key: name for name, key in SETTING_KEYS.items()}
    values = {names[key]: value for key, value in report.scaled.items()}
    return save_settings(config, **values), values


def gpu_choices() -> list[tuple[str, str]]:
    table = load_price_table()
    return [(f"{name} · ${row['price_per_hour']:.2f}/h · {row['memory_gb']} GB", name)
            for name, row in table["gpus"].items()]


def list_price(gpu: str) -> float | None:
    row = load_price_table()["gpus"].get(gpu)
    return row["price_per_hour"] if row else None


# -- the estimate ---------------------------------------------------------------------------------
def machine_has_gpu() -> bool:
    """Whether a run started here trains on a GPU (else on the CPU, which costs no GPU time)."""
    import torch

    return bool(torch.cuda.is_available())


@dataclass
class EstimateView:
    message: str                 # HTML note (empty when all is well)
    headline: str                # HTML: the configured GPU's numbers, per phase, and the reference quote
    workload: str                # HTML stat cards from describe_workload
    table: pd.DataFrame          # one row per GPU × mode, formatted for people
    raw: pd.DataFrame            # cost.estimate's own table
    figure: go.Figure
    dataset_id: str | None
    cards: str = ""              # the mode cards, their words following this dataset's figures
    recipe: str = ""             # HTML: epochs, over-fitting risk, reference beside scaled recipe


TABLE_COLUMNS = ["GPU", "Mode", "Time", "Cost", "Memory", "Figures"]


def short_figures(row) -> str:
    """Where a row's speeds came from, in a few words (the full text is in the headline and JSON)."""
    if row.get("charge"):
        return "not benchmarked"
    source = str(row.get("throughput_source", ""))
    if source.startswith("measured on "):
        return "measured (" + source[len("measured on "):].replace("NVIDIA ", "") + ")"
    found = re.match(r"scaled from (?:NVIDIA )?(.+?), [\d-]+.* by bf16 peak ([\d.]+)/([\d.]+)", source)
    if found:
        return f"scaled from {found.group(1)} × {float(found.group(2)) / float(found.group(3)):.2f} (bf16 peak)"
    return short_source(source)


def display_table(table: pd.DataFrame, selected_gpu: str | None = None) -> pd.DataFrame:
    """cost.estimate's rows in words, six narrow columns: one row per GPU × mode (ranges where the
    speaker phase may stop early), the configured GPU marked ★, a CPU row charging nothing."""
    if table.empty:
        return pd.DataFrame(columns=TABLE_COLUMNS)
    ordered = table.assign(_mode=table["mode"].map({"quick_lora": 0, "full_finetune": 1}),
                           _cpu=table["gpu"] == CPU_NAME)
    ordered = ordered.sort_values(["_mode", "_cpu", "cost_usd"], kind="stable")
    rows = []
    for _, r in ordered.iterrows():
        cpu = bool(r.get("charge"))
        memory = ("—" if cpu else f"{r['peak_gb']:.0f} GB · " + ("fits" if r["fits"] else "too little memory"))
        rows.append({
            "GPU": ("★ " if r["gpu"] == selected_gpu else "") + estimate_gpus.gpu_label(r) +
                   ("" if cpu else f" · ${r['price_per_hour']:.2f}/h"),
            "Mode": MODE_LABELS.get(r["mode"], r["mode"]),
            "Time": time_range(r["minutes_min"], r["minutes"]),
            "Cost": r["charge"] if cpu else money_range(r["cost_usd_min"], r["cost_usd"]),
            "Memory": memory + ("" if cpu else f" ({r['plan_brief']})"),
            "Figures": " · ".join(x for x in (short_figures(r), estimate_gpus.short_scaling(r)) if x),
        })
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def workload_html(work: dict) -> str:
    cards = [
        (f"{work['accepted_clips']}", "accepted clips"), (f"{work['accepted_minutes']:g}", "usable minutes"),
        (f"{work['sequences_per_epoch']:,}", "sequences per epoch"), (f"{work['step_tokens']:,}", "tokens per step"),
        (f"{work['quick_lora_steps']:,}", f"quick LoRA steps = {format_epochs(work['quick_lora_epochs'])} epochs"),
        (f"{work['full_epochs']:g}", f"full fine-tune epochs = {work['full_steps']:,} steps"),
        (f"{work['lora_adapter_mb']:g} MB", "LoRA adapter"), (_esc(work.get("speaker") or "recommended"), "voice"),
    ]
    return "<div class='stat-cards'>" + "".join(
        f"<div class='stat-card'><div class='value'>{value}</div><div class='label'>{_esc(label)}</div></div>"
        for value, label in cards) + "</div>"


def _phase_steps(phase: dict) -> str:
    if phase["steps_max"] is None:
        return ""
    low, high = phase["steps_min"], phase["steps_max"]
    steps = f"{high:,}" if low == high else f"{low:,}–{high:,}"
    elow, ehigh = phase["epochs_min"], phase["epochs_max"]
    epochs = format_epochs(ehigh) if low == high else f"{format_epochs(elow)}–{format_epochs(ehigh)}"
    return f"{steps} steps · {epochs} epochs"


def phases_html(row) -> str:
    """One mode's stages on one card: steps, epochs, time and cost, a range where early stopping decides."""
    items = []
    for phase in row["phases"]:
        time = time_range(phase["seconds_min"] / 60, phase["seconds_max"] / 60)
        cost = CPU_CHARGE if row.get("charge") else money_range(phase["cost_min"], phase["cost_max"])
        detail = " · ".join(x for x in (_phase_steps(phase), phase["note"]) if x)
        items.append(f"<tr><td>{_esc(phase['label'])}</td><td>{_esc(time)}</td><td>{_esc(cost)}</td>"
                     f"<td class='detail'>{_esc(detail)}</td></tr>")
    return ("<table class='phases'><tr><th>Stage</th><th>Time</th><th>Cost</th><th>Steps, epochs, basis</th></tr>"
            + "".join(items) + "</table>")


def headline_html(raw: pd.DataFrame, cfg: Config, on_cpu: bool = False) -> str:
    rows = raw[raw["gpu"] == cfg.gpu.type]
    if rows.empty:
        return (f"<div class='headline'><span class='warn'>{_esc(cfg.gpu.type)} is not in the price table "
                "(assets/gpu_prices.yaml); choose a listed GPU.</span></div>")
    parts, details = [], []
    for _, row in rows.iterrows():
        chosen = row["mode"] == cfg.training_mode.selected
        label = MODE_LABELS.get(row["mode"], row["mode"])
        text = (f"{label}: ≈ {time_range(row['minutes_min'], row['minutes'])}, "
                f"{money_range(row['cost_usd_min'], row['cost_usd'])}"
                + ("" if row["fits"] else " (does not fit in memory)"))
        parts.append(f"<b>{_esc(text)}</b>" if chosen else _esc(text))
        details.append(f"<details{' open' if chosen else ''}><summary>{_esc(label)}: each stage</summary>"
                       f"{phases_html(row)}</details>")
    quote = REFERENCE_QUOTE
    reference = (f"The reference project's quote (its own data and code, one {quote['gpu']}): "
                 f"Quick LoRA {quote['quick_lora']['hours']:g} h / ${quote['quick_lora']['usd']:.2f}, "
                 f"full fine-tune {quote['full_finetune']['hours']:g} h / ${quote['full_finetune']['usd']:.2f}.")
    cpu = ("<div class='warn'>This machine has no GPU: a run started here trains on the CPU — "
           f"{CPU_CHARGE} for GPU time, but its time is not benchmarked and is far longer. "
           "The prices are for renting the GPU below.</div>" if on_cpu else "")
    count = estimate_gpus.rows_gpus(rows)
    return (f"<div class='headline'>{cpu}<div class='big'>On {'one' if count == 1 else f'{count} ×'} "
            f"<b>{_esc(cfg.gpu.type)}</b> at ${cfg.gpu.price_per_hour:.2f}/h{'' if count == 1 else ' each'}, "
            f"for this dataset — {' · '.join(parts)}</div>{estimate_gpus.scaling_html(rows)}"
            f"<div class='quote'>{_esc(reference)}</div>{''.join(details)}"
            f"<div class='src'>Speeds: {_esc(rows.iloc[0]['figures'])}. Prices from assets/gpu_prices.yaml "
            f"({_esc(rows.iloc[0]['price_source'])}); your hourly price replaces the list price for this GPU. "
            "Every stage is counted (extraction, training, evaluation, merge); ranges: the speaker LoRA stops "
            "when held-out loss stalls, at the earliest after its patience runs out.</div></div>")


def recipe_html(report, config: Config) -> str:
    """Epochs and over-fitting risk of the configured recipe, the reference and the scaled recipe side by side."""
    t = config.training
    rows = [("Quick LoRA steps", f"{REFERENCE_RECIPE['training.quick_lora.steps']:,}",
             format_epochs(report.reference_epochs["lora"]), f"{t.quick_lora.steps:,}",
             f"{report.scaled['training.quick_lora.steps']:,}", format_epochs(report.scaled_epochs["lora"])),
            ("Phase 1 epochs", f"{REFERENCE_RECIPE['training.full_finetune.epochs']:g}",
             format_epochs(report.reference_epochs["full"]), f"{t.full_finetune.epochs:g}",
             f"{report.scaled['training.full_finetune.epochs']:g}", format_epochs(report.scaled_epochs["full"])),
            ("Speaker LoRA max steps", f"{REFERENCE_RECIPE['training.full_finetune.speaker_max_steps']:,}",
             format_epochs(report.reference_epochs["speaker_lora"]), f"{t.full_finetune.speaker_max_steps:,}",
             f"{report.scaled['training.full_finetune.speaker_max_steps']:,}",
             format_epochs(report.scaled_epochs["speaker_lora"]))]
    body = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    checks = "".join(f"<li class='{'warn' if c.risk != 'ok' else ''}'>{_esc(c.name)}: {c.steps:,} steps = "
                     f"{_esc(format_epochs(c.epochs))} epochs — risk of over-fitting: {_esc(c.risk)}</li>"
                     for c in report.checks)
    warnings = "".join(f"<li class='warn'>{_esc(w)}</li>" for w in report.warnings)
    return (f"<div class='recipe'><ul>{checks}{warnings}</ul>"
            "<table class='phases'><tr><th>Setting</th><th>Reference</th><th>= epochs here</th><th>Yours</th>"
            f"<th>Scaled to your data</th><th>= epochs</th></tr>{body}</table>"
            f"<div class='src'>Scaled: steps for {TARGET_EPOCHS['lora']} epochs of all clips (quick LoRA) and "
            f"{TARGET_EPOCHS['speaker_lora']} of the voice (speaker LoRA); over {OVERFIT_EPOCHS} epochs the model "
            "tends to memorize the clips.</div></div>")


def estimate_view(config: Config) -> EstimateView:
    """The comparison for the dataset and speaker selected in the Dataset tab, with the saved settings."""
    selection = load_selection(config)
    dataset_id = selection.get("dataset_id")
    empty = pd.DataFrame()
    cfg = effective_config(config)
    if not dataset_id or dataset_id not in list_datasets(config):
        text = ("No dataset loaded yet: load one in the Dataset tab (the bundled sample works offline) "
                "and the estimate appears here.")
        return EstimateView(_note(text, "info"), "", "", display_table(empty), empty,
                            run_charts.cost_comparison(empty), None, modes_html(cfg))
    on_cpu = not machine_has_gpu()
    try:
        cfg = apply_selection(config, selection)
        dataset = open_dataset(cfg, dataset_id)
        speaker = selection.get("speaker") or dataset.recommendation.speaker
        raw = estimate(cfg, dataset.manifest, speaker, prices=priced_table(cfg), include_cpu=on_cpu,
                       gpus=estimate_gpus.gpu_count(selection))
        work = describe_workload(cfg, dataset.manifest, speaker)
        report = check_recipe(cfg, dataset.manifest, speaker)
    except ValueError as exc:
        return EstimateView(_note(str(exc), "error"), "", "", display_table(empty), empty,
                            run_charts.cost_comparison(empty), dataset_id, modes_html(cfg))
    note = _note(f"Dataset “{dataset_id}”, voice {speaker} "
                 f"({'your pick' if selection.get('speaker') else 'recommended'}).", "ok")
    gpus = raw[raw["gpu"] != CPU_NAME].reset_index(drop=True)  # the chart plots priced GPU time only
    return EstimateView(note, headline_html(gpus, cfg, on_cpu), workload_html(work), display_table(raw, cfg.gpu.type),
                        raw, run_charts.cost_comparison(gpus, cfg.gpu.type, cfg.training_mode.selected), dataset_id,
                        modes_html(cfg, gpus, work), recipe_html(report, cfg))


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
            return [_note(f"No estimate ({type(exc).__name__}): {exc}", "error"), "", "",
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
            return [_note(f"Not saved: unexpected error ({type(exc).__name__}): {exc}", "error"), gr.skip(),
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
            return [_note(f"Recipe not applied: {exc}", "error"), gr.skip(), *[gr.skip()] * 3,
                    *[gr.skip()] * len(estimate_outputs)]
        text = ("Saved the recipe scaled to your data: " + ", ".join(
            f"{FIELD_LABELS[name]} {value:g}" for name, value in values.items()) + ". The next run uses it.")
        return [_note(text, "ok"), selection, values["quick_steps"], values["full_epochs"], values["speaker_steps"],
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
