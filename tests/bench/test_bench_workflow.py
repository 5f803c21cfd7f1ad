"""The workflow section of the bench on tiny shapes (CPU): every stage runs and is measured."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from pipeline.bench.common import bench_shapes
from pipeline.bench.workflow import bench_workflow
from pipeline.config import load_config

STAGES = ("prepare", "extract", "train", "merge", "evaluate")


def test_tiny_workflow_times_every_stage_and_labels_the_extrapolation(monkeypatch, tmp_path):
    monkeypatch.delenv("PIPELINE_WORKERS", raising=False)
    monkeypatch.setenv("STUDIO_WORKSPACE", str(tmp_path / "user-workspace"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the pool's workers and this process share the cores
    try:
        with tempfile.TemporaryDirectory() as folder:
            shapes = bench_shapes(Path(folder), tiny=True)
            result = bench_workflow(load_config(), shapes, torch.device("cpu"), tiny=True, steps=None, clips=None)
    finally:
        torch.set_num_threads(threads)
    assert os.environ["STUDIO_WORKSPACE"] == str(tmp_path / "user-workspace")  # restored
    assert not (tmp_path / "user-workspace").exists()  # everything went to the bench's own workspace
    assert result["clips"] == 24 and result["dataset"]["clips"] == 24 and result["dataset"]["speakers"] >= 3
    for name in STAGES:
        stage = result["stages"][name]
        assert stage["wall_s"] > 0 and stage["cpu_cores"] == os.cpu_count() and stage["cpu_cores_busy"] > 0, name
        assert "gpu_idle_share" in stage
    assert result["stages"]["prepare"]["accepted"] == 24 and result["stages"]["prepare"]["workers"] >= 1
    extract = result["stages"]["extract"]
    assert extract["clips"] == 24 and extract["failed"] == 0 and 0 <= extract["gpu_idle_share"] <= 1
    train = result["stages"]["train"]
    assert train["status"] == "finished" and train["step_s"] > 0 and train["steps"] < train["full_steps"]
    assert train["full_length_label"].startswith("extrapolated") and train["full_length_s"] > train["wall_s"]
    assert set(train["setup_s"]) == {"load_model", "pack_data", "prepare"} and train["first_step_s"] >= 0
    assert result["stages"]["evaluate"]["sentences"] == 1
    compare = result["prepare_workers"]
    assert compare["clips"] == 24 and compare["serial_s"] > 0 and compare["parallel_s"] > 0
    assert result["full_length_total_s"] > result["total_s"] > 0 and "extrapolated" in result["full_length_label"]
    assert result["full_length_dollars"] > 0 and set(result["target"]) >= {"minutes_pass", "dollars_pass"}
