"""Resuming a training phase after damage: corrupt checkpoints, half-written metrics, a stop
during evaluation. Each case must resume on the same loss curve as an uninterrupted run."""

import json
import os
import signal
import threading

import pytest

import pipeline.train.loop as train_module
from pipeline.train.integrity import INTEGRITY_FILE, problem
from pipeline.train.loop import TrainError, train
from test_loop import _manifest, _rows, _settings

SETTINGS = dict(steps=12, save_every=4, val_every=4, keep_last=3, val_fraction=0.3)


@pytest.fixture(scope="module")
def straight(tmp_path_factory, tiny_checkpoint):
    """The uninterrupted run every recovery is compared with."""
    root = tmp_path_factory.mktemp("straight")
    manifest = _manifest(root / "codes")
    result = train(root / "run", tiny_checkpoint, manifest, _settings(**SETTINGS))
    assert result.status == "finished"
    return root / "run", manifest


def _stopped_at(run_dir, checkpoint, manifest, step: int):
    stop, calls = threading.Event(), []

    def progress(fraction, message):
        calls.append(message)
        if len(calls) == step:
            stop.set()

    first = train(run_dir, checkpoint, manifest, _settings(**SETTINGS), stop_event=stop, progress=progress)
    assert first.status == "cancelled" and first.step == step
    return first


def _same_curve(a, b):
    ra, rb = _rows(a), _rows(b)
    assert [r["step"] for r in rb] == [r["step"] for r in ra]
    for x, y in zip(ra, rb):
        assert y["loss"] == pytest.approx(x["loss"], abs=1e-5), x["step"]
    va, vb = _rows(a, "val"), _rows(b, "val")
    assert [v["step"] for v in vb] == [v["step"] for v in va]
    assert all(y["val_loss"] == pytest.approx(x["val_loss"], abs=1e-5) for x, y in zip(va, vb))


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE = {
    "adapter_model.safetensors": _truncate,
    "optimizer.pt": _truncate,
    "trainer_state.json": lambda path: path.write_text(""),
}


@pytest.mark.parametrize("name", sorted(DAMAGE))
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, tiny_checkpoint, straight, name):
    reference, manifest = straight
    run = tmp_path / "run"
    _stopped_at(run, tiny_checkpoint, manifest, 8)
    latest = run / "checkpoints" / "step_000008"
    assert (run / "checkpoints" / "step_000004" / "optimizer.pt").is_file()  # the last two keep resume state
    assert problem(latest) is None
    DAMAGE[name](latest / name)
    assert name in problem(latest)

    resumed = train(run, tiny_checkpoint, manifest, _settings(**SETTINGS))
    assert resumed.status == "finished" and resumed.step == 12
    _same_curve(reference, run)
    log = json.loads((run / "state.json").read_text())
    assert log["status"] == "finished"


def test_the_damage_is_named_while_the_resumed_run_trains(tmp_path, tiny_checkpoint, straight):
    _, manifest = straight
    run = tmp_path / "run"
    _stopped_at(run, tiny_checkpoint, manifest, 8)
    _truncate(run / "checkpoints" / "step_000008" / "optimizer.pt")
    messages = []

    def watch(fraction, message):
        messages.append(json.loads((run / "state.json").read_text())["message"])

    train(run, tiny_checkpoint, manifest, _settings(**SETTINGS), progress=watch)
    assert "step_000008" in messages[0] and "optimizer.pt" in messages[0] and "resumed at step 4" in messages[0]


def test_no_valid_checkpoint_names_the_file_and_keeps_the_recorded_progress(tmp_path, tiny_checkpoint, straight):
    _, manifest = straight
    run = tmp_path / "run"
    stop = threading.Event()
    settings = _settings(**(SETTINGS | {"keep_last": 1}))
    first = train(run, tiny_checkpoint, manifest, settings, stop_event=stop,
                  progress=lambda f, m: m.startswith("step 8/") and stop.set())
    assert first.step == 8
    kept = [p.name for p in (run / "checkpoints").iterdir() if (p / "optimizer.pt").is_file()]
    assert kept == ["step_000008"]
    _truncate(run / "checkpoints" / "step_000008" / "adapter_model.safetensors")
    with pytest.raises(TrainError, match="adapter_model.safetensors"):
        train(run, tiny_checkpoint, manifest, settings)
    state = json.loads((run / "state.json").read_text())
    assert state["status"] == "failed" and state["step"] == 8 and "adapter_model.safetensors" in state["message"]


def test_the_integrity_record_is_written_last_and_follows_pruning(tmp_path, tiny_checkpoint, straight):
    run, _ = straight
    checkpoints = sorted((run / "checkpoints").iterdir())
    for path in checkpoints:
        record = json.loads((path / INTEGRITY_FILE).read_text())["files"]
        assert set(record) == {p.name for p in path.iterdir() if p.name != INTEGRITY_FILE}
        assert problem(path) is None
    assert not (checkpoints[0] / "optimizer.pt").exists()  # older than the last two: no resume state


def test_a_half_written_metrics_line_does_not_block_resume(tmp_path, tiny_checkpoint, straight):
    reference, manifest = straight
    run = tmp_path / "run"
    _stopped_at(run, tiny_checkpoint, manifest, 6)
    with open(run / "metrics.jsonl", "a") as handle:
        handle.write('{"kind": "train", "step": 7, "lo')  # killed mid-write
    resumed = train(run, tiny_checkpoint, manifest, _settings(**SETTINGS))
    assert resumed.status == "finished"
    _same_curve(reference, run)


def test_a_stop_during_evaluation_stops_there_and_the_resume_evaluates_that_step(
        tmp_path, tiny_checkpoint, straight, monkeypatch):
    reference, manifest = straight
    run = tmp_path / "run"
    real = train_module.compute_loss
    sent = []

    def terminate_in_the_step_8_evaluation(model, batch, **kwargs):
        trained = len(_rows(run)) if (run / "metrics.jsonl").exists() else 0
        if not model.training and trained == 8 and not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGTERM)  # what cancel_job sends
        return real(model, batch, **kwargs)

    monkeypatch.setattr(train_module, "compute_loss", terminate_in_the_step_8_evaluation)
    stopped = train(run, tiny_checkpoint, manifest, _settings(**SETTINGS))
    assert sent and stopped.status == "cancelled" and stopped.step == 8
    assert "during the evaluation" in stopped.message
    assert [v["step"] for v in _rows(run, "val")] == [0, 4]  # the interrupted evaluation wrote nothing
    monkeypatch.setattr(train_module, "compute_loss", real)

    resumed = train(run, tiny_checkpoint, manifest, _settings(**SETTINGS))
    assert resumed.status == "finished"
    _same_curve(reference, run)


def test_running_out_of_cpu_memory_fails_with_advice(tmp_path, tiny_checkpoint, straight, monkeypatch):
    def too_big(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 94371840000 bytes. Error code 12 (Cannot allocate memory)")

    monkeypatch.setattr(train_module, "compute_loss", too_big)
    result = train(tmp_path / "run", tiny_checkpoint, straight[1], _settings(**SETTINGS))
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert result.status == "failed" and state["status"] == "failed"
    assert "CPU" in state["message"] and "training.batch_size" in state["message"]


def test_a_best_checkpoint_deleted_by_hand_is_no_candidate_after_resume(tmp_path, tiny_checkpoint, straight):
    """The resumed state names a best that is gone (removed to free disk): the next evaluation
    picks a best that exists, so the merge never looks for a missing folder."""
    from pipeline.train.integrity import write_integrity

    _, manifest = straight
    run = tmp_path / "run"
    _stopped_at(run, tiny_checkpoint, manifest, 8)
    latest = run / "checkpoints" / "step_000008"
    state = json.loads((latest / "trainer_state.json").read_text())
    # no later evaluation beats a loss of 0: only dropping the missing best lets one be picked
    (latest / "trainer_state.json").write_text(json.dumps(state | {"best": "checkpoints/step_000002", "best_val_loss": 0.0}))
    write_integrity(latest)  # a whole checkpoint whose best was deleted by hand
    resumed = train(run, tiny_checkpoint, manifest, _settings(**SETTINGS))
    assert resumed.status == "finished" and resumed.best and os.path.isdir(resumed.best)
