"""One training per machine, whatever starts it: the OS lock, the CLI, the studio's start and
resume at the same instant; run ids that cannot leave runs/; a resumed run keeps its settings."""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from pipeline.train.jobs import JobError, _alive, cancel_job, current_job, job_status, start_job
from pipeline.train.lock import TrainingBusy, TrainingLock, holder
from pipeline.train.runs import RunError, create_run, read_run, run_dir_for
from pipeline.train.workflow import resume_config, run_workflow, train_only
from run_fixtures import fresh_workspace, run_config
from studio_server import PROJECT_ROOT

HOLD = ("import sys, time; from pathlib import Path; from pipeline.train.lock import TrainingLock; "
        "ws = Path(sys.argv[1]); lock = TrainingLock(ws, ws / 'runs' / sys.argv[2]).__enter__(); "
        "print('held', flush=True); time.sleep(120)")


@pytest.fixture
def config(tmp_path, tmp_path_factory, tiny_checkpoint, monkeypatch):
    workspace = fresh_workspace(tmp_path_factory, tiny_checkpoint, tmp_path / "ws")
    monkeypatch.setenv("STUDIO_WORKSPACE", str(workspace))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return run_config(tiny_checkpoint, **{"training.quick_lora.steps": 200, "training.save_every": 1000,
                                          "training.val_every": 1000})


@pytest.fixture
def other_process(config):
    """A separate process (as a CLI run would be) holding the training lock for run 'cli-run'."""
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(config.workspace), "cli-run"], cwd=PROJECT_ROOT,
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    yield process
    process.kill()
    process.wait()


def test_a_second_training_is_refused_naming_the_run_and_pid(config, other_process):
    with pytest.raises(TrainingBusy, match=f"'cli-run' \\(pid {other_process.pid}\\)"):
        run_workflow(config, run_id="second")
    assert not (config.runs_dir / "second" / "run.json").exists()  # refused before writing anything
    with pytest.raises(TrainingBusy, match="cli-run"):
        train_only(config, run_id="third")
    with pytest.raises(JobError, match=f"'cli-run' \\(pid {other_process.pid}\\)"):
        start_job(config)
    assert current_job(config)["run_id"] == "cli-run"  # the studio sees (and can cancel) a CLI run


def test_the_cli_refuses_while_another_process_trains(config, other_process):
    out = subprocess.run([sys.executable, "-m", "pipeline", "run", "--run-id", "from-cli"], cwd=PROJECT_ROOT,
                         capture_output=True, text=True, timeout=120, env=os.environ.copy())
    assert out.returncode == 2, out.stderr
    assert "cli-run" in out.stderr and str(other_process.pid) in out.stderr and "Traceback" not in out.stderr


def test_a_stale_lock_never_blocks(config, other_process):
    assert holder(config.workspace)["pid"] == other_process.pid
    other_process.kill()  # kill -9: the kernel drops the lock, the file stays
    other_process.wait()
    assert (config.workspace / "training.lock").exists() and holder(config.workspace) is None
    with TrainingLock(config.workspace, config.runs_dir / "next"):
        assert holder(config.workspace)["run_id"] == "next"
    assert holder(config.workspace) is None


def test_one_run_folder_cannot_be_trained_twice(config):
    with TrainingLock(config.workspace / "a", config.runs_dir / "shared"):
        with pytest.raises(TrainingBusy, match="in shared"):
            TrainingLock(config.workspace / "b", config.runs_dir / "shared").__enter__()


def test_start_and_resume_at_the_same_instant_start_one_job(config):
    first = start_job(config)
    try:
        _wait_alive_or_done(first)
        cancel_job(config)
    finally:
        _kill(first)
    results, barrier = [], threading.Barrier(2)

    def request(run_id):
        barrier.wait()
        try:
            results.append(("started", start_job(config, run_id=run_id)))
        except JobError as exc:
            results.append(("refused", str(exc)))

    threads = [threading.Thread(target=request, args=(rid,)) for rid in (None, first["run_id"])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert sorted(kind for kind, _ in results) == ["refused", "started"], results
        started = next(job for kind, job in results if kind == "started")
        assert "already running" in next(msg for kind, msg in results if kind == "refused")
        assert current_job(config)["pid"] == started["pid"]
        stopped = cancel_job(config)  # the one that runs can be cancelled
        assert not stopped["alive"]
    finally:
        for kind, job in results:
            if kind == "started":
                _kill(job)


def _wait_alive_or_done(job, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not holder_of(job):
        if not _alive(job["pid"]):
            return
        time.sleep(0.2)


def holder_of(job):
    from pathlib import Path

    info = holder(Path(job["run_dir"]).parent.parent)
    return info and info.get("pid") == job["pid"]


def _kill(job):
    if _alive(job["pid"]):
        os.kill(job["pid"], signal.SIGKILL)


@pytest.mark.parametrize("run_id", ["../../x", "..", "a/b", "", "x" * 3 + "/../y", "with space"])
def test_run_ids_cannot_leave_the_runs_folder(config, run_id):
    with pytest.raises(RunError, match="not a run id"):
        run_dir_for(config, run_id)
    with pytest.raises(JobError, match="not a run id"):
        job_status(config, run_id)
    with pytest.raises(JobError, match="not a run id"):
        start_job(config, run_id=run_id)
    assert not (config.workspace.parent / "x").exists()


def test_resume_of_an_unknown_run_is_refused(config):
    with pytest.raises(JobError, match="no run 'nope'"):
        start_job(config, run_id="nope")


def test_a_resumed_run_keeps_its_settings_and_refuses_explicit_changes(config):
    run_dir = create_run(config, "kept")
    asked = config.with_overrides({"training.quick_lora.steps": 7, "gpu.price_per_hour": 9.0})
    with pytest.raises(RunError, match=r"training.quick_lora.steps: the run has 200, you asked 7"):
        resume_config(run_dir, asked, {"training.quick_lora.steps": 7})
    edited = config.with_overrides({"training.quick_lora.learning_rate": 0.5})
    used, notes = resume_config(run_dir, edited, overrides=None)  # an edited launchable.yaml: listed, not applied
    assert used.training.quick_lora.learning_rate == config.training.quick_lora.learning_rate
    assert notes == ["training.quick_lora.learning_rate: using the run's 0.0001, not 0.5"]


def test_a_single_phase_run_records_what_it_really_is(config, tiny_checkpoint):
    result = train_only(config.with_overrides({"training.quick_lora.steps": 2}), mode="speaker_lora",
                        model_dir=tiny_checkpoint, run_id="one-speaker", speaker="espeak_m1")
    state = read_run(config.runs_dir / "one-speaker")
    assert result["status"] == "finished" and state["mode"] == "speaker_lora"
    assert state["speaker"] == "espeak_m1" and state["speaker_reason"] == "given on the command line (--speaker)"


def test_a_run_can_be_deleted_unless_it_is_training(config, other_process):
    create_run(config, "old-run")
    (config.runs_dir / "old-run" / "artifacts").mkdir()
    (config.runs_dir / "old-run" / "artifacts" / "adapter.zip").write_bytes(b"x" * 100)
    from pipeline.train.jobs import delete_run

    assert delete_run(config, "old-run") == config.runs_dir / "old-run"
    assert not (config.runs_dir / "old-run").exists()
    create_run(config, "cli-run")
    with pytest.raises(JobError, match="training now.*cancel it first"):
        delete_run(config, "cli-run")  # the other process trains it
    assert (config.runs_dir / "cli-run" / "run.json").exists()
    with pytest.raises(JobError, match="not a run id"):
        delete_run(config, "../..")
    with pytest.raises(JobError, match="no run 'gone'"):
        delete_run(config, "gone")
