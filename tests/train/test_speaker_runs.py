"""A new speaker on the language-adapted model of a finished full fine-tune (mode speaker_lora)."""

import pytest

from pipeline.train.runs import RunError, read_run, update_run
from pipeline.train.workflow import language_models, run_workflow
from run_fixtures import fresh_workspace, run_config


@pytest.fixture
def config(tmp_path, tmp_path_factory, tiny_checkpoint, monkeypatch):
    workspace = fresh_workspace(tmp_path_factory, tiny_checkpoint, tmp_path / "ws")
    monkeypatch.setenv("STUDIO_WORKSPACE", str(workspace))
    return run_config(tiny_checkpoint, **{"speaker.policy": "manual", "speaker.name": "espeak_m1"})


def test_finished_full_finetunes_offer_their_language_model(config, tiny_checkpoint, tmp_path):
    update_run(config.runs_dir / "full-1", id="full-1", mode="full_finetune", status="finished",
               artifacts={"phase1_model": str(tiny_checkpoint)})
    update_run(config.runs_dir / "full-2", id="full-2", mode="full_finetune", status="failed",
               artifacts={"phase1_model": str(tiny_checkpoint)})
    update_run(config.runs_dir / "lora-1", id="lora-1", mode="quick_lora", status="finished", artifacts={})
    assert [m["run_id"] for m in language_models(config)] == ["full-1"]


def test_a_speaker_run_needs_a_language_model(config, tmp_path):
    with pytest.raises(RunError, match="language-adapted model"):
        run_workflow(config, mode="speaker_lora", model_dir=tmp_path / "nothing", run_id="spk")


def test_a_speaker_run_trains_merges_and_records_its_base(config, tiny_checkpoint):
    result = run_workflow(config, model_dir=tiny_checkpoint, mode="speaker_lora", run_id="spk")
    state = read_run(config.runs_dir / "spk")
    assert result["status"] == "finished", result.get("error")
    assert state["mode"] == "speaker_lora" and state["phases"] == ["speaker_lora"]
    assert state["base_model"] == str(tiny_checkpoint) and state["speaker"] == "espeak_m1"
    assert state["artifacts"]["language_model"] == str(tiny_checkpoint) and state["artifacts"]["merged"]
    # a resume needs no --model: the base is recorded
    again = run_workflow(config, run_id="spk")
    assert again["status"] == "finished"
