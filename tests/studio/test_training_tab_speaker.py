"""The Training tab's speaker runs on a finished full fine-tune's language-adapted model (no server)."""

import html
import os

import pytest

from pipeline.train.jobs import JobError
from pipeline.data.selection import save_selection
from pipeline.atomic import write_json
from studio.tabs import training_view
from studio.tabs.training import JOB_QUEUE
from training_fixtures import _live, _run, _tab


# -- a new speaker on a finished full fine-tune's language-adapted model ---------------------------
def _finished_full(config, run_id, model, *, status="finished", speaker="aino",
                   created="2026-01-02T10:30:00+00:00"):
    """A full fine-tune's run.json as the workflow leaves it (its phase-1 model = `model`)."""
    write_json(config.runs_dir / run_id / "run.json", {
        "id": run_id, "mode": "full_finetune", "phases": ["full", "speaker_lora"], "phase": "done",
        "status": status, "speaker": speaker, "created": created, "artifacts": {"phase1_model": str(model)}})


def test_language_models_are_offered_with_their_run_voice_and_date(config, tiny_checkpoint):
    assert training_view.language_model_choices(config) == [training_view.FROM_BASE]
    assert training_view.language_model_info(config) == training_view.NO_LANGUAGE_MODELS
    assert "finished" in training_view.NO_LANGUAGE_MODELS and "Full fine-tune" in training_view.NO_LANGUAGE_MODELS
    _finished_full(config, "20260102-full", tiny_checkpoint)
    _finished_full(config, "20260103-failed", tiny_checkpoint, status="failed")
    choices = training_view.language_model_choices(config)
    assert choices == [training_view.FROM_BASE, ("20260102-full · voice aino · 2026-01-02 10:30", "20260102-full")]
    assert "speaker LoRA" in training_view.language_model_info(config)


def test_the_plan_says_what_a_speaker_run_trains(config, dataset, tiny_checkpoint):
    _finished_full(config, "20260102-full", tiny_checkpoint, speaker="someone")
    save_selection(config, speaker="aino", **{"training.full_finetune.speaker_max_steps": 77})
    plan = html.unescape(training_view.plan_html(config, "20260102-full"))
    assert "a speaker LoRA on 20260102-full's language-adapted model" in plan
    assert "aino (new speaker)" in plan and "up to 77 steps" in plan and str(tiny_checkpoint) in plan
    assert "all speakers" not in plan and dataset.id in plan
    gone = html.unescape(training_view.plan_html(config, "20260109-gone"))
    assert "20260109-gone is not a finished full fine-tune" in gone


def test_start_with_a_language_model_starts_a_speaker_run_on_it(config, dataset, tiny_checkpoint, monkeypatch):
    _finished_full(config, "20260102-full", tiny_checkpoint)
    save_selection(config, speaker="aino")
    calls = []
    monkeypatch.setattr(training_view, "start_job", lambda cfg, **kw: calls.append((cfg, kw)) or {"run_id": "x"})
    training_view.start_run(config, base_run="20260102-full")
    cfg, kwargs = calls[-1]
    assert kwargs == {"model_dir": str(tiny_checkpoint), "mode": "speaker_lora", "gpus": 1}
    assert cfg.speaker.policy == "manual" and cfg.speaker.name == "aino"       # the voice picked in Dataset
    training_view.start_run(config)                                              # no pick: the mode as before
    assert calls[-1][1] == {"gpus": 1}
    with pytest.raises(JobError, match="'20260109-gone' is not a finished full fine-tune"):
        training_view.start_run(config, base_run="20260109-gone")
    assert len(calls) == 2


def test_the_tab_starts_a_speaker_run_from_the_pick(config, dataset, tiny_checkpoint, monkeypatch):
    _finished_full(config, "20260102-full", tiny_checkpoint)
    handlers, _ = _tab(config)
    picked = []

    def fake_start_job(cfg, run_id=None, model_dir=None, mode=None, gpus=None):
        picked.append((model_dir, mode))
        _run(config, "r-speaker", status="starting", pid=os.getpid(), phase=None)
        _live(config, "r-speaker")
        return {"run_id": "r-speaker", "pid": os.getpid()}

    monkeypatch.setattr(training_view, "start_job", fake_start_job)
    out = html.unescape(handlers["start_training"].fn("20260102-full")[0])
    assert picked == [(str(tiny_checkpoint), "speaker_lora")]
    assert "Started speaker run r-speaker on 20260102-full's language-adapted model" in out


def test_picking_a_language_model_changes_the_plan_and_the_start_button(config, dataset, tiny_checkpoint):
    from studio.app import build_app

    _finished_full(config, "20260102-full", tiny_checkpoint)
    demo = build_app(config)
    on_base = next(fn for fn in demo.fns.values() if fn.name == "on_base")
    plan, button = on_base.fn("20260102-full")
    assert "20260102-full&#x27;s language-adapted model" in plan and button["value"] == "Start speaker run"
    plan, button = on_base.fn("")
    assert "Quick LoRA" in plan and button["value"] == "Start training"
    start = next(fn for fn in demo.fns.values() if fn.api_name == "start_training")
    assert [getattr(block, "elem_id", None) for block in start.inputs] == ["language-model", "training-gpus"]
    assert start.concurrency_id == JOB_QUEUE and start.concurrency_limit == 1    # one queue with Resume


def test_a_finished_speaker_run_names_its_language_model(config, dataset, tiny_checkpoint):
    run_dir = _run(config, "r-spk", status="finished", phase="done", mode="speaker_lora", phases=["speaker_lora"],
                   dataset=dataset.id, speaker="aino", elapsed_s=60.0,
                   artifacts={"merged": "/m", "language_model": str(tiny_checkpoint)})
    (run_dir / "phases" / "lora").rename(run_dir / "phases" / "speaker_lora")
    view = training_view.run_view(config, "r-spk")
    assert "· Speaker LoRA" in view.progress_html and "voice aino" in view.progress_html
    assert "Language-adapted model it was trained on" in view.artifacts_html and str(tiny_checkpoint) in view.artifacts_html
    estimated = dict(zip(view.comparison[""], view.comparison["Estimate (H100-80GB)"]))
    assert estimated["Training steps"].startswith("up to") and estimated["Cost at $3.00/h"].endswith("(training)")


# -- the GPUs of this machine: found, chosen, checked before a start ------------------------------
