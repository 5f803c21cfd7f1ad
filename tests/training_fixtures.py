"""What the Training tab's tests share besides their fixtures (tests/studio/conftest.py): run
directories written as pipeline.train.workflow and pipeline.train.loop write them, the job file
of a live run, and the built app's Training-tab handlers."""

import json
import os
import time

from audio_fixtures import speech_like, write_audio
from pipeline.atomic import write_json


def _run(config, run_id, *, status, phase="lora", steps=8, total=20, pid=None, audio=False, **extra):
    """A quick_lora run directory with metrics, as pipeline.train.workflow and pipeline.train.loop write it."""
    run_dir = config.runs_dir / run_id
    config.save(run_dir / "config.yaml")
    write_json(run_dir / "run.json", {"id": run_id, "mode": "quick_lora", "phases": ["lora"], "phase": phase,
                                      "status": status, "pid": pid, "started_at": time.time() - 120,
                                      "elapsed_before_s": 0.0, **extra})
    phase_dir = run_dir / "phases" / "lora"
    phase_dir.mkdir(parents=True)
    rows = [{"kind": "val", "step": 0, "val_loss": 9.1, "val_top1": 0.01, "val_top5": 0.05, "elapsed_s": 0.2}]
    for s in range(1, steps + 1):
        rows.append({"kind": "train", "step": s, "loss": 9 - 0.1 * s, "top1": 0.01 * s, "top5": 0.05 * s,
                     "lr": 1e-4, "tokens_per_s": 900.0 + s, "elapsed_s": 2.0 * s})
        if s % 4 == 0:
            rows.append({"kind": "val", "step": s, "val_loss": 9 - 0.09 * s, "val_top1": 0.01, "val_top5": 0.05,
                         "elapsed_s": 2.0 * s})
    (phase_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_json(phase_dir / "state.json", {"status": "running" if status == "running" else status, "step": steps,
                                          "total_steps": total})
    (run_dir / "log.txt").write_text("loading\rVQ codes:  10%|#         | 1/10 [00:01<00:09, 1.00it/s]\r"
                                     "VQ codes: 100%|##########| 10/10 [00:10<00:00, 1.00it/s]\n"
                                     "step 8/20 loss 8.2\n")
    if audio:
        for i in (1, 2, 3):
            write_audio(run_dir / "audio" / f"example_{i}.wav", speech_like(seconds=0.5))
    return run_dir


def _tab(config):
    """The built app's Training-tab handlers by API name, and its run dropdown."""
    from studio.app import build_app

    demo = build_app(config)
    run_dd = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "run-choice")
    handlers = {fn.api_name: fn for fn in demo.fns.values() if fn.api_name}
    handlers["tick"] = next(fn for fn in demo.fns.values() if fn.name == "on_tick" and run_dd in fn.inputs)
    return handlers, run_dd


def _live(config, run_id):
    """`run_id` is the job running now (this test's pid stands in for the training process)."""
    write_json(config.workspace / "job.json", {"run_id": run_id, "pid": os.getpid(),
                                               "run_dir": str(config.runs_dir / run_id)})
