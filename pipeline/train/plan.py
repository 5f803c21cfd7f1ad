"""One training phase's plan, and the pieces of a step that run it.

`plan_phase` resolves every decision of a phase for the device at hand into a `TrainPlan`:
device, bf16 autocast, the dtype of the loaded weights, compiled blocks, gradient checkpointing,
the micro-batch x accumulation split of the memory plan (pipeline.train.memory_plan) and the
forward's options (pipeline.train.forward.ForwardOptions, kernels on or off included).
`trainable_model`, `build_optimizer` and `train_step` are what the training loop
(pipeline.train.loop) runs with that plan, and what `python -m pipeline bench` times: its speed
figures measure this code, not a copy of it.
"""

from __future__ import annotations

import math
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from typing import Iterable

import torch

from pipeline.model.adapters import attach_lora, load_trainable_adapter
from pipeline.train.distributed import ALONE, World, accumulating
from pipeline.train.forward import ForwardOptions
from pipeline.train.loss import compute_loss
from pipeline.train.memory_plan import MemoryPlan, plan_for_device
from pipeline.train.settings import (
    TrainError,
    TrainSettings,
    resolve_device,
    use_bf16,
    use_checkpointing,
    use_compile,
)

STEP_METRICS = ("loss", "token_loss", "codebook_loss", "top1", "top5")


class NonFiniteLoss(TrainError):
    """The loss of a step is inf or nan (the optimizer did not step)."""

    def __init__(self, value: float):
        super().__init__(f"The loss became {value}; lower the learning rate.")
        self.value = value


@dataclass(frozen=True)
class TrainPlan:
    """How one phase trains on one device (what it trains is TrainSettings')."""

    device: torch.device
    bf16: bool  # bf16 autocast
    weights_dtype: torch.dtype  # the base model's weights as loaded
    compile: bool  # transformer blocks through torch.compile
    gradient_checkpointing: bool
    micro_batch: int
    grad_accumulation: int
    options: ForwardOptions
    memory: MemoryPlan | None = None  # the GPU memory plan behind the split (None on the CPU)

    def describe_memory(self) -> str | None:
        return self.memory.describe() if self.memory else None


def plan_phase(settings: TrainSettings, device=None, total_gb: float | None = None) -> TrainPlan:
    """The plan of `settings` on `device` (default: settings.device, else cuda when available).

    total_gb plans memory as for a card of that size instead of this one (the bench's `@GB`)."""
    device = torch.device(device) if device is not None else resolve_device(settings)
    bf16, compiled = use_bf16(settings, device), use_compile(settings, device)
    mode = "full" if settings.mode == "full" else "lora"
    # on a GPU the memory planner splits the effective batch and decides recomputation for the card
    memory = plan_for_device(mode, settings.batch_size, settings.grad_accumulation, settings.max_length, device,
                             settings.gradient_checkpointing, dropout_kernel=settings.lora_dropout_kernel,
                             total_gb=total_gb)
    if memory:
        checkpointing, micro, accumulation = memory.gradient_checkpointing, memory.micro_batch, memory.grad_accumulation
    else:
        checkpointing, micro, accumulation = use_checkpointing(settings), settings.batch_size, settings.grad_accumulation
    # full fine-tuning keeps fp32 master weights (bf16 would round away 1e-5 updates); a frozen
    # LoRA base can live in bf16
    frozen_bf16 = bf16 and settings.mode == "lora" and device.type == "cuda"
    options = ForwardOptions.for_run(compiled, settings.lora_dropout_kernel, settings.segment_attention_kernel,
                                     settings.cudnn_attention)
    return TrainPlan(device, bf16, torch.bfloat16 if frozen_bf16 else torch.float32, compiled, checkpointing,
                     micro, accumulation, options, memory)


def trainable_model(model, settings: TrainSettings):
    """The loaded model made trainable: a LoRA attached (or settings.init_adapter continued) for
    mode lora, every weight for mode full."""
    if settings.mode == "lora":
        if settings.init_adapter:
            return load_trainable_adapter(model, settings.init_adapter)
        return attach_lora(model, settings.lora_rank, settings.lora_alpha, settings.lora_dropout,
                           settings.lora_train_embeddings)
    model.requires_grad_(True)
    return model


def build_optimizer(params: Iterable[torch.Tensor], settings: TrainSettings, device) -> torch.optim.AdamW:
    """AdamW over the trainable `params`: weight decay on matrices only, fused kernels on a GPU."""
    params = list(params)
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": settings.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=settings.lr, betas=tuple(settings.betas),
                             eps=settings.eps, fused=torch.device(device).type == "cuda")


def autocast(plan: TrainPlan, model):
    """The plan's autocast around a forward (nothing in fp32)."""
    if not plan.bf16:
        return nullcontext()
    stack = ExitStack()
    stack.enter_context(torch.autocast(device_type=plan.device.type, dtype=torch.bfloat16))
    from peft.helpers import disable_input_dtype_casting

    # autocast runs fp32 LoRA adapters in bf16: peft's input upcast is only traffic (no adapters: nothing to do)
    stack.enter_context(disable_input_dtype_casting(model))
    return stack


def _share(hits, targets: int):
    """hits / targets, on the device where hits is a tensor (no wait for the GPU)."""
    return (hits.double() if torch.is_tensor(hits) else hits) / max(targets, 1)


def _rank_means(sums: dict, world: World, device) -> torch.Tensor:
    """The step's means (STEP_METRICS order) as one device tensor, averaged over the ranks in one all-reduce."""
    values = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=device) for v in sums.values()])
    return world.sum_(values) / world.size if world.distributed else values


@dataclass(frozen=True)
class PendingStep:
    """A step's numbers on their way to the host: copied right after the step (an event marks
    the copy) and read (`means`) while the next step runs, so the GPU never waits for the host."""

    values: torch.Tensor  # STEP_METRICS then grad_norm; pinned host memory on a GPU
    copied: object = None  # the CUDA event after the copy (None on the CPU)

    @classmethod
    def capture(cls, values: torch.Tensor, grad_norm: torch.Tensor) -> "PendingStep":
        packed = torch.cat([values.double(), grad_norm.detach().double().reshape(1).to(values.device)])
        if not packed.is_cuda:
            return cls(packed)
        host = torch.empty(packed.shape, dtype=packed.dtype, pin_memory=True)
        host.copy_(packed, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return cls(host, event)

    def means(self) -> dict[str, float]:
        if self.copied is not None:
            self.copied.synchronize()  # waits for this step only, not for the one queued after it
        values = self.values.tolist()
        return dict(zip(STEP_METRICS, values[:-1])) | {"grad_norm": values[-1]}


def train_step(model, optimizer, micro_batches: Iterable[dict], plan: TrainPlan, params, grad_clip: float,
               ddp=None, world: World = ALONE, wait: bool = True) -> dict | PendingStep:
    """One optimizer step: plan.grad_accumulation micro-batches (on plan.device) forward and
    backward, gradients clipped to grad_clip, the optimizer stepped.

    Data-parallel (`ddp` from pipeline.train.distributed.data_parallel, `world` its ranks): the
    micro-batches are this rank's share, the forward runs through DDP, gradients are all-reduced
    once, after the last backward, and the returned means are over all ranks.

    Returns the step's means over its micro-batches (STEP_METRICS, Python floats) and grad_norm (a
    tensor). Raises NonFiniteLoss, before the optimizer steps, when the loss is not finite.
    `wait=False` reads nothing from the device and returns a PendingStep; the caller checks the
    loss when it reads it (the step's update is then already applied)."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    count = plan.grad_accumulation
    sums = dict.fromkeys(STEP_METRICS, 0.0)
    seen = 0
    for batch in micro_batches:
        with accumulating(ddp, last=seen == count - 1):
            with autocast(plan, model):
                if ddp is not None:
                    out = ddp(batch)
                else:
                    out = compute_loss(model, batch, gradient_checkpointing=plan.gradient_checkpointing,
                                       compile_blocks=plan.compile, options=plan.options)
            (out.loss / count).backward()
        # accumulated on the device: one read of the host after the last backward, not one per micro-batch
        values = {"loss": out.loss, "token_loss": out.token_loss, "codebook_loss": out.codebook_loss,
                  "top1": _share(out.hits1, out.n_targets), "top5": _share(out.hits5, out.n_targets)}
        for key, value in values.items():
            sums[key] = sums[key] + (value.detach().double() if torch.is_tensor(value) else value) / count
        seen += 1
    if seen != count:
        raise ValueError(f"train_step got {seen} micro-batches; the plan accumulates {count}.")
    values = _rank_means(sums, world, plan.device)
    means = dict(zip(STEP_METRICS, values.tolist())) if wait else None
    if means is not None and not math.isfinite(means["loss"]):
        raise NonFiniteLoss(means["loss"])
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    return means | {"grad_norm": grad_norm} if wait else PendingStep.capture(values, grad_norm)
