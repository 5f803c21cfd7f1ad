"""`python -m pipeline.bench.lora_tiles`: the LoRA dropout kernels' tiles swept at the s1-mini step's
real shapes (GPU). Each kernel and tile is timed (median of `triton.testing.do_bench`) on every
shape one training step launches, weighted by how often the step launches it, and checked against
the tiles in use (same outputs up to the summation order). Prints the best tiles per kernel; the
JSON (`--out`) keeps every timing. `pipeline/kernels/lora_dropout.py`'s TILES holds the winners.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass

import torch

from pipeline.bench.common import sweep_command
from pipeline.kernels import lora_dropout, runtime

RANK = 8
DTYPE = torch.bfloat16  # the step's compute dtype
SLOW_ROWS = 4 * 4096  # the bench batch: 4 sequences of 4,096 positions
FAST_ROWS = 10 * 14_336  # ~14 k audio frames of 10 positions each (the bench batch's)


@dataclass(frozen=True)
class Shape:
    name: str
    rows: int
    k: int
    adapters: int
    glu: bool
    per_step: int  # launches per training step (layers)


SHAPES = [
    Shape("slow wqkv", SLOW_ROWS, 1024, 1, False, 28),
    Shape("slow wo", SLOW_ROWS, 2048, 1, False, 28),
    Shape("slow w1|w3", SLOW_ROWS, 1024, 2, False, 28),
    Shape("slow w2", SLOW_ROWS, 3072, 1, True, 28),
    Shape("fast wqkv|wo", FAST_ROWS, 1024, 1, False, 8),
    Shape("fast w1|w3", FAST_ROWS, 1024, 2, False, 4),
    Shape("fast w2", FAST_ROWS, 3072, 1, True, 4),
]

GRID = {
    "down": dict(ROWS=[32, 64, 128], COLS=[64, 128], num_warps=[4, 8], num_stages=[2, 3]),
    "grad_input": dict(ROWS=[16, 32, 64], COLS=[64, 128, 256], num_warps=[4, 8], num_stages=[1, 2]),
    "grad_weight": dict(ROWS=[32, 64, 128], COLS=[128, 256], num_warps=[4, 8], num_stages=[3, 4]),
}


def _tiles(kernel: str):
    grid = GRID[kernel]
    for values in itertools.product(*grid.values()):
        yield dict(zip(grid, values))


def _inputs(shape: Shape, device):
    g = torch.Generator(device=device).manual_seed(0)
    width_in = 2 * shape.k if shape.glu else shape.k
    x = torch.randn(shape.rows, width_in, device=device, dtype=DTYPE, generator=g)
    a = torch.randn(shape.adapters, RANK, shape.k, device=device, dtype=DTYPE, generator=g) / shape.k ** 0.5
    seed = torch.tensor([1234], device=device, dtype=torch.int32)
    scale = torch.full((shape.adapters,), 2.0, device=device)
    threshold = lora_dropout.threshold_for(0.01)
    xu = lora_dropout.launch_down(runtime.launch_direct, x, a, seed, scale, threshold, True, shape.glu)
    grad = torch.randn(shape.rows, xu.shape[1], device=device, dtype=DTYPE, generator=g)
    return x, a, seed, scale, threshold, xu, grad


def _call(kernel: str, shape: Shape, inputs):
    x, a, seed, scale, threshold, xu, grad = inputs
    launch = runtime.launch_direct
    if kernel == "down":
        return lambda: lora_dropout.launch_down(launch, x, a, seed, scale, threshold, True, shape.glu)
    if kernel == "grad_input":
        return lambda: lora_dropout.launch_grad_input(launch, grad, shape.k, True, a, seed, scale, threshold,
                                                      x if shape.glu else None)
    return lambda: lora_dropout.launch_grad_weight(launch, xu, grad, shape.k, a, seed, scale, threshold)


def _bytes(kernel: str, shape: Shape) -> int:
    """The fewest bytes the kernel must move (bf16): each input read once, each output written once."""
    m, k, r = shape.rows, shape.k, RANK * shape.adapters
    x_in = 2 * m * k * (2 if shape.glu else 1)
    if kernel == "down":
        return x_in + 2 * m * (k + r)
    if kernel == "grad_input":
        return 2 * m * (k + r) + (x_in if shape.glu else 0) + x_in
    return 2 * m * (k + r)


def _key(kernel: str, shape: Shape) -> str:
    return f"{kernel}_glu" if shape.glu and kernel != "grad_weight" else kernel


def sweep(device) -> dict:
    from triton.testing import do_bench

    saved = {name: dict(tile) for name, tile in lora_dropout.TILES.items()}
    results = []
    try:
        for shape in SHAPES:
            inputs = _inputs(shape, device)
            for kernel in GRID:
                key = _key(kernel, shape)
                current = dict(saved.get(key, saved[kernel]))
                lora_dropout.TILES[key] = current
                reference = _call(kernel, shape, inputs)().float()
                grid = list(_tiles(kernel))
                for tile in grid if current in grid else [current] + grid:  # each tile timed once
                    lora_dropout.TILES[key] = tile
                    try:
                        fn = _call(kernel, shape, inputs)
                        error = ((fn().float() - reference).norm() / reference.norm()).item()
                        ms = do_bench(fn, warmup=10, rep=40, return_mode="median")
                    except Exception as exc:  # a tile the chip cannot hold (shared memory): skipped
                        results.append(dict(shape=shape.name, kernel=key, tile=tile, error=str(exc)[:200]))
                        continue
                    results.append(dict(shape=shape.name, kernel=key, tile=tile, ms=ms, rel_error=error,
                                        per_step=shape.per_step, gbps=_bytes(kernel, shape) / ms / 1e6))
            del inputs
            torch.cuda.empty_cache()
    finally:  # the tiles in use back, without the keys the sweep added
        lora_dropout.TILES.clear()
        lora_dropout.TILES.update(saved)
    return {"card": torch.cuda.get_device_name(device), "current": saved, "results": results,
            "best": best_tiles(results, saved)}


def best_tiles(results: list[dict], current: dict) -> dict:
    """Per kernel key: the tile with the least step time (ms x launches per step, summed over shapes)
    among tiles that ran on every shape, beside the current tiles' time."""
    by_key: dict[str, dict[str, float]] = {}
    shapes: dict[str, set] = {}
    for row in results:
        if "ms" not in row:
            continue
        tile = json.dumps(row["tile"], sort_keys=True)
        by_key.setdefault(row["kernel"], {}).setdefault(tile, 0.0)
        by_key[row["kernel"]][tile] += row["ms"] * row["per_step"]
        shapes.setdefault((row["kernel"], tile), set()).add(row["shape"])
    out = {}
    for key, totals in by_key.items():
        most = max(len(shapes[(key, t)]) for t in totals)
        complete = {t: ms for t, ms in totals.items() if len(shapes[(key, t)]) == most}
        best = min(complete, key=complete.get)
        now = json.dumps(current.get(key, current[key.removesuffix("_glu")]), sort_keys=True)
        out[key] = {"tile": json.loads(best), "step_ms": complete[best], "current_step_ms": complete.get(now)}
    return out


def main(argv=None) -> None:
    report = sweep_command(__doc__, "a CUDA GPU of Ampere or newer with Triton", lora_dropout.usable, sweep, argv)
    print(f"card: {report['card']}")
    for row in report["results"]:
        if "ms" in row:
            print(f"{row['shape']:12s} {row['kernel']:15s} {json.dumps(row['tile'])} {row['ms']:.3f} ms "
                  f"{row['gbps']:.0f} GB/s err {row['rel_error']:.1e}")
    print("\nper step (ms x launches), best against current:")
    for key, best in report["best"].items():
        print(f"{key:15s} best {best['step_ms']:.1f} ms {json.dumps(best['tile'])}  current {best['current_step_ms']}")


if __name__ == "__main__":
    main()
