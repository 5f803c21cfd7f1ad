"""Cost and time estimate: computed from the dataset, the configuration and the throughput source."""

import json

import pandas as pd
import pytest

from pipeline.config import Config
from pipeline.estimate.cost import (CPU_CHARGE, CPU_NAME, FRAMES_PER_SECOND, SMALL_MICRO_BATCH_FACTOR, ModelShape,
                           card_figures, charge, dataset_tokens, estimate, latest_benchmarks, load_price_table,
                           steps_for_epochs, workload)


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


def _row(table, gpu, mode):
    rows = table[(table.gpu == gpu) & (table["mode"] == mode)]
    assert len(rows) == 1
    return rows.iloc[0]


def _phase(row, name):
    return next(p for p in row.phases if p["phase"] == name)


def _bench(card, time, lora=100000.0, full=90000.0, peak=989.0):
    return {"card": card, "time": time, "date": time[:10], "peak_tflops": peak,
            "train": {"lora": {"tokens_per_s": lora}, "full": {"tokens_per_s": full},
                      "variants": [{"impl": "project", "mode": "lora", "first_step_s": 30.3, "step_s": 0.3},
                                   {"impl": "project", "mode": "full", "first_step_s": 20.3, "step_s": 0.3}]},
            "extract": {"realtime_factor": 500.0, "first_s": 1.0},
            "generate": {"frames_per_s": 400.0, "warmup_s": 10.0}}


def test_quick_lora_training_scales_with_steps_and_price(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIO_WORKSPACE", str(tmp_path))
    data = manifest({"a": 5, "b": 2})
    base = _row(estimate(Config(), data, benches=[]), "A100-80GB", "quick_lora")
    double = _row(estimate(Config().with_overrides({"training.quick_lora.steps": 5600}), data, benches=[]),
                  "A100-80GB", "quick_lora")
    start = load_price_table()["reference_throughput"]["lora_start_s"]
    assert _phase(double, "lora")["seconds_max"] - start == pytest.approx(2 * (_phase(base, "lora")["seconds_max"] - start))
    assert base.cost_usd == pytest.approx(base.hours * 1.32, rel=0.01)
    assert [p["phase"] for p in base.phases] == ["extract", "lora", "evaluate", "merge"]
    assert base.minutes == pytest.approx(sum(p["seconds_max"] for p in base.phases) / 60, rel=1e-3)
    assert base.minutes_min == base.minutes                       # no early stopping in quick LoRA
    assert "scaled" in base.throughput_source


def test_full_finetune_has_every_phase_and_a_range_for_the_speaker_phase():
    """2,000 speaker steps cost real time even on a tiny dataset (the speaker phase was once a few epochs)."""
    data = manifest({"a": 0.5, "b": 0.3})
    row = _row(estimate(Config(), data, "a", benches=[]), "H100-80GB", "full_finetune")
    assert [p["phase"] for p in row.phases] == ["extract", "full", "speaker_lora", "evaluate", "merge"]
    speaker = _phase(row, "speaker_lora")
    assert (speaker["steps_min"], speaker["steps_max"]) == (400, 2000)     # val_every × (patience + 1) .. max
    assert speaker["seconds_min"] < speaker["seconds_max"]
    assert row.minutes_min < row.minutes and row.cost_usd_min < row.cost_usd
    assert row.minutes > 1 and row.cost_usd > 0.01
    assert all(p["seconds_max"] > 0 for p in row.phases)
    evaluate = _phase(row, "evaluate")
    assert evaluate["seconds_min"] < evaluate["seconds_max"]                # more steps, more validations


def test_epochs_become_steps_of_the_packed_dataset():
    data = manifest({"a": 30})
    work = workload(Config(), data)
    assert work.all_clips.train_sequences > 1 and work.all_clips.width == 4096
    assert work.steps["full"][0] == steps_for_epochs(3, work.all_clips.train_sequences, 4)
    thirty = workload(Config().with_overrides({"training.full_finetune.epochs": 30}), data)
    assert thirty.steps["full"][0] >= 9 * work.steps["full"][0]
    assert thirty.epochs("full")[0] == pytest.approx(30, rel=0.15)
    small = estimate(Config(), data, benches=[])
    large = estimate(Config().with_overrides({"training.full_finetune.epochs": 30}), data, benches=[])
    pick = lambda df: _phase(_row(df, "H100-80GB", "full_finetune"), "full")["seconds_max"]  # noqa: E731
    start = load_price_table()["reference_throughput"]["full_start_s"]          # load + compile, once
    assert pick(large) - start == pytest.approx(thirty.steps["full"][0] / work.steps["full"][0] * (pick(small) - start))


def test_the_newest_bench_of_each_card_is_used_and_others_are_scaled_by_bf16_peak(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIO_WORKSPACE", str(tmp_path))
    bench_dir = tmp_path / "runs" / "bench"
    bench_dir.mkdir(parents=True)
    old, new = _bench("NVIDIA H100 80GB HBM3", "2026-01-01T10:00:00Z", lora=50000), \
        _bench("NVIDIA H100 80GB HBM3", "2026-12-01T10:00:00Z", lora=100000)
    (bench_dir / "nvidia-h100-2026-12-01.json").write_text(json.dumps(new))
    (bench_dir / "nvidia-h100-2026-01-01.json").write_text(json.dumps(old))
    (bench_dir / "nvidia-l40s-2026-11-30.json").write_text(json.dumps(_bench("NVIDIA L40S", "2026-11-30", lora=1.0) | {"tiny": True}))
    benches = latest_benchmarks(tmp_path / "runs")
    assert benches[0]["time"] == "2026-12-01T10:00:00Z"                 # newest first, by the recorded time
    table = estimate(Config(), manifest({"a": 5}))
    h100, a100 = _row(table, "H100-80GB", "quick_lora"), _row(table, "A100-80GB", "quick_lora")
    assert h100.throughput_source == "measured on NVIDIA H100 80GB HBM3, 2026-12-01 10:00" and h100.measured
    assert a100.throughput_source.startswith("scaled from NVIDIA H100 80GB HBM3, 2026-12-01 10:00 by bf16 peak 312/989")
    assert not a100.measured and "scaled" in a100.figures
    l40s = card_figures("L40S-48GB", load_price_table()["gpus"]["L40S-48GB"], benches)
    assert l40s.sources["lora_tokens_per_s"].startswith("scaled")          # a tiny CPU bench is never used
    assert l40s.values["lora_tokens_per_s"] == pytest.approx(100000 * 362 / 989)
    # the H200's own bench is older than the newest one: measured, and said to be older
    h200 = _row(table, "H200-141GB", "quick_lora")
    assert h200.throughput_source.startswith("measured on NVIDIA H200") and "older than the newest" in h200.figures


def test_a_card_name_matches_whole_words_only():
    prices = load_price_table()["gpus"]
    l40s_bench = _bench("NVIDIA L40S", "2026-12-01")
    figures = card_figures("L4-24GB", prices["L4-24GB"], [l40s_bench])
    assert figures.sources["lora_tokens_per_s"].startswith("scaled")          # an L40S bench is not an L4's


def test_cpu_rows_charge_nothing():
    table = estimate(Config(), manifest({"a": 5}), benches=[], include_cpu=True)
    cpu = table[table.gpu == CPU_NAME]
    assert set(cpu["mode"]) == {"quick_lora", "full_finetune"}
    assert (cpu["cost_usd"] == 0).all() and set(cpu["charge"]) == {CPU_CHARGE}
    assert charge(3600, 2.0, "cpu") == (0.0, CPU_CHARGE)
    assert charge(3600, 2.0, "cuda:0") == (2.0, "$2.00")


def test_bad_price_table_is_named(tmp_path):
    bad = tmp_path / "prices.yaml"
    bad.write_text("gpus:\n  X:\n    price_per_hour: cheap\n    bf16_tflops: 1\n    memory_gb: 10\n")
    with pytest.raises(ValueError, match=r"gpus\.X\.price_per_hour"):
        load_price_table(bad)
    bad.write_text("gpus:\n  X:\n    price_per_hour: -1\n    bf16_tflops: 1\n    memory_gb: 10\n")
    with pytest.raises(ValueError, match=r"gpus\.X"):
        load_price_table(bad)


def test_memory_plan_decides_fit_and_slows_small_cards():
    data = manifest({"a": 30})
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
    reference = load_price_table()["reference_throughput"]
    speed = reference["lora_tokens_per_s"] * 125 / 989 * SMALL_MICRO_BATCH_FACTOR["lora"]
    lora = _phase(a10g, "lora")
    assert lora["seconds_max"] == pytest.approx(reference["lora_start_s"] + 2800 * 4 * 4096 / speed, rel=0.01)
