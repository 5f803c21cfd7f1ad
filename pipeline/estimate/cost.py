"""Time, money, memory and output size of each training mode on each GPU, for this dataset.

Computed, not quoted: the estimate walks the workflow's stages (pipeline/train/workflow.py) for each
mode: VQ extraction, each training phase, evaluation (held-out loss and audio at every
validation, the final evaluation sentences) and merge. Step counts come from the configuration
and from packing this dataset the way training packs it (epochs → steps), the speaker phase as a
range between its earliest early stop and `speaker_max_steps`. Throughput and the other speeds
come from the newest benchmark of each card (`python -m pipeline bench`, JSON under the
workspace's `runs/bench/` or `assets/bench/`); a card without one gets the newest benchmark's
figures scaled to it: training and extraction by the ratio of bf16 peaks, generation by the ratio
of memory bandwidths (pipeline.estimate.bench_figures). Every row says which figures are measured
and which are scaled. On N GPUs (`gpus`), training divides by N x the card's recorded scaling efficiency
(pipeline.estimate.scaling; linear, said as "not measured", where none is recorded) and money
multiplies by N.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from pipeline.config import PROJECT_ROOT, Config
from pipeline.estimate.bench_figures import (  # noqa: F401  (latest_benchmarks, card_figures: the estimate's API too)
    CardFigures,
    bench_label,
    card_figures,
    card_matches,
    latest_benchmarks,
)
from pipeline.estimate.scaling import ONE_GPU, SCOPE, Scaling, card_scaling
from pipeline.train.memory_plan import plan_memory

PRICES_PATH = PROJECT_ROOT / "assets" / "gpu_prices.yaml"
# Throughput cost of what memory_plan may choose, relative to the whole batch without
# recomputation, measured on an H200 (docs/history/performance-log.md): micro-batch 1 x 4 (LoRA 0.62-0.72
# over four runs, full 0.77) and recomputed activations at micro-batch 4 (LoRA 0.70, full 0.79).
SMALL_MICRO_BATCH_FACTOR = {"lora": 0.68, "full": 0.77}
CHECKPOINTING_FACTOR = {"lora": 0.70, "full": 0.79}
FRAMES_PER_SECOND = 44100 / 2048          # codec frame rate (docs/FISH_SPEECH_NOTES.md)
CHARS_PER_TEXT_TOKEN = 3.0                # tiktoken BPE on Finnish text, measured roughly on the sample
TOKENS_PER_CLIP_OVERHEAD = 3              # <|speaker:0|>, <|im_end|>, separators
SEQUENCE_OVERHEAD = 3                     # the <|interleave|> prefix of every packed sequence
WIDTH_MULTIPLE = 512                      # compiled training rounds batch widths up to this (pipeline/train/loop.py)
# Assumptions where nothing is benchmarked; the phase rows say "assumed".
VAL_FORWARD_SHARE = 1 / 3                 # a held-out pass is a forward only: ~1/3 of a training step
MERGE_DISK_GB_PER_S = 0.5                 # merge reads the base and writes the merged model at disk speed
CODEC_GB = 1.87                           # codec.pth, copied into the merged model
EXAMPLE_FRAMES = 400                      # max_new_tokens of each sentence render_examples speaks
EXAMPLE_SENTENCES = 3                     # render_examples' default count


def _render_examples_count() -> int:
    try:
        from pipeline.train.workflow import render_examples
        return int(inspect.signature(render_examples).parameters["count"].default)
    except (ImportError, KeyError, TypeError, ValueError):
        return EXAMPLE_SENTENCES


MODE_PHASES = {"quick_lora": ("extract", "lora", "evaluate", "merge"),
               "full_finetune": ("extract", "full", "speaker_lora", "evaluate", "merge")}
PHASE_LABELS = {"extract": "VQ extraction (first run only; cached after)", "lora": "LoRA on all clips",
                "full": "Full fine-tune on all clips", "speaker_lora": "Speaker LoRA (early stopping)",
                "evaluate": "Evaluation: held-out loss and audio", "merge": "Merge and export"}
TRAINING_PHASES = ("lora", "full", "speaker_lora")
# What the reference project quotes for its two modes on one A100-80GB (its own data and recipe).
REFERENCE_QUOTE = {"gpu": "A100-80GB", "quick_lora": {"hours": 4.0, "usd": 5.28},
                   "full_finetune": {"hours": 6.6, "usd": 7.94}}
CPU_NAME = "CPU (this machine)"
CPU_CHARGE = "CPU: no charge"


@dataclass(frozen=True)
class ModelShape:
    """openaudio-s1-mini (docs/FISH_SPEECH_NOTES.md); enough to count parameters without building the model."""

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
        for key in ("price_per_hour", "bf16_tflops", "memory_gb"):
            if not isinstance(row.get(key), (int, float)) or isinstance(row.get(key), bool):
                raise ValueError(f"{path}: gpus.{name}.{key} must be a number.")
        if row["price_per_hour"] < 0 or row["bf16_tflops"] <= 0 or row["memory_gb"] <= 0:
            raise ValueError(f"{path}: gpus.{name}: price_per_hour must be ≥ 0, bf16_tflops and memory_gb > 0.")
        bandwidth = row.get("memory_tb_s")  # optional: without it generation scales by bf16 peak
        if bandwidth is not None and (isinstance(bandwidth, bool) or not isinstance(bandwidth, (int, float))
                                      or bandwidth <= 0):
            raise ValueError(f"{path}: gpus.{name}.memory_tb_s must be a number > 0 (TB/s), or left out.")
    return table


# -- the dataset as training sees it -------------------------------------------------------------
def _clip_tokens(ok: pd.DataFrame) -> pd.Series:
    frames = (ok["duration_s"] * FRAMES_PER_SECOND).apply(math.ceil)
    text = (ok["normalized_text"].fillna("").str.len() / CHARS_PER_TEXT_TOKEN).apply(math.ceil)
    return frames + text + TOKENS_PER_CLIP_OVERHEAD


def dataset_tokens(manifest: pd.DataFrame) -> int:
    """Tokens one epoch over the accepted clips feeds the model."""
    ok = manifest[manifest["status"] == "ok"]
    return int(_clip_tokens(ok).sum()) if len(ok) else 0


@dataclass(frozen=True)
class PackedData:
    """The accepted clips packed into sequences as pipeline.train.samples packs them."""

    clips: int
    audio_s: float
    train_sequences: int      # per epoch
    val_sequences: int
    width: int                # padded width of a training batch (longest sequence, rounded up)

    @property
    def minutes(self) -> float:
        return self.audio_s / 60


def _held_out(n: int, val_fraction: float) -> int:
    """Clips a speaker gives to the held-out set (pipeline.train.samples.split_clips)."""
    return min(n - 2, max(1, round(val_fraction * n))) if n >= 3 else 0


def _pack(lengths: list[int], max_length: int) -> list[int]:
    sequences, used = [], SEQUENCE_OVERHEAD
    count = 0
    for length in lengths:
        if count and used + length > max_length:
            sequences.append(used)
            used, count = SEQUENCE_OVERHEAD, 0
        used, count = used + length, count + 1
    if count:
        sequences.append(used)
    return sequences


def packed_data(manifest: pd.DataFrame, max_length: int, val_fraction: float, speaker: str | None = None) -> PackedData:
    """Sequences per epoch (train and held-out) of the accepted clips, of one speaker when given."""
    ok = manifest[manifest["status"] == "ok"]
    if speaker is not None:
        ok = ok[ok["speaker"] == speaker]
    ok = ok.assign(_tokens=_clip_tokens(ok) if len(ok) else [])
    ok = ok[ok["_tokens"] <= max_length - SEQUENCE_OVERHEAD]          # "too long" clips are not trained on
    train, val = [], []
    for _, clips in ok.groupby("speaker", sort=True):
        lengths = [int(x) for x in clips["_tokens"]]
        n_val = _held_out(len(lengths), val_fraction)
        # the held-out clips are a seeded random choice; their mean length stands for any of them
        train += _pack(lengths[n_val:], max_length)
        val += _pack(lengths[:n_val], max_length) if n_val else []
    longest = max(train + val, default=0)
    width = min(max_length, max(longest, math.ceil(longest / WIDTH_MULTIPLE) * WIDTH_MULTIPLE))
    return PackedData(clips=int(len(ok)), audio_s=float(ok["duration_s"].sum()), train_sequences=len(train),
                      val_sequences=len(val), width=int(width))


def steps_for_epochs(epochs: float, sequences: int, per_step: int) -> int:
    """Optimizer steps training takes for `epochs` (pipeline/train/loop.py's conversion)."""
    return max(1, math.ceil(epochs * sequences / per_step))


def epochs_for_steps(steps: int, sequences: int, per_step: int) -> float:
    return steps * per_step / sequences if sequences else math.inf


# -- benchmarks ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Phase:
    name: str
    steps: tuple[int, int] | None = None
    epochs: tuple[float, float] | None = None
    seconds: tuple[float, float] = (0.0, 0.0)
    note: str = ""

    def as_dict(self, price: float) -> dict:
        return {"phase": self.name, "label": PHASE_LABELS[self.name],
                "steps_min": self.steps[0] if self.steps else None, "steps_max": self.steps[1] if self.steps else None,
                "epochs_min": self.epochs[0] if self.epochs else None,
                "epochs_max": self.epochs[1] if self.epochs else None,
                "seconds_min": self.seconds[0], "seconds_max": self.seconds[1],
                "cost_min": self.seconds[0] / 3600 * price, "cost_max": self.seconds[1] / 3600 * price,
                "note": self.note}


def rank_batch(config: Config, gpus: int) -> tuple[int, int, str]:
    """(micro-batch, accumulation) of each of `gpus` ranks before the memory plan, as the training
    loop splits the global batch (an equal share per rank, the largest micro-batch ≤ batch_size
    dividing it), and why the global batch cannot be split ("" when it can; training refuses then)."""
    t = config.training
    if gpus == 1:
        return t.batch_size, t.grad_accumulation, ""
    from pipeline.train.distributed import World, global_batch, micro_split, rank_split
    from pipeline.train.settings import TrainError

    try:
        return (*rank_split(t.batch_size, t.grad_accumulation, World(0, gpus)), "")
    except TrainError as exc:  # estimated as if the share were rounded up; the row says why training refuses
        return (*micro_split(max(1, math.ceil(global_batch(t) / gpus)), t.batch_size), str(exc))


def _planned(kind: str, config: Config, row: dict, speed: float, scaling: Scaling = ONE_GPU):
    """The memory plan training would pick on each GPU of this card, and the throughput of all of them."""
    training = config.training
    micro, accumulation, _ = rank_batch(config, scaling.gpus)
    plan = plan_memory(kind, micro, accumulation, training.max_length, row["memory_gb"],
                       checkpointing=training.gradient_checkpointing)
    if plan.micro_batch < training.batch_size:
        speed *= SMALL_MICRO_BATCH_FACTOR[kind]
    if plan.gradient_checkpointing:
        speed *= CHECKPOINTING_FACTOR[kind]
    return plan, speed * scaling.speed_factor(kind)


@dataclass(frozen=True)
class Workload:
    """What each training phase does for this dataset and configuration, independent of the card."""

    all_clips: PackedData
    speaker: PackedData
    per_step: int
    steps: dict[str, tuple[int, int]]          # phase → (fewest, most) optimizer steps

    def data(self, phase: str) -> PackedData:
        return self.speaker if phase == "speaker_lora" else self.all_clips

    def epochs(self, phase: str) -> tuple[float, float]:
        data = self.data(phase)
        return tuple(epochs_for_steps(s, data.train_sequences, self.per_step) for s in self.steps[phase])


def speaker_steps_range(config: Config, has_held_out: bool) -> tuple[int, int]:
    """(earliest early stop, speaker_max_steps): the first validation sets the best loss, then
    `speaker_patience` validations without improvement stop the phase (pipeline/train/loop.py)."""
    ff, t = config.training.full_finetune, config.training
    most = ff.speaker_max_steps
    if not has_held_out or not ff.speaker_patience:
        return most, most
    return min(most, t.val_every * (ff.speaker_patience + 1)), most


def workload(config: Config, manifest: pd.DataFrame, speaker: str | None = None) -> Workload:
    t = config.training
    per_step = t.batch_size * t.grad_accumulation
    everyone = packed_data(manifest, t.max_length, t.val_fraction)
    one = packed_data(manifest, t.max_length, t.val_fraction, speaker) if speaker else everyone
    full_steps = steps_for_epochs(t.full_finetune.epochs, everyone.train_sequences, per_step)
    steps = {"lora": (t.quick_lora.steps, t.quick_lora.steps), "full": (full_steps, full_steps),
             "speaker_lora": speaker_steps_range(config, one.val_sequences > 0)}
    return Workload(everyone, one, per_step, steps)


def _evaluations(steps: int, val_every: int) -> int:
    """Validations after step 0 (every val_every steps and at the last step)."""
    return steps // val_every + (1 if steps % val_every else 0)


def mode_phases(mode: str, config: Config, work: Workload, figures: CardFigures,
                speeds: dict[str, float]) -> list[Phase]:
    """Every stage of `mode` on one card, with (fewest, most) seconds; `speeds` = planned tokens/s by kind."""
    t = config.training
    v = figures.values
    phases = []
    eval_min = eval_max = 0.0
    gen = v["generate_frames_per_s"]
    for name in MODE_PHASES[mode]:
        if name == "extract":
            seconds = v["extract_start_s"] + work.all_clips.audio_s / v["extract_realtime"]
            phases.append(Phase(name, seconds=(seconds, seconds),
                                note=f"{work.all_clips.minutes:.1f} min of audio"))
        elif name in TRAINING_PHASES:
            kind = "full" if name == "full" else "lora"
            data = work.data(name)
            step_s = work.per_step * data.width / speeds[kind]
            start = v[f"{kind}_start_s"]
            low, high = work.steps[name]
            phases.append(Phase(name, steps=(low, high), epochs=work.epochs(name),
                                seconds=(start + low * step_s, start + high * step_s),
                                note=f"{data.train_sequences} sequences of ≤ {data.width} tokens per epoch"))
            if data.val_sequences:
                # held-out loss (a forward) at step 0 and at every validation, audio at every validation
                val_s = data.val_sequences * data.width * VAL_FORWARD_SHARE / speeds[kind]
                audio_s = t.eval_sentences * t.eval_max_frames / gen
                eval_min += val_s + _evaluations(low, t.val_every) * (val_s + audio_s)
                eval_max += val_s + _evaluations(high, t.val_every) * (val_s + audio_s)
        elif name == "evaluate":
            final = v["generate_start_s"] + _render_examples_count() * EXAMPLE_FRAMES / gen
            phases.append(Phase(name, seconds=(eval_min + final, eval_max + final),
                                note=f"every {t.val_every} steps: held-out loss (assumed ⅓ of a step's work) and "
                                     f"{t.eval_sentences} sentences; then {_render_examples_count()} sentences"))
        elif name == "merge":
            model_gb = ModelShape().parameters() * 2 / 1e9
            seconds = (2 * model_gb + CODEC_GB) / MERGE_DISK_GB_PER_S
            phases.append(Phase(name, seconds=(seconds, seconds),
                                note=f"assumed: disk at {MERGE_DISK_GB_PER_S:g} GB/s (not benchmarked)"))
    return phases


def estimate(config: Config, manifest: pd.DataFrame, speaker: str | None = None,
             prices: dict | None = None, benches: list[dict] | None = None, include_cpu: bool = False,
             gpus: int = 1) -> pd.DataFrame:
    """One row per (GPU, mode): time and cost as a range (fewest..most steps), each phase, peak memory,
    whether it fits, output size and where every figure came from. `minutes`/`cost_usd` are the
    upper end. `gpus`: GPUs of that card training data-parallel; each row carries the count and its
    scaling assumption (`scaling`). With include_cpu, one row per mode for this machine's CPU (time
    not measured, no charge)."""
    prices = prices or load_price_table()
    benches = latest_benchmarks(config.runs_dir) if benches is None else benches
    training = config.training
    shape = ModelShape()
    work = workload(config, manifest, speaker)
    lora_gb = shape.lora_parameters(training.lora.rank) * 4 / 1e9       # peft saves fp32 adapters
    model_gb = shape.parameters() * 2 / 1e9                              # bf16 model.pth
    sizes = {"quick_lora": lora_gb + model_gb + CODEC_GB, "full_finetune": 2 * model_gb + lora_gb + CODEC_GB}
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 1:
        raise ValueError(f"The GPU count of the estimate must be a whole number ≥ 1, got {gpus!r}.")
    split_problem = rank_batch(config, gpus)[2]
    rows = []
    for gpu, row in prices["gpus"].items():
        figures = card_figures(gpu, row, benches, prices.get("reference_throughput"), prices["gpus"])
        scaling = card_scaling(gpus, gpu, [(bench_label(b), b) for b in benches if card_matches(gpu, row, b)])
        lora_plan, lora_speed = _planned("lora", config, row, figures.values["lora_tokens_per_s"], scaling)
        full_plan, full_speed = _planned("full", config, row, figures.values["full_tokens_per_s"], scaling)
        speeds = {"lora": lora_speed, "full": full_speed}
        for mode, mode_plans in (("quick_lora", [lora_plan]), ("full_finetune", [full_plan, lora_plan])):
            phases = mode_phases(mode, config, work, figures, speeds)
            rows.append(_row(gpu, mode, row, phases, mode_plans, sizes[mode], figures, scaling) |
                        {"batch_split": split_problem})
    if include_cpu:
        for mode in MODE_PHASES:
            rows.append(cpu_row(mode, work, sizes[mode]))
    return pd.DataFrame(rows)


def scaling_text(scaling: Scaling) -> str:
    """The assumption behind an N-GPU row in words ("" on one GPU)."""
    return f"{scaling.gpus} GPUs: {scaling.text}; {SCOPE}" if scaling.gpus > 1 else ""


def _row(gpu: str, mode: str, row: dict, phases: list[Phase], plans: list, size_gb: float,
         figures: CardFigures, scaling: Scaling = ONE_GPU) -> dict:
    price = row["price_per_hour"] * scaling.gpus  # every GPU is paid for the whole run
    low = sum(p.seconds[0] for p in phases)
    high = sum(p.seconds[1] for p in phases)
    train_high = sum(p.seconds[1] for p in phases if p.name in TRAINING_PHASES)
    kind = "full" if mode == "full_finetune" else "lora"
    return {
        "gpu": gpu, "mode": mode, "hours": round(high / 3600, 4), "minutes": round(high / 60, 3),
        "minutes_min": round(low / 60, 3), "train_minutes": round(train_high / 60, 3),
        "cost_usd": round(high / 3600 * price, 4), "cost_usd_min": round(low / 3600 * price, 4),
        "charge": "", "price_per_hour": row["price_per_hour"], "gpus": scaling.gpus,
        "scaling": scaling_text(scaling), "scaling_measured": scaling.measured,
        "scaling_efficiency": dict(scaling.efficiency),
        "peak_gb": round(max(p.estimated_peak_gb for p in plans), 1), "fits": all(p.fits for p in plans),
        "plan": "; ".join(f"{k}: {p.describe()}" for k, p in zip(("first", "then"), plans))
                if len(plans) > 1 else plans[0].describe(),
        "plan_brief": " then ".join(
            f"{p.micro_batch}×{p.grad_accumulation}{' + checkpointing' if p.gradient_checkpointing else ''}"
            for p in plans),
        "output_gb": round(size_gb, 2), "throughput_source": figures.sources[f"{kind}_tokens_per_s"],
        "measured": all(s.startswith("measured") for s in figures.sources.values() if s != "not measured"),
        "figures": figures.summary(), "price_source": row.get("price_source", ""),
        "phases": [p.as_dict(price) for p in phases],
    }


def cpu_row(mode: str, work: Workload, size_gb: float) -> dict:
    """This machine without a GPU: steps and epochs are known, time is not benchmarked, money is 0."""
    phases = [{"phase": name, "label": PHASE_LABELS[name],
               "steps_min": work.steps[name][0] if name in work.steps else None,
               "steps_max": work.steps[name][1] if name in work.steps else None,
               "epochs_min": work.epochs(name)[0] if name in work.steps else None,
               "epochs_max": work.epochs(name)[1] if name in work.steps else None,
               "seconds_min": math.nan, "seconds_max": math.nan, "cost_min": 0.0, "cost_max": 0.0,
               "note": "CPU time is not benchmarked"} for name in MODE_PHASES[mode]]
    return {"gpu": CPU_NAME, "mode": mode, "hours": math.nan, "minutes": math.nan, "minutes_min": math.nan,
            "train_minutes": math.nan, "cost_usd": 0.0, "cost_usd_min": 0.0, "charge": CPU_CHARGE,
            "price_per_hour": 0.0, "gpus": 1, "scaling": "", "scaling_measured": True, "scaling_efficiency": {},
            "batch_split": "", "peak_gb": math.nan, "fits": True, "plan": "CPU, fp32", "plan_brief": "CPU",
            "output_gb": round(size_gb, 2), "throughput_source": "not measured (CPU)", "measured": False,
            "figures": "CPU time not benchmarked: hours per step on the real model", "price_source": "",
            "phases": phases}


def charge(seconds: float, price_per_hour: float, device: str | None) -> tuple[float, str]:
    """Money for `seconds` of a run on `device` ("cuda…" or "cpu"): GPU time only, CPU time is free."""
    if device is not None and not str(device).startswith("cuda"):
        return 0.0, CPU_CHARGE
    usd = max(0.0, seconds) / 3600 * price_per_hour
    return usd, f"${usd:,.2f}" if usd >= 0.01 or usd == 0 else "< $0.01"


def describe_workload(config: Config, manifest: pd.DataFrame, speaker: str | None = None) -> dict:
    """The numbers behind the estimate, for display next to it."""
    training = config.training
    work = workload(config, manifest, speaker)
    return {
        "accepted_clips": work.all_clips.clips,
        "accepted_minutes": round(work.all_clips.minutes, 1),
        "epoch_tokens": dataset_tokens(manifest),
        "step_tokens": training.batch_size * training.grad_accumulation * training.max_length,
        "sequences_per_epoch": work.all_clips.train_sequences,
        "quick_lora_steps": training.quick_lora.steps,
        "quick_lora_epochs": work.epochs("lora")[1],
        "full_epochs": training.full_finetune.epochs,
        "full_steps": work.steps["full"][1],
        "speaker_steps": work.steps["speaker_lora"],
        "speaker_epochs": work.epochs("speaker_lora"),
        "speaker_minutes": round(work.speaker.minutes, 1),
        "speaker": speaker,
        "lora_adapter_mb": round(ModelShape().lora_parameters(training.lora.rank) * 4 / 1e6, 1),
    }
