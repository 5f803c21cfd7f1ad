"""Cost and time estimate: computed from the dataset, the configuration and the throughput source."""

import json

import pandas as pd
import pytest

from pipeline.config import Config
from pipeline.cost import (FRAMES_PER_SECOND, SMALL_MICRO_BATCH_FACTOR, ModelShape, dataset_tokens, estimate,
                           load_price_table)


def manifest(minutes_per_speaker: dict[str, float], clip_s: float = 6.0) -> pd.DataFrame:
    rows = []
    for speaker, minutes in minutes_per_speaker.items():
        for i in range(int(minutes * 60 / clip_s)):
            rows.append({"id": f"{speaker}-{i}", "speaker": speaker, "duration_s": clip_s,
                         "normalized_text": "hyvää huomenta suomi", "status": "ok"})
    rows.append({"id": "bad", "speaker": "a", "duration_s": 600.0, "normalized_text": "x", "status": "rejected"})
    return pd.DataFrame(rows)


def test_model_shape_matches_design_numbers():
    shape = ModelShape()
    assert 0.84e9 < shape.parameters() < 0.90e9          # "~860 M parameters"
    assert 1.6 < shape.parameters() * 2 / 1e9 < 1.8      # model.pth 1.74 GB in bf16
    assert 5e6 < shape.lora_parameters(8) < 8e6
    assert shape.lora_parameters(16) == 2 * shape.lora_parameters(8)


def test_dataset_tokens_counts_accepted_audio_frames_and_text():
    data = manifest({"a": 1.0})
    tokens = dataset_tokens(data)
    frames = 10 * -(-6.0 * FRAMES_PER_SECOND // 1)
    assert frames < tokens < frames + 10 * 20              # rejected 10-minute clip not counted


def test_quick_lora_scales_with_steps_and_price(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIO_WORKSPACE", str(tmp_path))
    data = manifest({"a": 5, "b": 2})
    base = estimate(Config(), data, benches=[])
    double = estimate(Config().with_overrides({"training.quick_lora.steps": 5600}), data, benches=[])
    a100 = base[(base.gpu == "A100-80GB") & (base["mode"] == "quick_lora")].iloc[0]
    a100_double = double[(double.gpu == "A100-80GB") & (double["mode"] == "quick_lora")].iloc[0]
    assert a100_double.hours == pytest.approx(2 * a100.hours, rel=0.02)
    assert a100.cost_usd == pytest.approx(a100.hours * 1.32, rel=0.02)
    assert "estimated" in a100.throughput_source
    assert set(base["mode"]) == {"quick_lora", "full_finetune"}
    assert len(base) == 2 * len(load_price_table()["gpus"])


def test_full_finetune_grows_with_dataset_size():
    small = estimate(Config(), manifest({"a": 5}), benches=[])
    large = estimate(Config(), manifest({"a": 50}), benches=[])
    pick = lambda df: df[(df.gpu == "H100-80GB") & (df["mode"] == "full_finetune")].iloc[0].minutes
    assert pick(large) > 3 * pick(small)


def test_measured_benchmark_wins_for_its_card(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIO_WORKSPACE", str(tmp_path))
    bench_dir = tmp_path / "runs" / "bench"
    bench_dir.mkdir(parents=True)
    (bench_dir / "h100.json").write_text(json.dumps({
        "card": "NVIDIA H100 80GB HBM3", "date": "2026-11-27",
        "train": {"lora": {"tokens_per_s": 100000, "peak_gb": 30}, "full": {"tokens_per_s": 90000, "peak_gb": 70}}}))
    table = estimate(Config(), manifest({"a": 5}))
    h100 = table[(table.gpu == "H100-80GB") & (table["mode"] == "quick_lora")].iloc[0]
    a100 = table[(table.gpu == "A100-80GB") & (table["mode"] == "quick_lora")].iloc[0]
    assert h100.throughput_source.startswith("measured: NVIDIA H100")
    assert h100.minutes == pytest.approx(2800 * 4 * 4096 / 100000 / 60, rel=0.01)
    assert a100.throughput_source.startswith("estimated")


def test_bad_price_table_is_named(tmp_path):
    bad = tmp_path / "prices.yaml"
    bad.write_text("gpus:\n  X:\n    price_per_hour: cheap\n    relative_speed: 1\n    memory_gb: 10\n")
    with pytest.raises(ValueError, match=r"gpus\.X\.price_per_hour"):
        load_price_table(bad)


def test_memory_plan_decides_fit_and_slows_small_cards():
    data = manifest({"a": 5})
    table = estimate(Config(), data, benches=[]).set_index(["gpu", "mode"])
    l4_full = table.loc[("L4-24GB", "full_finetune")]
    assert l4_full.fits and "checkpointing" in l4_full.plan_brief          # fits only by recomputing
    h200_lora = table.loc[("H200-141GB", "quick_lora")]
    assert h200_lora.plan_brief == "4×1" and h200_lora.fits               # the whole batch at once
    long = estimate(Config().with_overrides({"training.max_length": 12288}), data, benches=[]).set_index(["gpu", "mode"])
    assert not long.loc[("L4-24GB", "full_finetune")].fits and long.loc[("H100-80GB", "full_finetune")].fits
    # a 24 GB card runs LoRA one sequence at a time and pays the measured throughput cost of that
    a10g = table.loc[("A10G-24GB", "quick_lora")]
    assert a10g.plan_brief == "1×4"
    expected_s = 2800 * 4 * 4096 / (load_price_table()["reference_throughput"]["lora_tokens_per_s"] * 0.11 * SMALL_MICRO_BATCH_FACTOR["lora"])
    assert a10g.minutes == pytest.approx(expected_s / 60, rel=0.01)
