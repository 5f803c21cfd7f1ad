"""`python -m pipeline bench --only scaling` on the CPU: torchrun with one and with two gloo
processes on the tiny shape, the JSON section the cost estimate reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.bench import scaling
from pipeline.bench.common import bench_shapes
from pipeline.bench.runner import run_bench
from pipeline.config import load_config

pytestmark = pytest.mark.timeout(300)
RUN_KEYS = {"gpus", "step_s", "steps_per_s", "tokens_per_step", "tokens_per_s", "micro_batch", "grad_accumulation"}


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    return run_bench(load_config(), which=["scaling"], out_dir=out, tiny=True, steps=2, device="cpu")


def test_one_and_two_processes_are_measured_into_the_bench_json(two_processes):
    data = json.loads(Path(two_processes["path"]).read_text())
    section = data["scaling"]
    assert "error" not in section, section
    assert section["gpus"] == 2 and section["backend"] == "gloo" and section["per_gpu_batch"] == 2
    assert section["scaling"].startswith("weak scaling") and section["timed_steps"] == 2
    for mode in ("lora", "full"):
        one, two = section[mode]["1"], section[mode]["2"]
        assert RUN_KEYS <= set(one) and RUN_KEYS <= set(two), section[mode]
        assert (one["gpus"], two["gpus"]) == (1, 2)
        assert all(run[key] > 0 for run in (one, two) for key in ("step_s", "steps_per_s", "tokens_per_s"))
        # each process trains its own batch of the same size: two processes train about twice the tokens
        assert 1.8 * one["tokens_per_step"] < two["tokens_per_step"] < 2.2 * one["tokens_per_step"]
        assert two["tokens_per_s"] == pytest.approx(two["tokens_per_step"] / two["step_s"], rel=0.01)
        expected = two["tokens_per_s"] / (2 * one["tokens_per_s"])
        assert section[mode]["efficiency"] == pytest.approx(expected, abs=1e-3)
        assert section["efficiency"][mode] == section[mode]["efficiency"]


def test_one_visible_gpu_records_the_baseline_and_no_efficiency(monkeypatch, tmp_path):
    monkeypatch.setattr(scaling, "process_count", lambda device, tiny: 1)
    section = scaling.bench_scaling(load_config(), bench_shapes(tmp_path, True), "cpu", tiny=True, steps=1)
    assert section["gpus"] == 1 and section["efficiency"] is None and section["note"] == scaling.ONE_GPU_NOTE
    for mode in ("lora", "full"):
        assert set(section[mode]) == {"1", "efficiency"} and section[mode]["efficiency"] is None
        assert section[mode]["1"]["tokens_per_s"] > 0


def test_efficiency_needs_both_runs():
    assert scaling.efficiency({"tokens_per_s": 100.0}, {"tokens_per_s": 360.0}, 4) == 0.9
    assert scaling.efficiency({"tokens_per_s": 100.0}, {"error": "out of memory"}, 4) is None


def test_the_real_shape_needs_a_gpu():
    with pytest.raises(ValueError, match="--tiny"):
        scaling.process_count("cpu", tiny=False)
