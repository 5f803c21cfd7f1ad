"""Reading a run directory for the studio: metrics, progress, ETA, time and money, audio."""

import json
import time

import pytest

from pipeline import runs_view
from pipeline.config import Config
from pipeline.text import EXAMPLES_PATH
from pipeline.workflow import write_json


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
