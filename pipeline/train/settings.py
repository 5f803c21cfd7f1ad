"""What a training phase does: TrainSettings (built from pipeline.config), its result, and the
decisions derived from them (device, precision, gradient checkpointing, learning-rate schedule)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from pipeline.data.text import example_sentences


class TrainError(ValueError):
    """Settings or inputs that cannot train; the message says what to change."""


@dataclass
class TrainSettings:
    mode: str = "lora"  # lora | full
    steps: int | None = None  # optimizer steps; None → from epochs
    epochs: float | None = None
    lr: float = 1e-4
    warmup_steps: int = 10
    schedule: str = "constant"  # constant | cosine (to 0 at the last step)
    batch_size: int = 4
    grad_accumulation: int = 1
    max_length: int = 4096
    grad_clip: float = 1.0
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-5
    lora_rank: int = 8
    lora_alpha: float = 16
    lora_dropout: float = 0.01
    lora_train_embeddings: bool = False
    gradient_checkpointing: str = "auto"  # auto | on | off
    precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | bf16 | fp32
    compile: str = "auto"  # torch.compile the transformer blocks: auto (on GPU) | on | off
    seed: int = 1234
    val_every: int = 100
    save_every: int = 200
    keep_last: int = 3
    val_fraction: float = 0.05
    patience: int | None = None  # evaluations without improvement before stopping early
    init_adapter: str | None = None  # continue training this LoRA adapter
    device: str | None = None  # None → cuda when available
    eval_texts: tuple[str, ...] = ()  # spoken with the model at each validation (audio/step_<n>/)
    eval_max_frames: int = 300
    lora_dropout_kernel: bool = True  # speed.lora_dropout_kernel: how, never what, is computed
    segment_attention_kernel: bool = True  # speed.segment_attention_kernel
    cudnn_attention: bool = True  # speed.cudnn_attention
    save_checkpoints: bool = True  # False: steps run only to compile (pipeline.train.warmup) write nothing

    def __post_init__(self):
        checks = {
            "mode": self.mode in ("lora", "full"), "schedule": self.schedule in ("constant", "cosine"),
            "precision": self.precision in ("auto", "bf16", "fp32"),
            "gradient_checkpointing": self.gradient_checkpointing in ("auto", "on", "off", True, False),
            "compile": self.compile in ("auto", "on", "off", True, False),
            "steps/epochs": bool(self.steps and self.steps > 0) or bool(self.epochs and self.epochs > 0),
            "batch_size": self.batch_size > 0, "grad_accumulation": self.grad_accumulation > 0,
            "max_length": self.max_length > 0, "lr": self.lr >= 0, "keep_last": self.keep_last > 0,
            "val_every": self.val_every > 0, "save_every": self.save_every > 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise TrainError(f"Invalid training setting(s): {', '.join(bad)} ({self!r}).")

    @classmethod
    def from_config(cls, config, mode: str, **overrides) -> "TrainSettings":
        """Settings of one phase: "lora" (quick_lora), "full" (phase 1) or "speaker_lora" (phase 3)."""
        t = config.training
        common = dict(
            warmup_steps=t.warmup_steps, schedule=t.schedule, batch_size=t.batch_size,
            grad_accumulation=t.grad_accumulation, max_length=t.max_length, grad_clip=t.grad_clip,
            weight_decay=t.weight_decay, lora_rank=t.lora.rank, lora_alpha=t.lora.alpha,
            lora_dropout=t.lora.dropout, lora_train_embeddings=t.lora.train_embeddings,
            gradient_checkpointing=t.gradient_checkpointing, precision=t.precision, compile=t.compile, seed=t.seed,
            val_every=t.val_every, save_every=t.save_every, keep_last=t.keep_last, val_fraction=t.val_fraction,
            eval_texts=tuple(example_sentences()[: t.eval_sentences]), eval_max_frames=t.eval_max_frames,
            lora_dropout_kernel=config.speed.lora_dropout_kernel,
            segment_attention_kernel=config.speed.segment_attention_kernel,
            cudnn_attention=config.speed.cudnn_attention,
        )
        if mode == "lora":
            specific = dict(mode="lora", steps=t.quick_lora.steps, lr=t.quick_lora.learning_rate)
        elif mode == "full":
            specific = dict(mode="full", epochs=t.full_finetune.epochs, lr=t.full_finetune.learning_rate)
        elif mode == "speaker_lora":
            specific = dict(mode="lora", steps=t.full_finetune.speaker_max_steps,
                            lr=t.full_finetune.speaker_learning_rate, patience=t.full_finetune.speaker_patience)
        else:
            raise TrainError(f"Unknown training mode '{mode}': choose lora, full or speaker_lora.")
        return cls(**(common | specific | overrides))


@dataclass
class TrainResult:
    status: str  # finished | cancelled | failed
    step: int
    total_steps: int
    best: str | None  # checkpoint dir with the lowest held-out loss (the latest when no held-out set)
    best_val_loss: float | None
    latest: str | None
    message: str = ""
    summary: dict = field(default_factory=dict)


def resolve_device(settings: TrainSettings) -> torch.device:
    return torch.device(settings.device or ("cuda" if torch.cuda.is_available() else "cpu"))


def use_bf16(settings: TrainSettings, device: torch.device) -> bool:
    return settings.precision == "bf16" or (settings.precision == "auto" and device.type == "cuda")


def use_checkpointing(settings: TrainSettings) -> bool:
    """Checkpointing where no memory plan decides it (the CPU): only when the settings ask for it.
    On a GPU, pipeline.train.memory_plan decides "auto" for the card."""
    return settings.gradient_checkpointing in ("on", True)


def lr_factor(step: int, warmup: int, total: int, schedule: str) -> float:
    """Multiplier of the base lr for optimizer step `step` (0-based): linear warm-up, then
    constant or cosine decay to 0 at `total`."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "cosine":
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return 1.0


def oom_message(settings: TrainSettings, step: int, checkpointing: bool) -> str:
    advice = [f"lower training.batch_size (now {settings.batch_size}; raise grad_accumulation to keep the "
              "effective batch)", f"lower training.max_length (now {settings.max_length})"]
    if not checkpointing:
        advice.append("set training.gradient_checkpointing: on")
    return (f"Out of GPU memory at step {step}. To fit: " + "; or ".join(advice) + ". A resume keeps this run's "
            "settings, so start a new run with the change.")


def use_compile(settings: TrainSettings, device: torch.device) -> bool:
    if settings.compile in ("on", True):
        return True
    return settings.compile == "auto" and device.type == "cuda"
