"""Both training modes end to end on the tiny checkpoint and the bundled sample (in-process)."""

import json
import threading
import zipfile
from types import SimpleNamespace

import pandas as pd
import pytest
import soundfile as sf

from pipeline.model.checkpoints import load_lm
from pipeline.config import load_config
from pipeline.data.dataset import open_dataset
from pipeline.train.runs import RunError, list_runs, read_run
from pipeline.train.workflow import choose_speaker, run_workflow
from run_fixtures import fresh_workspace, run_config


@pytest.fixture
def workspace(tmp_path, tmp_path_factory, tiny_checkpoint, monkeypatch):
    ws = fresh_workspace(tmp_path_factory, tiny_checkpoint, tmp_path / "ws")
    monkeypatch.setenv("STUDIO_WORKSPACE", str(ws))
    return ws


def _rows(phase_dir, kind):
    rows = [json.loads(line) for line in (phase_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == kind]


def _state(phase_dir):
    return json.loads((phase_dir / "state.json").read_text())


def _check_outputs(run_dir, result):
    artifacts = result["artifacts"]
    model, tokenizer = load_lm(artifacts["merged"])            # the merged model loads
    assert model is not None and tokenizer is not None
    with zipfile.ZipFile(artifacts["adapter_zip"]) as archive:
        names = archive.namelist()
    assert any(n.endswith("adapter_config.json") for n in names)
    assert any(n.endswith("adapter_model.safetensors") for n in names)
    assert len(result["audio"]) == 3
    for path in result["audio"]:
        info = sf.info(path)
        assert path.startswith(str(run_dir / "audio")) and info.frames > 0 and info.samplerate == 44100


def test_quick_lora_end_to_end(workspace, tiny_checkpoint):
    config = run_config(tiny_checkpoint)
    messages = []
    result = run_workflow(config, progress=lambda fraction, message: messages.append(message))
    run_dir = config.runs_dir / result["id"]
    assert (result["status"], result["phase"], result["mode"]) == ("finished", "done", "quick_lora")
    assert result["dataset"] == "sample" and result["elapsed_s"] > 0 and result["error"] is None
    assert load_config(run_dir / "config.yaml").training.quick_lora.steps == 6   # settings snapshot
    phase_dir = run_dir / "phases" / "lora"
    assert _state(phase_dir)["status"] == "finished" and _state(phase_dir)["step"] == 6
    assert [r["step"] for r in _rows(phase_dir, "train")] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in _rows(phase_dir, "val")] == [0, 3, 6]
    assert any("step 6/6" in m for m in messages)
    assert result["artifacts"]["adapter"].startswith(str(phase_dir / "checkpoints"))
    assert result["artifacts"]["phase1_model"] is None
    _check_outputs(run_dir, result)
    assert [r["id"] for r in list_runs(config)] == [result["id"]]


def test_full_finetune_hands_phase_one_to_the_speaker_phase(workspace, tiny_checkpoint):
    config = run_config(tiny_checkpoint, **{"training_mode.selected": "full_finetune"})
    result = run_workflow(config)
    run_dir = config.runs_dir / result["id"]
    assert result["status"] == "finished" and result["phases"] == ["full", "speaker_lora"]
    full, speaker = _state(run_dir / "phases" / "full"), _state(run_dir / "phases" / "speaker_lora")
    assert full["status"] == speaker["status"] == "finished"
    assert full["mode"] == "full" and speaker["mode"] == "lora"
    assert full["data"]["speakers"] == 6 and speaker["data"]["speakers"] == 1
    # phase 3 trains on phase 1's best checkpoint, and the merge uses it as the base
    phase1_best = run_dir / "phases" / "full" / full["best"]
    assert speaker["base_checkpoint"] == str(phase1_best)
    assert result["artifacts"]["phase1_model"] == str(phase1_best)
    assert (phase1_best / "model.pth").is_file()
    # the speaker choice is recorded with its reason (no pick: the recommendation)
    dataset = open_dataset(config, "sample")
    assert result["speaker"] == dataset.recommendation.speaker
    assert result["speaker_reason"].startswith("recommended")
    assert speaker["step"] <= config.training.full_finetune.speaker_max_steps
    _check_outputs(run_dir, result)


def test_a_stop_request_cancels_and_a_resume_finishes_without_repeating_steps(workspace, tiny_checkpoint):
    config = run_config(tiny_checkpoint, **{"training.save_every": 100})
    stop = threading.Event()

    def progress(fraction, message):
        if message.startswith("step 2/"):
            stop.set()

    first = run_workflow(config, progress=progress, stop_event=stop)
    run_dir = config.runs_dir / first["id"]
    assert first["status"] == "cancelled" and "resume" in first["message"]
    state = _state(run_dir / "phases" / "lora")
    assert state["status"] == "cancelled" and state["step"] in (2, 3) and state["latest"]
    assert not (run_dir / "artifacts").exists()

    resumed = run_workflow(config, run_id=first["id"])
    assert resumed["status"] == "finished" and resumed["message"] is None
    assert [r["step"] for r in _rows(run_dir / "phases" / "lora", "train")] == [1, 2, 3, 4, 5, 6]
    assert resumed["elapsed_s"] > first["elapsed_s"]  # time of both attempts


def test_a_stop_before_training_cancels_with_nothing_trained(workspace, tiny_checkpoint):
    config = run_config(tiny_checkpoint)
    stop = threading.Event()
    stop.set()
    result = run_workflow(config, stop_event=stop)
    assert result["status"] == "cancelled" and "nothing to save" in result["message"]
    assert not (config.runs_dir / result["id"] / "phases").exists()
    assert read_run(config.runs_dir / result["id"])["status"] == "cancelled"


def test_an_error_before_the_run_starts_is_recorded_in_the_studios_run(workspace, tiny_checkpoint):
    """The studio records a job as "starting" with its pid; an error before the workflow records
    its own (another training holds the machine; a `train` run given to `run`) is written there,
    not left for the studio to read as a killed process."""
    import os

    from pipeline.train.lock import TrainingBusy, TrainingLock
    from pipeline.train.runs import create_run, update_run

    config = run_config(tiny_checkpoint)
    started = create_run(config, "20260101-000000-quick_lora", "quick_lora")
    update_run(started, status="starting", pid=os.getpid())
    with TrainingLock(config.workspace, config.runs_dir / "other"):
        with pytest.raises(TrainingBusy):
            run_workflow(config, run_id=started.name)
    run = read_run(started)
    assert run["status"] == "failed" and "run 'other'" in run["error"]

    one_phase = create_run(config, "20260101-000000-lora", "lora")
    update_run(one_phase, status="starting", pid=os.getpid())
    with pytest.raises(RunError, match="python -m pipeline train --mode lora --run-id 20260101-000000-lora"):
        run_workflow(config, run_id=one_phase.name)
    assert read_run(one_phase)["status"] == "failed"
    # a run this process was not started as (another process's, maybe live) is left as it is
    update_run(started, status="running", pid=os.getpid() + 100000, error=None)
    with TrainingLock(config.workspace, config.runs_dir / "other"):
        with pytest.raises(TrainingBusy):
            run_workflow(config, run_id=started.name)
    assert read_run(started)["status"] == "running"


def test_a_begun_speaker_phase_keeps_its_speaker_on_resume(tmp_path, tiny_checkpoint):
    from pipeline.train.runs import create_run, update_run
    from pipeline.train.workflow import _started_speaker

    config = run_config(tiny_checkpoint).with_overrides({"studio.workspace": str(tmp_path / "ws")})
    run_dir = create_run(config, "20260101-000000-full_finetune", "full_finetune")
    update_run(run_dir, speaker="anna")
    assert _started_speaker(run_dir, "speaker_lora") is None  # not begun: chosen (again) from the dataset
    (run_dir / "phases" / "speaker_lora").mkdir(parents=True)
    (run_dir / "phases" / "speaker_lora" / "state.json").write_text('{"status": "cancelled", "step": 40}')
    assert _started_speaker(run_dir, "speaker_lora") == "anna"


def test_choose_speaker_prefers_the_users_pick_and_checks_it(tiny_checkpoint):
    manifest = pd.DataFrame({"speaker": ["anna", "anna", "bert"], "status": ["ok", "ok", "ok"]})
    dataset = SimpleNamespace(id="d", accepted=lambda: manifest,
                              recommendation=SimpleNamespace(speaker="anna", reason="most usable minutes"))
    config = run_config(tiny_checkpoint)
    assert choose_speaker(config, dataset) == ("anna", "recommended: most usable minutes")
    picked = config.with_overrides({"speaker.policy": "manual", "speaker.name": "bert"})
    speaker, reason = choose_speaker(picked, dataset)
    assert speaker == "bert" and "picked by the user" in reason
    unknown = config.with_overrides({"speaker.policy": "manual", "speaker.name": "cia"})
    with pytest.raises(RunError, match="cia"):
        choose_speaker(unknown, dataset)


def test_the_most_clips_policy_follows_the_reference_rule(tiny_checkpoint):
    from pipeline.data.speakers import speaker_stats

    manifest = pd.DataFrame({"speaker": ["anna"] * 2 + ["bert"] * 3, "status": ["ok"] * 5,
                             "duration_s": [30.0, 30.0, 2.0, 2.0, 2.0], "snr_db": [30.0] * 5,
                             "loudness_db": [-20.0] * 5, "speaking_rate": [12.0] * 5})
    stats = speaker_stats(manifest, pitch=False)
    dataset = SimpleNamespace(id="d", accepted=lambda: manifest, speakers=stats,
                              recommendation=SimpleNamespace(speaker="anna", reason="most usable minutes"))
    config = run_config(tiny_checkpoint, **{"speaker.policy": "most_clips"})
    speaker, reason = choose_speaker(config, dataset)
    assert speaker == "bert" and "most_clips" in reason


def test_the_merged_checkpoint_follows_select_by(tmp_path, tiny_checkpoint):
    from pipeline.train.runs import update_run
    from pipeline.train.workflow import _chosen_adapter

    run_dir = tmp_path / "run"
    phase = run_dir / "phases" / "lora"
    for step in (4, 8):
        (phase / "checkpoints" / f"step_{step:06d}").mkdir(parents=True)
    rows = [{"kind": "val", "step": 4, "val_loss": 1.0, "val_cer": 0.2, "val_similarity": 0.8, "val_ovrl": 3.5},
            {"kind": "val", "step": 8, "val_loss": 0.9, "val_cer": 0.6, "val_similarity": 0.5, "val_ovrl": 2.5}]
    (phase / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (phase / "state.json").write_text(json.dumps({"best": "checkpoints/step_000008"}))
    update_run(run_dir, id="run")
    by_loss = run_config(tiny_checkpoint)
    by_score = run_config(tiny_checkpoint, **{"training.select_by": "score"})
    assert _chosen_adapter(by_loss, run_dir, "lora").name == "step_000008"
    assert "loss" in read_run(run_dir)["selection"]
    assert _chosen_adapter(by_score, run_dir, "lora").name == "step_000004"  # better CER, similarity, DNSMOS
    assert "score" in read_run(run_dir)["selection"]
    # the reason says what happened: no scores to choose by; no held-out loss at all
    unscored = [{"kind": "val", "step": r["step"], "val_loss": r["val_loss"]} for r in rows]
    (phase / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in unscored))
    assert _chosen_adapter(by_score, run_dir, "lora").name == "step_000008"
    assert read_run(run_dir)["selection"].startswith("no scorecard in the validations")
    (phase / "state.json").write_text(json.dumps({"best": None, "latest": "checkpoints/step_000008"}))
    assert _chosen_adapter(by_loss, run_dir, "lora").name == "step_000008"
    assert read_run(run_dir)["selection"].startswith("the last checkpoint")
