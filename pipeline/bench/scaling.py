"""`python -m pipeline bench --only scaling`: training speed on one GPU and on every visible GPU.

Both runs go through torchrun (`torch.distributed.run`), one process per GPU, each rank in
`pipeline.bench.scaling_worker`, which times the training loop's own data-parallel step
(pipeline.train.distributed, pipeline.train.plan.train_step) on the bench's random-weight model.
Weak scaling: every GPU trains the same per-GPU batch in both runs, so N GPUs train an N times
larger global batch per step; the efficiency is tokens/s on N GPUs / (N x tokens/s on one).
The cost estimate (pipeline.estimate.cost) reads it from the bench JSON's "scaling" section.
A CPU runs the same code with two gloo processes on the tiny shape (`tiny`: tests; its timings mean nothing).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch

from pipeline import atomic
from pipeline.config import PROJECT_ROOT
from pipeline.train.launch import torchrun_command
from pipeline.train.settings import TrainSettings

MODES = ("lora", "full")
CPU_PROCESSES = 2  # gloo processes standing in for GPUs on a CPU (tiny only)
COLLECTIVE_TIMEOUT_S = 600  # a rank that stops answering fails the run instead of hanging it
WEAK_SCALING = ("weak scaling: every GPU trains the same per-GPU batch, so N GPUs train an N times larger "
                "global batch per step; efficiency = tokens/s on N GPUs / (N x tokens/s on one)")
ONE_GPU_NOTE = "one GPU visible: nothing to scale"


def process_count(device, tiny: bool) -> int:
    """Processes of the multi-GPU run: every visible GPU; on a CPU, CPU_PROCESSES gloo processes (tiny only)."""
    if torch.device(device).type == "cuda":
        return max(torch.cuda.device_count(), 1)
    if not tiny:
        raise ValueError("The scaling bench needs CUDA GPUs; use --tiny to run its code on CPU processes.")
    return CPU_PROCESSES


def _relay(process: subprocess.Popen) -> list[str]:
    """The ranks' output to this process's, the last lines kept for an error message."""
    tail: list[str] = []
    for line in process.stdout:
        sys.stdout.write(line)
        tail.append(line)
        del tail[:-40]
    sys.stdout.flush()
    return tail


def measure(spec: dict, processes: int, folder: Path) -> dict:
    """One torchrun of `processes` ranks; {mode: figures or {"error": …}} as rank 0 recorded them."""
    result = folder / f"result-{processes}.json"
    spec_path = folder / f"spec-{processes}.json"
    atomic.write_json(spec_path, spec | {"result": str(result)})
    process = subprocess.Popen(torchrun_command(spec_path, processes, "pipeline.bench.scaling_worker"), cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, bufsize=1)
    try:
        tail = _relay(process)
        code = process.wait()
    except BaseException:
        process.terminate()  # torchrun ends its ranks
        process.wait()
        raise
    figures = json.loads(result.read_text()) if result.is_file() else {}
    if code != 0:
        cause = next((line.strip() for line in reversed(tail) if "Error" in line), f"torchrun exited with {code}")
        for mode in spec["settings"]:
            figures.setdefault(mode, {"error": cause[:400]})
    return figures


def efficiency(one: dict, many: dict, processes: int) -> float | None:
    """tokens/s on `processes` GPUs / (processes x tokens/s on one); None when either run failed."""
    if not one.get("tokens_per_s") or not many.get("tokens_per_s"):
        return None
    return round(many["tokens_per_s"] / (processes * one["tokens_per_s"]), 3)


def mode_settings(config, mode: str, per_gpu_batch: int, max_length: int) -> dict:
    """The training loop's settings of `mode` from the configuration, for one GPU's batch."""
    settings = TrainSettings.from_config(config, mode, batch_size=per_gpu_batch, grad_accumulation=1,
                                         max_length=max_length, eval_texts=())
    return asdict(settings)


def bench_scaling(config, shapes, device, tiny: bool, steps: int | None = None) -> dict:
    """Steps/s and tokens/s of LoRA and full fine-tuning on one GPU and on every visible GPU."""
    device = torch.device(device)
    processes = process_count(device, tiny)
    _, _, _, per_gpu_batch, max_length = shapes
    warmup, repeat = (1, steps or 2) if tiny else (3, steps or 5)
    spec = {"device": device.type, "tiny": tiny, "per_gpu_batch": per_gpu_batch, "max_length": max_length,
            "warmup": warmup, "repeat": repeat, "timeout_s": COLLECTIVE_TIMEOUT_S,
            "settings": {mode: mode_settings(config, mode, per_gpu_batch, max_length) for mode in MODES}}
    result: dict = {"gpus": processes, "device": device.type, "backend": "nccl" if device.type == "cuda" else "gloo",
                    "per_gpu_batch": per_gpu_batch, "max_length": max_length, "warmup_steps": warmup,
                    "timed_steps": repeat, "scaling": WEAK_SCALING}
    with tempfile.TemporaryDirectory() as tmp:
        runs = {1: measure(spec, 1, Path(tmp))}
        if processes > 1:
            runs[processes] = measure(spec, processes, Path(tmp))
    for mode in MODES:
        one = runs[1].get(mode, {"error": "not run"})
        entry = {"1": one}
        if processes > 1:
            many = runs[processes].get(mode, {"error": "not run"})
            entry[str(processes)] = many
            entry["efficiency"] = efficiency(one, many, processes)
        else:
            entry["efficiency"] = None
        result[mode] = entry
    if processes > 1:
        result["efficiency"] = {mode: result[mode]["efficiency"] for mode in MODES}
    else:
        result["efficiency"], result["note"] = None, ONE_GPU_NOTE
    return result
