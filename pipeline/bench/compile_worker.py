"""One process of the `compile` bench section: a training phase's first steps on random codes,
with the workspace's compile cache, and what torch compiled or loaded for them (JSON on stdout).

    python -m pipeline.bench.compile_worker CONFIG MAX_FRAMES CLIPS

CONFIG is the bench's settings, saved; the workspace (and so the cache) is STUDIO_WORKSPACE's.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

# dynamo's compile-time split: tracing, AOT autograd (joint graph), inductor (code generation)
PHASES = ("_compile.compile_inner", "bytecode_tracing", "create_aot_dispatcher_function", "aot_trace_joint_graph",
          "compile_fx_inner")


def _compile_seconds() -> dict:
    from torch._dynamo.utils import compilation_time_metrics

    return {name: round(sum(compilation_time_metrics.get(name, [])), 2) for name in PHASES}


def main(argv: list[str] | None = None) -> int:
    from torch._dynamo.utils import counters

    from pipeline.config import load_config
    from pipeline.data.text import example_sentences
    from pipeline.model.synthetic import random_codes_manifest, write_random_lm
    from pipeline.train.settings import TrainSettings
    from pipeline.train.warmup import model_args, use_compile_cache, warmup_steps

    config_path, max_frames, clips = (argv or sys.argv[1:])[:3]
    config = load_config(config_path)
    use_compile_cache(config)
    with tempfile.TemporaryDirectory(prefix="bench-compile-") as tmp:
        tmp, args = Path(tmp), model_args(None)
        ckpt = write_random_lm(tmp / "model", args)
        manifest = random_codes_manifest(tmp / "codes", args, int(clips), int(max_frames), example_sentences())
        timing = warmup_steps(TrainSettings.from_config(config, "lora"), ckpt, manifest, tmp / "run")
    cache = {f"{group}.{key}": value for group in ("aot_autograd", "inductor") for key, value in counters[group].items()
             if "cache" in key and value}
    print(json.dumps({**timing, "graphs": counters["stats"]["unique_graphs"], "cache": cache,
                      "compile_s": _compile_seconds()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
