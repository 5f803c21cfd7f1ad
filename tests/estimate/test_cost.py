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
    # dates after any committed bench (assets/bench/), so that these are the newest
    monkeypatch.setenv("STUDIO_WORKSPACE", str(tmp_path))
    bench_dir = tmp_path / "runs" / "bench"
    bench_dir.mkdir(parents=True)
    old, new = _bench("NVIDIA H100 80GB HBM3", "2099-01-01T10:00:00Z", lora=50000), \
        _bench("NVIDIA H100 80GB HBM3", "2099-12-01T10:00:00Z", lora=100000)
    (bench_dir / "nvidia-h100-2099-12-01.json").write_text(json.dumps(new))
    (bench_dir / "nvidia-h100-2099-01-01.json").write_text(json.dumps(old))
    (bench_dir / "nvidia-l40s-2099-11-30.json").write_text(json.dumps(_bench("NVIDIA L40S", "2099-11-30", lora=1.0) | {"tiny": True}))
    benches = latest_benchmarks(tmp_path / "runs")
    assert benches[0]["time"] == "2099-12-01T10:00:00Z"                 # newest first, by the recorded time
    table = estimate(Config(), manifest({"a": 5}))
    h100, a100 = _row(table, "H100-80GB", "quick_lora"), _row(table, "A100-80GB", "quick_lora")
    assert h100.throughput_source == "measured on NVIDIA H100 80GB HBM3, 2099-12-01 10:00" and h100.measured
    assert a100.throughput_source.startswith("scaled from NVIDIA H100 80GB HBM3, 2099-12-01 10:00 by bf16 peak 312/989")
    assert not a100.measured and "scaled" in a100.figures
    l40s = card_figures("L40S-48GB", load_price_table()["gpus"]["L40S-48GB"], benches)
    assert l40s.sources["lora_tokens_per_s"].startswith("scaled")          # a tiny CPU bench is never used
    assert l40s.values["lora_tokens_per_s"] == pytest.approx(100000 * 362 / 989)
    # the H200's own bench is older than the newest one: measured, and said to be older
    h200 = _row(table, "H200-141GB", "quick_lora")
    assert h200.throughput_source.startswith("measured on NVIDIA H200") and "older than the newest" in h200.figures


def test_a_generation_only_bench_counts_and_profiled_calls_kept_aside_do_not(tmp_path):
    bench_dir = tmp_path / "runs" / "bench"
    (bench_dir / "profiles").mkdir(parents=True)
    generation = {"card": "NVIDIA H200", "time": "2099-12-02T10:00:00Z", "generate": {"frames_per_s": 900.0}}
    (bench_dir / "nvidia-h200-2099-12-02.json").write_text(json.dumps(generation))
    profiled = _bench("NVIDIA H200", "2099-12-03T10:00:00Z", lora=1.0) | {"generate": {"frames_per_s": 1.0}}
    (bench_dir / "profiles" / "nvidia-h200-2099-12-03.json").write_text(json.dumps(profiled))
    benches = latest_benchmarks(tmp_path / "runs")
    assert benches[0]["time"] == "2099-12-02T10:00:00Z"
    h200 = card_figures("H200-141GB", load_price_table()["gpus"]["H200-141GB"], benches)
    assert h200.values["generate_frames_per_s"] == 900.0
    assert h200.values["lora_tokens_per_s"] > 1.0  # from an older bench with training figures
    assert h200.sources["lora_tokens_per_s"].startswith("measured on NVIDIA H200")


def test_a_card_name_matches_whole_words_only():
    prices = load_price_table()["gpus"]
    l40s_bench = _bench("NVIDIA L40S", "2026-12-01")
    figures = card_figures("L4-24GB", prices["L4-24GB"], [l40s_bench])
    assert figures.sources["lora_tokens_per_s"].startswith("scaled")          # an L40S bench is not an L4's


def test_one_stream_scales_by_memory_bandwidth_and_training_by_bf16_peak():
    """One generated stream reads every weight per frame (bandwidth-bound); training's matmuls are
    compute-bound. An L4 has 12 % of an H200's bf16 peak but 6 % of its bandwidth."""
    prices = load_price_table()["gpus"]
    h200_bench = _bench("NVIDIA H200", "2026-12-01")
    l4 = card_figures("L4-24GB", prices["L4-24GB"], [h200_bench], cards=prices)
    assert l4.values["generate_frames_per_s"] == pytest.approx(400.0 * 0.3 / 4.8)
    assert l4.sources["generate_frames_per_s"] == "scaled from NVIDIA H200, 2026-12-01 by memory bandwidth 0.3/4.8 TB/s"
    assert l4.values["lora_tokens_per_s"] == pytest.approx(100000 * 121 / 989)
    assert l4.values["extract_realtime"] == pytest.approx(500.0 * 121 / 989)
    assert "bf16 peak 121/989" in l4.sources["lora_tokens_per_s"]
    # a row without a bandwidth (a card someone added) falls back to bf16 peak, and says so
    custom = {k: v for k, v in prices["L4-24GB"].items() if k != "memory_tb_s"} | {"bench_name": "X9"}
    fallback = card_figures("X9", custom, [h200_bench], cards=prices)
    assert fallback.values["generate_frames_per_s"] == pytest.approx(400.0 * 121 / 989)
    assert "by bf16 peak 121/989" in fallback.sources["generate_frames_per_s"]
    # the estimate's own rows use the table's bandwidths
    table = estimate(Config(), manifest({"a": 5}), benches=[h200_bench])
    assert _row(table, "H200-141GB", "quick_lora").measured
    l4_row = _row(table, "L4-24GB", "quick_lora")
    assert "generation scaled from NVIDIA H200, 2026-12-01 by memory bandwidth 0.3/4.8 TB/s" in l4_row.figures


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
    bad.write_text("gpus:\n  X:\n    price_per_hour: 1\n    bf16_tflops: 1\n    memory_gb: 10\n    memory_tb_s: fast\n")
    with pytest.raises(ValueError, match=r"gpus\.X\.memory_tb_s must be a number > 0"):
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


# -- several GPUs ------------------------------------------------------------------------------------
def _scaling(gpus, lora, full):
    return {"gpus": gpus, "lora": {"efficiency": lora}, "full": {"efficiency": full},
            "efficiency": {"lora": lora, "full": full}}


def _write(folder, name, bench):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(bench))


def test_several_gpus_use_the_recorded_scaling_of_that_card(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIO_WORKSPACE", str(tmp_path))
    bench_dir = tmp_path / "runs" / "bench"
    h100 = _bench("NVIDIA H100 80GB HBM3", "2026-12-01T10:00:00Z")
    _write(bench_dir, "nvidia-h100-2026-12-01.json", h100)
    # a newer scaling-only bench (`--only scaling` writes no train section) of the same card
    _write(bench_dir, "nvidia-h100-2026-12-02.json", {"card": "NVIDIA H100 80GB HBM3", "time": "2026-12-02T10:00:00Z",
                                                      "scaling": _scaling(2, 0.9, 0.8)})
    data = manifest({"a": 30})
    config = Config().with_overrides({"training.grad_accumulation": 2})      # 8 sequences per step
    one, two = estimate(config, data), estimate(config, data, gpus=2)
    h1, h2 = _row(one, "H100-80GB", "full_finetune"), _row(two, "H100-80GB", "full_finetune")
    assert (h1.gpus, h2.gpus) == (1, 2) and h1.scaling == "" and h2.scaling_measured
    assert "scaling measured on 2 GPUs (NVIDIA H100 80GB HBM3, 2026-12-02 10:00): LoRA 0.90, full 0.80" in h2.scaling
    assert h2.throughput_source == h1.throughput_source == "measured on NVIDIA H100 80GB HBM3, 2026-12-01 10:00"
    start = h100["train"]["variants"][1]["first_step_s"] - h100["train"]["variants"][1]["step_s"]
    full1, full2 = (_phase(r, "full")["seconds_max"] - start for r in (h1, h2))
    assert full2 == pytest.approx(full1 / (2 * 0.8), rel=1e-6)              # time ÷ (N × efficiency)
    assert _phase(h2, "extract")["seconds_max"] == _phase(h1, "extract")["seconds_max"]   # not split here
    assert _phase(h2, "full")["cost_max"] == pytest.approx(_phase(h2, "full")["seconds_max"] / 3600 * 2.99 * 2)
    assert h2.cost_usd == pytest.approx(h2.hours * 2.99 * 2, rel=1e-3)      # money × N
    assert h2.price_per_hour == 2.99 and h2.batch_split == ""
    # one GPU is unchanged by a scaling bench
    assert h1.cost_usd == pytest.approx(h1.hours * 2.99, rel=1e-3)


def test_several_gpus_without_a_recorded_figure_say_not_measured(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIO_WORKSPACE", str(tmp_path))
    data = manifest({"a": 30})
    one, four = estimate(Config(), data, benches=[]), estimate(Config(), data, benches=[], gpus=4)
    a1, a4 = _row(one, "A100-80GB", "quick_lora"), _row(four, "A100-80GB", "quick_lora")
    assert a4.gpus == 4 and not a4.scaling_measured
    assert "scaling not measured on A100-80GB: assumed linear (4 × one GPU's speed), not measured" in a4.scaling
    assert "money × GPUs" in a4.scaling
    start = load_price_table()["reference_throughput"]["lora_start_s"]
    lora1, lora4 = (_phase(r, "lora")["seconds_max"] - start for r in (a1, a4))
    # 4 sequences per step over 4 GPUs: one sequence per GPU, which pays the small micro-batch cost
    assert lora4 == pytest.approx(lora1 / 4 / SMALL_MICRO_BATCH_FACTOR["lora"], rel=1e-6)
    assert a4.plan_brief == "1×1"


def test_a_scaling_figure_of_another_gpu_count_is_used_and_said(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIO_WORKSPACE", str(tmp_path))
    benches = [_bench("NVIDIA H100 80GB HBM3", "2026-12-01T10:00:00Z") | {"scaling": _scaling(8, 0.7, 0.6)},
               _bench("NVIDIA L40S", "2026-12-02T10:00:00Z") | {"scaling": _scaling(2, 0.5, 0.5)}]
    table = estimate(Config().with_overrides({"training.grad_accumulation": 2}), manifest({"a": 5}), benches=benches,
                     gpus=2)
    h100, a100 = _row(table, "H100-80GB", "quick_lora"), _row(table, "A100-80GB", "quick_lora")
    assert not h100.scaling_measured and h100.scaling_efficiency == {"lora": 0.7, "full": 0.6}
    assert "measured on 8 GPUs, not 2" in h100.scaling and "errs slow" in h100.scaling
    assert "scaling not measured on A100-80GB" in a100.scaling      # another card's interconnect is not this one's
    from pipeline.estimate.scaling import card_scaling
    assert "assumed to hold for 8, not measured" in card_scaling(8, "x", [("L40S", benches[1])]).text
    with pytest.raises(ValueError, match="GPU count"):
        estimate(Config(), manifest({"a": 5}), benches=[], gpus=0)


def test_a_global_batch_that_does_not_split_over_the_gpus_is_named():
    row = _row(estimate(Config(), manifest({"a": 5}), benches=[], gpus=8), "H100-80GB", "quick_lora")
    assert "does not split evenly over 8 GPUs" in row.batch_split and "training.grad_accumulation" in row.batch_split
    assert _row(estimate(Config(), manifest({"a": 5}), benches=[], gpus=2), "H100-80GB", "quick_lora").batch_split == ""


def test_the_training_loops_speed_is_preferred_to_the_bare_steps():
    row = load_price_table()["gpus"]["H100-80GB"]
    bench = _bench("NVIDIA H100 80GB HBM3", "2099-12-01T10:00:00Z", lora=50000)
    assert card_figures("H100-80GB", row, [bench]).values["lora_tokens_per_s"] == 50000
    bench["loop"] = {"lora": {"step_s": 0.2, "tokens_per_s": 65000.0}}  # what a run gets
    figures = card_figures("H100-80GB", row, [bench]).values
    assert figures["lora_tokens_per_s"] == 65000.0


def test_extraction_over_a_dataset_is_preferred_to_one_repeated_batch():
    row = load_price_table()["gpus"]["H100-80GB"]
    bench = _bench("NVIDIA H100 80GB HBM3", "2099-12-01T10:00:00Z")
    assert card_figures("H100-80GB", row, [bench]).values["extract_realtime"] == 500.0
    bench["extract"]["dataset"] = {"batches": {"120": {"realtime_factor": 160.0}, "360": {"realtime_factor": 470.0}}}
    assert card_figures("H100-80GB", row, [bench]).values["extract_realtime"] == 470.0  # the largest batch
    bench["extract"]["dataset"]["batches"]["360x2"] = {"realtime_factor": 520.0}  # two codecs at once, as a run
    assert card_figures("H100-80GB", row, [bench]).values["extract_realtime"] == 520.0
    # a newer extraction-only call (`--only extract`) gives extraction's figure, not the step times
    newer = {"card": bench["card"], "time": "2099-12-02T10:00:00Z", "peak_tflops": 989.0,
             "extract": {"realtime_factor": 600.0, "dataset": {"batches": {"360x2": {"realtime_factor": 540.0}}}}}
    figures = card_figures("H100-80GB", row, [newer, bench])
    assert figures.values["extract_realtime"] == 540.0 and figures.values["lora_tokens_per_s"] == 100000.0
    assert figures.stale == ""
