"""One rank of `python -m pipeline bench --only scaling`: `torchrun … -m pipeline.bench.scaling_worker spec.json`.

Started by pipeline.bench.scaling, never by hand. Every rank builds the same random-weight model
(the bench's shape), joins the process group as a training rank does
(pipeline.train.distributed.start_world) and times pipeline.train.plan.train_step through
DistributedDataParallel (data_parallel): the code a data-parallel training phase runs. Each rank
trains its own synthetic batch of the spec's per-GPU size. Rank 0 writes the figures to the
spec's result file after each mode, so a mode that fails (out of memory) keeps the ones before it.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from pipeline import atomic
from pipeline.bench.common import bench_shapes, free_memory, random_model, sync, synthetic_batch
from pipeline.train.distributed import World, data_parallel, start_world, stop_world
from pipeline.train.plan import plan_phase, train_step
from pipeline.train.settings import TrainSettings


def time_mode(settings: TrainSettings, shapes, batch: dict, device, world: World, warmup: int, repeat: int) -> dict:
    """Seconds per optimizer step and tokens per second over all ranks, warm-up steps excluded."""
    args, tokenizer = shapes[:2]
    plan = plan_phase(settings, device)
    model, optimizer, params = random_model(args, tokenizer, settings, plan)
    ddp = data_parallel(model, plan, world)
    size, micro = settings.batch_size, plan.micro_batch
    micro_batches = [{k: v[i : i + micro] for k, v in batch.items()} for i in range(0, size, micro)]
    losses = []

    def step():
        losses.append(train_step(model, optimizer, micro_batches, plan, params, settings.grad_clip,
                                 ddp=ddp, world=world)["loss"])

    for _ in range(warmup):
        step()
    sync(device)
    world.barrier()
    started = time.perf_counter()
    for _ in range(repeat):
        step()
    sync(device)
    seconds = (time.perf_counter() - started) / repeat
    tokens = world.sum_(torch.tensor([float(batch["lengths"].sum())], dtype=torch.float64, device=device))
    tokens = float(tokens.item())
    figures = {"gpus": world.size, "step_s": round(seconds, 4), "steps_per_s": round(1 / seconds, 3),
               "tokens_per_step": int(tokens), "tokens_per_s": round(tokens / seconds, 1),
               "micro_batch": plan.micro_batch, "grad_accumulation": plan.grad_accumulation,
               "gradient_checkpointing": plan.gradient_checkpointing, "compile_blocks": plan.compile,
               "loss_last": round(float(losses[-1]), 6)}
    model = optimizer = ddp = None  # the next mode needs the memory
    free_memory(device)
    return figures


def run(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    use_cuda = spec["device"] == "cuda"
    world = start_world(spec["timeout_s"], use_cuda=use_cuda)
    device = torch.device("cuda", world.local_rank) if use_cuda else torch.device("cpu")
    results: dict = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            shapes = bench_shapes(Path(tmp), spec["tiny"])
            args, tokenizer = shapes[:2]
            # each rank its own data, as each rank trains its own share of a step
            batch = synthetic_batch(tokenizer, args, spec["per_gpu_batch"], spec["max_length"], seed=world.rank,
                                    device=device)
            for mode, fields in spec["settings"].items():
                settings = TrainSettings(**(fields | {"device": str(device)}))
                results[mode] = time_mode(settings, shapes, batch, device, world, spec["warmup"], spec["repeat"])
                if world.main:
                    print(f"{world.size} process(es), {mode}: {results[mode]}", flush=True)
                    atomic.write_json(spec["result"], results)
    finally:
        stop_world()
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1]))
