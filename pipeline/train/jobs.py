"""Training jobs as separate processes: one at a time per machine, outliving the studio.

The studio never trains in its own process. `start_job` launches `python -m pipeline run` for a
run directory in a new process session (so a studio restart or a browser reload does not touch
it) and records it in `workspace/job.json`. Anyone can later ask `job_status` what it is doing:
the answer comes from the run directory and from whether the process is still alive, so a
restarted studio re-attaches to a running job, and a job that died without writing its end
state is reported as failed with the last lines of its log.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import deque
from contextlib import contextmanager
from pathlib import Path

from pipeline.data.cleanup import pid_alive
from pipeline.atomic import write_json
from pipeline.train import lock as training_lock
from pipeline.config import PROJECT_ROOT, Config
from pipeline.train.runs import PHASES, RunError, create_run, is_run, read_json, read_run, run_dir_for, update_run


class JobError(ValueError):
    """A job request that cannot be honoured (another job running, nothing to cancel, ...)."""


def _job_file(config: Config) -> Path:
    return config.workspace / "job.json"


def _alive(pid: int | None) -> bool:
    return pid_alive(pid)


def log_tail(run_dir: Path, lines: int = 30) -> str:
    path = Path(run_dir) / "log.txt"
    if not path.exists():
        return ""
    # newline="" keeps the line endings: a line ending in a bare "\r" is a progress bar state
    # that the next one overwrote on a terminal, so it is left out
    with path.open(errors="replace", newline="") as handle:
        return "".join(deque((line for line in handle if not line.endswith("\r")), maxlen=lines))


def current_job(config: Config) -> dict | None:
    """The training job on this machine, or None: the one the studio started (job.json) while its
    process lives, else whoever holds the training lock (e.g. `python -m pipeline run` in a shell)."""
    job = read_json(_job_file(config))
    if job and _alive(job.get("pid")):
        return job
    holder = training_lock.holder(config.workspace)
    # a holder that is already a zombie still holds the lock until its last thread has exited
    is_run = holder and holder.get("run_id") and holder["run_id"] != training_lock.WARMUP_HOLDER
    if is_run and _alive(holder.get("pid")):
        return {"run_id": holder["run_id"], "run_dir": holder.get("run_dir") or str(config.runs_dir / holder["run_id"]),
                "pid": holder["pid"], "started": holder.get("started")}
    return None


def compile_warmup(config: Config) -> dict | None:
    """The compile warm-up (`python -m pipeline warmup`) while it holds the GPU, else None: no
    run, so current_job leaves it out, but nothing else should take the GPU meanwhile."""
    holder = training_lock.holder(config.workspace) or {}
    alive = holder.get("run_id") == training_lock.WARMUP_HOLDER and _alive(holder.get("pid"))
    return holder if alive else None


@contextmanager
def start_lock(config: Config):
    """Serialise start requests (two clicks at the same instant, the studio and a script): the
    check that nothing runs and the record of the new job happen under one lock."""
    path = config.workspace / "job-start.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _checked_run_id(config: Config, run_id: str | None) -> str | None:
    if run_id is None:
        return None
    try:
        return run_dir_for(config, run_id).name
    except RunError as exc:
        raise JobError(str(exc)) from None


def start_job(config: Config, run_id: str | None = None, model_dir: str | None = None, mode: str | None = None,
              gpus: int | str | None = None) -> dict:
    """Start (or resume, for an existing run id) the configured workflow in its own process.

    `gpus`: data-parallel processes for this attempt (default: training.gpus); a resume may use
    another count than the run started with.

    `mode="speaker_lora"` with `model_dir` = a finished full fine-tune's language-adapted model
    (pipeline.train.workflow.language_models) trains a new speaker on it."""
    run_id = _checked_run_id(config, run_id)
    if mode == "speaker_lora" and not run_id and not model_dir:
        raise JobError("A new speaker run needs the language-adapted model of a finished full fine-tune; pick one.")
    with start_lock(config):
        return _start_job(config, run_id, model_dir, mode, gpus)


def _start_job(config: Config, run_id: str | None, model_dir: str | None, mode: str | None, gpus) -> dict:
    warming = compile_warmup(config)
    if warming:
        raise JobError(training_lock.warmup_busy_message(warming["pid"]))
    running = current_job(config)
    if running:
        raise JobError(f"A training job is already running: run '{running['run_id']}' (pid {running['pid']}). "
                       "Cancel it or wait for it to finish before starting another.")
    if run_id and not is_run(config.runs_dir / run_id):
        raise JobError(f"There is no run '{run_id}' to resume under {config.runs_dir.name}/; start a new run instead.")
    run_dir = create_run(config, run_id, mode)
    state = read_run(run_dir)
    if state.get("status") == "finished":
        raise JobError(f"Run '{run_dir.name}' has already finished; start a new run instead.")
    mode = state.get("mode")
    # a single phase of `python -m pipeline train` (no workflow mode) resumes as one, on the model it began on
    one_phase = mode is not None and mode not in PHASES
    verb = ["train", "--mode", mode] if one_phase else ["run"]
    command = [sys.executable, "-m", "pipeline", *verb, "--config", str(run_dir / "config.yaml"),
               "--run-id", run_dir.name]
    model_dir = model_dir or (state.get("base_model") if one_phase else None)
    if model_dir:
        command += ["--model", str(model_dir)]
    if mode == "speaker_lora":
        command += ["--mode", "speaker_lora"]
    if gpus is not None:
        command += ["--gpus", str(gpus)]
    # the log is a file: progress bars there would be fragments of carriage-return redraws
    env = os.environ | {"PYTHONUNBUFFERED": "1", "STUDIO_WORKSPACE": str(config.workspace), "TQDM_DISABLE": "1",
                        "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    with open(run_dir / "log.txt", "ab") as log:
        process = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    job = {"run_id": run_dir.name, "run_dir": str(run_dir), "pid": process.pid, "started": time.time()}
    write_json(_job_file(config), job)
    update_run(run_dir, status="starting", pid=process.pid)
    return job


def cancel_job(config: Config, timeout: float = 60.0) -> dict:
    """Ask the running job to stop: it saves a checkpoint and records status 'cancelled'."""
    job = current_job(config)
    if not job:
        raise JobError("No training job is running.")
    os.kill(job["pid"], signal.SIGTERM)
    deadline = time.time() + timeout
    while time.time() < deadline and _alive(job["pid"]):
        time.sleep(0.2)
    if _alive(job["pid"]):
        raise JobError(f"Job '{job['run_id']}' did not stop within {timeout:.0f} s; it is still saving. Try again.")
    run_dir = Path(job["run_dir"])
    if read_run(run_dir).get("status") == "starting":  # stopped before the workflow took over: nothing ran
        update_run(run_dir, status="cancelled", message="cancelled before it started; resume to run it")
    return job_status(config, job["run_id"])


def shown_status(run: dict) -> str:
    """A run's status as a list shows it without touching the run: a process that died while
    "running" or "starting" reads as failed (job_status records that once the run is opened)."""
    status = run.get("status") or "?"
    return "failed" if status in ("running", "starting") and not _alive(run.get("pid")) else status


def job_status(config: Config, run_id: str) -> dict:
    """run.json of a run, corrected by reality: a dead process cannot still be running."""
    run_dir = config.runs_dir / _checked_run_id(config, run_id)
    state = read_run(run_dir)
    if not state:
        raise JobError(f"There is no run '{run_id}' under {config.runs_dir}.")
    if state.get("status") in ("running", "starting") and not _alive(state.get("pid")):
        tail = log_tail(run_dir, 20)
        state = update_run(run_dir, status="failed",
                           error=state.get("error") or "The training process ended without finishing "
                                 "(killed, out of memory, or the machine restarted). Resume to continue "
                                 "from the last checkpoint.")
        state["log_tail"] = tail
    state["log_tail"] = state.get("log_tail") or log_tail(run_dir, 20)
    state["alive"] = _alive(state.get("pid"))
    return state


def delete_run(config: Config, run_id: str) -> Path:
    """Delete a run folder and everything in it (checkpoints, artifacts, audio); refused for the
    run that is training now. Returns the deleted folder."""
    run_dir = config.runs_dir / _checked_run_id(config, run_id)
    if not is_run(run_dir):
        raise JobError(f"There is no run '{run_id}' under {config.runs_dir.name}/ (deleted already?).")
    with start_lock(config):  # no start or resume of this run can slip in while it goes
        running = current_job(config)
        if running and running.get("run_id") == run_dir.name:
            raise JobError(f"Run '{run_dir.name}' is training now (pid {running['pid']}): cancel it first.")
        shutil.rmtree(run_dir)
    return run_dir
