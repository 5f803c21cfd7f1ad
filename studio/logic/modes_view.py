"""The Modes & cost tab's HTML and tables, without gradio: the two mode cards in words that follow
this dataset's figures, the configured GPU's headline with each stage, the estimate table, the
workload cards and the recipe check."""

from __future__ import annotations

import html
import re

import pandas as pd

from pipeline.config import Config
from pipeline.estimate.cost import CPU_CHARGE, CPU_NAME, REFERENCE_QUOTE
from pipeline.estimate.recipe import OVERFIT_EPOCHS, REFERENCE_RECIPE, TARGET_EPOCHS, format_epochs
from studio.logic import estimate_gpus
from studio.logic.run_format import money_range, short_source, time_range
from studio.logic.runs_view import MODE_LABELS


def esc(value) -> str:
    return html.escape("" if value is None else str(value))


def note(message: str, kind: str = "info") -> str:
    return f"<div class='note {kind}'>{esc(message)}</div>"


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
    on = f"on {esc(estimate_gpus.on_gpus(estimate_gpus.rows_gpus(raw), config.gpu.type))} for this dataset"
    if words:
        quick_cost = f"<li>≈ {esc(words['quick_figures'])} {on}: {esc(words['quick'])} than full fine-tune.</li>"
        full_cost = f"<li>≈ {esc(words['full_figures'])} {on}: {esc(words['full'])} than quick LoRA.</li>"
        full_when = f"{esc(words['full'])} here, bigger output."
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
  <h4>Quick LoRA <span class='tag'>{esc(quick_tag)}</span></h4>
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
  <h4>Full fine-tune + speaker LoRA <span class='tag'>{esc(full_tag)}</span></h4>
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
        (f"{work['lora_adapter_mb']:g} MB", "LoRA adapter"), (esc(work.get("speaker") or "recommended"), "voice"),
    ]
    return "<div class='stat-cards'>" + "".join(
        f"<div class='stat-card'><div class='value'>{value}</div><div class='label'>{esc(label)}</div></div>"
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
        items.append(f"<tr><td>{esc(phase['label'])}</td><td>{esc(time)}</td><td>{esc(cost)}</td>"
                     f"<td class='detail'>{esc(detail)}</td></tr>")
    return ("<table class='phases'><tr><th>Stage</th><th>Time</th><th>Cost</th><th>Steps, epochs, basis</th></tr>"
            + "".join(items) + "</table>")


def headline_html(raw: pd.DataFrame, cfg: Config, on_cpu: bool = False) -> str:
    rows = raw[raw["gpu"] == cfg.gpu.type]
    if rows.empty:
        return (f"<div class='headline'><span class='warn'>{esc(cfg.gpu.type)} is not in the price table "
                "(assets/gpu_prices.yaml); choose a listed GPU.</span></div>")
    parts, details = [], []
    for _, row in rows.iterrows():
        chosen = row["mode"] == cfg.training_mode.selected
        label = MODE_LABELS.get(row["mode"], row["mode"])
        text = (f"{label}: ≈ {time_range(row['minutes_min'], row['minutes'])}, "
                f"{money_range(row['cost_usd_min'], row['cost_usd'])}"
                + ("" if row["fits"] else " (does not fit in memory)"))
        parts.append(f"<b>{esc(text)}</b>" if chosen else esc(text))
        details.append(f"<details{' open' if chosen else ''}><summary>{esc(label)}: each stage</summary>"
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
            f"<b>{esc(cfg.gpu.type)}</b> at ${cfg.gpu.price_per_hour:.2f}/h{'' if count == 1 else ' each'}, "
            f"for this dataset — {' · '.join(parts)}</div>{estimate_gpus.scaling_html(rows)}"
            f"<div class='quote'>{esc(reference)}</div>{''.join(details)}"
            f"<div class='src'>Speeds: {esc(rows.iloc[0]['figures'])}. Prices from assets/gpu_prices.yaml "
            f"({esc(rows.iloc[0]['price_source'])}); your hourly price replaces the list price for this GPU. "
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
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    checks = "".join(f"<li class='{'warn' if c.risk != 'ok' else ''}'>{esc(c.name)}: {c.steps:,} steps = "
                     f"{esc(format_epochs(c.epochs))} epochs — risk of over-fitting: {esc(c.risk)}</li>"
                     for c in report.checks)
    warnings = "".join(f"<li class='warn'>{esc(w)}</li>" for w in report.warnings)
    return (f"<div class='recipe'><ul>{checks}{warnings}</ul>"
            "<table class='phases'><tr><th>Setting</th><th>Reference</th><th>= epochs here</th><th>Yours</th>"
            f"<th>Scaled to your data</th><th>= epochs</th></tr>{body}</table>"
            f"<div class='src'>Scaled: steps for {TARGET_EPOCHS['lora']} epochs of all clips (quick LoRA) and "
            f"{TARGET_EPOCHS['speaker_lora']} of the voice (speaker LoRA); over {OVERFIT_EPOCHS} epochs the model "
            "tends to memorize the clips.</div></div>")
