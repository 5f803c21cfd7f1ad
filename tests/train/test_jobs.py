"""Training jobs as real processes: one at a time, cancel and resume, re-attach, a killed job."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.train.jobs import JobError, _alive, cancel_job, current_job, job_status, start_job
from pipeline.train.runs import read_run
from run_fixtures import fresh_workspace, run_config
from studio_server import PROJECT_ROOT


@pytest.fixture
def config(tmp_path, tmp_path_factory, tiny_checkpoint, monkeypatch):
    workspace = fresh_workspace(tmp_path_factory, tiny_checkpoint, tmp_path / "ws")
    monkeypatch.setenv("STUDIO_WORKSPACE", str(workspace))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the job inherits it: leave CPU for the others
    # long enough to be cancelled mid-way, short enough to finish quickly once resumed
    return run_config(tiny_checkpoint, **{"training.quick_lora.steps": 40, "training.save_every": 100,
                                          "training.val_every": 20})


def _wait(predicate, what: str, timeout: float = 180.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _train_steps(run_dir: Path) -> list[int]:
    path = run_dir / "phases" / "lora" / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # the line being written
    return [r["step"] for r in rows if r.get("kind") == "train"]


def _attach_from_a_new_process() -> dict:
    """What a restarted studio sees: a fresh interpreter asking pipeline.train.jobs."""
    code = ("import json; from pipeline.config import load_config; from pipeline.train.jobs import current_job, job_status; "
            "c = load_config(); j = current_job(c); "
            "print(json.dumps({'job': j, 'status': j and job_status(c, j['run_id'])['status']}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, env=os.environ.copy(),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_one_job_at_a_time_cancel_reattach_and_resume(config):
    job = start_job(config)
    run_dir = Path(job["run_dir"])
    try:
        with pytest.raises(JobError, match=job["run_id"]):
            start_job(config)                                 # refused, naming the running job
        seen = _attach_from_a_new_process()
        assert seen["job"]["run_id"] == job["run_id"] and seen["job"]["pid"] == job["pid"]
        assert seen["status"] in ("starting", "running")

        _wait(lambda: _train_steps(run_dir), "the first training step")
        stopped = cancel_job(config)
    finally:
        if _alive(job["pid"]):
            os.kill(job["pid"], signal.SIGKILL)
    assert stopped["status"] == "cancelled" and not stopped["alive"]
    assert current_job(config) is None
    state = json.loads((run_dir / "phases" / "lora" / "state.json").read_text())
    assert state["status"] == "cancelled" and 0 < state["step"] < 40
    checkpoint = run_dir / "phases" / "lora" / state["latest"]
    assert (checkpoint / "optimizer.pt").is_file() and (checkpoint / "adapter_model.safetensors").is_file()
    with pytest.raises(JobError, match="No training job"):
        cancel_job(config)

    metrics = run_dir / "phases" / "lora" / "metrics.jsonl"
    before = metrics.read_text().splitlines()[:state["step"]]  # rows up to the checkpoint

    resumed = start_job(config, run_id=job["run_id"])
    assert resumed["run_id"] == job["run_id"]
    _wait(lambda: not _alive(resumed["pid"]), "the resumed job to end", timeout=300)
    final = job_status(config, job["run_id"])
    assert final["status"] == "finished", final.get("log_tail")
    assert _train_steps(run_dir) == list(range(1, 41))       # no step twice, none missing
    assert metrics.read_text().splitlines()[:state["step"]] == before   # continued: earlier rows kept as written
    with pytest.raises(JobError, match="already finished"):
        start_job(config, run_id=job["run_id"])


def test_a_killed_job_shows_as_failed_with_its_log(config):
    job = start_job(config)
    run_dir = Path(job["run_dir"])
    try:
        _wait(lambda: read_run(run_dir).get("status") == "running" and (run_dir / "log.txt").stat().st_size,
              "the job to start running")
    finally:
        os.kill(job["pid"], signal.SIGKILL)
    _wait(lambda: not _alive(job["pid"]), "the killed process to die")
    assert current_job(config) is None
    status = job_status(config, job["run_id"])
    assert status["status"] == "failed" and "ended without finishing" in status["error"]
    assert status["log_tail"].strip()
    assert read_run(run_dir)["status"] == "failed"             # recorded, not only reported


def test_cancel_right_after_start_is_a_cancel_not_a_failure(config):
    job = start_job(config)
    try:
        state = cancel_job(config)
    finally:
        if _alive(job["pid"]):
            os.kill(job["pid"], signal.SIGKILL)
    assert state["status"] == "cancelled", state


def _train_rows(run_dir: Path) -> dict[int, dict]:
    rows = {}
    for line in (run_dir / "phases" / "lora" / "metrics.jsonl").read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # the line a killed process was writing
        if row.get("kind") == "train":
            rows[row["step"]] = row
    return rows


def test_kill_9_mid_training_redoes_the_lost_steps_identically(config):
    config = config.with_overrides({"training.save_every": 4, "training.quick_lora.steps": 16})
    job = start_job(config)
    run_dir = Path(job["run_dir"])
    try:
        _wait(lambda: len(_train_steps(run_dir)) >= 7, "steps past the first checkpoint")
    finally:
        os.kill(job["pid"], signal.SIGKILL)  # no handler runs: nothing is saved on the way out
    _wait(lambda: not _alive(job["pid"]), "the killed process to die")
    before = _train_rows(run_dir)
    assert job_status(config, job["run_id"])["status"] == "failed"

    resumed = start_job(config, run_id=job["run_id"])
    _wait(lambda: not _alive(resumed["pid"]), "the resumed job to end", timeout=300)
    assert job_status(config, job["run_id"])["status"] == "finished"
    after = _train_rows(run_dir)
    assert sorted(after) == list(range(1, 17))
    for step, row in before.items():  # steps after the last checkpoint were lost and trained again
        assert after[step]["loss"] == pytest.approx(row["loss"], abs=1e-6), step
        assert after[step]["grad_norm"] == pytest.approx(row["grad_norm"], abs=1e-6), step


def test_a_run_of_pipeline_train_resumes_as_one_phase_on_its_own_model(config, monkeypatch, tmp_path):
    """`python -m pipeline train` runs hold one phase (mode lora or full), which the workflow has no
    plan for: Resume starts `train` again for that phase, on the model the run began with."""
    import pipeline.train.jobs as jobs_module
    from pipeline.train.runs import create_run, update_run

    run_dir = create_run(config, "20260101-000000-lora", "lora")
    update_run(run_dir, status="cancelled", base_model=str(tmp_path / "my-base"))
    commands = []

    class Started:
        pid = os.getpid()

        def __init__(self, command, **kwargs):
            commands.append(command)

    monkeypatch.setattr(jobs_module.subprocess, "Popen", Started)
    start_job(config, run_id=run_dir.name)
    command = commands[0]
    assert command[3:6] == ["train", "--mode", "lora"] and command[command.index("--run-id") + 1] == run_dir.name
    assert command[command.index("--model") + 1] == str(tmp_path / "my-base")
