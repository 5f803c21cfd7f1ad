"""Reading a training phase's metrics.jsonl (written by the training loop, one JSON row per step
and per evaluation) into tables: for the studio's views and for choosing the best checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd


def read_metrics(path: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train rows, validation rows) of a metrics.jsonl, sorted by step; empty frames when absent.

    The file is appended to while we read it: a half-written last line is skipped.
    """
    rows = []
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(row, dict) and "step" in row:
                    rows.append(row)
    except OSError:
        pass
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=["step"]), pd.DataFrame(columns=["step"])
    frame["step"] = pd.to_numeric(frame["step"], errors="coerce")
    frame = frame.dropna(subset=["step"])
    kinds = frame["kind"] if "kind" in frame else pd.Series("train", index=frame.index)
    return _rows_of(frame[kinds != "val"]), _rows_of(frame[kinds == "val"])


def _rows_of(frame: pd.DataFrame) -> pd.DataFrame:
    """Sorted by step, without columns empty for this kind; `step` always kept (an empty kind has
    every column empty, and the views sort and index by step)."""
    empty = [c for c in frame.columns if c != "step" and frame[c].isna().all()]
    frame = frame.drop(columns=empty).sort_values("step", kind="stable").reset_index(drop=True)
    frame["step"] = frame["step"].astype(int)
    return frame
