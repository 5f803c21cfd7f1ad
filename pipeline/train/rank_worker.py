"""One rank of a data-parallel training phase: `torchrun … -m pipeline.train.rank_worker spec.json`.

Started by pipeline.train.launch, never by hand. Rank 0 keeps the job's output (its progress is
relayed to the workflow); the other ranks write theirs to ranks/rank_<N>.log in the phase folder.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import sys
import threading
import traceback
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from pipeline import atomic
from pipeline.train.distributed import start_world, stop_world
from pipeline.train.launch import PROGRESS_TAG, RESULT_FILE, STOP_FILE, error_file, log_file, pid_file, ranks_dir
from pipeline.train.loop import train
from pipeline.train.settings import TrainSettings, resolve_device
from pipeline.train.warmup import cache_whole_blocks


def build_scorer(factory: str | None, config_path: str | None, in_ranks: bool = False):
    """The scorer named "module:function" for the run whose config.yaml is `config_path`, or None.

    Named, not imported: the scorers live in a layer above training (pipeline.quality). It runs
    on the CPU, outside the training GPU's memory plan, with references from the run's dataset
    and speaker (run.json's, where recorded). Among data-parallel ranks it never downloads: the
    other ranks wait in a collective meanwhile."""
    if not factory:
        return None
    module, _, name = factory.partition(":")
    from pipeline.config import load_config
    from pipeline.train.runs import read_run

    run = read_run(Path(config_path).parent) if config_path else {}
    return getattr(importlib.import_module(module), name)(load_config(config_path), device="cpu",
                                                          speaker=run.get("speaker"), download=not in_ranks,
                                                          dataset_id=run.get("dataset"))


def _own_output(phase_dir: Path, rank: int) -> None:
    """Ranks after the first write their output to their own log file."""
    log = open(log_file(phase_dir, rank), "a", buffering=1)
    os.dup2(log.fileno(), sys.stdout.fileno())
    os.dup2(log.fileno(), sys.stderr.fileno())


def run(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    phase_dir = Path(spec["phase_dir"])
    rank = int(os.environ.get("RANK", "0"))
    # a stop asked while this rank starts (model load, compilation) must wait for the first step
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    atomic.write_text(pid_file(phase_dir, rank), str(os.getpid()))
    if (ranks_dir(phase_dir) / STOP_FILE).is_file():
        stop.set()
    if rank:
        _own_output(phase_dir, rank)
    cache_whole_blocks()  # the compile cache folder the workflow chose came with the environment
    try:
        settings = TrainSettings(**spec["settings"])
        world = start_world(spec["timeout_s"], use_cuda=resolve_device(settings).type == "cuda")
        progress = (lambda f, m: print(f"{PROGRESS_TAG}{f:.6f} {m}", flush=True)) if world.main else None
        scorer = build_scorer(spec.get("scorer_factory"), spec.get("config"), in_ranks=True) if world.main else None
        result = train(phase_dir, spec["ckpt_dir"], pd.read_parquet(spec["manifest"]), settings,
                       stop_event=stop, progress=progress, world=world, scorer=scorer)
        if world.main:
            atomic.write_json(ranks_dir(phase_dir) / RESULT_FILE, asdict(result))
        if result.status == "failed":  # e.g. out of memory on this rank: the job names it
            atomic.write_text(error_file(phase_dir, rank), result.message)
            return 1
        stop_world()
        return 0
    except BaseException as exc:
        atomic.write_text(error_file(phase_dir, rank), f"{type(exc).__name__}: {exc}")
        traceback.print_exc()
        raise  # no orderly exit from the process group: its peers may be waiting in a collective


if __name__ == "__main__":
    sys.exit(run(sys.argv[1]))
