"""The cost estimate's side of "estimate vs this run": the price table with the configured price,
one GPU's and mode's estimate in words, and the steps the configuration plans.

The run's own side (what it measured) is read in `studio.logic.runs_view`. No gradio import.
"""

from __future__ import annotations

import pandas as pd

from pipeline.config import Config
from studio.logic.run_format import money_range, time_range
from studio.logic.run_stages import TRAINING_PHASES


def priced_table(config: Config) -> dict:
    """The GPU price table with the configured hourly price for the configured GPU."""
    from pipeline.estimate.cost import load_price_table

    prices = load_price_table()
    row = prices.get("gpus", {}).get(config.gpu.type)
    if row is not None:
        row["price_per_hour"] = config.gpu.price_per_hour
    return prices


def estimate_texts(table: pd.DataFrame, gpu: str, mode: str | None) -> dict[str, str]:
    """The estimate of one GPU and mode in words: training time, wall time and cost (ranges), and
    where the throughput came from. A speaker run is the speaker phase of a full fine-tune's row."""
    rows = table[table["gpu"] == gpu] if not table.empty else table
    looked_up = "full_finetune" if mode == "speaker_lora" else mode
    row = rows[rows["mode"] == looked_up] if not rows.empty else rows
    if row.empty:
        why = f"{gpu} is not in the price table" if rows.empty else f"no estimate for mode {mode}"
        return {"training": "—", "wall": "—", "cost": "—", "source": why}
    r = row.iloc[0]
    phases = [p for p in r["phases"] if p["phase"] in TRAINING_PHASES
              and (mode != "speaker_lora" or p["phase"] == "speaker_lora")]
    train_low = sum(p["seconds_min"] for p in phases) / 60
    train_high = r["train_minutes"] if mode != "speaker_lora" else sum(p["seconds_max"] for p in phases) / 60
    source = r["throughput_source"]
    if mode == "speaker_lora":  # its own stages are not estimated apart: training only
        cost = money_range(sum(p["cost_min"] for p in phases), sum(p["cost_max"] for p in phases))
        return {"training": time_range(train_low, train_high), "wall": "not estimated for a speaker run",
                "cost": f"{cost} (training)", "source": source}
    return {"training": time_range(train_low, train_high), "wall": time_range(r["minutes_min"], r["minutes"]),
            "cost": f"{money_range(r['cost_usd_min'], r['cost_usd'])} (all stages)", "source": source}


def planned_steps(cfg: Config, mode: str | None) -> str:
    """The training steps `cfg` plans for `mode`, in words (early stopping makes some an upper bound)."""
    if mode == "quick_lora":
        return str(cfg.training.quick_lora.steps)
    ff = cfg.training.full_finetune
    if mode == "speaker_lora":
        return f"up to {ff.speaker_max_steps}"
    return f"{ff.epochs:g} epochs + up to {ff.speaker_max_steps}"
