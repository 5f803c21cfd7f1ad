"""All rows in order: machine, Hub, checkpoint, then (when the checkpoint is sound) the model.

A check that raises becomes a ✗ row naming the error, so one broken piece never hides the others.
Checks that need a sound checkpoint are ⚠ "not run" after a checkpoint ✗ (the ✗ already says
what to fix). `quick` skips the two slow rows: the spoken sentence and the LoRA smoke run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from pipeline.doctor.checkpoint import checkpoint_rows
from pipeline.doctor.hub import hub_rows
from pipeline.doctor.machine import machine_rows
from pipeline.doctor.row import FAIL, WARN, Row, guarded

Progress = Callable[[float, str], None] | None
MODEL_ROWS = (("model", "forward = generation"), ("model", "fast decoder"), ("codec", "round trip"),
              ("model", "speech"), ("training", "LoRA smoke run"))
SLOW_ROWS = {"speech", "LoRA smoke run"}


def _guarded_debug(group: str, name: str, check: Callable[[], Row]) -> Row:
    return check() if os.environ.get("PIPELINE_DEBUG") else guarded(group, name, check)


def model_rows(config, model_dir: Path, quick: bool, out_dir: Path, progress: Progress = None,
               smoke_steps: int | None = None) -> list[Row]:
    from pipeline.model.checkpoints import is_random_weights, load_lm
    from pipeline.doctor import model_checks as mc

    device = mc.device_for_checks()
    random = is_random_weights(model_dir)
    rows: list[Row] = []
    loaded: dict = {}

    def lm():
        if "model" not in loaded:
            loaded["model"], loaded["tokenizer"] = load_lm(model_dir, device=device)
        return loaded["model"], loaded["tokenizer"]

    def step(fraction: float, message: str) -> None:
        if progress:
            progress(fraction, message)

    step(0.55, "model: training forward vs generation")
    rows.append(_guarded_debug("model", "forward = generation", lambda: mc.forward_row(*lm(), random)))
    step(0.65, "model: fast decoder vs fish-speech")
    rows.append(_guarded_debug("model", "fast decoder", lambda: mc.fast_decoder_row(*lm(), random)))
    loaded.clear()
    step(0.72, "codec: round trip of a bundled clip")
    rows.append(_guarded_debug("codec", "round trip", lambda: mc.round_trip_row(model_dir, device, random)))
    if quick:
        return rows + [Row(group, name, WARN, "skipped (--quick)") for group, name in MODEL_ROWS if name in SLOW_ROWS]
    step(0.78, "model: one Finnish sentence")
    rows.append(_guarded_debug("model", "speech", lambda: mc.speech_row(model_dir, device, random, out_dir)))
    step(0.85, "training: LoRA smoke run")
    steps = smoke_steps or mc.SMOKE_STEPS
    rows.append(_guarded_debug("training", "LoRA smoke run",
                               lambda: mc.smoke_row(config, model_dir, out_dir, device, steps=steps, progress=None)))
    return rows


def run_checks(config, model_dir: str | Path, quick: bool = False, out_dir: str | Path | None = None,
               progress: Progress = None, smoke_steps: int | None = None) -> list[Row]:
    """Every row for this machine and the checkpoint in `model_dir`, in report order."""
    model_dir = Path(model_dir)
    out_dir = Path(out_dir or Path(config.workspace) / "doctor")
    out_dir.mkdir(parents=True, exist_ok=True)
    if progress:
        progress(0.0, "machine")
    rows = machine_rows(config, model_dir)
    if progress:
        progress(0.15, "Hugging Face Hub")
    rows += hub_rows(config.base_model.repo, model_dir)
    if progress:
        progress(0.3, "checkpoint files, shape, weights, tokenizer, codec config")
    checkpoint = checkpoint_rows(model_dir)
    rows += checkpoint
    broken = [r.name for r in checkpoint if r.status == FAIL]
    if broken:
        why = f"not run: the checkpoint check(s) {', '.join(broken)} failed (fix those first)"
        rows += [Row(group, name, WARN, "skipped (--quick)" if quick and name in SLOW_ROWS else why)
                 for group, name in MODEL_ROWS]
    else:
        rows += model_rows(config, model_dir, quick, out_dir, progress, smoke_steps)
    if progress:
        progress(1.0, "done")
    return rows


def exit_code(rows: list[Row]) -> int:
    """0 only when no row is ✗."""
    return 1 if any(r.status == FAIL for r in rows) else 0
