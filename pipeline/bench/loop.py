"""The `loop` section of `python -m pipeline bench`: the whole training loop, end to end.

The `train` section times one optimizer step on a fixed batch. A user's run also builds batches
on the CPU, moves them to the GPU, logs metrics and plans memory: here `pipeline.train.loop.train`
itself runs on a random-weight checkpoint of the bench shape (written in the real file layout)
and a synthetic dataset of same-speaker clips with random codes, and the seconds per step are
read back from its own metrics.jsonl.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from pipeline.bench.common import SENTENCES, free_memory, peak_gb
from pipeline.model.synthetic import random_codes_manifest, write_random_lm


def _train_rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("kind") == "train"]


def _step_seconds(run_dir: Path, skip: int) -> list[float]:
    """Intervals between the rows after the first `skip`, except the last: a row is stamped when
    the next step is queued, and the final row right after the one before it (no step follows),
    so that interval is no step's time (on a CPU it can read 0)."""
    elapsed = [r["elapsed_s"] for r in _train_rows(run_dir)]
    return [b - a for a, b in zip(elapsed[skip:], elapsed[skip + 1:])][:-1]


def _tokens_per_s(run_dir: Path, skip: int) -> float | None:
    """The loop's own tokens/s (median of the timed steps' rows): what the cost estimate prefers
    to the bare step's, being what a run gets."""
    rates = [r["tokens_per_s"] for r in _train_rows(run_dir)[skip + 1:] if r.get("tokens_per_s")]
    return round(float(np.median(rates)), 1) if rates else None


def bench_loop(config, shapes, device, tiny: bool, steps: int | None = None, modes=("lora", "full")) -> dict:
    """Seconds per step of pipeline.train.loop.train for LoRA and full fine-tuning (`modes`) at the bench shape."""
    from pipeline.train.loop import train
    from pipeline.train.settings import TrainSettings

    args, _, _, batch_size, max_length = shapes
    steps = steps or (4 if tiny else 30)
    skip = 1 if tiny else 4  # compilation happens in the first steps
    result = {"steps": steps, "batch_size": batch_size, "max_length": max_length}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt = write_random_lm(tmp / "ckpt", args, device)
        manifest = random_codes_manifest(tmp / "codes", args, 24 if tiny else 600, 20 if tiny else 172, SENTENCES)
        for mode in modes:
            free_memory(device)
            settings = TrainSettings.from_config(
                config, mode, steps=steps, epochs=None, batch_size=batch_size, max_length=max_length,
                val_every=10**6, save_every=10**6, patience=None, eval_texts=(), device=str(device), warmup_steps=1)
            run_dir = tmp / f"run-{mode}"
            outcome = train(run_dir, ckpt, manifest, settings)
            seconds = _step_seconds(run_dir, skip)
            state = json.loads((run_dir / "state.json").read_text())
            median = float(np.median(seconds)) if seconds else 0.0
            # steps far over the median are (re)compilations for a new batch shape: what a run pays extra
            slow = [t for t in seconds if t > 2 * median]
            result[mode] = {"status": outcome.status, "step_s": round(median, 4) if seconds else None,
                            "step_s_mean": round(float(np.mean(seconds)), 4) if seconds else None,
                            "slow_steps": len(slow), "slow_steps_extra_s": round(sum(slow) - median * len(slow), 1),
                            "step_seconds": [round(t, 3) for t in seconds],
                            "timed_steps": len(seconds), "tokens_per_s": _tokens_per_s(run_dir, skip),
                            "peak_gb": round(peak_gb(device), 2),
                            "memory_plan": state.get("memory_plan")}
            print(f"loop {mode}: {result[mode]}", flush=True)
    return result
