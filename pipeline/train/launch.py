"""A training phase on several GPUs: torchrun starts one process per GPU, this process watches.

The workflow stays one process (dataset, codes, merge); only a phase's training loop runs under
`torch.distributed.run`, each rank in `pipeline.train.rank_worker`. The ranks' common inputs
travel through `<phase>/ranks/`: spec.json (settings, paths, world size) and manifest.parquet.
Rank 0 prints its progress as tagged lines that are relayed here, and writes result.json at the
end; every rank records its pid, and a rank that fails records its error, so that a failed job
names the rank and the reason. torchrun ends the other ranks when one dies; collectives time out
after training.collective_timeout_s, so a job never hangs.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import pandas as pd

from pipeline import atomic
from pipeline.config import PROJECT_ROOT
from pipeline.train.settings import TrainError, TrainResult, TrainSettings

RANKS_DIR, SPEC_FILE, MANIFEST_FILE, RESULT_FILE = "ranks", "spec.json", "manifest.parquet", "result.json"
STOP_FILE = "stop"  # a stop asked before a rank could take a signal
STOP_GRACE_S = 900.0
PROGRESS_TAG = "@@progress "
Progress = Callable[[float, str], None] | None


def ranks_dir(phase_dir: str | Path) -> Path:
    return Path(phase_dir) / RANKS_DIR


def error_file(phase_dir: str | Path, rank: int) -> Path:
    return ranks_dir(phase_dir) / f"rank_{rank}.error"


def pid_file(phase_dir: str | Path, rank: int) -> Path:
    return ranks_dir(phase_dir) / f"rank_{rank}.pid"


def log_file(phase_dir: str | Path, rank: int) -> Path:
    return ranks_dir(phase_dir) / f"rank_{rank}.log"


def write_spec(phase_dir: Path, ckpt_dir: Path, manifest: pd.DataFrame, settings: TrainSettings, gpus: int,
               timeout_s: float, scorer_factory: str | None, config_path: Path | None) -> Path:
    folder = ranks_dir(phase_dir)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in [*folder.glob("rank_*"), folder / RESULT_FILE, folder / STOP_FILE]:  # an earlier attempt's
        stale.unlink(missing_ok=True)
    with atomic.replacing(folder / MANIFEST_FILE) as tmp:
        manifest.to_parquet(tmp, index=False)
    spec = {"phase_dir": str(phase_dir), "ckpt_dir": str(ckpt_dir), "manifest": str(folder / MANIFEST_FILE),
            "settings": asdict(settings), "gpus": gpus, "timeout_s": timeout_s,
            "scorer_factory": scorer_factory, "config": str(config_path) if config_path else None}
    atomic.write_json(folder / SPEC_FILE, spec)
    return folder / SPEC_FILE


def torchrun_command(spec: Path, processes: int, module: str = "pipeline.train.rank_worker") -> list[str]:
    """`module spec` as `processes` ranks on this machine (torchrun's own rendezvous on a free port)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
            "--monitor-interval=1", "-m", module, str(spec)]


def _relay(stream, progress: Progress, tail: list[str]) -> None:
    """Rank 0's progress lines to `progress`, everything else to this process's output."""
    for line in stream:
        if line.startswith(PROGRESS_TAG):
            fraction, _, message = line[len(PROGRESS_TAG):].rstrip("\n").partition(" ")
            try:
                value = float(fraction)
            except ValueError:  # a garbled line costs one progress update, never the job
                continue
            if progress:
                progress(value, message)
            continue
        sys.stdout.write(line)
        sys.stdout.flush()
        tail.append(line)
        del tail[:-200]


def _signal_ranks(phase_dir: Path, gpus: int) -> None:
    for rank in range(gpus):
        try:
            os.kill(int(pid_file(phase_dir, rank).read_text()), signal.SIGTERM)
        except (OSError, ValueError):
            pass  # not started yet (it checks the stop file at start) or already gone


def _watch_stop(process: subprocess.Popen, stop_event: threading.Event | None, done: threading.Event,
                phase_dir: Path, gpus: int) -> None:
    """A stop request goes to the ranks themselves: they agree on the step, rank 0 saves, and
    torchrun ends when they have. (torchrun would pass a SIGTERM on too, but kills the ranks 30 s
    later: a checkpoint or an evaluation can take longer.) torchrun itself is only signalled when
    the ranks have not ended after STOP_GRACE_S."""
    while stop_event is not None and not done.wait(0.5):
        if stop_event.is_set():
            atomic.write_text(ranks_dir(phase_dir) / STOP_FILE, "stop")
            _signal_ranks(phase_dir, gpus)
            if not done.wait(STOP_GRACE_S):
                process.send_signal(signal.SIGTERM)
            return


def rank_failure(phase_dir: Path, output: list[str], gpus: int) -> str:
    """Which rank failed and why: its recorded error, else what torchrun reported (a killed rank
    records nothing: torchrun names its exit code or signal)."""
    text = "".join(output)
    text = text[text.find("Root Cause"):] if "Root Cause" in text else text  # not the "Failures:" listed before it
    root = re.search(r"rank\s*:\s*(\d+).*?exitcode\s*:\s*(-?\d+)(.*?traceback\s*:\s*([^\n]+))?", text, re.S)
    errors = {r: error_file(phase_dir, r).read_text().strip() for r in range(gpus) if error_file(phase_dir, r).is_file()}
    if root:
        rank, code = int(root.group(1)), int(root.group(2))
        if rank in errors:
            return f"rank {rank} failed: {errors[rank]}"
        cause = root.group(4) or ""
        how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
        return f"rank {rank} {how}" + (f" ({cause.strip()})" if cause and "N/A" not in cause else "")
    if errors:
        rank = min(errors, key=lambda r: error_file(phase_dir, r).stat().st_mtime)  # the first to fail
        return f"rank {rank} failed: {errors[rank]}"
    last = next((line.strip() for line in reversed(output) if line.strip()), "no output")
    return f"the data-parallel job failed ({last})"


def _failed(phase_dir: Path, message: str) -> TrainResult:
    from pipeline.train.loop import STATE_FILE, mark_failed

    mark_failed(phase_dir, message)
    try:
        state = json.loads((phase_dir / STATE_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        state = {}
    return TrainResult("failed", int(state.get("step") or 0), int(state.get("total_steps") or 0), state.get("best"),
                       state.get("best_val_loss"), state.get("latest"), message)


def train_data_parallel(phase_dir, ckpt_dir, manifest: pd.DataFrame, settings: TrainSettings, gpus: int,
                        stop_event: threading.Event | None = None, progress: Progress = None,
                        timeout_s: float = 900, scorer_factory: str | None = None,
                        config_path: Path | None = None) -> TrainResult:
    """`pipeline.train.loop.train` on `gpus` processes (one per GPU; gloo processes on a CPU).

    Returns the phase's result as rank 0 recorded it; a job that ends without one (a rank died,
    a collective timed out) returns status failed with the failing rank's error, also written to
    the phase's state.json."""
    if gpus < 2:
        raise TrainError(f"train_data_parallel needs at least 2 processes, got {gpus}.")
    phase_dir = Path(phase_dir)
    spec = write_spec(phase_dir, Path(ckpt_dir), manifest, settings, gpus, timeout_s, scorer_factory, config_path)
    process = subprocess.Popen(torchrun_command(spec, gpus), cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, bufsize=1)
    done, tail = threading.Event(), []
    previous_handler = None
    if stop_event is None and threading.current_thread() is threading.main_thread():
        # `python -m pipeline train` has no stop event: a SIGTERM here must still stop the ranks
        stop_event = threading.Event()
        previous_handler = signal.signal(signal.SIGTERM, lambda *_: stop_event.set())
    watcher = threading.Thread(target=_watch_stop, args=(process, stop_event, done, phase_dir, gpus), daemon=True)
    watcher.start()
    try:
        _relay(process.stdout, progress, tail)
        code = process.wait()
    except BaseException:
        process.terminate()  # torchrun passes it on: the ranks save and stop
        process.wait()
        raise
    finally:
        done.set()
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
    result_path = ranks_dir(phase_dir) / RESULT_FILE
    if result_path.is_file():
        result = TrainResult(**json.loads(result_path.read_text()))
        if code == 0 or result.status in ("cancelled", "failed"):
            return result
    return _failed(phase_dir, rank_failure(phase_dir, tail, gpus))
