"""The Training tab's views (no server): what Start runs, refusals, and a run's progress, curves,
log, estimate vs actual and audio, read from run directories written like the workflow writes them."""

import json
import os
import time

import pytest

from audio_fixtures import speech_like, write_audio, write_clip
from pipeline.config import Config
from pipeline.jobs import JobError
from pipeline.selection import save_selection
from pipeline.workflow import write_json
from studio import training_view


@pytest.fixture
def config(tmp_path, monkeypatch) -> Config:
    monkeypatch.setenv("STUDIO_WORKSPACE", str(tmp_path / "ws"))
    return Config().with_overrides({"base_model.local_dir": str(tmp_path / "no-model"), "gpu.type": "H100-80GB",
                                    "gpu.price_per_hour": 3.0})


@pytest.fixture(scope="module")
def voices(tmp_path_factory):
    root = tmp_path_factory.mktemp("voices")
    for i in range(4):
        write_clip(root, "aino", f"aino{i}", text=f"Tämä on lause numero {i}.", seed=i)
    return root


@pytest.fixture
def dataset(config, voices):
    from pipeline.dataset import load_dataset
    from pipeline.sources import SourceSpec

    ds = load_dataset(SourceSpec(kind="folder", path=str(voices)), config)
    save_selection(config, dataset_id=ds.id)
    return ds


def _run(config, run_id, *, status, phase="lora", steps=8, total=20, pid=None, audio=False, **extra):
    """A quick_lora run directory with metrics, as pipeline.workflow and pipeline.train write it."""
    run_dir = config.runs_dir / run_id
    config.save(run_dir / "config.yaml")
    write_json(run_dir / "run.json", {"id": run_id, "mode": "quick_lora", "phases": ["lora"], "phase": phase,
                                      "status": status, "pid": pid, "started_at": time.time() - 120,
                                      "elapsed_before_s": 0.0, **extra})
    phase_dir = run_dir / "phases" / "lora"
    phase_dir.mkdir(parents=True)
    rows = [{"kind": "val", "step": 0, "val_loss": 9.1, "val_top1": 0.01, "val_top5": 0.05, "elapsed_s": 0.2}]
    for s in range(1, steps + 1):
        rows.append({"kind": "train", "step": s, "loss": 9 - 0.1 * s, "top1": 0.01 * s, "top5": 0.05 * s,
                     "lr": 1e-4, "tokens_per_s": 900.0 + s, "elapsed_s": 2.0 * s})
        if s % 4 == 0:
            rows.append({"kind": "val", "step": s, "val_loss": 9 - 0.09 * s, "val_top1": 0.01, "val_top5": 0.05,
                         "elapsed_s": 2.0 * s})
    (phase_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_json(phase_dir / "state.json", {"status": "running" if status == "running" else status, "step": steps,
                                          "total_steps": total})
    (run_dir / "log.txt").write_text("loading\r 10%|#\r 50%|#####\r100%|##########\nstep 8/20 loss 8.2\n")
    if audio:
        for i in (1, 2, 3):
            write_audio(run_dir / "audio" / f"example_{i}.wav", speech_like(seconds=0.5))
    return run_dir


def test_plan_shows_what_start_will_train(config, dataset):
    save_selection(config, speaker="aino", **{"training.quick_lora.steps": 123})
    plan = training_view.plan_html(config)
    assert "Quick LoRA" in plan and "123 steps" in plan and "aino" in plan and dataset.id in plan
    assert "not downloaded yet" in plan and "HF_TOKEN" in plan          # no base model in this workspace
    assert "H100-80GB, $3.00/h" in plan
    cfg = training_view.training_config(config)
    assert cfg.speaker.policy == "manual" and cfg.speaker.name == "aino"
    assert cfg.training.quick_lora.steps == 123 and cfg.dataset.source == "folder"


def test_plan_marks_a_random_weight_model(config, dataset, tiny_checkpoint):
    save_selection(config, **{"base_model.local_dir": str(tiny_checkpoint)})
    assert "random weights" in training_view.plan_html(config)


def test_start_needs_a_dataset_and_refuses_a_second_job(config, dataset):
    save_selection(config, dataset_id=None)
    with pytest.raises(JobError, match="Dataset tab"):
        training_view.start_run(config)
    save_selection(config, dataset_id=dataset.id)
    # a live job (this test's own pid stands in for the training process)
    write_json(config.workspace / "job.json", {"run_id": "busy-run", "pid": os.getpid(), "run_dir": "x"})
    with pytest.raises(JobError, match="busy-run"):
        training_view.start_run(config)
    assert not config.runs_dir.exists() or not any(config.runs_dir.iterdir())  # nothing half-created


def test_running_run_view_has_curves_progress_and_cancel(config):
    _run(config, "20260101-000000-quick_lora", status="running", pid=os.getpid())
    write_json(config.workspace / "job.json", {"run_id": "20260101-000000-quick_lora", "pid": os.getpid(),
                                               "run_dir": str(config.runs_dir / "20260101-000000-quick_lora")})
    assert training_view.default_run(config) == "20260101-000000-quick_lora"
    view = training_view.run_view(config, "20260101-000000-quick_lora")
    names = {t.name: t for t in view.figure.data}
    assert len(names["train loss"].x) == 8 == view.points and len(names["held-out loss"].x) == 3
    assert "step" in view.progress_html and "8 / 20" in view.progress_html
    assert "24 s" in view.progress_html                    # ETA: 12 steps × 2 s
    assert "$3.00/h" in view.progress_html and "running" in view.progress_html
    assert view.can_cancel and not view.can_resume and view.comparison is None
    assert view.log.splitlines()[0] == "100%|##########"  # progress bars: only their last state


def test_finished_run_view_compares_estimate_and_actual_and_lists_audio(config, dataset):
    older = _run(config, "20260101-000000-quick_lora", status="failed", error="OutOfMemoryError: boom")
    _run(config, "20260102-000000-quick_lora", status="finished", phase="done", audio=True, elapsed_s=3600.0,
         dataset=dataset.id, artifacts={"merged": "/m", "adapter": "/a", "adapter_zip": str(older / "nope.zip")})
    assert [v for _, v in training_view.run_choices(config)] == ["20260102-000000-quick_lora",
                                                              "20260101-000000-quick_lora"]
    assert training_view.default_run(config) == "20260102-000000-quick_lora"      # no job: the newest
    view = training_view.run_view(config, "20260102-000000-quick_lora")
    assert view.status == "finished" and not view.can_cancel and not view.can_resume
    assert [label for _, label in view.eval_audio][0].startswith("Tervetuloa")  # the sentence spoken
    assert len(view.eval_audio) == 3
    table = view.comparison
    assert list(table.columns) == ["", "Estimate (H100-80GB)", "This run"]
    by_row = dict(zip(table[""], table["This run"]))
    assert by_row["Cost at $3.00/h"].startswith("$3.00")                          # 1 h at $3/h
    assert by_row["Training steps"] == "8" and by_row["Training time"] == "16 s"
    assert view.comparison_note == ""
    html = training_view.comparison_html(view)
    assert "Estimate vs this run" in html and "Estimate (H100-80GB)" in html
    assert "/m" in view.artifacts_html and view.adapter_zip is None              # zip path missing on disk


def test_failed_run_shows_its_error_and_can_resume(config):
    _run(config, "r-failed", status="failed", error="OutOfMemoryError: lower the batch size")
    view = training_view.run_view(config, "r-failed")
    assert "OutOfMemoryError: lower the batch size" in view.progress_html and "Resume" in view.progress_html
    assert view.can_resume and "step 8/20" in view.log
    assert view.comparison is None and "No estimate" in view.comparison_note   # no dataset recorded


def test_a_dead_running_run_is_reported_failed(config):
    _run(config, "r-dead", status="running", pid=2 ** 22 + 12345)              # no such process
    view = training_view.run_view(config, "r-dead")
    assert view.status == "failed" and "ended without finishing" in view.progress_html


def test_no_runs_and_unknown_runs(config):
    view = training_view.run_view(config, None)
    assert "No runs yet" in view.progress_html and view.figure.data == ()
    assert training_view.default_run(config) is None
    with pytest.raises(JobError, match="no run"):
        training_view.run_view(config, "missing")


def test_the_app_has_the_tab_and_its_api(config):
    from studio.app import TABS, build_app

    titles = [title for title, *_ in TABS]
    assert titles.index("Training") == titles.index("Modes & cost") + 1
    demo = build_app(config)
    ids = {getattr(block, "elem_id", None) for block in demo.blocks.values()}
    assert {"start-training", "cancel-training", "resume-training", "run-choice", "run-progress",
            "training-curves", "run-log", "run-comparison", "eval-audio-0"} <= ids
    assert {"start_training", "cancel_training", "resume_training", "show_run", "run_status"} <= \
        {fn.api_name for fn in demo.fns.values()}


def test_failures_are_one_line_messages():
    assert training_view.failure(JobError("Cancel it first.")) == "Cancel it first."
    text = training_view.failure(RuntimeError("boom"))
    assert text.startswith("Unexpected error (RuntimeError): boom") and "console" in text


def test_validation_audio_and_memory_plan_are_shown(config):
    run_dir = _run(config, "r-heard", status="running", pid=os.getpid())
    for step in (4, 8):
        write_audio(run_dir / "phases" / "lora" / "audio" / f"step_{step:06d}" / "sentence_1.wav", speech_like(seconds=0.3))
    state = json.loads((run_dir / "phases" / "lora" / "state.json").read_text())
    write_json(run_dir / "phases" / "lora" / "state.json",
               state | {"memory_plan": "micro-batch 1 x 4 accumulation, gradient checkpointing off: ~20.8 GB of 40 GB"})
    view = training_view.run_view(config, "r-heard")
    assert [step for step, _ in view.val_audio] == [4, 8]
    assert view.val_audio[-1][1][0].endswith("step_000008/sentence_1.wav")
    assert "Memory plan for this GPU: micro-batch 1 x 4" in view.progress_html
