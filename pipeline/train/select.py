"""The best checkpoint of a training phase: by held-out loss, or by the scorecard.

A validation row of metrics.jsonl may carry scorecard means (`val_cer`, `val_similarity`,
`val_ovrl`); `quality_score` folds those present into one number in [0, 1], higher better,
each part weighing the same: 1 - CER, similarity, and DNSMOS OVRL mapped from 1-5 to 0-1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from pipeline.train.metrics import read_metrics

SCORE_COLUMNS = ("val_cer", "val_similarity", "val_ovrl")
LOSS_COLUMN = "val_loss"


def _finite(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def quality_score(cer=None, similarity=None, ovrl=None) -> float | None:
    """One number from the scorecard means present (None when none is)."""
    parts = []
    if (cer := _finite(cer)) is not None:
        parts.append(1.0 - min(max(cer, 0.0), 1.0))
    if (similarity := _finite(similarity)) is not None:
        parts.append(min(max(similarity, 0.0), 1.0))
    if (ovrl := _finite(ovrl)) is not None:
        parts.append(min(max((ovrl - 1.0) / 4.0, 0.0), 1.0))
    return sum(parts) / len(parts) if parts else None


@dataclass(frozen=True)
class Selection:
    step: int
    checkpoint: Path | None  # phases/<phase>/checkpoints/step_N when it is on disk
    by: str  # "score" | "loss": what decided
    value: float
    reason: str  # for run.json and the UI


def checkpoint_path(phase_dir: str | Path, step: int) -> Path:
    return Path(phase_dir) / "checkpoints" / f"step_{step:06d}"


def best_checkpoint(phase_dir: str | Path, by: str = "loss", require_checkpoint: bool = True) -> Selection | None:
    """The validation step with the best score (`by="score"`) or lowest held-out loss.

    Only steps whose checkpoint is still on disk compete when `require_checkpoint`. A phase
    without scorecard numbers falls back to the loss, and the reason says so. None when no
    validation row qualifies.
    """
    if by not in ("loss", "score"):
        raise ValueError(f"training.select_by must be 'loss' or 'score', not {by!r}.")
    phase_dir = Path(phase_dir)
    _, val = read_metrics(phase_dir / "metrics.jsonl")
    candidates = []
    for row in val.to_dict("records"):
        step = int(row["step"])
        path = checkpoint_path(phase_dir, step)
        if require_checkpoint and not path.is_dir():
            continue
        score = quality_score(*(row.get(c) for c in SCORE_COLUMNS))
        candidates.append((step, path if path.is_dir() else None, score, _finite(row.get(LOSS_COLUMN))))
    scored = [c for c in candidates if c[2] is not None]
    note = ""
    if by == "score" and not scored:
        by, note = "loss", "no scorecard in the validations (ASR, speaker and DNSMOS scores missing): "
    if by == "score":
        step, path, value, _ = max(scored, key=lambda c: (c[2], -c[0]))  # ties: the earlier step
        parts = ", ".join(f"{c.removeprefix('val_')} {row[c]:.3f}" for row in val.to_dict("records")
                          if int(row["step"]) == step for c in SCORE_COLUMNS if _finite(row.get(c)) is not None)
        return Selection(step, path, "score", value,
                         f"best scorecard at step {step}: score {value:.3f} ({parts}) of {len(scored)} checkpoints")
    with_loss = [c for c in candidates if c[3] is not None]
    if not with_loss:
        return None
    step, path, _, value = min(with_loss, key=lambda c: (c[3], c[0]))
    return Selection(step, path, "loss", value,
                     f"{note}lowest held-out loss at step {step}: {value:.4f} of {len(with_loss)} checkpoints")
