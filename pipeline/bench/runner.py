"""`python -m pipeline bench`: training, extraction and generation speed on this GPU.

Runs with no download: the real s1-mini shape with random weights (`real_shape_args`), a tokenizer
with the tiny checkpoint's BPE and the real 4,096 semantic tokens, the real-size codec config with
random weights. `--tiny` (`python -m pipeline.bench --tiny`) runs the same code on tiny shapes on
any device in seconds (CI; its timings mean nothing). The JSON goes to
`runs/bench/<card>-<date>.json`, where `pipeline.estimate.cost` reads it. docs/PERFORMANCE.md explains each
number and the FLOP accounting (`train_flops`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

from pipeline.bench.common import bench_shapes, free_memory, measured_matmul_tflops, peak_tflops
from pipeline.bench.options import add_bench_arguments


def _command_line() -> str:
    args = " ".join(sys.argv[1:])
    standalone = sys.argv and Path(sys.argv[0]).parent.name == "bench"  # pipeline/bench/__main__.py
    entry = "python -m pipeline.bench" if standalone else "python -m pipeline"
    return f"{entry} {args}".strip()


def card_name(device) -> str:
    return torch.cuda.get_device_name(device) if torch.device(device).type == "cuda" else "cpu"


def result_path(out_dir: Path, card: str, date: str, tiny: bool, clock: str | None = None) -> Path:
    """`<card>-<date>[-<HHMMSS>].json`: with the time of day, two calls of one day keep both files."""
    slug = re.sub(r"[^a-z0-9]+", "-", card.lower()).strip("-") + ("-tiny" if tiny else "")
    return Path(out_dir) / f"{slug}-{date}{'-' + clock if clock else ''}.json"


# -- the run ------------------------------------------------------------------------------------
BENCH_SECTIONS = ["train", "loop", "extract", "generate"]  # the default run
# long or multi-GPU sections: only on request (--only)
EXTRA_SECTIONS = ["evaluation", "workflow", "scaling", "compile"]


def run_bench(config, which: list[str] | None = None, out_dir: Path | None = None, tiny: bool = False,
              steps: int | None = None, variants: list[str] | None = None, device=None,
              profile: bool = False, clips: int | None = None) -> dict:
    """Run the sections in `which` (train, loop, extract, generate; default all) and write the JSON.

    Without a CUDA GPU only `tiny=True` runs (the real shape on a CPU would take hours)."""
    from pipeline.bench import sections

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type != "cuda" and not tiny:
        raise ValueError("python -m pipeline bench needs a CUDA GPU; use `python -m pipeline.bench --tiny` "
                         "to run the benchmark code on tiny shapes here.")
    which = list(which or BENCH_SECTIONS)
    now = dt.datetime.now(dt.timezone.utc)
    card = card_name(device)
    result: dict = {
        "card": card, "torch": torch.__version__, "date": now.strftime("%Y-%m-%d"),
        "time": now.strftime("%Y-%m-%dT%H:%M:%SZ"), "command": _command_line(),
        "tiny": tiny, "device": str(device), "sections": which,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        result["gpu_memory_gb"] = round(props.total_memory / 1e9, 1)
        result["peak_tflops"], result["peak_source"] = peak_tflops(device)
        result["matmul_tflops"] = round(measured_matmul_tflops(device), 1)
    out_dir = Path(out_dir) if out_dir else Path(config.runs_dir) / "bench"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = result_path(out_dir, card, result["date"], tiny, now.strftime("%H%M%S"))
    with tempfile.TemporaryDirectory() as tmp:
        shapes = bench_shapes(Path(tmp), tiny)
        for name in which:
            started = time.perf_counter()
            print(f"== {name} ==", flush=True)
            try:
                if name == "train":
                    train = sections.bench_train(config, shapes, device, tiny, steps, variants,
                                                 out_dir if profile else None)
                    result["train"] = train
                    result["reference"] = train.get("reference", {})
                elif name == "loop":
                    from pipeline.bench.loop import bench_loop

                    # the modes of the chosen training variants (e.g. reference-lora,project-lora: LoRA only)
                    modes = [m for m in ("lora", "full") if not variants or any(v.endswith(m) for v in variants)]
                    result["loop"] = bench_loop(config, shapes, device, tiny, steps, modes or ("lora", "full"))
                elif name == "extract":
                    result["extract"] = sections.bench_extract(shapes, device, tiny)
                elif name == "generate":
                    from pipeline.bench.streaming import bench_streaming

                    result["generate"] = sections.bench_generate(shapes, device, tiny, out_dir if profile else None,
                                                                 config.speed)
                    free_memory(device)
                    # what the Playground's live player gets: time to the first audio of a sentence
                    result["generate"]["streaming"] = bench_streaming(shapes, device, tiny, config.speed)
                elif name == "evaluation":
                    from pipeline.bench.evaluation import bench_evaluation

                    result["evaluation"] = bench_evaluation(config, shapes, device, tiny)
                elif name == "workflow":
                    from pipeline.bench.workflow import bench_workflow

                    result["workflow"] = bench_workflow(config, shapes, device, tiny, steps, clips)
                elif name == "compile":
                    from pipeline.bench.compile import bench_compile

                    result["compile"] = bench_compile(config, device, tiny)
                elif name == "scaling":
                    from pipeline.bench.scaling import bench_scaling

                    result["scaling"] = bench_scaling(config, shapes, device, tiny, steps)
                else:
                    raise ValueError(f"Unknown bench section {name!r}: choose one of {', '.join(BENCH_SECTIONS + EXTRA_SECTIONS)}.")
            except ValueError:
                raise
            except Exception as exc:  # keep the other sections' numbers
                traceback.print_exc()
                result[name] = {"error": f"{type(exc).__name__}: {str(exc)[:500]}"}
            result.setdefault("section_seconds", {})[name] = round(time.perf_counter() - started, 1)
            free_memory(device)
            path.write_text(json.dumps(result, indent=2, default=str))  # partial results survive a crash
    result["loop_speedup"] = loop_speedup(result)
    result["path"] = str(path)
    path.write_text(json.dumps(result, indent=2, default=str))
    print(summary(result), flush=True)
    return result


def loop_speedup(result: dict) -> dict:
    """The upstream-style step's seconds over the training loop's (what a user's run gets), per
    mode, when both were measured in this call."""
    ratios = {}
    for mode in ("lora", "full"):
        reference = (result.get("reference") or {}).get(mode) or {}
        loop = (result.get("loop") or {}).get(mode) or {}
        if reference.get("step_s") and loop.get("step_s"):
            ratios[mode] = round(reference["step_s"] / loop["step_s"], 2)
    return ratios


def summary(result: dict) -> str:
    lines = [f"{result['card']}  torch {result['torch']}  {result['date']}  tiny={result['tiny']}"]
    train = result.get("train", {})
    for row in train.get("variants", []):
        if "error" in row:
            lines.append(f"  {row['name']:<22} ERROR {row['error'][:100]}")
            continue
        lines.append(f"  {row['name']:<22} step {row['step_s']:.3f} s  {row['tokens_per_s']:>9.0f} tok/s  "
                     f"peak {row['peak_gb']:.1f} GB  mfu {row.get('mfu') or float('nan'):.3f}  "
                     f"ckpt {row.get('gradient_checkpointing')}  micro {row.get('micro_batch')}")
    for mode, value in train.get("speedup", {}).items():
        lines.append(f"  speedup {mode}: {value}")
    for mode in ("lora", "full"):
        loop = result.get("loop", {}).get(mode)
        if loop:
            ratio = (result.get("loop_speedup") or {}).get(mode)
            versus = f", {ratio}x the upstream-style step" if ratio else ""
            lines.append(f"  loop {mode}: {loop['step_s']} s/step (train.py end to end, {loop['timed_steps']} steps{versus})")
    for key in ("extract", "generate"):
        if key in result:
            lines.append(f"  {key}: " + json.dumps({k: v for k, v in result[key].items() if not isinstance(v, (dict, list))}))
    streamed = result.get("generate", {}).get("streaming")
    if streamed:
        lines.append(f"  streaming: first audio after {streamed['ttfa_ms']} ms, {streamed['audio_s']} s of audio in "
                     f"{streamed['total_s']} s ({streamed['decoder']})")
    return "\n".join(lines)


def run_from_args(config, args) -> dict:
    return run_bench(config, which=args.only, out_dir=Path(args.out) if args.out else None, tiny=args.tiny,
                     steps=args.steps, variants=args.variants.split(",") if args.variants else None,
                     profile=args.profile, clips=args.clips)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.bench", description=__doc__.split("\n\n")[0])
    add_bench_arguments(parser)
    parser.add_argument("--config", help="configuration file (default: launchable.yaml)")
    args = parser.parse_args(argv)
    from pipeline.config import load_config

    run_from_args(load_config(args.config), args)
    return 0
