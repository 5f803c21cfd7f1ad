"""Scorecards side by side (pipeline.quality.overview) over scorecards the real `evaluate` wrote with
the tiny checkpoint and the tiny random Whisper: the baseline per dataset and speaker, a run's
checkpoints and merged model, every run's merged model, the worst sentences first."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.data.selection import save_selection
from pipeline.quality.overview import (all_scorecards, baseline_dir, ensure_baseline, read_baseline, run_scorecards,
                                       score_run, sentence_rows)
from pipeline.quality.scorecard import EvaluationError, Scorers
from quality_fixtures import tiny_asr  # noqa: F401 (a fixture)


@pytest.fixture()
def config(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIO_WORKSPACE", str(tmp_path / "ws"))
    return load_config(None, {"base_model.local_dir": str(tiny_checkpoint), "evaluation.sentences": 2,
                              "evaluation.max_new_tokens": 4, "evaluation.asr_model": None})


@pytest.fixture()
def scorers(tiny_asr):
    return Scorers(tiny_asr, device="cpu")


def _run(config, tiny_checkpoint: Path, run_id: str, mode: str, phases: list[str], steps: dict[str, list[int]],
         merged: bool) -> Path:
    """A run folder whose checkpoints and merged model are copies of the tiny checkpoint (full weights)."""
    run_dir = config.runs_dir / run_id
    for phase, numbers in steps.items():
        for step in numbers:
            shutil.copytree(tiny_checkpoint, run_dir / "phases" / phase / "checkpoints" / f"step_{step:06d}")
    if merged:
        shutil.copytree(tiny_checkpoint, run_dir / "artifacts" / "merged")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "run.json").write_text(json.dumps({"id": run_id, "mode": mode, "phases": phases,
                                                  "base_model": str(tiny_checkpoint)}))
    return run_dir


def test_baseline_dir_follows_the_selection(config):
    root = config.workspace / "eval"
    assert baseline_dir(config) == root / "base-none-none"
    save_selection(config, dataset_id="kirja ääni", speaker="anna/b")
    picked = baseline_dir(config).name
    assert picked.startswith("base-kirja-") and "-anna-b-" in picked and picked.isascii()
    assert baseline_dir(config, "kirja ääni", "anna-b") != baseline_dir(config)  # slugs alike, names not
    assert baseline_dir(config, "other", "bob") == root / "base-other-bob"
    save_selection(config, dataset_id="other")  # no pick for this dataset yet, and no such dataset
    assert baseline_dir(config) == root / "base-other-none"


def test_baseline_is_cached_per_dataset_and_speaker(config, scorers):
    assert read_baseline(config) is None
    save_selection(config, dataset_id="ds1", speaker="anna")
    steps = []
    first = ensure_baseline(config, progress=lambda f, m: steps.append(f), device="cpu", scorers=scorers)
    assert first.spoken == 2 and first.out_dir == config.workspace / "eval" / "base-ds1-anna"
    assert steps and steps[-1] == 1.0
    again = ensure_baseline(config, device="cpu", scorers=scorers)
    assert {"load", "speak", "asr", "dnsmos"} <= set(first.timings) and all(v > 0 for v in first.timings.values())
    assert (again.spoken, again.scored, again.timings) == (0, 0, {})
    summary = read_baseline(config)
    assert summary["model"] == "base" and summary["random_weights"] and summary["metrics"]["cer"]["n"] == 2

    save_selection(config, dataset_id="ds2", speaker="bob")
    assert read_baseline(config) is None  # another speaker: its own baseline
    other = ensure_baseline(config, device="cpu", scorers=scorers)
    assert other.spoken == 0 and other.out_dir.name == "base-ds2-bob"  # same model and sentences: the cache
    assert read_baseline(config)["model_hash"] == summary["model_hash"]


def test_missing_base_model_is_an_evaluation_error(config, scorers, tmp_path, monkeypatch):
    from pipeline.data import hub

    monkeypatch.setattr(hub, "unreachable_reason", lambda: "offline in this test")
    missing = config.with_overrides({"base_model.local_dir": str(tmp_path / "none")})
    with pytest.raises(EvaluationError, match="base model"):
        ensure_baseline(missing, device="cpu", scorers=scorers)


def test_score_run_newest_checkpoint_then_merged(config, tiny_checkpoint, scorers):
    run_id = "20250101-000000-full_finetune"
    run_dir = _run(config, tiny_checkpoint, run_id, "full_finetune", ["full", "speaker_lora"],
                   {"full": [2, 10]}, merged=False)
    progress = []
    rows = score_run(config, run_id, progress=lambda f, m: progress.append(f), device="cpu", scorers=scorers)
    assert [r["label"] for r in rows] == ["base", "full step 10"]
    assert rows[1]["out_dir"] == str(run_dir / "eval" / "full-step_000010")
    assert progress == sorted(progress) and max(progress) == 1.0 and any(0.45 < f <= 0.55 for f in progress)

    shutil.copytree(tiny_checkpoint, run_dir / "artifacts" / "merged")
    rows = score_run(config, run_id, device="cpu", scorers=scorers)
    assert [r["label"] for r in rows] == ["base", "full step 10", "full_finetune merged"]
    assert all(r["metrics"]["cer"]["n"] == 2 for r in rows)
    with pytest.raises(EvaluationError, match="does not exist"):
        score_run(config, "nope", device="cpu", scorers=scorers)


def test_run_scorecards_order_and_all_scorecards(config, tiny_checkpoint, scorers):
    from pipeline.quality.configured import evaluate_config_model, run_models

    full = "20250101-000000-full_finetune"
    _run(config, tiny_checkpoint, full, "full_finetune", ["full", "speaker_lora"],
         {"full": [10, 2], "speaker_lora": [1]}, merged=True)
    for spec in run_models(config, full):
        evaluate_config_model(config, spec, full, scorers=scorers, device="cpu")
    assert run_scorecards(config, full)[0]["label"] != "base"  # no baseline yet: none shown
    ensure_baseline(config, device="cpu", scorers=scorers)
    labels = [r["label"] for r in run_scorecards(config, full)]
    assert labels == ["base", "full step 2", "full step 10", "speaker_lora step 1", "full_finetune merged"]

    quick = "20250102-000000-quick_lora"
    _run(config, tiny_checkpoint, quick, "quick_lora", ["lora"], {"lora": [5]}, merged=True)
    score_run(config, quick, device="cpu", scorers=scorers)
    _run(config, tiny_checkpoint, "20250103-000000-quick_lora", "quick_lora", ["lora"], {"lora": [5]}, merged=False)
    rows = all_scorecards(config)
    assert [r["label"] for r in rows] == ["base", f"full_finetune ({full})", f"quick_lora ({quick})"]
    assert rows[2]["out_dir"] == str(config.runs_dir / quick / "eval" / "merged") and rows[2]["run_id"] == quick


def test_sentence_rows_worst_first(config, scorers):
    card = ensure_baseline(config, device="cpu", scorers=scorers)
    rows = sentence_rows(card.out_dir)
    assert list(rows.columns) == ["index", "sentence", "cer", "similarity", "ovrl", "flags", "audio_path"]
    assert len(rows) == 2 and list(rows["cer"]) == sorted(rows["cer"], reverse=True)
    assert all(Path(p).is_file() for p in rows["audio_path"]) and rows["flags"].str.contains("cut at max length").all()
    by_ovrl = sentence_rows(card.out_dir, worst_by="ovrl")
    assert list(by_ovrl["ovrl"]) == sorted(by_ovrl["ovrl"])
    # similarity has no values (noise holds no speaker): the CER decides
    assert list(sentence_rows(card.out_dir, worst_by="similarity")["index"]) == list(rows["index"])
    assert rows["similarity"].map(math.isnan).all()
    with pytest.raises(EvaluationError, match="worst_by"):
        sentence_rows(card.out_dir, worst_by="loudness")
    with pytest.raises(EvaluationError, match="evaluate the model first"):
        sentence_rows(config.workspace / "eval" / "nothing")


def test_evaluate_command_base_is_the_baseline(config, tiny_checkpoint, monkeypatch):
    import argparse

    from pipeline.quality.command import add_evaluate_command

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config")
    common.add_argument("--set", action="append")
    parser = argparse.ArgumentParser()
    add_evaluate_command(parser.add_subparsers(dest="command"), [common])
    save_selection(config, dataset_id="ds1", speaker="anna")
    args = parser.parse_args(["evaluate", "--model", "base", "--asr-model", "none", "--set",
                              f"base_model.local_dir={tiny_checkpoint}", "--set", "evaluation.sentences=1",
                              "--set", "evaluation.max_new_tokens=4"])
    assert args.func(args) == 0
    summary = read_baseline(config)
    assert summary["model"] == "base" and summary["sentences"] == 1
    assert baseline_dir(config).name == "base-ds1-anna"


def test_a_run_is_judged_against_the_baseline_of_its_own_dataset_and_speaker(config, tiny_checkpoint, scorers):
    run_dir = _run(config, tiny_checkpoint, "r-ds1", "quick_lora", ["lora"], {}, merged=True)
    record = json.loads((run_dir / "run.json").read_text()) | {"dataset": "ds1", "speaker": "anna"}
    (run_dir / "run.json").write_text(json.dumps(record))
    save_selection(config, dataset_id="ds2", speaker="bob")  # the studio has moved on to another dataset
    rows = score_run(config, "r-ds1", device="cpu", scorers=scorers)
    assert (config.workspace / "eval" / "base-ds1-anna" / "summary.json").is_file()
    assert not (config.workspace / "eval" / "base-ds2-bob").exists()
    assert rows[0]["label"] == "base" and Path(rows[0]["out_dir"]).name == "base-ds1-anna"
    assert Path(run_scorecards(config, "r-ds1")[0]["out_dir"]).name == "base-ds1-anna"
