"""Plotly figures for the Modes & cost tab (time vs cost per GPU) and the Training tab (curves, voice quality).

Inputs are plain DataFrames: `pipeline.estimate.cost.estimate`'s table and the train/validation rows of
a metrics.jsonl (`pipeline.train.metrics.read_metrics`). Scatter traces only (SVG, not WebGL), so
the charts render in headless browsers too. No gradio import.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from studio.logic.charts import FONT

MODE_STYLE = {  # colour and marker per training mode, the same in the table's wording
    "quick_lora": ("#2a9d8f", "circle", "Quick LoRA"),
    "full_finetune": ("#264653", "diamond", "Full fine-tune"),
}
GPU_PALETTE = ("#2a9d8f", "#264653", "#e9c46a", "#f4a261", "#e76f51", "#6d597a", "#457b9d", "#8ab17d")
TRAIN, VAL, TOP5 = "#2a9d8f", "#e76f51", "#264653"


def _style(fig: go.Figure, title: str, height: int) -> go.Figure:
    fig.update_layout(
        title=dict(text=title, x=0.01, xanchor="left", font=dict(size=15)), template="plotly_white",
        font=FONT, height=height, margin=dict(l=60, r=24, t=72, b=52), hoverlabel=dict(font_size=12),
        legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="right", x=1.0, title_text=""),
    )
    return fig


def _message(title: str, text: str, height: int) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=text, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper",
                       font=dict(size=13, color="#6b7280"))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return _style(fig, title, height)


def message_figure(title: str, text: str) -> go.Figure:
    """An empty training-curves figure that says why there is nothing to plot."""
    return _message(title, text, 560)


# -- Modes & cost ---------------------------------------------------------------------------------
def cost_comparison(table: pd.DataFrame, selected_gpu: str | None = None,
                    selected_mode: str | None = None) -> go.Figure:
    """Time (x) against cost (y), one marker per GPU × mode: colour = GPU, shape = mode (circle quick
    LoRA, diamond full fine-tune), hollow = the run does not fit in that card's memory; the
    configured GPU and mode is ringed. Log axes when the spread is wide."""
    title = "Time and cost per GPU — lower left is faster and cheaper"
    if table is None or table.empty:
        return _message(title, "Load a dataset to see the estimate.", 420)
    minutes = table["minutes"].astype(float)
    use_hours = float(minutes.max()) >= 90
    x = minutes / 60 if use_hours else minutes
    unit = "hours" if use_hours else "minutes"
    fig = go.Figure()
    for i, gpu in enumerate(dict.fromkeys(table["gpu"])):
        rows = table[table["gpu"] == gpu]
        color = GPU_PALETTE[i % len(GPU_PALETTE)]
        symbols = [MODE_STYLE.get(m, ("", "circle", m))[1] + ("" if fit else "-open")
                   for m, fit in zip(rows["mode"], rows["fits"])]
        labels = [MODE_STYLE.get(m, ("", "", m))[2] for m in rows["mode"]]
        fig.add_trace(go.Scatter(
            x=x[rows.index], y=rows["cost_usd"], mode="markers", name=gpu, cliponaxis=False,
            marker=dict(size=14, symbol=symbols, color=color, line=dict(width=2, color=color)),
            customdata=list(zip(labels, rows["peak_gb"], ["yes" if f else "no" for f in rows["fits"]],
                                rows["price_per_hour"], rows["throughput_source"])),
            hovertemplate=("<b>" + gpu + "</b> · %{customdata[0]}<br>%{x:.2f} " + unit + " · $%{y:.2f}"
                           "<br>peak %{customdata[1]} GB · fits: %{customdata[2]} · $%{customdata[3]}/h"
                           "<br>%{customdata[4]}<extra></extra>"),
        ))
    chosen = table[(table["gpu"] == selected_gpu) & (table["mode"] == selected_mode)]
    if not chosen.empty:
        fig.add_trace(go.Scatter(
            x=x[chosen.index], y=chosen["cost_usd"], mode="markers", name="your choice",
            marker=dict(size=28, symbol="circle-open", color="#e76f51", line=dict(width=2.5)),
            hoverinfo="skip"))
    spread = lambda s: float(s.max()) / max(float(s[s > 0].min()), 1e-9) if (s > 0).any() else 1.0  # noqa: E731
    log_x, log_y = spread(x) > 30, spread(table["cost_usd"].astype(float)) > 30
    # log axes: one tick per decade (plotly's 2-5 minor labels crowd the axis)
    fig.update_xaxes(title_text=f"training time ({unit})", type="log" if log_x else "linear",
                     dtick=1 if log_x else None, rangemode="tozero", zeroline=False)
    fig.update_yaxes(title_text="cost (USD)", tickprefix="$", type="log" if log_y else "linear",
                     dtick=1 if log_y else None, rangemode="tozero", zeroline=False)
    fig.add_annotation(text="● Quick LoRA   ◆ Full fine-tune   hollow: does not fit in memory",
                       xref="paper", yref="paper", x=0, y=1.02, xanchor="left", yanchor="bottom",
                       showarrow=False, font=dict(size=11, color="#6b7280"))
    fig = _style(fig, title, 440)
    fig.update_layout(legend=dict(orientation="v", yanchor="top", y=1.0, xanchor="left", x=1.01),
                      margin=dict(r=150))
    return fig


# -- Training curves ----------------------------------------------------------------------------
def _line(frame: pd.DataFrame, column: str, name: str, color: str, dash: str = "solid",
          markers: bool = False, legend: bool = True) -> go.Scatter | None:
    if frame.empty or column not in frame:
        return None
    rows = frame[["step", column]].dropna()
    # plain lists, not numpy: the browser then sees ordinary arrays (plotly.js gd.data[i].x.length)
    return go.Scatter(x=rows["step"].tolist(), y=rows[column].tolist(), name=name, legendgroup=name, showlegend=legend,
                      mode="lines+markers" if markers or len(rows) < 40 else "lines",
                      line=dict(color=color, width=2, dash=dash), marker=dict(size=5, color=color),
                      hovertemplate=f"{name}<br>step %{{x}}: %{{y:.4g}}<extra></extra>")


def training_curves(train: pd.DataFrame, val: pd.DataFrame, title: str = "Training curves") -> go.Figure:
    """Four panels over the optimizer step: loss (train, held-out), top-1/top-5 accuracy (train,
    held-out), learning rate, throughput in tokens/s."""
    if (train is None or train.empty) and (val is None or val.empty):
        return _message(title, "No training steps yet: curves appear after the first step.", 560)
    train = train if train is not None else pd.DataFrame(columns=["step"])
    val = val if val is not None else pd.DataFrame(columns=["step"])
    fig = make_subplots(rows=2, cols=2, horizontal_spacing=0.09, vertical_spacing=0.17,
                        subplot_titles=("Loss", "Accuracy (top-1 / top-5 of target tokens)", "Learning rate",
                                        "Throughput (tokens/s)"))
    panels = [
        (1, 1, _line(train, "loss", "train loss", TRAIN)),
        (1, 1, _line(val, "val_loss", "held-out loss", VAL, markers=True)),
        (1, 2, _line(train, "top1", "train top-1", TRAIN)),
        (1, 2, _line(train, "top5", "train top-5", TOP5)),
        (1, 2, _line(val, "val_top1", "held-out top-1", VAL, dash="dot", markers=True)),
        (1, 2, _line(val, "val_top5", "held-out top-5", "#f4a261", dash="dot", markers=True)),
        (2, 1, _line(train, "lr", "learning rate", "#6d597a", legend=False)),
        (2, 2, _line(train, "tokens_per_s", "tokens/s", "#457b9d", legend=False)),
    ]
    for row, col, trace in panels:
        if trace is not None:
            fig.add_trace(trace, row=row, col=col)
    fig.update_xaxes(title_text="step", row=2, col=1)
    fig.update_xaxes(title_text="step", row=2, col=2)
    fig.update_yaxes(rangemode="tozero", tickformat=".0%", row=1, col=2)
    top_lr = float(train["lr"].max()) if "lr" in train and train["lr"].notna().any() else 0.0
    # a constant lr would get plotly's ±1 padding around it: pin the axis to [0, peak]
    fig.update_yaxes(exponentformat="e", showexponent="all", range=[0, top_lr * 1.15] if top_lr > 0 else None,
                     row=2, col=1)
    fig.update_yaxes(rangemode="tozero", row=2, col=2)
    for annotation in fig.layout.annotations:  # subplot titles: left-aligned, quieter
        annotation.update(font=dict(size=13, color="#374151"))
    fig = _style(fig, title, 620)
    # the legend goes under the grid: above it, it ran into the subplot titles
    fig.update_layout(legend=dict(orientation="h", yanchor="top", y=-0.1, xanchor="left", x=0.0),
                      margin=dict(b=96))
    return fig


# -- Voice quality during training ----------------------------------------------------------------
QUALITY_PANELS = (  # (metrics.jsonl column, panel title, trace name, colour)
    ("val_cer", "CER (lower is better)", "CER", "#e76f51"),
    ("val_similarity", "Speaker similarity", "similarity", "#2a9d8f"),
    ("val_ovrl", "DNSMOS OVRL (1–5)", "DNSMOS OVRL", "#264653"),
)
NO_QUALITY = ("No voice-quality scores in this phase yet: validations score the evaluation sentences "
              "(speaker similarity and DNSMOS, CER when the ASR is available) once training records them.")


def has_quality(val: pd.DataFrame | None) -> bool:
    """Whether any validation row carries a scorecard mean."""
    return val is not None and any(c in val and val[c].notna().any() for c, *_ in QUALITY_PANELS)


def quality_curves(val: pd.DataFrame | None, title: str = "Voice quality during training") -> go.Figure:
    """Three panels over the optimizer step from the validation rows: CER, speaker similarity and
    DNSMOS OVRL of the evaluation sentences spoken at each validation; a message when none is there."""
    if not has_quality(val):
        return _message(title, NO_QUALITY, 240)
    fig = make_subplots(rows=1, cols=len(QUALITY_PANELS), horizontal_spacing=0.08,
                        subplot_titles=[panel for _, panel, _, _ in QUALITY_PANELS])
    for col, (column, _, name, color) in enumerate(QUALITY_PANELS, start=1):
        trace = _line(val, column, name, color, markers=True, legend=False)
        if trace is not None and len(trace.x):
            fig.add_trace(trace, row=1, col=col)
        fig.update_xaxes(title_text="step", row=1, col=col)
    fig.update_yaxes(rangemode="tozero", tickformat=".0%", row=1, col=1)  # CER is a share of characters
    fig.update_yaxes(range=[0, 1], row=1, col=2)  # cosine similarity of speaker embeddings
    fig.update_yaxes(range=[1, 5], row=1, col=3)  # DNSMOS is on the MOS scale
    for annotation in fig.layout.annotations:
        annotation.update(font=dict(size=13, color="#374151"))
    return _style(fig, title, 340)
