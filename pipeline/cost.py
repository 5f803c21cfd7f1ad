"""Time, money, memory and output size of each training mode on each GPU, for this dataset.

Computed, not quoted: token counts come from the manifest (audio frames at the codec's
21.53 frames/s plus the text tokens), step counts from the configuration, and throughput from
this project's own benchmark (`python -m pipeline bench`, JSON under `runs/bench/`) for the card
when one exists, else from the reference throughput in `assets/gpu_prices.yaml` scaled by the
card's relative speed. Every row says which of the two it used.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from pipeline.config import PROJECT_ROOT, Config
from pipeline.memory_plan import plan_memory

PRICES_PATH = PROJECT_ROOT / "assets" / "gpu_prices.yaml"
COMMITTED_BENCH_DIR = PROJECT_ROOT / "assets" / "bench"
# Throughput cost of what memory_plan may choose, relative to the whole batch without
# recomputation, measured on an H200 (docs/PERFORMANCE.md, run 3): micro-batch 1 x 4 (LoRA 0.62-0.72
# over four runs, full 0.77) and recomputed activations at micro-batch 4 (LoRA 0.70, full 0.79).
SMALL_MICRO_BATCH_FACTOR = {"lora": 0.68, "full": 0.77}
CHECKPOINTING_FACTOR = {"lora": 0.70, "full": 0.79}
FRAMES_PER_SECOND = 44100 / 2048          # codec frame rate (DESIGN.md)
CHARS_PER_TEXT_TOKEN = 3.0                # tiktoken BPE on Finnish text, measured roughly on the sample
TOKENS_PER_CLIP_OVERHEAD = 3              # <|speaker:0|>, <|im_end|>, separators


@dataclass(frozen=True)
class ModelShape:
    """openaudio-s1-mini (DESIGN.md); enough to count parameters without building the model."""

    vocab: int = 155776
    dim: int = 1024
    layers: int = 28
    heads: int = 16
    kv_heads: int = 8
    head_dim: int = 128
    ffn: int = 3072
    codebooks: int = 10
    codebook_size: int = 4096
    fast_layers: int = 4

    def _block(self) -> dict[str, tuple[int, int]]:
        qkv_out = (self.heads + 2 * self.kv_heads) * self.head_dim
        return {"wqkv": (self.dim, qkv_out), "wo": (self.heads * self.head_dim, self.dim),
                "w1": (self.dim, self.ffn), "w3": (self.dim, self.ffn), "w2": (self.ffn, self.dim)}

    def parameters(self) -> int:
        block = sum(i * o for i, o in self._block().values()) + 2 * self.dim
        embeddings = self.vocab * self.dim + self.codebooks * self.codebook_size * self.dim
        heads = self.dim * self.vocab + self.dim * self.codebook_size
        return embeddings + heads + (self.layers + self.fast_layers) * block + self.codebook_size * self.dim

    def lora_parameters(self, rank: int) -> int:
        block = sum(rank * (i + o) for i, o in self._block().values())
        heads = rank * (self.dim + self.vocab) + rank * (self.dim + self.codebook_size)
        return (self.layers + self.fast_layers) * block + heads


def load_price_table(path: Path = PRICES_PATH) -> dict:
    try:
        table = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"GPU price table {path} is missing; restore it from git.") from None
    for name, row in (table.get("gpus") or {}).items():
        for key in ("price_per_hour", "relative_speed", "memory_gb"):
            if not isinstance(row.get(key), (int, float)):
                raise ValueError(f"{path}: gpus.{name}.{key} must be a number.")
    return table


def dataset_tokens(manifest: pd.DataFrame) -> int:
    """Tokens one epoch over the accepted clips feeds the model."""
    ok = manifest[manifest["status"] == "ok"]
    frames = (ok["duration_s"] * FRAMES_PER_SECOND).apply(math.ceil).sum()
    text = (ok["normalized_text"].str.len() / CHARS_PER_TEXT_TOKEN).apply(math.ceil).sum()
    return int(frames + text + TOKENS_PER_CLIP_OVERHEAD * len(ok))


def latest_benchmarks(runs_dir: Path) -> list[dict]:
    """Benchmark JSON files written by `python -m pipeline bench`: this workspace's newest first,
    then the ones committed with the project."""
    paths = sorted((Path(runs_dir) / "bench").glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    paths += sorted(COMMITTED_BENCH_DIR.glob("*.json"), reverse=True)
    results = []
    for path in paths:
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(data.get("train"), dict) and not data.get("tiny"):  # tiny CPU benches time nothing real
            results.append(data | {"path": str(path)})
    return results


def _throughput(gpu: str, row: dict, mode: str, reference: dict, benches: list[dict]) -> tuple[float, str]:
    """(tokens/s at the full micro-batch, where it came from) for `mode` in {"lora", "full"} on `gpu`."""
    family = gpu.split("-")[0].upper()
    for bench in benches:
        measured = bench["train"].get(mode) or {}
        if family in str(bench.get("card", "")).upper() and measured.get("tokens_per_s"):
            return measured["tokens_per_s"], f"measured: {bench['card']} on {bench.get('date', '?')}"
    speed = reference[f"{mode}_tokens_per_s"] * row["relative_speed"]
    return speed, f"estimated: {reference['source']} × {row['relative_speed']}"


def _planned(mode: str, config: Config, row: dict, speed: float):
    """The memory plan training would pick on this card, and the throughput that plan gives."""
    training = config.training
    plan = plan_memory(mode, training.batch_size, training.grad_accumulation, training.max_length, row["memory_gb"],
                       checkpointing=training.gradient_checkpointing)
    if plan.micro_batch < training.batch_size:
        speed *= SMALL_MICRO_BATCH_FACTOR[mode]
    if plan.gradient_checkpointing:
        speed *= CHECKPOINTING_FACTOR[mode]
    return plan, speed


def estimate(config: Config, manifest: pd.DataFrame, speaker: str | None = None,
             prices: dict | None = None, benches: list[dict] | None = None) -> pd.DataFrame:
    """One row per (GPU, mode): hours, cost, peak memory, whether it fits, output size."""
    prices = prices or load_price_table()
    benches = latest_benchmarks(config.runs_dir) if benches is None else benches
    training = config.training
    shape = ModelShape()
    step_tokens = training.batch_size * training.grad_accumulation * training.max_length
    epoch_tokens = dataset_tokens(manifest)
    ok = manifest[manifest["status"] == "ok"]
    speaker_tokens = dataset_tokens(ok[ok["speaker"] == speaker]) if speaker else epoch_tokens

    quick_tokens = training.quick_lora.steps * step_tokens
    full_phase1 = training.full_finetune.epochs * epoch_tokens
    # The speaker phase stops when held-out loss stalls; assume ~10 epochs of that speaker, capped.
    speaker_cap = training.full_finetune.speaker_max_steps * step_tokens
    full_phase3 = min(speaker_cap, speaker_tokens * 10)

    lora_gb = shape.lora_parameters(training.lora.rank) * 4 / 1e9       # peft saves fp32 adapters
    model_gb = shape.parameters() * 2 / 1e9                              # bf16 model.pth
    codec_gb = 1.87
    rows = []
    for gpu, row in prices["gpus"].items():
        lora_speed, lora_src = _throughput(gpu, row, "lora", prices["reference_throughput"], benches)
        full_speed, full_src = _throughput(gpu, row, "full", prices["reference_throughput"], benches)
        lora_plan, lora_speed = _planned("lora", config, row, lora_speed)
        full_plan, full_speed = _planned("full", config, row, full_speed)
        plans = {
            "quick_lora": (quick_tokens / lora_speed, [lora_plan], lora_gb + model_gb + codec_gb, lora_src),
            "full_finetune": (full_phase1 / full_speed + full_phase3 / lora_speed, [full_plan, lora_plan],
                              2 * model_gb + lora_gb + codec_gb, full_src),
        }
        for mode, (seconds, mode_plans, size_gb, source) in plans.items():
            peak = max(plan.estimated_peak_gb for plan in mode_plans)
            hours = seconds / 3600
            rows.append({
                "gpu": gpu, "mode": mode, "hours": round(hours, 2), "minutes": round(seconds / 60, 1),
                "cost_usd": round(hours * row["price_per_hour"], 2), "price_per_hour": row["price_per_hour"],
                "peak_gb": round(peak, 1), "fits": all(plan.fits for plan in mode_plans),
                "plan": "; ".join(f"{kind}: {plan.describe()}" for kind, plan in zip(("first", "then"), mode_plans))
                        if len(mode_plans) > 1 else mode_plans[0].describe(),
                "plan_brief": " then ".join(
                    f"{p.micro_batch}×{p.grad_accumulation}{' + checkpointing' if p.gradient_checkpointing else ''}"
                    for p in mode_plans),
                "output_gb": round(size_gb, 2), "throughput_source": source,
                "price_source": row.get("price_source", ""),
            })
    return pd.DataFrame(rows)


def describe_workload(config: Config, manifest: pd.DataFrame, speaker: str | None = None) -> dict:
    """The numbers behind the estimate, for display next to it."""
    training = config.training
    ok = manifest[manifest["status"] == "ok"]
    return {
        "accepted_clips": int(len(ok)),
        "accepted_minutes": round(float(ok["duration_s"].sum()) / 60, 1),
        "epoch_tokens": dataset_tokens(manifest),
        "step_tokens": training.batch_size * training.grad_accumulation * training.max_length,
        "quick_lora_steps": training.quick_lora.steps,
        "full_epochs": training.full_finetune.epochs,
        "speaker": speaker,
        "lora_adapter_mb": round(ModelShape().lora_parameters(training.lora.rank) * 4 / 1e6, 1),
    }
