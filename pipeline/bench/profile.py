"""Profiles for `python -m pipeline bench --profile`: where a step's GPU time went (kernel groups),
where the GPU waited (idle gaps between kernels), and a Chrome trace with the CPU side."""

from __future__ import annotations

import gzip
import json
import re
import shutil

import torch

# kernel name patterns -> what the GPU time went to (first match wins)
KERNEL_GROUPS = [
    ("LoRA down-projections (lora_down)", r"_down_kernel|_grad_input_kernel|_grad_weight_kernel"),
    ("attention", r"flash|fmha|cudnn|attention|flex"),
    ("matmul", r"gemm|nvjet|cutlass|sm90_xmma|ampere_|matmul|_mm_|splitk"),
    ("random (dropout masks)", r"philox|rand|dropout|bernoulli"),
    ("reduction (norms, softmax, loss)", r"triton_(red|per)_|reduce|softmax|norm"),
    ("element-wise", r"triton_poi_|elementwise|vectorized|copy|cat|fill"),
]


def kernel_groups(prof) -> dict:
    """GPU milliseconds per KERNEL_GROUPS category (plus "other") of a torch.profiler run."""
    groups: dict[str, float] = {}
    for event in prof.key_averages():
        if event.device_type.name != "CUDA" or not event.self_device_time_total:
            continue
        name = event.key.lower()
        group = next((g for g, pattern in KERNEL_GROUPS if re.search(pattern, name)), "other")
        groups[group] = groups.get(group, 0.0) + event.self_device_time_total / 1e3
    return {g: round(ms, 2) for g, ms in sorted(groups.items(), key=lambda kv: -kv[1])}


def gpu_idle(prof, top: int = 12) -> dict:
    """Where the GPU waited during a profiled run: the span from the first kernel's start to the
    last one's end, the time no kernel ran, and the longest gaps with the kernels around them."""
    spans = sorted((e.time_range.start, e.time_range.end, e.name) for e in prof.events()
                   if e.device_type.name == "CUDA" and e.time_range.end > e.time_range.start)
    if not spans:
        return {}
    gaps, busy_until, before = [], spans[0][0], spans[0][2]
    for start, end, name in spans:
        if start > busy_until:
            gaps.append((start - busy_until, before, name))
        if end > busy_until:
            busy_until, before = end, name
    idle = sum(g for g, *_ in gaps)
    gaps.sort(key=lambda g: -g[0])
    return {"span_ms": round((busy_until - spans[0][0]) / 1e3, 2), "idle_ms": round(idle / 1e3, 2),
            "gaps_over_50us": sum(g > 50 for g, *_ in gaps),
            "longest": [{"ms": round(g / 1e3, 3), "after": a[:80], "before": b[:80]} for g, a, b in gaps[:top]]}


def profiled(run, path, rows: int = 250):
    """`run()` under torch.profiler, twice: GPU kernels only (the kernel table by GPU time and the
    idle gaps, gpu_idle, written to `path`: recording every CPU op would slow the CPU side and
    inflate the gaps), then with the CPU ops too, for a gzipped Chrome trace next to it.
    Returns the first run's profiler and its summary ({gpu_ms_by_kind, gpu_idle})."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        run()
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="self_device_time_total", row_limit=rows, max_name_column_width=110)
    summary = {"gpu_ms_by_kind": kernel_groups(prof), "gpu_idle": gpu_idle(prof)}
    path.write_text(json.dumps(summary, indent=1) + "\n" + table)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as traced:
        run()
        torch.cuda.synchronize()
    trace = path.with_suffix(".trace.json")  # for chrome://tracing or ui.perfetto.dev
    traced.export_chrome_trace(str(trace))
    with open(trace, "rb") as src, gzip.open(f"{trace}.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    trace.unlink()
    return prof, summary
