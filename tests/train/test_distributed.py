"""Data-parallel training on the CPU: torchrun, two gloo processes, the tiny model.

The same global batch and seed must give the curve and the weights of one process; a rank
that dies must fail the job with that rank's error, and one process must resume the run on
the same curve."""

import json
import os
import signal
import threading
import time

import numpy as np
import pytest
from safetensors.numpy import load_file

from pipeline.train.distributed import World, rank_share, resolve_gpus
from pipeline.train.launch import pid_file, rank_failure, train_data_parallel
from pipeline.train.loop import train
from pipeline.train.settings import TrainError
from test_loop import _manifest, _rows, _settings

pytestmark = pytest.mark.timeout(600)
STEPS = 8


def _ddp_settings(**changes):
    # no dropout: masks are drawn per rank, so only a dropout-free run is bit-comparable
    return _settings(**({"steps": STEPS, "batch_size": 2, "grad_accumulation": 2, "lora_dropout": 0.0,
                         "val_every": 4, "save_every": 2, "keep_last": 3, "eval_texts": ()} | changes))


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_checkpoint):
    root = tmp_path_factory.mktemp("ddp")
    return root, _manifest(root / "codes")


@pytest.fixture(scope="module")
def alone(data, tiny_checkpoint):
    """The one-process reference run (LoRA)."""
    root, manifest = data
    result = train(root / "alone", tiny_checkpoint, manifest, _ddp_settings())
    assert result.status == "finished"
    return root / "alone"


def _losses(run_dir):
    return [r["loss"] for r in _rows(run_dir)]


def _weights(run_dir, step, name):
    return load_file(str(run_dir / "checkpoints" / f"step_{step:06d}" / name))


def test_two_processes_train_the_same_lora_as_one(data, alone, tiny_checkpoint):
    root, manifest = data
    result = train_data_parallel(root / "two", tiny_checkpoint, manifest, _ddp_settings(), gpus=2, timeout_s=120)
    assert result.status == "finished", result.message
    np.testing.assert_allclose(_losses(root / "two"), _losses(alone), rtol=1e-4, atol=1e-5)
    mine, theirs = (_weights(d, STEPS, "adapter_model.safetensors") for d in (root / "two", alone))
    assert mine.keys() == theirs.keys()
    for key in mine:
        np.testing.assert_allclose(mine[key], theirs[key], rtol=1e-4, atol=1e-6, err_msg=key)
    val = [r["val_loss"] for r in _rows(root / "two", "val")]
    np.testing.assert_allclose(val, [r["val_loss"] for r in _rows(alone, "val")], rtol=1e-4)
    assert (root / "two" / "ranks" / "rank_1.log").is_file()  # rank 1's output is its own
    assert not (root / "two" / "ranks" / "rank_1.error").exists()


def test_two_processes_full_finetune_as_one(data, tiny_checkpoint):
    root, manifest = data
    settings = _ddp_settings(mode="full", steps=4, lr=1e-3, val_every=4, save_every=4)
    one = train(root / "full-one", tiny_checkpoint, manifest, settings)
    two = train_data_parallel(root / "full-two", tiny_checkpoint, manifest, settings, gpus=2, timeout_s=120)
    assert one.status == two.status == "finished", two.message
    np.testing.assert_allclose(_losses(root / "full-two"), _losses(root / "full-one"), rtol=1e-4, atol=1e-5)
    mine, theirs = (_weights(d, 4, "model.safetensors") for d in (root / "full-two", root / "full-one"))
    for key in theirs:
        np.testing.assert_allclose(mine[key], theirs[key], rtol=1e-4, atol=1e-5, err_msg=key)


def test_a_killed_rank_fails_the_job_and_one_process_resumes_the_curve(data, alone, tiny_checkpoint):
    root, manifest = data
    run_dir, outcome = root / "killed", {}
    settings = _ddp_settings()

    def job():
        outcome["result"] = train_data_parallel(run_dir, tiny_checkpoint, manifest, settings, gpus=2, timeout_s=60)

    thread = threading.Thread(target=job)
    thread.start()
    deadline = time.time() + 240
    while time.time() < deadline:
        metrics = run_dir / "metrics.jsonl"
        if metrics.is_file() and len(_rows(run_dir)) >= 3 and pid_file(run_dir, 1).is_file():
            break
        time.sleep(0.05)
    else:
        pytest.fail("the data-parallel job never reached step 3")
    os.kill(int(pid_file(run_dir, 1).read_text()), signal.SIGKILL)
    thread.join(timeout=180)
    assert not thread.is_alive(), "the job hung after a rank died"
    result = outcome["result"]
    assert result.status == "failed" and "rank 1" in result.message, result.message
    state = json.loads((run_dir / "state.json").read_text())
    assert state["status"] == "failed" and "rank 1" in state["message"]

    resumed = train(run_dir, tiny_checkpoint, manifest, settings)  # one process continues
    assert resumed.status == "finished", resumed.message
    np.testing.assert_allclose(_losses(run_dir), _losses(alone), rtol=1e-4, atol=1e-5)


def test_the_global_batch_must_split_evenly():
    assert rank_share(4, World(0, 2)) == 2
    with pytest.raises(TrainError, match="multiple of 3"):
        rank_share(4, World(0, 3))


def test_gpu_count_resolution():
    assert resolve_gpus("auto", cuda_devices=0) == 1
    assert resolve_gpus("auto", cuda_devices=4) == 4
    assert resolve_gpus(2, cuda_devices=0) == 2  # CPU processes (gloo)
    with pytest.raises(TrainError, match="has 2 GPU"):
        resolve_gpus(4, cuda_devices=2)


def test_rank_failure_names_the_rank(tmp_path):
    output = ["Root Cause (first observed failure):\n", "[0]:\n", "  rank      : 1 (local_rank: 1)\n",
              "  exitcode  : -9 (pid: 77)\n", "  error_file: <N/A>\n",
              "  traceback : Signal 9 (SIGKILL) received by PID 77\n"]
    assert rank_failure(tmp_path, output, 2).startswith("rank 1 was killed by signal 9")
    (tmp_path / "ranks").mkdir()
    (tmp_path / "ranks" / "rank_1.error").write_text("RuntimeError: boom")
    assert rank_failure(tmp_path, output, 2) == "rank 1 failed: RuntimeError: boom"


def test_the_ranks_share_the_evaluation_sentences(data, tiny_checkpoint):
    root, manifest = data
    settings = _ddp_settings(steps=2, val_every=2, save_every=2, eval_texts=("Hyvää huomenta.", "Kiitos paljon."),
                             eval_max_frames=8)
    result = train_data_parallel(root / "spoken", tiny_checkpoint, manifest, settings, gpus=2, timeout_s=120)
    assert result.status == "finished", result.message
    audio = root / "spoken" / "audio" / "step_000002"
    assert sorted(p.name for p in audio.glob("*.wav")) == ["sentence_1.wav", "sentence_2.wav"]
    assert "failed" not in (root / "spoken" / "ranks" / "rank_1.log").read_text()


def test_a_stop_request_stops_every_rank_at_the_same_step_and_saves(data, tiny_checkpoint):
    root, manifest = data
    run_dir, outcome, stop = root / "stopped", {}, threading.Event()
    settings = _ddp_settings(steps=40, save_every=100, val_every=100)

    def job():
        outcome["result"] = train_data_parallel(run_dir, tiny_checkpoint, manifest, settings, gpus=2,
                                                stop_event=stop, timeout_s=120)

    thread = threading.Thread(target=job)
    thread.start()
    deadline = time.time() + 240
    while time.time() < deadline and not ((run_dir / "metrics.jsonl").is_file() and len(_rows(run_dir)) >= 2):
        time.sleep(0.05)
    stop.set()
    thread.join(timeout=240)
    assert not thread.is_alive(), "the ranks did not stop"
    result = outcome["result"]
    assert result.status == "cancelled", result.message
    assert result.step < 40 and result.step % 8 == 0  # the ranks agree on stopping every 8 steps
    assert (run_dir / "checkpoints" / f"step_{result.step:06d}").is_dir()  # rank 0 saved where they stopped
