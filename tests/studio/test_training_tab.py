"""The Training tab's views (no server): what Start runs, refusals, and a run's progress, curves,
log, estimate vs actual and audio, read from run directories written like the workflow writes them."""

import html
import json
import os
import re
import shutil
import time

import pytest

from audio_fixtures import speech_like, write_audio
from studio.logic import runs_view
from pipeline.train.jobs import JobError
from pipeline.data.selection import save_selection
from pipeline.atomic import write_json
from studio.tabs import training_view
from training_fixtures import _live, _run, _tab


def test_plan_shows_what_start_will_train(config, dataset):
    save_selection(config, speaker="aino", **{"training.quick_lora.steps": 123})
    plan = training_view.plan_html(config)
    assert "Quick LoRA" in plan and "123 steps" in plan and dataset.id in plan
    assert "all speakers" in plan and "aino" not in plan        # quick LoRA trains on every speaker
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
    # progress bars: only their last state, as a plain line
    assert view.log.splitlines()[0] == "VQ codes: 100% 10/10 [00:10<00:00, 1.00it/s]"


def test_finished_run_view_compares_estimate_and_actual_and_lists_audio(config, dataset):
    older = _run(config, "20260101-000000-quick_lora", status="failed", error="OutOfMemoryError: boom")
    _run(config, "20260102-000000-quick_lora", status="finished", phase="done", audio=True, elapsed_s=3600.0,
         dataset=dataset.id, artifacts={"merged": "/m", "adapter": "/a", "adapter_zip": str(older / "nope.zip")})
    assert [v for _, v in training_view.run_choices(config)] == ["20260102-000000-quick_lora",
                                                              "20260101-000000-quick_lora"]
    # a run whose process died while "running" reads as failed in the list, before anyone opens it
    _run(config, "20260103-000000-quick_lora", status="running", pid=2 ** 22 + 12345)
    assert training_view.run_choices(config)[0][0] == "20260103-000000-quick_lora · failed"
    assert runs_view.read_run(config.runs_dir / "20260103-000000-quick_lora")["status"] == "running"  # untouched
    shutil.rmtree(config.runs_dir / "20260103-000000-quick_lora")
    assert training_view.default_run(config) == "20260102-000000-quick_lora"      # no job: the newest
    view = training_view.run_view(config, "20260102-000000-quick_lora")
    assert view.status == "finished" and not view.can_cancel and not view.can_resume
    assert [label for _, label in view.eval_audio][0].startswith("Tervetuloa")  # the sentence spoken
    assert len(view.eval_audio) == 3
    table = view.comparison
    assert list(table.columns) == ["", "Estimate (H100-80GB)", "This run"]
    by_row = dict(zip(table[""], table["This run"]))
    estimated = dict(zip(table[""], table["Estimate (H100-80GB)"]))
    assert by_row["Cost at $3.00/h"].startswith("$3.00")                          # 1 h at $3/h
    assert re.fullmatch(r"[\d.]+(–[\d.]+)? min", estimated["Wall time (all stages)"])  # every stage estimated
    assert estimated["Cost at $3.00/h"].endswith("(all stages)") and "$0.00" not in estimated["Cost at $3.00/h"]
    assert by_row["Training steps"] == "8" and by_row["Training time"] == "16 s"
    assert view.comparison_note == ""
    html = training_view.comparison_html(view)
    assert "Estimate vs this run" in html and "Estimate (H100-80GB)" in html
    assert "/m" in view.artifacts_html and view.adapter_zip is None              # zip path missing on disk
    assert "Language-adapted model" not in view.artifacts_html                   # not a speaker run


def test_a_cpu_run_is_not_charged(config, dataset):
    run_dir = _run(config, "r-cpu", status="finished", phase="done", elapsed_s=3600.0, dataset=dataset.id)
    state = json.loads((run_dir / "phases" / "lora" / "state.json").read_text())
    write_json(run_dir / "phases" / "lora" / "state.json", state | {"memory_plan": None})  # the trainer on a CPU
    view = training_view.run_view(config, "r-cpu")
    assert "CPU: no charge" in view.progress_html and "$3.00</div>" not in view.progress_html
    assert dict(zip(view.comparison[""], view.comparison["This run"]))["Cost at $3.00/h"] == "CPU: no charge"


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


def test_plan_of_a_full_finetune_names_the_speaker(config, dataset):
    save_selection(config, speaker="aino", **{"training_mode.selected": "full_finetune"})
    plan = training_view.plan_html(config)
    assert "aino (speaker LoRA after the full fine-tune)" in plan and "all speakers" not in plan


# -- the live view survives every state of a run's files ------------------------------------------
VAL0 = {"kind": "val", "step": 0, "val_loss": 9.1, "val_top1": 0.01, "val_top5": 0.05, "elapsed_s": 0.2}
TRAIN1 = {"kind": "train", "step": 1, "loss": 9.0, "top1": 0.01, "top5": 0.05, "lr": 1e-4, "tokens_per_s": 900.0,
          "elapsed_s": 2.0}
METRICS_STATES = {
    "missing": None,
    "empty": "",
    "only the step-0 validation row": json.dumps(VAL0) + "\n",
    "one training row": json.dumps(TRAIN1) + "\n",
    "a half-written last line": json.dumps(VAL0) + "\n" + json.dumps(TRAIN1) + "\n" + '{"kind": "train", "st',
    "only a half-written line": '{"kind": "val", "step": 0, "val_lo',
    "a row without a step": json.dumps(VAL0) + "\n" + '{"kind": "train", "loss": 1.0}\n',
}


@pytest.mark.parametrize("state", list(METRICS_STATES))
def test_the_live_view_renders_any_metrics_file(config, state):
    run_dir = _run(config, "r-live", status="running", pid=os.getpid(), steps=0)
    metrics = run_dir / "phases" / "lora" / "metrics.jsonl"
    (run_dir / "phases" / "lora" / "state.json").unlink()   # the trainer writes it after the step-0 row
    if METRICS_STATES[state] is None:
        metrics.unlink()
    else:
        metrics.write_text(METRICS_STATES[state])
    _live(config, "r-live")
    view = training_view.run_view(config, "r-live")
    assert view.run_id == "r-live" and view.status == "running"
    assert view.can_cancel and not view.can_resume
    assert "error" not in view.progress_html and "cannot be shown" not in view.progress_html
    assert view.points == (1 if "training row" in state or "half-written last" in state else 0)
    held_out = [t for t in view.figure.data if t.name == "held-out loss"]
    if "validation row" in state:
        assert list(held_out[0].x) == [0]


def test_the_view_at_the_switch_to_the_speaker_phase(config):
    run_dir = _run(config, "r-ff", status="running", pid=os.getpid(), mode="full_finetune",
                   phases=["full", "speaker_lora"], phase="speaker_lora", speaker="aino")
    (run_dir / "phases" / "lora").rename(run_dir / "phases" / "full")
    speaker = run_dir / "phases" / "speaker_lora"
    speaker.mkdir()
    (speaker / "metrics.jsonl").write_text(json.dumps(VAL0) + "\n")  # the new phase's first row only
    _live(config, "r-ff")
    view = training_view.run_view(config, "r-ff")
    assert view.phase == "speaker_lora" and view.phases == ["full", "speaker_lora"] and view.can_cancel
    assert "Phase 2 of 2: Speaker LoRA on the chosen voice" in view.progress_html
    assert "phase 3" not in view.progress_html and "error" not in view.progress_html
    earlier = training_view.run_view(config, "r-ff", "full")           # the finished phase is still there
    assert earlier.points == 8 and "Phase 2 of 2" in earlier.progress_html


def test_a_part_that_cannot_be_read_keeps_the_run_and_cancel(config, monkeypatch):
    _run(config, "r-broken", status="running", pid=os.getpid())
    _live(config, "r-broken")

    def broken(*args, **kwargs):
        raise KeyError("step")

    monkeypatch.setattr(training_view.run_charts, "training_curves", broken)
    view = training_view.run_view(config, "r-broken")
    assert view.run_id == "r-broken" and view.can_cancel
    assert "The curves cannot be shown now (KeyError" in view.progress_html
    assert "8 / 20" in view.progress_html and "step 8/20" in view.log  # the other parts are there
    assert view.figure.layout.annotations[0].text == "The curves cannot be shown now."
    # an unreadable run as a whole still keeps the selection and Cancel of the running job
    fallback = training_view.empty_view(config, "r-broken", "boom")
    assert fallback.run_id == "r-broken" and fallback.can_cancel and "boom" in fallback.progress_html


def test_run_ids_from_the_page_are_checked(config):
    _run(config, "20260105-000000-quick_lora", status="finished", phase="done")
    assert training_view.checked_run_id(config, "20260105-000000-quick_lora") == "20260105-000000-quick_lora"
    for bad in ("../../x", "a/b", "..", "", None, "x" * 300 + "/"):
        with pytest.raises(JobError, match="not a run id"):
            training_view.checked_run_id(config, bad)
    with pytest.raises(JobError, match="no run 'later-run'.*Refresh"):
        training_view.checked_run_id(config, "later-run")
    with pytest.raises(JobError, match="no run 'later-run'"):
        training_view.run_view(config, "later-run")


# -- progress of every stage, labels --------------------------------------------------------------
def test_extraction_shows_its_progress_and_eta_from_the_log(config):
    run_dir = _run(config, "r-codes", status="running", pid=os.getpid(), phase="extract", steps=0,
                   stage_started_at=time.time() - 30)
    (run_dir / "phases" / "lora" / "state.json").unlink()
    (run_dir / "log.txt").write_text(" 100.0% 40 of 40 clips accepted\n"
                                     "  10.0% VQ codes: 4/40 clips (0 cached)\n"
                                     "  25.0% VQ codes: 10/40 clips (2 cached)\n")
    _live(config, "r-codes")
    view = training_view.run_view(config, "r-codes")
    assert "10 / 40 clips" in view.progress_html and "width: 25.0%" in view.progress_html
    assert "ETA (this stage)" in view.progress_html
    assert re.search(r">1\.[56] min<", view.progress_html)                       # 30 s for 25 %: 90 s left
    assert "Extracting VQ codes" in view.progress_html and "then phase 1 of 1: LoRA on all clips" in view.progress_html


def test_extraction_progress_recorded_in_run_json_wins(tmp_path):
    run = {"phase": "extract", "status": "running", "stage_started_at": 1000.0, "stage_progress": 0.5,
           "stage_message": "VQ codes: 20/40 clips (0 cached)"}
    assert runs_view.stage_progress(tmp_path, run, now=1060.0) == (0.5, 60.0, "20 / 40 clips")


def test_evaluation_audio_shows_sentences_done_and_an_eta(config):
    started = time.time() - 20
    run_dir = _run(config, "r-eval", status="running", pid=os.getpid(), phase="evaluate", stage_started_at=started)
    write_audio(run_dir / "audio" / "example_1.wav", speech_like(seconds=0.3))
    _live(config, "r-eval")
    view = training_view.run_view(config, "r-eval")
    total = runs_view.EVALUATION_SENTENCES
    assert f"1 / {total} sentences" in view.progress_html
    assert "Rendering evaluation audio" in view.progress_html and "ETA (this stage)" in view.progress_html
    eta = float(re.search(r"class='value'>(\d+) s</div><div class='label'>ETA", view.progress_html).group(1))
    assert 20 * (total - 1) <= eta < 25 * (total - 1)                               # ~20 s a sentence


def test_the_eta_at_the_last_step_says_finishing(config):
    run_dir = _run(config, "r-last", status="running", pid=os.getpid(), steps=20, total=20)
    # the last step's row is written; state.json still holds the step before (validation, checkpoint)
    write_json(run_dir / "phases" / "lora" / "state.json", {"status": "running", "step": 19, "total_steps": 20})
    _live(config, "r-last")
    html = training_view.run_view(config, "r-last").progress_html
    assert "20 / 20" in html and "finishing (validation, checkpoint)" in html and ">2 s<" not in html


@pytest.mark.parametrize("status, label", [("failed", "Failed before the first stage"),
                                           ("cancelled", "Cancelled before the first stage"),
                                           ("created", "Waiting to start")])
def test_a_run_without_a_stage_says_what_happened(config, status, label):
    _run(config, "r-early", status=status, phase=None, error="HF_TOKEN missing" if status == "failed" else None)
    html = training_view.run_view(config, "r-early").progress_html
    assert label in html and (status == "created" or "Waiting to start" not in html)


def test_the_log_shows_each_warning_once_and_bars_as_lines():
    warning = ("/x/torch/nn/utils/weight_norm.py:144: FutureWarning: `weight_norm` is deprecated.\n"
               "  WeightNorm.apply(module, name, dim)\n")
    raw = (warning + "step 1/4 loss 9.0\n" + warning + "/x/a.py:3: UserWarning: other\n  warn()\n"
           + "\rExtract:   0%|          | 0/4 [00:00<?, ?it/s]\rExtract:  50%|#####     | 2/4 [00:01<00:01, 2.0it/s]\n"
           + "\x1b[2m 50.0%\x1b[0m VQ codes: 2/4 clips\nstep 2/4 loss 8.0\n")
    lines = training_view.clean_log(raw).splitlines()
    assert lines == ["FutureWarning: `weight_norm` is deprecated. (shown once)", "step 1/4 loss 9.0",
                     "UserWarning: other (shown once)", "Extract: 50% 2/4 [00:01<00:01, 2.0it/s]",
                     " 50.0% VQ codes: 2/4 clips", "step 2/4 loss 8.0"]
    assert training_view.clean_log(raw, keep=2).splitlines() == lines[-2:]


# -- the tab's handlers (no server) ---------------------------------------------------------------
def test_start_and_resume_share_one_queue(config):
    handlers, _ = _tab(config)
    start, resume = handlers["start_training"], handlers["resume_training"]
    assert start.concurrency_id == resume.concurrency_id
    assert start.concurrency_limit == resume.concurrency_limit == 1


def test_runs_created_after_the_page_was_built_are_accepted_and_others_refused(config):
    import gradio as gr

    handlers, run_dd = _tab(config)
    assert run_dd.allow_custom_value
    _run(config, "r-later", status="finished", phase="done")
    shown = handlers["show_run"].fn("r-later")
    assert shown[0]["value"] == "r-later" and "r-later" in shown[2]
    refused = handlers["show_run"].fn("../../etc")
    assert "not a run id" in refused[2]
    assert handlers["run_status"].fn("r-later")["status"] == "finished"
    with pytest.raises(gr.Error, match="not a run id"):
        handlers["run_status"].fn("../../x")
    message = html.unescape(handlers["resume_training"].fn("no-such-run")[0])
    assert "no run 'no-such-run'" in message


def test_the_panel_follows_a_job_started_after_it_looked(config):
    """The page showed a finished run (its load answered before Start, or the job came from another
    tab or the CLI): the next tick switches to the new job, once."""
    handlers, _ = _tab(config)
    _run(config, "r-old", status="finished", phase="done")
    _run(config, "r-new", status="starting", pid=os.getpid(), phase=None)
    _live(config, "r-new")
    out = handlers["tick"].fn("r-old", None, (), None)
    assert out[0]["value"] == "r-new" and out[-1] == "r-new"
    assert out[8]["interactive"] is True                                         # Cancel
    # the user then looks at the old run again: no switching back while the same job runs
    again = handlers["tick"].fn("r-old", None, (), "r-new")
    assert again[0]["value"] == "r-old" and again[8]["interactive"] is False
    # Cancel from a page showing another run is refused, not applied to the running job
    refused = html.unescape(handlers["cancel_training"].fn("r-old")[0])
    assert "not the running job" in refused and "r-new" in refused


def test_start_shows_the_new_run_at_once(config, monkeypatch):
    handlers, _ = _tab(config)
    _run(config, "r-old", status="finished", phase="done")

    def fake_start(cfg, run_id=None, base_run=None, gpus=None):  # the job process itself is pipeline.train.jobs' business
        _run(config, "r-started", status="starting", pid=os.getpid(), phase=None)
        _live(config, "r-started")
        return {"run_id": "r-started", "pid": os.getpid()}

    monkeypatch.setattr("studio.tabs.training.start_run", fake_start)
    out = handlers["start_training"].fn("")
    assert "Started run r-started" in out[0] and out[1]["value"] == "r-started"
    assert out[9]["interactive"] is True and "Waiting to start" in out[3]
