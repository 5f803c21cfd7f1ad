"""One training process per machine, enforced by the operating system.

A process that trains holds an exclusive `flock` on `workspace/training.lock` (and one on its
run folder's `run.lock`) for its whole life, whatever started it: the studio's job, `python -m
pipeline run` or `train`. The kernel drops the lock when the process exits, however it exits
(even kill -9), so a stale lock never blocks; the JSON inside the lock file only says who held
it last, for the messages. `job.json` stays the studio's record of the job it started; this lock
is what makes "one at a time" true for every way of starting a run.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path


class TrainingBusy(ValueError):
    """Another process trains on this machine (or in this run folder); the message names it."""


WORKSPACE_LOCK = "training.lock"
RUN_LOCK = "run.lock"
WARMUP_HOLDER = "compile-warmup"  # the holder's name while `python -m pipeline warmup` compiles: not a run


def _try_lock(path: Path) -> int | None:
    """An open descriptor holding the exclusive lock on `path`, or None when another holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _read_holder(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text() or "{}")
    except (OSError, json.JSONDecodeError):
        return {}


def warmup_busy_message(pid, then: str = "start") -> str:
    """What to say while the compile warm-up holds the GPU: it is no run, and cannot be cancelled here."""
    return (f"The training steps are being compiled ahead (`python -m pipeline warmup`, pid {pid}); "
            f"{then} when it has finished, in a minute or two.")


def _busy_message(holder: dict, where: str) -> str:
    run, pid = holder.get("run_id") or "?", holder.get("pid") or "?"
    if run == WARMUP_HOLDER:
        return warmup_busy_message(pid)
    return (f"A training job is already running {where}: run '{run}' (pid {pid}). "
            "Cancel it or wait for it to finish before starting another.")


def holder(workspace: Path) -> dict | None:
    """Who trains on this machine now ({run_id, run_dir, pid, started}), or None: a probe that
    takes the lock for an instant and gives it back."""
    path = Path(workspace) / WORKSPACE_LOCK
    if not path.exists():
        return None
    fd = _try_lock(path)
    if fd is None:
        return _read_holder(path) or {"run_id": None, "pid": None}
    os.close(fd)
    return None


class TrainingLock:
    """Hold the machine's and the run folder's training locks (a context manager).

    Raises `TrainingBusy`, naming the run and pid that hold them, before anything is written.
    """

    def __init__(self, workspace: Path, run_dir: Path):
        self.workspace, self.run_dir = Path(workspace), Path(run_dir)
        self._fds: list[int] = []

    def __enter__(self) -> "TrainingLock":
        info = {"run_id": self.run_dir.name, "run_dir": str(self.run_dir), "pid": os.getpid(), "started": time.time()}
        for path, where in ((self.workspace / WORKSPACE_LOCK, "on this machine"),
                            (self.run_dir / RUN_LOCK, f"in {self.run_dir.name}")):
            fd = _try_lock(path)
            if fd is None:
                self.release()
                raise TrainingBusy(_busy_message(_read_holder(path), where))
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
            self._fds.append(fd)
        return self

    def release(self) -> None:
        for fd in self._fds:
            os.close(fd)  # closing the descriptor drops the flock
        self._fds = []

    def __exit__(self, *exc) -> None:
        self.release()
