"""Compile the training step while the codec extracts the dataset's codes.

A compiled training phase spends its first step compiling (about a minute cold at the s1-mini
shape on an H200). Extraction before it keeps the GPU's codecs busy but leaves GPU memory and
most CPU cores free, so the workflow starts this module as a second process (at a lower CPU
priority) when extraction starts: it runs two steps and a validation of the phase's own settings
(same recomputation choice, same compiled functions) on synthetic clips, filling the on-disk
caches of torch's compiler and Triton. The training process then loads the compiled graphs
instead of building them. The sizes that change between batches (the batch itself, its width,
its frame count) are symbolic from the first call (pipeline.kernels.runtime.varying), so graphs
compiled on small synthetic batches (2 sequences of at most 1,024 positions) fit the phase's
real ones, at a fraction of their memory.

Nothing depends on it: when it cannot run (not enough free GPU memory beside extraction, a CPU,
compilation off) or fails, the training process compiles as before.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.model.tokens import RESIDUAL_VOCAB

WARMUP_STEPS = 2  # the second step runs the graphs again: compiled once, reused
WARMUP_MICRO_BATCH = 2  # the smallest batch whose compiled graphs serve larger ones
# Short sequences: extraction's codecs hold most of the GPU's memory meanwhile (at 2 x 4,096
# the warm-up ran out of memory beside them on an H200)
WARMUP_MAX_LENGTH = 1024
WAIT_LIMIT_S = 600.0  # the training process waits at most this long for a warm-up still compiling
MEMORY_MARGIN_GB = 4.0


def synthetic_clips(folder: Path, num_codebooks: int, codebook_size: int, texts: list[str], clips: int,
                    max_frames: int, speakers: int = 4, seed: int = 0) -> pd.DataFrame:
    """A manifest of `clips` clips with random codes (max_frames // 7 to max_frames frames) written
    to `folder`, texts taken in turn from `texts`: training input with real shapes, no audio."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(clips):
        frames = int(rng.integers(max(4, max_frames // 7), max_frames))
        codes = rng.integers(0, min(RESIDUAL_VOCAB, codebook_size), (num_codebooks, frames)).astype(np.int16)
        path = folder / f"clip{i:04d}.npy"
        np.save(path, codes)
        text = texts[i % len(texts)]
        rows.append({"id": f"clip{i:04d}", "speaker": f"spk{i % speakers}", "text": text, "normalized_text": text,
                     "codes_path": str(path), "status": "ok"})
    return pd.DataFrame(rows)


def warmup_settings(settings, phase_plan):
    """The phase's settings for the warm-up: WARMUP_STEPS steps and one validation at micro-batch
    2 (1 where the phase's is 1: dynamo specializes a size of 1, so a graph compiled at 1 would
    not serve 4; one compiled at 2 serves any larger batch) and sequences of at most
    WARMUP_MAX_LENGTH (the width is symbolic too), with the recomputation choice of the phase's
    plan, nothing spoken, no checkpoints kept beyond the last."""
    return dataclasses.replace(settings, steps=WARMUP_STEPS, epochs=None, val_every=WARMUP_STEPS,
                               save_every=10**9, patience=None, eval_texts=(), warmup_steps=1, init_adapter=None,
                               batch_size=min(WARMUP_MICRO_BATCH, phase_plan.micro_batch), grad_accumulation=1,
                               max_length=min(WARMUP_MAX_LENGTH, settings.max_length),
                               gradient_checkpointing="on" if phase_plan.gradient_checkpointing else "off")


def warmup_plan(settings):
    """The TrainPlan the warm-up of a phase with `settings` runs under."""
    from pipeline.train.plan import plan_phase

    return plan_phase(warmup_settings(settings, plan_phase(settings)))


def fits_beside_extraction(plan, free_gb: float) -> tuple[bool, str]:
    """Whether a phase's TrainPlan is compiled on a GPU and its planned peak fits in the GPU memory
    extraction leaves (it takes half of what is free, codec_batches.default_batch_seconds), with
    a margin; and why, in words."""
    if plan.device.type != "cuda" or not plan.compile:
        return False, "the phase is not compiled (a CPU, or training.compile off)"
    peak = plan.memory.estimated_peak_gb if plan.memory else None
    left = 0.5 * free_gb - MEMORY_MARGIN_GB
    if peak is None or peak > left:
        return False, f"the step's ~{peak} GB do not fit beside extraction ({left:.0f} GB left)"
    return True, f"~{peak:.0f} GB of the {left:.0f} GB extraction leaves"


def warm_up(config_path: Path, phase: str, base_dir: Path) -> dict:
    """Run the warm-up in this process (the module's command line calls this)."""
    from pipeline.config import load_config
    from pipeline.data.text import example_sentences
    from pipeline.train.loop import train
    from pipeline.train.settings import TrainSettings

    started = time.perf_counter()
    config = load_config(config_path)
    from pipeline.train.plan import plan_phase

    phase_settings = TrainSettings.from_config(config, phase)
    settings = warmup_settings(phase_settings, plan_phase(phase_settings))
    model_args = json.loads((Path(base_dir) / "config.json").read_text())
    with tempfile.TemporaryDirectory(prefix="compile-warmup-") as tmp:
        manifest = synthetic_clips(Path(tmp) / "codes", model_args["num_codebooks"], model_args["codebook_size"],
                                   example_sentences(), clips=400, max_frames=172)
        result = train(Path(tmp) / "run", base_dir, manifest, settings)
    return {"status": result.status, "seconds": round(time.perf_counter() - started, 1), "message": result.message}


class CompileWarmup:
    """The warm-up as a child process of the workflow: start, then `finish` before training."""

    def __init__(self, process: subprocess.Popen | None, log_path: Path | None, reason: str):
        self.process, self.log_path, self.reason = process, log_path, reason
        self.started = time.time()

    @classmethod
    def start(cls, config, config_path: Path, phase: str, base_dir: Path, log_path: Path,
              free_gb: float | None = None) -> "CompileWarmup":
        """Start the warm-up when it fits (else a CompileWarmup that did not start, and why)."""
        import torch

        from pipeline.train.settings import TrainSettings

        if not torch.cuda.is_available():
            return cls(None, None, "no GPU")
        free_gb = free_gb if free_gb is not None else torch.cuda.mem_get_info()[0] / 1e9
        fits, reason = fits_beside_extraction(warmup_plan(TrainSettings.from_config(config, phase)), free_gb)
        if not fits:
            return cls(None, None, reason)
        return cls(spawn(config_path, phase, base_dir, log_path), log_path, reason)

    def finish(self, stop_event: threading.Event | None = None, limit_s: float = WAIT_LIMIT_S) -> str:
        """Wait for the warm-up (at most limit_s, less on a stop request); what happened, in words."""
        if self.process is None:
            return f"not started: {self.reason}"
        deadline = time.time() + limit_s
        while self.process.poll() is None and time.time() < deadline:
            if stop_event is not None and stop_event.is_set():
                break
            time.sleep(0.5)
        if self.process.poll() is None:
            self.stop()
            return f"stopped after {time.time() - self.started:.0f} s (still compiling)"
        if self.process.returncode:
            return f"failed (exit {self.process.returncode}, see {self.log_path}); training compiles itself"
        return f"finished {time.time() - self.started:.0f} s after it started"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()


def spawn(config_path: Path, phase: str, base_dir: Path, log_path: Path) -> subprocess.Popen:
    """`python -m pipeline.train.warmup` in the background, its output in log_path."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "pipeline.train.warmup", "--config", str(config_path), "--phase", phase,
             "--base", str(base_dir), "--parent", str(os.getpid())],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=Path(__file__).resolve().parents[2])


def _exit_with_parent(parent: int) -> None:
    """A warm-up whose workflow died (kill -9) has nobody to warm for: stop with it."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Compile a training phase's step ahead (see the module).")
    parser.add_argument("--config", required=True, type=Path, help="the run's config.yaml")
    parser.add_argument("--phase", required=True, choices=("lora", "full", "speaker_lora"))
    parser.add_argument("--base", required=True, type=Path, help="the base model folder")
    parser.add_argument("--parent", type=int, default=None, help="exit when this process is gone")
    args = parser.parse_args(argv)
    if args.parent:
        _exit_with_parent(args.parent)
    os.nice(10)  # extraction's loader threads first: the warm-up only has to end before extraction does
    outcome = warm_up(args.config, args.phase, args.base)
    print(f"compile warm-up: {outcome}", flush=True)
    return 0 if outcome["status"] == "finished" else 1


if __name__ == "__main__":
    sys.exit(main())
