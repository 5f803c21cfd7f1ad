"""Figures of the Modes & cost tab (time vs cost per GPU) and the Training tab (curves)."""

import json

import pandas as pd
import plotly.graph_objects as go
import pytest

from studio.logic import run_charts
from pipeline.config import Config
from pipeline.estimate.cost import estimate, load_price_table


def _manifest(minutes: float = 30.0, clip_s: float = 6.0) -> pd.DataFrame:
    n = int(minutes * 60 / clip_s)
    return pd.DataFrame({"id": [f"c{i}" for i in range(n)], "speaker": ["a" if i % 3 else "b" for i in range(n)],
                         "duration_s": clip_s, "normalized_text": "hyvää huomenta suomi", "status": "ok"})


@pytest.fixture
def table(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIO_WORKSPACE", str(tmp_path))
    # long sequences, so that full fine-tuning cannot fit a 24 GB card even with the memory plan
    return estimate(Config().with_overrides({"training.max_length": 12288}), _manifest(), "a", benches=[])


def _markers(fig: go.Figure) -> list[tuple[str, float, float, str]]:
    """(gpu, x, y, symbol) of every GPU marker (the 'your choice' ring left out)."""
    out = []
    for trace in fig.data:
        if trace.name == "your choice":
            continue
        symbols = trace.marker.symbol
        for x, y, symbol in zip(trace.x, trace.y, symbols):
            out.append((trace.name, x, y, symbol))
    return out


def test_cost_comparison_has_one_marker_per_gpu_and_mode(table):
    fig = run_charts.cost_comparison(table, "A100-80GB", "quick_lora")
    markers = _markers(fig)
    gpus = list(load_price_table()["gpus"])
    assert len(markers) == 2 * len(gpus) == len(table)
    assert {name for name, *_ in markers} == set(gpus)
    assert all(t.type == "scatter" for t in fig.data)  # SVG: renders in headless browsers
    # symbols: circle = quick LoRA, diamond = full fine-tune, hollow when it does not fit
    for _, row in table.iterrows():
        trace = next(t for t in fig.data if t.name == row["gpu"])
        index = [m for m in table[table["gpu"] == row["gpu"]]["mode"]].index(row["mode"])
        expected = ("circle" if row["mode"] == "quick_lora" else "diamond") + ("" if row["fits"] else "-open")
        assert trace.marker.symbol[index] == expected
        assert trace.y[index] == pytest.approx(row["cost_usd"])
    assert not table["fits"].all() and table["fits"].any()  # the 24 GB cards cannot fit full fine-tuning


def test_cost_comparison_rings_the_configured_choice_and_picks_units(table):
    fig = run_charts.cost_comparison(table, "H100-80GB", "full_finetune")
    ring = next(t for t in fig.data if t.name == "your choice")
    chosen = table[(table.gpu == "H100-80GB") & (table["mode"] == "full_finetune")].iloc[0]
    hours = table["minutes"].max() >= 90
    assert ring.y[0] == pytest.approx(chosen.cost_usd)
    assert ring.x[0] == pytest.approx(chosen.minutes / 60 if hours else chosen.minutes)
    assert ("hours" if hours else "minutes") in fig.layout.xaxis.title.text
    unknown = run_charts.cost_comparison(table, "TPU", "quick_lora")
    assert "your choice" not in [t.name for t in unknown.data]


def test_cost_comparison_without_data_shows_a_message():
    fig = run_charts.cost_comparison(pd.DataFrame())
    assert fig.data == () and "Load a dataset" in fig.layout.annotations[0].text


def _metrics(steps: int = 12, val_every: int = 4):
    train = pd.DataFrame({"step": range(1, steps + 1), "loss": [5 - 0.1 * i for i in range(steps)],
                          "top1": [0.1 + 0.01 * i for i in range(steps)],
                          "top5": [0.3 + 0.01 * i for i in range(steps)],
                          "lr": [1e-4] * steps, "tokens_per_s": [1000.0 + i for i in range(steps)],
                          "elapsed_s": [0.5 * i for i in range(1, steps + 1)]})
    val_steps = [0, *range(val_every, steps + 1, val_every)]
    val = pd.DataFrame({"step": val_steps, "val_loss": [5.2 - 0.1 * i for i in range(len(val_steps))],
                        "val_top1": 0.1, "val_top5": 0.3})
    return train, val


def test_training_curves_plot_every_metric_over_steps():
    train, val = _metrics()
    fig = run_charts.training_curves(train, val, "LoRA")
    traces = {t.name: t for t in fig.data}
    assert set(traces) == {"train loss", "held-out loss", "train top-1", "train top-5", "held-out top-1",
                           "held-out top-5", "learning rate", "tokens/s"}
    assert list(traces["train loss"].x) == list(range(1, 13))
    assert list(traces["held-out loss"].x) == [0, 4, 8, 12]
    assert list(traces["tokens/s"].y) == list(train["tokens_per_s"])
    # panels: loss and accuracy on top, learning rate and throughput below
    assert traces["train loss"].yaxis == "y" and traces["held-out top-5"].yaxis == "y2"
    assert traces["learning rate"].yaxis == "y3" and traces["tokens/s"].yaxis == "y4"
    # a constant learning rate gets a real axis, not plotly's ±1 around it
    assert tuple(fig.layout.yaxis3.range) == pytest.approx((0, 1.15e-4))
    assert isinstance(traces["train loss"].x, tuple)  # plain arrays, not base64 numpy, in the page
    titles = [a.y for a in fig.layout.annotations]  # subplot titles sit at the top of their panels
    assert fig.layout.legend.y < 0 < min(titles)  # the legend under the grid, clear of every title


def test_training_curves_grow_with_the_metrics_and_handle_no_data():
    train, val = _metrics(steps=20)
    short = run_charts.training_curves(train.head(5), val.head(2))
    longer = run_charts.training_curves(train, val)
    assert len(short.data[0].x) == 5 and len(longer.data[0].x) == 20
    empty = run_charts.training_curves(pd.DataFrame(columns=["step"]), pd.DataFrame(columns=["step"]))
    assert empty.data == () and "No training steps yet" in empty.layout.annotations[0].text
    only_train = run_charts.training_curves(train, None)
    assert "held-out loss" not in [t.name for t in only_train.data]


def test_training_curves_with_only_the_first_validation_row():
    _, val = _metrics()
    fig = run_charts.training_curves(pd.DataFrame(columns=["step"]), val.head(1))
    assert [t.name for t in fig.data] == ["held-out loss", "held-out top-1", "held-out top-5"]
    assert list(fig.data[0].x) == [0]
    note = run_charts.message_figure("LoRA", "The curves cannot be shown now.")
    assert note.data == () and note.layout.annotations[0].text == "The curves cannot be shown now."


def test_quality_curves_from_a_metrics_file_with_scored_validations(tmp_path):
    from pipeline.train.metrics import read_metrics

    rows = [{"kind": "train", "step": s, "loss": 3.0 - 0.1 * s} for s in range(1, 9)]
    rows += [{"kind": "val", "step": 4, "val_loss": 2.5, "val_cer": 0.40, "val_similarity": 0.61, "val_ovrl": 2.4},
             {"kind": "val", "step": 8, "val_loss": 2.1, "val_cer": 0.25, "val_similarity": 0.72, "val_ovrl": 2.9},
             {"kind": "val", "step": 6, "val_loss": 2.3, "val_similarity": 0.70, "val_ovrl": 2.6}]  # no ASR here
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    _, val = read_metrics(path)
    fig = run_charts.quality_curves(val)
    traces = {t.name: t for t in fig.data}
    assert set(traces) == {"CER", "similarity", "DNSMOS OVRL"}
    assert list(traces["CER"].x) == [4, 8] and list(traces["CER"].y) == [0.40, 0.25]  # the unscored step skipped
    assert list(traces["similarity"].x) == [4, 6, 8] and list(traces["DNSMOS OVRL"].y) == [2.4, 2.6, 2.9]
    assert (traces["CER"].xaxis, traces["similarity"].xaxis, traces["DNSMOS OVRL"].xaxis) == ("x", "x2", "x3")
    assert tuple(fig.layout.yaxis3.range) == (1, 5)
    assert fig.layout.title.text == "Voice quality during training"


def test_quality_curves_say_why_when_no_validation_was_scored(tmp_path):
    _, val = _metrics()  # held-out loss and accuracy only
    for frame in (val, pd.DataFrame(columns=["step"]), None):
        fig = run_charts.quality_curves(frame)
        assert fig.data == () and "No voice-quality scores" in fig.layout.annotations[0].text
    assert not run_charts.has_quality(val)
