"""One rank of a data-parallel training phase: `torchrun … -m pipeline.train.rank_worker spec.json`.

Started by pipeline.train.launch, never by hand. Rank 0 keeps the job's output (its progress is
relayed to the workflow); the other ranks write theirs to ranks/rank_<N>.log in the phase folder.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import traceback
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from pipeline import atomic
from pipeline.train.distributed import start_world, stop_world
from pipeline.train.launch import PROGRESS_TAG, RESULT_FILE, error_file, log_file, pid_file, ranks_dir
from pipeline.train.loop import train
from pipeline.train.settings import TrainSettings, resolve_device


def build_scorer(factory: str | None, config_path: str | None, device=None):
    """The scorer named "module:function" (called with the run's config), or None.

    Named, not imported: the scorers live in a layer above training (pipeline.quality)."""
    if not factory:
        return None
    module, _, name = factory.partition(":")
    from pipeline.config import load_config

    return getattr(importlib.import_module(module), name)(load_config(config_path), device=device)


def _own_output(phase_dir: Path, rank: int) -> None:
    """Ranks after the first write their output to their own log file."""
    log = open(log_file(phase_dir, rank), "a", buffering=1)
    os.dup2(log.fileno(), sys.stdout.fileno())
    os.dup2(log.fileno(), sys.stderr.fileno())


def run(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    phase_dir = Path(spec["phase_dir"])
    settings = TrainSettings(**spec["settings"])
    world = start_world(spec["timeout_s"], use_cuda=resolve_device(settings).type == "cuda")
    atomic.write_text(pid_file(phase_dir, world.rank), str(os.getpid()))
    if not world.main:
        _own_output(phase_dir, world.rank)
    try:
        progress = (lambda f, m: print(f"{PROGRESS_TAG}{f:.6f} {m}", flush=True)) if world.main else None
        scorer = build_scorer(spec.get("scorer_factory"), spec.get("config")) if world.main else None
        result = train(phase_dir, spec["ckpt_dir"], pd.read_parquet(spec["manifest"]), settings,
                       progress=progress, world=world, scorer=scorer)
        if world.main:
            atomic.write_json(ranks_dir(phase_dir) / RESULT_FILE, asdict(result))
        return 0 if result.status != "failed" else 1
    except BaseException as exc:
        atomic.write_text(error_file(phase_dir, world.rank), f"{type(exc).__name__}: {exc}")
        traceback.print_exc()
        raise
    finally:
        stop_world()


if __name__ == "__main__":
    sys.exit(run(sys.argv[1]))
