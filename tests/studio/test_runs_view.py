"""Reading a run directory for the studio: metrics, progress, ETA, time and money, audio."""

import json
import time

import pytest

from studio.logic import runs_view
from pipeline.config import Config
from pipeline.data.text import EXAMPLES_PATH
from pipeline.atomic import write_json


def _config(tmp_path, price=2.0) -> Config:
    return Config().with_overrides({"studio.workspace": str(tmp_path), "gpu.price_per_hour": price,
                                    "gpu.type": "H100-80GB"})


def _run(tmp_path, *, status="running", phase="lora", steps_done=10, total=110, seconds_per_step=1.0,
         mode="quick_lora", started_ago=3600.0, price=2.0, **extra):
    """A run directory as the workflow and the trainer write it (no training)."""
    run_dir = tmp_path / "runs" / "r1"
    _config(tmp_path, price).save(run_dir / "config.yaml")
    phases = {"quick_lora": ["lora"], "full_finetune": ["full", "speaker_lora"]}[mode]
    write_json(run_dir / "run.json", {"id": "r1", "mode": mode, "phases": phases, "phase": phase, "status": status,
                                      "started_at": time.time() - started_ago, "elapsed_before_s": 0.0, **extra})
    phase_dir = run_dir / "phases" / (phase if phase in phases else phases[-1])
    phase_dir.mkdir(parents=True)
    rows = [{"kind": "val", "step": 0, "val_loss": 9.0, "elapsed_s": 0.1}]
    rows += [{"kind": "train", "step": s, "loss": 9 - 0.01 * s, "lr": 1e-4, "tokens_per_s": 1000.0 + s,
              "elapsed_s": s * seconds_per_step} for s in range(1, steps_done + 1)]
    (phase_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"kind": "tr')
    write_json(phase_dir / "state.json", {"status": "running", "step": steps_done, "total_steps": total})
    return run_dir


def test_read_metrics_splits_kinds_and_skips_a_half_written_line(tmp_path):
    run_dir = _run(tmp_path)
    train, val = runs_view.phase_metrics(run_dir, "lora")
    assert list(train["step"]) == list(range(1, 11)) and list(val["step"]) == [0]
    assert "val_loss" not in train and "loss" not in val
    empty_train, empty_val = runs_view.read_metrics(tmp_path / "missing.jsonl")
    assert empty_train.empty and empty_val.empty


def test_progress_eta_and_money_of_a_running_run(tmp_path):
    run_dir = _run(tmp_path, steps_done=10, total=110, seconds_per_step=1.5, started_ago=1800, price=2.0)
    progress = runs_view.run_progress(run_dir)
    assert (progress.step, progress.total_steps, progress.phase_number, progress.phase_count) == (10, 110, 1, 1)
    assert progress.fraction == pytest.approx(10 / 110)
    assert progress.eta_s == pytest.approx(100 * 1.5)
    assert progress.elapsed_s == pytest.approx(1800, abs=5)
    assert progress.spent_usd == pytest.approx(0.5 * 2.0, abs=0.01)   # half an hour at $2/h
    assert progress.gpu == "H100-80GB" and "merge" in progress.eta_note


def test_full_finetune_eta_mentions_the_speaker_phase_and_finished_runs_use_their_total(tmp_path):
    run_dir = _run(tmp_path, mode="full_finetune", phase="full")
    assert "Speaker LoRA" in runs_view.run_progress(run_dir).eta_note
    done = _run(tmp_path / "other", status="finished", phase="done", elapsed_s=7200.0, price=1.5)
    progress = runs_view.run_progress(done)
    assert progress.eta_s is None and progress.elapsed_s == 7200.0
    assert progress.spent_usd == pytest.approx(3.0) and progress.phase_number is None


def test_resumed_run_counts_earlier_attempts(tmp_path):
    run_dir = _run(tmp_path, started_ago=600, elapsed_before_s=900.0)
    assert runs_view.run_progress(run_dir).elapsed_s == pytest.approx(1500, abs=5)


def test_killed_run_counts_time_up_to_its_last_log_line(tmp_path):
    run_dir = _run(tmp_path, status="failed", started_ago=1000)
    log = run_dir / "log.txt"
    log.write_text("step 10\n")
    started = json.loads((run_dir / "run.json").read_text())["started_at"]
    import os

    os.utime(log, (started + 400, started + 400))
    assert runs_view.elapsed_seconds(run_dir, runs_view.read_run(run_dir)) == pytest.approx(400, abs=1)


def test_viewed_phase_follows_the_run(tmp_path):
    run = {"mode": "full_finetune", "phases": ["full", "speaker_lora"], "phase": "speaker_lora"}
    assert runs_view.viewed_phase(tmp_path, run) == "speaker_lora"
    (tmp_path / "phases" / "full").mkdir(parents=True)
    (tmp_path / "phases" / "full" / "metrics.jsonl").write_text("")
    assert runs_view.viewed_phase(tmp_path, run | {"phase": "merge"}) == "full"
    assert runs_view.viewed_phase(tmp_path / "x", run | {"phase": "prepare"}) == "full"


def test_audio_lists(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "audio").mkdir(parents=True)
    for i in (1, 2):
        (run_dir / "audio" / f"example_{i}.wav").write_bytes(b"RIFF")
    audio = runs_view.evaluation_audio(run_dir, {})
    assert [path.endswith(f"example_{i}.wav") for (path, _), i in zip(audio, (1, 2))] == [True, True]
    first_sentence = next(s for s in EXAMPLES_PATH.read_text().splitlines() if s.strip())
    assert audio[0][1] == first_sentence
    for step in (20, 100):
        folder = run_dir / "phases" / "lora" / "audio" / f"step_{step}"
        folder.mkdir(parents=True)
        (folder / "val_1.wav").write_bytes(b"RIFF")
    assert [step for step, _ in runs_view.validation_audio(run_dir, "lora")] == [20, 100]


def test_formatting():
    assert runs_view.format_duration(45) == "45 s"
    assert runs_view.format_duration(5.5 * 60) == "5.5 min"
    assert runs_view.format_duration(3 * 3600 + 58 * 60) == "3 h 58 min"
    assert runs_view.format_duration(None) == "—"
    assert runs_view.format_money(5.281) == "$5.28" and runs_view.format_money(0.004) == "< $0.01"
    assert runs_view.format_size(0.047) == "47 MB" and runs_view.format_size(3.5) == "3.5 GB"
    assert runs_view.short_source("estimated: long text × 0.35") == "estimated: reference × 0.35"


@pytest.mark.parametrize("rows, train_steps, val_steps", [
    ([{"kind": "val", "step": 0, "val_loss": 9.0}], [], [0]),                       # a phase's first row
    ([{"kind": "train", "step": 1, "loss": 9.0}], [1], []),
    ([{"kind": "train", "step": "2", "loss": 9.0}, {"kind": "train", "step": None}], [2], []),
    ([], [], []),
])
def test_read_metrics_keeps_the_step_of_every_kind(tmp_path, rows, train_steps, val_steps):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    train, val = runs_view.read_metrics(path)
    assert list(train["step"]) == train_steps and list(val["step"]) == val_steps
    assert "step" in train and "step" in val


def test_progress_at_the_last_step_and_between_stages(tmp_path):
    run_dir = _run(tmp_path, steps_done=110, total=110)
    write_json(run_dir / "phases" / "lora" / "state.json", {"status": "running", "step": 109, "total_steps": 110})
    last = runs_view.run_progress(run_dir)
    assert (last.step, last.eta_s, last.fraction) == (110, 0.0, 1.0)   # finishing, not "one step left"
    write_json(run_dir / "run.json", runs_view.read_run(run_dir) | {"phase": "merge", "stage_started_at": time.time()})
    merge = runs_view.run_progress(run_dir)
    assert merge.phase_label == "Merging the adapter into the model" and merge.eta_note == "then evaluation audio"
    assert merge.fraction is None and merge.stage_detail == "starting…"
    write_json(run_dir / "run.json", runs_view.read_run(run_dir) | {"stage_started_at": time.time() - 90})
    assert runs_view.run_progress(run_dir).stage_detail == "running for 1.5 min"


def test_stage_start_falls_back_to_the_run_json_update_time():
    assert runs_view.stage_started({"stage_started_at": 5.0, "updated": "2026-01-01T00:00:00+00:00"}) == 5.0
    assert runs_view.stage_started({"updated": "2026-01-01T00:00:00+00:00"}) == pytest.approx(1767225600.0)
    assert runs_view.stage_started({}) is None


def test_phase_labels_number_phases_once():
    assert all("phase" not in label.lower() for label in runs_view.PHASE_LABELS.values())


@pytest.mark.parametrize("state, device, spent", [
    ({"memory_plan": None}, "cpu", 0.0),                                  # no memory plan: the CPU trained
    ({"memory_plan": "micro-batch 4 x 1"}, "cuda", 1.0),
    ({"device": "cpu", "memory_plan": "x"}, "cpu", 0.0),                  # the recorded device wins
    ({"device": "cuda:0"}, "cuda:0", 1.0),
    ({}, None, 1.0),                                                      # unknown: billed as GPU time
])
def test_only_gpu_time_is_charged(tmp_path, state, device, spent):
    run_dir = _run(tmp_path, started_ago=1800, price=2.0)
    write_json(run_dir / "phases" / "lora" / "state.json", {"step": 10, "total_steps": 110, **state})
    progress = runs_view.run_progress(run_dir)
    assert progress.device == device and progress.spent_usd == pytest.approx(spent, abs=0.01)
    assert (progress.charge == "CPU: no charge") == (device == "cpu") and progress.on_cpu == (device == "cpu")


@pytest.mark.parametrize("recorded, gpus", [(2, 2), (None, 1), ("2", 1), (0, 1), (True, 1)])
def test_every_gpu_of_a_data_parallel_run_is_paid_for(tmp_path, recorded, gpus):
    run_dir = _run(tmp_path, started_ago=1800, price=2.0, **({} if recorded is None else {"gpus": recorded}))
    progress = runs_view.run_progress(run_dir)
    assert progress.gpus == gpus and progress.spent_usd == pytest.approx(gpus * 1.0, abs=0.01)  # ½ h × $2/h × GPUs
    assert runs_view.hourly_price(2.0, gpus) == ("$2.00/h" if gpus == 1 else "2 × $2.00/h")


def test_ranges():
    assert runs_view.time_range(12, 40) == "12–40 min" and runs_view.time_range(0.2, 0.2) == "< 1 min"
    assert runs_view.time_range(65, 190) == "1 h 05 min – 3 h 10 min"
    assert runs_view.time_range(float("nan"), 3) == "not measured"
    assert runs_view.money_range(0.4, 1.2) == "$0.40–$1.20" and runs_view.money_range(0.004, 0.004) == "< $0.01"


def _estimate_row(mode, minutes_min, minutes, phases):
    return {"gpu": "H100-80GB", "mode": mode, "minutes_min": minutes_min, "minutes": minutes,
            "cost_usd_min": minutes_min / 60 * 2, "cost_usd": minutes / 60 * 2,
            "train_minutes": sum(p[2] for p in phases if p[0] in ("lora", "full", "speaker_lora")) / 60,
            "throughput_source": "measured on H100",
            "phases": [{"phase": name, "seconds_min": low, "seconds_max": high, "cost_min": low / 3600 * 2,
                        "cost_max": high / 3600 * 2} for name, low, high in phases]}


def test_the_estimate_beside_a_run_is_a_range_over_every_stage():
    import pandas as pd

    table = pd.DataFrame([
        _estimate_row("quick_lora", 10, 10, [("extract", 60, 60), ("lora", 480, 480), ("merge", 60, 60)]),
        _estimate_row("full_finetune", 20, 60, [("extract", 60, 60), ("full", 600, 600),
                                                ("speaker_lora", 300, 2700), ("merge", 240, 240)]),
    ])
    full = runs_view.estimate_texts(table, "H100-80GB", "full_finetune")
    assert full == {"training": "15–55 min", "wall": "20 min – 1 h 00 min", "cost": "$0.67–$2.00 (all stages)",
                    "source": "measured on H100"}
    assert runs_view.estimate_texts(table, "H100-80GB", "quick_lora")["training"] == "8.0 min"
    speaker = runs_view.estimate_texts(table, "H100-80GB", "speaker_lora")  # the speaker phase of a full row
    assert speaker["training"] == "5.0–45 min" and speaker["cost"] == "$0.17–$1.50 (training)"
    assert runs_view.estimate_texts(table, "A100-80GB", "quick_lora")["source"] == "A100-80GB is not in the price table"
