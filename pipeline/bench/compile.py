"""The `compile` section of `python -m pipeline bench`: how long a training run's first step waits
for torch.compile, with nothing compiled and with the compile cache `python -m pipeline warmup` fills.

Two fresh processes (pipeline.bench.compile_worker; nothing compiled in memory, as in a new run)
run a LoRA phase's first steps at the configured batch on the s1-mini shape with random codes,
in one new workspace: `cold` with its compile cache empty (also what the warm-up itself costs),
then `warm` with the cache the first filled, on a dataset of other clip lengths (as a user's
run after the warm-up). Each reports the first step's seconds from the phase's start (loading,
packing, compiling), the graphs compiled, torch's cache hits, misses and bypasses, and dynamo's
compile-time split. Triton's and inductor's caches both live in that workspace, so nothing from
an earlier process on the machine is reused.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from pipeline.config import PROJECT_ROOT

# (name, clip length cap in frames, clips): 2-20 s clips for the cold start, 1-8 s for the warm one
RUNS = (("cold", 430, 400), ("warm", 172, 600))
WORKER_TIMEOUT_S = 900


def _worker(config_path: Path, workspace: Path, max_frames: int, clips: int) -> dict:
    # the bench's workspace, never the person's: STUDIO_WORKSPACE would win over the saved config,
    # and a cache folder set in the environment would be read instead of the empty one
    env = {k: v for k, v in os.environ.items() if k not in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")}
    env["STUDIO_WORKSPACE"] = str(workspace)
    out = subprocess.run([sys.executable, "-m", "pipeline.bench.compile_worker", str(config_path), str(max_frames),
                          str(clips)], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                         timeout=WORKER_TIMEOUT_S)
    if out.returncode != 0:
        return {"error": (out.stderr or out.stdout)[-1500:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_compile(config, device, tiny: bool) -> dict:
    """{cold: {...}, warm: {...}, first_step_saved_s} (see the module doc); skipped where training
    does not compile (a CPU, `--tiny`)."""
    from pipeline.train.warmup import compiles_here

    if tiny or not compiles_here(config):
        return {"skipped": "training runs uncompiled here (the section needs a CUDA GPU and the real shape)"}
    result: dict = {"batch_size": config.training.batch_size, "max_length": config.training.max_length}
    with tempfile.TemporaryDirectory(prefix="bench-compile-") as tmp:
        config_path = config.save(Path(tmp) / "config.yaml")  # the bench's settings (--config, --set) in each worker
        for name, max_frames, clips in RUNS:
            result[name] = _worker(config_path, Path(tmp) / "workspace", max_frames, clips) | {
                "clips": clips, "max_frames": max_frames}
            print(f"compile {name}: {result[name]}", flush=True)
    cold, warm = result["cold"].get("first_step_s"), result["warm"].get("first_step_s")
    if cold and warm:
        result["first_step_saved_s"] = round(cold - warm, 1)
    return result
