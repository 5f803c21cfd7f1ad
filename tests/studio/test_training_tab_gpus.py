"""The Training tab's GPU count: what was found, the choice, and what it changes (no server)."""

import html
import os

import pytest

from studio.logic import runs_view, training_gpus
from pipeline.data.selection import save_selection
from studio.tabs import training_view
from training_fixtures import _run, _tab


H100 = {"name": "NVIDIA H100 80GB HBM3", "memory_gb": 85.5}


def _gpus(monkeypatch, count: int) -> list[dict]:
    devices = [dict(H100) for _ in range(count)]
    monkeypatch.setattr(training_gpus, "visible_gpus", lambda: devices)
    return devices


def _block(demo, elem_id):
    return next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == elem_id)


def test_the_gpus_found_and_the_counts_on_offer(config):
    four = [dict(H100) for _ in range(4)]
    assert training_gpus.found_text(four) == "GPUs found: 4 × NVIDIA H100 80GB HBM3 (85.5 GB)"
    mixed = [H100, {"name": "NVIDIA L4", "memory_gb": 23.6}]
    assert training_gpus.found_text(mixed) == "GPUs found: 1 × NVIDIA H100 80GB HBM3 (85.5 GB), 1 × NVIDIA L4 (23.6 GB)"
    assert training_gpus.found_text([]) == "no GPU: training runs on the CPU, one process"
    assert training_gpus.counts(four) == [1, 2, 3, 4] and training_gpus.counts([]) == [1]
    assert training_gpus.selectable(four) and not training_gpus.selectable([H100]) and not training_gpus.selectable([])
    assert training_gpus.default_count(config, four) == 4                       # training.gpus: auto = all
    assert training_gpus.default_count(config.with_overrides({"training.gpus": 2}), four) == 2
    assert training_gpus.default_count(config.with_overrides({"training.gpus": 8}), four) == 4   # capped
    assert training_gpus.default_count(config.with_overrides({"training.gpus": 2}), []) == 1     # one CPU process


@pytest.mark.parametrize("count, shown", [(4, True), (1, False), (0, False)])
def test_the_tab_shows_the_gpus_found_and_the_choice(config, monkeypatch, count, shown):
    from studio.app import build_app

    devices = _gpus(monkeypatch, count)
    demo = build_app(config)
    line, choice = _block(demo, "gpus-found"), _block(demo, "training-gpus")
    assert line.value == training_gpus.found_text(devices)
    assert choice.visible is shown and choice.label == "GPUs for this run"
    assert [value for _, value in choice.choices] == list(range(1, max(count, 1) + 1))
    assert choice.value == max(count, 1)                                         # default: every GPU


def test_start_and_resume_pass_the_chosen_count(config, dataset, monkeypatch):
    _gpus(monkeypatch, 4)
    calls = []

    def fake_start_job(cfg, run_id=None, model_dir=None, mode=None, gpus=None):
        calls.append({"run_id": run_id, "gpus": gpus})
        return {"run_id": run_id or "r-new", "pid": os.getpid()}

    monkeypatch.setattr(training_view, "start_job", fake_start_job)
    handlers, _ = _tab(config)
    out = html.unescape(handlers["start_training"].fn("", 2)[0])
    assert calls[-1] == {"run_id": None, "gpus": 2} and "on 2 GPUs (data-parallel)" in out
    training_view.start_run(config)                                              # no choice: training.gpus (auto)
    assert calls[-1]["gpus"] == 4
    _run(config, "r-stopped", status="cancelled")
    out = html.unescape(handlers["resume_training"].fn("r-stopped", 1)[0])       # a resume may change the count
    assert calls[-1] == {"run_id": "r-stopped", "gpus": 1} and "Resumed run r-stopped" in out
    refused = html.unescape(handlers["start_training"].fn("", 5)[0])
    assert "GPUs for this run: choose a whole number from 1 to 4" in refused and len(calls) == 3


def test_a_global_batch_that_does_not_split_is_refused_before_starting(config, dataset, monkeypatch):
    from pipeline.train.distributed import World, rank_share
    from pipeline.train.settings import TrainError

    _gpus(monkeypatch, 4)
    save_selection(config, **{"training.batch_size": 4, "training.grad_accumulation": 1})
    with pytest.raises(TrainError) as expected:
        rank_share(4, World(0, 3))
    calls = []
    monkeypatch.setattr(training_view, "start_job", lambda cfg, **kw: calls.append(kw) or {"run_id": "x", "pid": 1})
    with pytest.raises(TrainError) as refused:
        training_view.start_run(config, gpus=3)
    assert str(refused.value) == str(expected.value) and "training.grad_accumulation" in str(refused.value)
    handlers, _ = _tab(config)
    assert str(expected.value) in html.unescape(handlers["start_training"].fn("", 3)[0])
    # the plan says so before Start is pressed, and says the split when there is one
    assert str(expected.value) in html.unescape(training_view.plan_html(config, gpus=3))
    assert "on 2 GPUs (data-parallel): 2 of the 4 sequences" in training_view.plan_html(config, gpus=2)
    assert "data-parallel" not in training_view.plan_html(config, gpus=1)
    # a resume is checked against the run's own batch (3 sequences here), not the current settings
    _run(config, "r-odd", status="failed")
    config.with_overrides({"training.batch_size": 3}).save(config.runs_dir / "r-odd" / "config.yaml")
    assert "does not split evenly over 2 GPUs" in html.unescape(handlers["resume_training"].fn("r-odd", 2)[0])
    assert calls == []
    training_view.start_run(config, "r-odd", gpus=3)
    assert calls == [{"run_id": "r-odd", "gpus": 3}]


def test_the_estimate_beside_an_n_gpu_run_is_for_that_many_gpus(config, dataset, monkeypatch):
    from pipeline.estimate import cost

    asked = []
    real = cost.estimate
    monkeypatch.setattr(cost, "estimate", lambda *a, **kw: asked.append(kw.get("gpus")) or real(*a, **kw))
    _run(config, "r-one", status="finished", phase="done", elapsed_s=3600.0, dataset=dataset.id)
    _run(config, "r-two", status="finished", phase="done", elapsed_s=3600.0, dataset=dataset.id, gpus=2)
    one = runs_view.estimate_vs_actual(config.runs_dir / "r-one", config=config)
    two = runs_view.estimate_vs_actual(config.runs_dir / "r-two", config=config)
    assert asked == [1, 2]
    assert list(two.columns) == ["", "Estimate (2 × H100-80GB)", "This run"]
    rows = dict(zip(two[""], two["This run"]))
    assert rows["Cost at 2 × $3.00/h"].startswith("$6.00")                      # 1 h on 2 GPUs at $3/h each
    assert dict(zip(one[""], one["This run"]))["Cost at $3.00/h"].startswith("$3.00")
    view = training_view.run_view(config, "r-two")
    assert "Cost at 2 × $3.00/h" in html.unescape(view.progress_html)
