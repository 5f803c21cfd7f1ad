"""The evaluation section of the bench on tiny shapes (CPU), through the bench's own runner: a
scorecard is spoken and scored (6 sentences when tiny, 20 on a GPU), each stage timed, the ASR labelled."""

from __future__ import annotations

import json

import pytest

from pipeline.bench.runner import run_bench
from pipeline.config import load_config

STAGES = ("load", "warmup", "scorer_warmup", "speak", "asr", "similarity", "dnsmos")


def test_tiny_evaluation_bench_times_every_stage(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIO_WORKSPACE", str(tmp_path / "user-workspace"))
    result = run_bench(load_config(), which=["evaluation"], out_dir=tmp_path / "bench", tiny=True, device="cpu")
    evaluation = result["evaluation"]
    assert "error" not in evaluation, evaluation
    assert evaluation["sentences"] == 6 and evaluation["model"] == "tiny, random weights"
    assert evaluation["asr"] == {"model": "tiny random Whisper", "source": "built from config"}
    assert evaluation["decoder"].startswith("eager") and "festival_mv" in evaluation["references"]
    assert set(evaluation["stages"]) == set(STAGES) and all(evaluation["stages"][s] > 0 for s in STAGES)
    assert evaluation["seconds"] > evaluation["seconds_warm"] >= sum(evaluation["stages"][s] for s in STAGES[3:]) * 0.9
    assert evaluation["sentences_per_s"] == pytest.approx(6 / evaluation["seconds_warm"], rel=1e-2)
    assert json.loads((tmp_path / "bench" / result["path"].rsplit("/", 1)[1]).read_text())["evaluation"] == evaluation
    assert not (tmp_path / "user-workspace").exists()  # the evaluation's files went to a temporary folder
