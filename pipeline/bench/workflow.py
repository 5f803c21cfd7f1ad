"""The `workflow` section of `python -m pipeline bench`: the whole quick_lora workflow, timed per stage.

A user waits from "Start" to hearing the voice: dataset analysis, VQ extraction, the LoRA steps,
the merge and the evaluation audio. Here each stage runs through the project's own functions
(the ones `pipeline.train.workflow` chains) on a synthetic dataset the bench writes itself
(`synthetic_dataset`: by default 3,000 clips of 2-20 s, ~8 h, 16 kHz FLAC) and a random-weight
checkpoint of the bench shape, in a temporary workspace. Per stage: wall seconds, the CPU cores
used (process and worker CPU time over wall time), and the GPU's idle share (NVML utilization
sampled during the stage; for extraction also the codec's own wait for audio). Fewer training
steps than the recipe's are extrapolated to the full length from the steady-state step time
and labelled so. Dataset analysis runs once more on a subset with 1 worker and with all cores.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.bench.common import free_memory
from pipeline.data.parallel import worker_count
from pipeline.model.synthetic import write_random_lm

FULL_CLIPS = 3000  # the realistic dataset: ~8 h of 2-20 s clips
TARGET_MINUTES = 20.0
TARGET_DOLLARS = 1.0
PRICE_GPU = "H100-80GB"  # the list price the target is stated at
_DERIVED_BUFFERS = ("causal_mask", "freqs_cis")  # rebuilt from the config at load time


# -- measuring a stage --------------------------------------------------------------------------
class GpuSampler:
    """NVML utilization (share of time a kernel ran) sampled on a thread while a stage runs."""

    def __init__(self, device, every_s: float = 0.2):
        self.device, self.every_s, self.samples = device, every_s, []
        self.note = None
        self._stop = threading.Event()
        self._thread = None
        if torch.device(device).type != "cuda":
            self.note = "no GPU"
            return
        try:
            torch.cuda.utilization(device)
        except Exception as exc:  # pynvml missing or NVML unavailable
            self.note = f"GPU utilization unavailable ({type(exc).__name__})"
            return
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(self.every_s):
            with contextlib.suppress(Exception):
                self.samples.append((time.perf_counter(), torch.cuda.utilization(self.device)))

    def __enter__(self):
        if self._thread:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread:
            self._thread.join()

    def idle_share(self, since: float | None = None) -> float | None:
        """1 - mean utilization of the samples (those after perf_counter time `since`, if given)."""
        values = [u for t, u in self.samples if since is None or t >= since]
        return round(1.0 - float(np.mean(values)) / 100.0, 3) if values else None


def encoding_since(report) -> float:
    """perf_counter time at which an extraction that just returned had its first batch ready:
    the GPU idle share from then on is the one "once started" (codec loading left out)."""
    return time.perf_counter() - report.busy_span_seconds


@contextlib.contextmanager
def _stage(result: dict, name: str, device, workers: int | None = None):
    """Times the block into result["stages"][name]: wall, CPU cores busy, GPU idle share."""
    row: dict = {}
    before, started = os.times(), time.perf_counter()
    with GpuSampler(device) as gpu:
        yield row
    wall = time.perf_counter() - started
    after = os.times()
    cpu = sum(getattr(after, k) - getattr(before, k) for k in ("user", "system", "children_user", "children_system"))
    # os.times counts this process and the children it reaped: the analysis pool's processes
    # (forked from multiprocessing's server, not from here) are left out, so this is a lower bound
    row.update(wall_s=round(wall, 2), cpu_cores=os.cpu_count(), cpu_cores_busy=round(cpu / wall, 2) if wall > 0 else None)
    row.setdefault("workers", workers)
    row.setdefault("gpu_idle_share", gpu.idle_share())
    if "encoding_since" in row:
        row["gpu_idle_share_encoding"] = gpu.idle_share(row.pop("encoding_since"))
    if gpu.note or row["gpu_idle_share"] is None:
        row.setdefault("gpu_idle_note", gpu.note or "too short to sample")
    result["stages"][name] = row
    print(f"workflow {name}: {row}", flush=True)


@contextlib.contextmanager
def _workspace(path: Path):
    """STUDIO_WORKSPACE pointed at the bench's temporary workspace (it wins over the config)."""
    old = os.environ.get("STUDIO_WORKSPACE")
    os.environ["STUDIO_WORKSPACE"] = str(path)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("STUDIO_WORKSPACE", None)
        else:
            os.environ["STUDIO_WORKSPACE"] = old


# -- inputs -------------------------------------------------------------------------------------
def write_checkpoint(folder: Path, shapes, tiny: bool) -> Path:
    """A random-weight checkpoint of the bench shape in the Hub layout, codec included (tiny: the
    tests' tiny checkpoint, whose tokenizer and vocabulary generation is known to accept)."""
    from pipeline.model.checkpoints import (CODEC_CONFIG_NAME, RANDOM_WEIGHTS_MARKER, RANDOM_WEIGHTS_TEXT,
                                            build_codec)
    from pipeline.model.tiny_checkpoint import write_tiny_checkpoint

    if tiny:
        return write_tiny_checkpoint(folder)

    args, _, codec_config = shapes[:3]
    write_random_lm(folder, args)
    shutil.copy(codec_config, folder / CODEC_CONFIG_NAME)
    codec = build_codec(folder / CODEC_CONFIG_NAME)
    torch.save({k: v for k, v in codec.state_dict().items() if not k.endswith(_DERIVED_BUFFERS)},
               folder / "codec.pth")
    (folder / RANDOM_WEIGHTS_MARKER).write_text(RANDOM_WEIGHTS_TEXT)
    return folder


def _bench_config(config, workspace: Path, data: Path, clips: int, steps: int, shapes, tiny: bool):
    overrides = {"studio.workspace": str(workspace), "dataset.source": "folder", "dataset.path": str(data),
                 "dataset.max_clips": clips, "training_mode.selected": "quick_lora",
                 "training.quick_lora.steps": steps}
    # no sentences spoken at each validation: with random weights at the real shape they trip a
    # device-side index assert that poisons the CUDA context (the evaluate stage still speaks)
    overrides["training.eval_sentences"] = 0
    if tiny:  # the tiny shapes' batch
        overrides |= {"training.batch_size": shapes[3], "training.max_length": shapes[4],
                      "training.val_every": max(steps // 2, 1),
                      "training.save_every": steps, "training.warmup_steps": 1}
    return config.with_overrides(overrides)


# -- stages -------------------------------------------------------------------------------------
def _compare_workers(config, data: Path, out: Path, subset: int) -> dict:
    """Dataset analysis of the first `subset` clips with 1 worker and with all cores."""
    from pipeline.data.manifest import build_manifest
    from pipeline.data.sources import read_folder

    clips = read_folder(data)[:subset]
    row = {"clips": len(clips)}
    for label, workers in (("serial", 1), ("parallel", None)):
        started = time.perf_counter()
        build_manifest(clips, out / label, config, workers=workers)
        row[f"{label}_s"] = round(time.perf_counter() - started, 2)
    row["workers"] = worker_count()
    row["speedup"] = round(row["serial_s"] / row["parallel_s"], 2) if row["parallel_s"] > 0 else None
    return row


def _train_timing(phase_dir: Path, steps: int, full_steps: int, val_every: int, wall: float) -> dict:
    """The steady-state step time from metrics.jsonl and the full-length time extrapolated from it."""
    rows = [json.loads(line) for line in (phase_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    kinds = [(r.get("kind", "train"), r["elapsed_s"]) for r in rows if "elapsed_s" in r]
    train_times = [t for k, t in kinds if k == "train"]
    skip = min(4, max(len(train_times) - 2, 0))  # the first steps compile
    diffs = np.diff(train_times[skip:])
    step_s = float(np.median(diffs)) if len(diffs) else wall / max(steps, 1)
    val_costs = [t - prev for (k, t), (_, prev) in zip(kinds[1:], kinds[:-1]) if k == "val"]
    val_s = float(np.mean(val_costs)) if val_costs else 0.0
    remaining = max(full_steps - steps, 0)
    extra_vals = max(full_steps // max(val_every, 1) - steps // max(val_every, 1), 0)
    setup = json.loads((phase_dir / "state.json").read_text()).get("setup_s") or {}
    row = {"steps": steps, "full_steps": full_steps, "step_s": round(step_s, 4),
           "first_steps_s": round(train_times[skip], 2) if train_times else None,
           # before the first step: loading, packing, the optimizer; the first row's rest is compilation
           "setup_s": setup,
           "first_step_s": round(train_times[0] - sum(setup.values()), 2) if train_times and setup else None,
           # when each of the first steps was logged: compilation, and recompilation for new shapes
           "first_elapsed_s": [round(t, 2) for t in train_times[:6]],
           "validation_s": round(val_s, 2), "validations": len(val_costs)}
    if remaining:
        row["full_length_s"] = round(wall + remaining * step_s + extra_vals * val_s, 1)
        row["full_length_label"] = (f"extrapolated: {steps} steps measured, the other {remaining} at the "
                                    f"steady-state {step_s:.3f} s/step plus {extra_vals} validations at {val_s:.1f} s")
    else:
        row["full_length_s"] = round(wall, 1)
        row["full_length_label"] = "measured"
    return row


def _adapter_of(phase_dir: Path) -> Path:
    state = json.loads((phase_dir / "state.json").read_text())
    chosen = Path(state.get("best") or state["latest"])
    return chosen if chosen.is_absolute() else phase_dir / chosen


def _run_stages(config, result: dict, ckpt: Path, device, tiny: bool) -> None:
    from pipeline.data.dataset import load_configured_dataset
    from pipeline.generate.fastgen import DecodeOptions
    from pipeline.model.codes import extract_codes
    from pipeline.model.merge import export_adapter, merge_lora
    from pipeline.model.model_card import run_card_facts
    from pipeline.train.loop import train
    from pipeline.train.runs import create_run, read_run
    from pipeline.train.settings import TrainSettings
    from pipeline.train.workflow import render_examples

    with _stage(result, "prepare", device, worker_count()) as row:
        dataset = load_configured_dataset(config)
        row.update(accepted=dataset.summary["accepted"], total=dataset.summary["total"],
                   accepted_hours=round(dataset.summary["accepted_minutes"] / 60, 3))
    with _stage(result, "extract", device) as row:
        report = extract_codes(dataset.manifest, ckpt, config.workspace / "codes", device=device)
        row["encoding_since"] = encoding_since(report)
        row.update(workers=report.loader_threads, clips=report.computed, failed=len(report.failed),
                   audio_s=round(report.audio_seconds, 1), realtime_factor=round(report.throughput, 1),
                   load_wait_s=round(report.load_wait_seconds, 2), first_load_s=round(report.first_load_seconds, 2),
                   encode_s=round(report.encode_seconds, 2), codec_idle_share=round(report.gpu_idle_share, 3))
        if device.type != "cuda":  # no NVML: the codec's own wait for audio is the idle share
            row["gpu_idle_share"] = round(report.gpu_idle_share, 3)
    free_memory(device)
    run_dir = create_run(config, "bench-workflow", "quick_lora")
    phase_dir = run_dir / "phases" / "lora"
    settings = TrainSettings.from_config(config, "lora", device=str(device))
    with _stage(result, "train", device) as row:
        outcome = train(phase_dir, ckpt, report.manifest, settings)
    row.update(status=outcome.status)
    row.update(_train_timing(phase_dir, settings.steps, result["full_steps"], settings.val_every, row["wall_s"]))
    free_memory(device)
    with _stage(result, "merge", device) as row:
        adapter = _adapter_of(phase_dir)
        card = run_card_facts(run_dir, read_run(run_dir))
        merged = merge_lora(ckpt, adapter, run_dir / "artifacts" / "merged", card=card)
        export_adapter(adapter, run_dir / "artifacts" / "adapter.zip", card=card)
    free_memory(device)
    with _stage(result, "evaluate", device) as row:
        try:  # the last stage: its failure must not lose the other stages' figures
            audio = render_examples(merged, run_dir / "audio", count=1 if tiny else 3,
                                    decode_options=DecodeOptions.from_speed(config.speed))
            row["sentences"] = len(audio)
        except Exception as exc:
            row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"


def _totals(result: dict, clips: int) -> None:
    from pipeline.estimate.cost import load_price_table

    stages = result["stages"]
    measured = sum(s["wall_s"] for s in stages.values())
    scale = FULL_CLIPS / clips  # the data stages grow with the clips; the others do not
    full = (sum(stages[s]["wall_s"] for s in ("prepare", "extract")) * scale
            + stages["train"]["full_length_s"] + stages["merge"]["wall_s"] + stages["evaluate"]["wall_s"])
    label = stages["train"]["full_length_label"].split(":")[0]
    if clips != FULL_CLIPS:
        label = f"{'extrapolated' if label == 'measured' else label}; prepare and extract scaled from {clips} to {FULL_CLIPS} clips"
    price = load_price_table()["gpus"][PRICE_GPU]["price_per_hour"]
    dollars = full / 3600 * price
    result.update(total_s=round(measured, 1), full_length_total_s=round(full, 1), full_length_label=label,
                  full_length_minutes=round(full / 60, 2), price_gpu=PRICE_GPU, price_per_hour=price,
                  full_length_dollars=round(dollars, 3),
                  target={"minutes": TARGET_MINUTES, "dollars": TARGET_DOLLARS,
                          "minutes_pass": full / 60 <= TARGET_MINUTES, "dollars_pass": dollars <= TARGET_DOLLARS})


def bench_workflow(config, shapes, device, tiny: bool, steps: int | None = None, clips: int | None = None) -> dict:
    """The quick_lora workflow end to end on a synthetic dataset (see the module doc)."""
    from pipeline.bench.synthetic_dataset import write_dataset

    device = torch.device(device)
    clips = clips or (24 if tiny else FULL_CLIPS)
    full_steps = int(config.training.quick_lora.steps)
    steps = steps or (4 if tiny else full_steps)
    result: dict = {"clips": clips, "steps": steps, "full_steps": full_steps, "cpu_cores": os.cpu_count(),
                    "workers": worker_count(), "stages": {}}
    with tempfile.TemporaryDirectory(prefix="bench-workflow-") as tmp:
        tmp = Path(tmp)
        started = time.perf_counter()
        data = tmp / "data"
        result["dataset"] = write_dataset(data, clips, *((0.8, 1.6) if tiny else (2.0, 20.0)),
                                          threads=worker_count())
        result["dataset"]["write_s"] = round(time.perf_counter() - started, 2)
        started = time.perf_counter()
        ckpt = write_checkpoint(tmp / "checkpoint", shapes, tiny)
        result["checkpoint_write_s"] = round(time.perf_counter() - started, 2)
        bench_config = _bench_config(config, tmp / "workspace", data, clips, steps, shapes, tiny)
        with _workspace(tmp / "workspace"):
            result["prepare_workers"] = _compare_workers(bench_config, data, tmp / "compare", min(clips, 300))
            _run_stages(bench_config, result, ckpt, device, tiny)
    _totals(result, clips)
    return result
