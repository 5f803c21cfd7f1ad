"""Data-parallel training: the process group a rank belongs to, and how a step is shared.

A phase on N GPUs runs as N processes started by torchrun (`pipeline.train.launch`), one per
GPU, each running the same training loop (`pipeline.train.loop`) with a `World` that says which
rank it is. PyTorch's DistributedDataParallel averages the gradients (for a LoRA only the
adapter's: DDP reduces only parameters that need a gradient); this module adds no averaging of
its own beyond the step's logged means.

How a step is shared keeps it the step of one process: the step's global batch (batch_size x
grad_accumulation sequences, in the order the one-process run uses) is split into micro-batches,
and rank r takes an equal, contiguous share of them. Each rank divides its micro-batches' losses
by its own count and DDP averages over ranks, so the gradient is the mean over all micro-batches,
as in one process with the same micro-batch size.
"""

from __future__ import annotations

import datetime as dt
import os
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist

from pipeline.train.loss import compute_loss
from pipeline.train.settings import TrainError


@dataclass(frozen=True)
class World:
    """Which process of a data-parallel phase this is (rank 0 of 1 when training alone)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0 alone writes metrics, checkpoints, evaluation audio and state."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` summed over the ranks, in place (nothing to do alone)."""
        if self.distributed:
            torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.SUM)
        return tensor

    def any(self, flag: bool, device) -> bool:
        """True on every rank when it is True on one (a stop request must stop all ranks at the same step)."""
        if not self.distributed:
            return bool(flag)
        value = torch.tensor([1.0 if flag else 0.0], device=device)
        torch_dist.all_reduce(value, op=torch_dist.ReduceOp.MAX)
        return bool(value.item())

    def barrier(self) -> None:
        if self.distributed:
            torch_dist.barrier()


ALONE = World()


def start_world(timeout_s: float, use_cuda: bool) -> World:
    """Join the process group torchrun set up (RANK, WORLD_SIZE, LOCAL_RANK in the environment):
    NCCL on GPUs, gloo on CPUs; a collective that waits longer than `timeout_s` fails the rank
    instead of hanging it. Alone (no torchrun) it returns ALONE."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return ALONE
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not torch_dist.is_initialized():
        torch_dist.init_process_group("nccl" if use_cuda else "gloo", timeout=dt.timedelta(seconds=timeout_s),
                                      **({"device_id": torch.device("cuda", local_rank)} if use_cuda else {}))
    return World(rank, size, local_rank)


def stop_world() -> None:
    if torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def resolve_gpus(requested, cuda_devices: int | None = None, effective_batch: int | None = None) -> int:
    """training.gpus ("auto" or N) as a process count for this machine: auto = every visible GPU
    (1 without one), or the most of them that the global batch (`effective_batch`) splits over
    evenly. N > 1 without as many GPUs is an error, except on a machine without any GPU, where N
    CPU processes (gloo) run: slow, but the same arithmetic, which is what tests use."""
    visible = torch.cuda.device_count() if cuda_devices is None else cuda_devices
    if requested in (None, "auto"):
        count = max(visible, 1)
        while effective_batch and effective_batch % count:
            count -= 1
        return count
    count = int(requested)
    if count < 1:
        raise TrainError(f"training.gpus must be 'auto' or at least 1, got {requested!r}.")
    if visible and count > visible:
        raise TrainError(f"training.gpus is {count}, but this machine has {visible} GPU(s); "
                         f"set training.gpus to {visible} or less (or auto).")
    return count


def rank_share(effective_batch: int, world: World) -> int:
    """Sequences per optimizer step on one rank; the global batch must split evenly over the ranks."""
    if effective_batch % world.size:
        raise TrainError(
            f"The global batch (training.batch_size x training.grad_accumulation = {effective_batch} sequences) "
            f"does not split evenly over {world.size} GPUs; make it a multiple of {world.size}, e.g. "
            f"training.grad_accumulation: {world.size}.")
    return effective_batch // world.size


def global_batch(training) -> int:
    """Sequences per optimizer step over all ranks (`training`: the config's training section)."""
    return training.batch_size * training.grad_accumulation


def rank_split(batch_size: int, grad_accumulation: int, world: World) -> tuple[int, int]:
    """(micro-batch, accumulation) of each rank before its memory plan: an equal share of the global
    batch, in the largest micro-batches of at most batch_size that divide it."""
    return micro_split(rank_share(batch_size * grad_accumulation, world), batch_size)


def micro_split(share: int, batch_size: int) -> tuple[int, int]:
    """`share` sequences as (micro-batch, accumulation): the largest micro-batch ≤ batch_size dividing it."""
    micro = max(m for m in range(1, min(batch_size, share) + 1) if share % m == 0)
    return micro, share // micro


class LossForward(torch.nn.Module):
    """The training loss as a module's forward: DDP must see the forward to reduce the gradients
    of the backward that follows it."""

    def __init__(self, model, plan):
        super().__init__()
        self.model, self.plan = model, plan

    def forward(self, batch: dict):
        plan = self.plan
        return compute_loss(self.model, batch, gradient_checkpointing=plan.gradient_checkpointing,
                            compile_blocks=plan.compile, options=plan.options)


def data_parallel(model, plan, world: World):
    """The model's loss wrapped in DistributedDataParallel (None when training alone)."""
    if not world.distributed:
        return None
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [world.local_rank] if plan.device.type == "cuda" else None
    # buffers (rotary tables, caches) are equal on every rank and never change in training
    return DistributedDataParallel(LossForward(model, plan), device_ids=device_ids, broadcast_buffers=False,
                                   gradient_as_bucket_view=True)


def accumulating(ddp, last: bool):
    """DDP's no_sync for every micro-batch but the step's last: one all-reduce per optimizer step."""
    return nullcontext() if ddp is None or last else ddp.no_sync()


def training_gpus(config) -> int:
    """The process count a run's training phases use (training.gpus on this machine), checked
    against the global batch before anything runs."""
    effective = global_batch(config.training)
    gpus = resolve_gpus(config.training.gpus, effective_batch=effective)
    rank_share(effective, World(0, gpus))  # N given explicitly that does not divide the batch: said now
    return gpus
