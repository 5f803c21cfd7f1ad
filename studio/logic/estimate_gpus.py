"""The GPU count of the Modes & cost tab's estimate: the choice, where it is kept, and the words
for an estimate on several GPUs (its scaling assumption included).

The count is what the user means to rent, not what this machine has, so it is kept in the
selection under its own key (not `training.gpus`, which decides how many processes a run started
here uses)."""

from __future__ import annotations

import html

import pandas as pd

from pipeline.data.selection import load_selection, save_selection

GPU_COUNTS = (1, 2, 4, 8)
SELECTION_KEY = "estimate_gpus"
LABEL = "GPUs"
INFO = "data-parallel: time ÷ measured scaling, money × GPUs"


def gpu_count(selection: dict) -> int:
    """The saved GPU count (1 when none is saved or the saved one is not on offer)."""
    value = selection.get(SELECTION_KEY)
    return value if value in GPU_COUNTS and not isinstance(value, bool) else 1


def saved_gpu_count(config) -> int:
    return gpu_count(load_selection(config))


def save_gpu_count(config, value) -> dict:
    """Save the estimate's GPU count; ValueError naming the field when it is not one on offer."""
    try:
        count = int(value)
    except (TypeError, ValueError):
        count = None
    if count not in GPU_COUNTS or (value is not None and float(value) != count):
        raise ValueError(f"{LABEL}: choose one of {', '.join(map(str, GPU_COUNTS))} (got {value!r}).")
    return save_selection(config, **{SELECTION_KEY: count})


def rows_gpus(rows: pd.DataFrame | None) -> int:
    """The GPU count of an estimate's rows (1 for none, or a table without one)."""
    if rows is None or rows.empty or "gpus" not in rows:
        return 1
    return int(rows["gpus"].max())


def on_gpus(count: int, gpu: str) -> str:
    """'one A100-80GB' or '4 × A100-80GB'."""
    return f"one {gpu}" if count == 1 else f"{count} × {gpu}"


def gpu_label(row) -> str:
    """A table row's card with its count ('4 × H100-80GB'; the card alone for one)."""
    count = int(row.get("gpus") or 1)
    return row["gpu"] if count == 1 else f"{count} × {row['gpu']}"


def short_scaling(row) -> str:
    """An N-GPU row's scaling assumption in a few words ("" on one GPU)."""
    count = int(row.get("gpus") or 1)
    if count == 1:
        return ""
    if row.get("batch_split"):
        return f"batch does not split over {count} GPUs"
    efficiency = row.get("scaling_efficiency") or {}
    kind = "full" if row.get("mode") == "full_finetune" else "lora"
    if row.get("scaling_measured"):
        return f"× {count} GPUs at {efficiency.get(kind, 1.0):.2f} of linear (measured)"
    if "not measured on" in str(row.get("scaling", "")):
        return f"× {count} GPUs: linear assumed, not measured"
    return f"× {count} GPUs at {efficiency.get(kind, 1.0):.2f} of linear (measured on another count)"


def scaling_html(rows: pd.DataFrame) -> str:
    """The scaling assumption of the chosen card's rows, and a global batch that cannot split, as HTML."""
    if rows.empty or rows_gpus(rows) == 1:
        return ""
    first = rows.iloc[0]
    problem = (f"<div class='warn'>Training would refuse this: {html.escape(str(first['batch_split']))}</div>"
               if first.get("batch_split") else "")
    return f"{problem}<div class='src scaling'>Scaling: {html.escape(str(first['scaling']))}.</div>"
