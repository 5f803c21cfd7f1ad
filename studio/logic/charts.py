"""Plotly figures of a dataset manifest, for the studio's Dataset tab (and notebooks).

Each builder takes the manifest DataFrame (schema in docs/ARCHITECTURE.md) and returns a
`plotly.graph_objects.Figure`. They compute from the manifest itself rather than from the
speaker table so every chart agrees with the clip table shown beside it. Clips that could not
be measured (rejected before analysis) have NaN durations or SNR; they are left out of the
charts that need those numbers instead of breaking them. No gradio import here.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from pipeline.data.manifest import reason_category

# One palette for the whole tab so "accepted" and "rejected" read the same in every chart.
STATUS_COLORS = {"ok": "#2a9d8f", "rejected": "#e76f51"}
STATUS_LABELS = {"ok": "accepted", "rejected": "rejected"}
SPEAKER_PALETTE = (
    "#264653", "#2a9d8f", "#e9c46a", "#f4a261", "#e76f51", "#6d597a",
    "#457b9d", "#8ab17d", "#b56576", "#118ab2", "#ef476f", "#7f5539",
)
FONT = dict(family="Inter, system-ui, -apple-system, Segoe UI, sans-serif", size=12, color="#1f2937")


def _layout(fig: go.Figure, title: str, height: int = 340) -> go.Figure:
    fig.update_layout(
        title=dict(text=title, x=0.01, xanchor="left", font=dict(size=15)),
        template="plotly_white",
        font=FONT,
        height=height,
        margin=dict(l=56, r=20, t=56, b=48),
        legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1.0, title_text=""),
        hoverlabel=dict(font_size=12),
    )
    return fig


def _empty(title: str, message: str = "No clips to show yet.") -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper",
                       font=dict(size=13, color="#6b7280"))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return _layout(fig, title)


def _status(manifest: pd.DataFrame) -> pd.Series:
    return manifest["status"].where(manifest["status"].isin(STATUS_COLORS), "rejected")


def per_speaker_table(manifest: pd.DataFrame) -> pd.DataFrame:
    """Accepted clips, rejected clips and usable minutes per speaker, most usable minutes first."""
    if manifest.empty:
        return pd.DataFrame(columns=["speaker", "accepted", "rejected", "usable_minutes"])
    frame = manifest.assign(
        speaker=manifest["speaker"].astype(str),
        _ok=_status(manifest).eq("ok"),
        _minutes=manifest["duration_s"].fillna(0.0) / 60.0,
    )
    grouped = frame.groupby("speaker", sort=False)
    table = pd.DataFrame({
        "accepted": grouped["_ok"].sum().astype(int),
        "rejected": (~frame["_ok"]).groupby(frame["speaker"], sort=False).sum().astype(int),
        "usable_minutes": frame["_minutes"].where(frame["_ok"], 0.0).groupby(frame["speaker"], sort=False).sum(),
    }).reset_index()
    return table.sort_values(["usable_minutes", "accepted", "speaker"], ascending=[False, False, True],
                             ignore_index=True)


def speaker_overview(manifest: pd.DataFrame) -> go.Figure:
    """Two stacked panels sharing the speaker axis: clips (accepted + rejected) and usable minutes."""
    title = "Clips and usable minutes per speaker"
    if manifest.empty:
        return _empty(title)
    table = per_speaker_table(manifest)
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.1,
                        row_heights=[0.55, 0.45])
    for status in ("ok", "rejected"):
        column = "accepted" if status == "ok" else "rejected"
        fig.add_trace(go.Bar(
            x=table["speaker"], y=table[column], name=f"{STATUS_LABELS[status]} clips",
            marker_color=STATUS_COLORS[status],
            hovertemplate="%{x}<br>%{y} " + STATUS_LABELS[status] + " clips<extra></extra>",
        ), row=1, col=1)
    fig.add_trace(go.Bar(
        x=table["speaker"], y=table["usable_minutes"].round(2), name="usable minutes",
        marker_color="#264653", hovertemplate="%{x}<br>%{y:.1f} usable minutes<extra></extra>",
    ), row=2, col=1)
    fig.update_layout(barmode="stack")
    fig.update_yaxes(title_text="clips", row=1, col=1)
    fig.update_yaxes(title_text="minutes", row=2, col=1)
    fig.update_xaxes(type="category", tickangle=-30 if len(table) > 8 else 0, row=2, col=1)
    return _layout(fig, title, height=400)


def duration_histogram(manifest: pd.DataFrame, bins: int = 30) -> go.Figure:
    """Clip durations, accepted and rejected overlaid, so the length limits' effect is visible."""
    title = "Clip durations"
    measured = manifest.dropna(subset=["duration_s"]) if not manifest.empty else manifest
    if measured.empty:
        return _empty(title)
    fig = go.Figure()
    status = _status(measured)
    upper = float(measured["duration_s"].max())
    size = max(upper / bins, 0.05)
    for name in ("ok", "rejected"):
        values = measured.loc[status.eq(name), "duration_s"]
        if values.empty:
            continue
        fig.add_trace(go.Histogram(
            x=values, name=STATUS_LABELS[name], marker_color=STATUS_COLORS[name], opacity=0.85,
            xbins=dict(start=0, end=upper + size, size=size),
            hovertemplate="%{x} s<br>%{y} clips<extra></extra>",
        ))
    fig.update_layout(barmode="stack", bargap=0.05)
    fig.update_xaxes(title_text="duration (s)", rangemode="tozero")
    fig.update_yaxes(title_text="clips")
    return _layout(fig, title, height=400)


def snr_scatter(manifest: pd.DataFrame, color_by: str = "status") -> go.Figure:
    """Estimated SNR against duration, one trace per status (or per speaker), hover shows the text."""
    if color_by not in ("status", "speaker"):
        raise ValueError(f"color_by must be 'status' or 'speaker', not {color_by!r}.")
    title = "Signal-to-noise ratio vs duration"
    measured = manifest.dropna(subset=["duration_s", "snr_db"]) if not manifest.empty else manifest
    if measured.empty:
        return _empty(title)
    measured = measured.assign(_status=_status(measured), speaker=measured["speaker"].astype(str))
    fig = go.Figure()
    if color_by == "status":
        groups = [(STATUS_LABELS[s], STATUS_COLORS[s], measured[measured["_status"].eq(s)])
                  for s in ("ok", "rejected")]
    else:
        speakers = sorted(measured["speaker"].unique())
        groups = [(sp, SPEAKER_PALETTE[i % len(SPEAKER_PALETTE)], measured[measured["speaker"].eq(sp)])
                  for i, sp in enumerate(speakers)]
    for name, color, rows in groups:
        if rows.empty:
            continue
        texts = rows["text"].fillna("").astype(str).str.slice(0, 80)
        reasons = rows["reason"].fillna("").astype(str)
        fig.add_trace(go.Scatter(
            x=rows["duration_s"], y=rows["snr_db"], mode="markers", name=name,
            marker=dict(color=color, size=7, opacity=0.8, line=dict(width=0)),
            customdata=list(zip(rows["id"].astype(str), rows["speaker"], texts, reasons)),
            hovertemplate=("<b>%{customdata[0]}</b> (%{customdata[1]})<br>%{x:.1f} s, %{y:.1f} dB"
                           "<br>%{customdata[2]}<br><i>%{customdata[3]}</i><extra></extra>"),
        ))
    fig.update_xaxes(title_text="duration (s)")
    fig.update_yaxes(title_text="SNR (dB)")
    return _layout(fig, title)


def rejection_reasons(manifest: pd.DataFrame) -> go.Figure:
    """How many clips each kind of rejection removed (horizontal bars, most common on top)."""
    title = "Why clips were rejected"
    if manifest.empty:
        return _empty(title)
    rejected = manifest[_status(manifest).eq("rejected")]
    if rejected.empty:
        return _empty(title, "No clips were rejected.")
    # Reasons carry specifics ("too short (0.3 s)"); the chart counts their categories.
    counts = rejected["reason"].fillna("").astype(str).map(lambda r: reason_category(r) if r else "unspecified")
    counts = counts.value_counts().sort_values()
    fig = go.Figure(go.Bar(
        x=counts.values, y=[_shorten(r) for r in counts.index], orientation="h",
        marker_color=STATUS_COLORS["rejected"], customdata=counts.index,
        hovertemplate="%{customdata}<br>%{x} clips<extra></extra>",
    ))
    # counts are whole clips: no 0.5 ticks on a small dataset
    fig.update_xaxes(title_text="clips", rangemode="tozero", tickformat="d", dtick=1 if counts.max() <= 10 else None)
    fig.update_yaxes(automargin=True)
    return _layout(fig, title, height=max(240, 120 + 36 * len(counts)))


def _shorten(text: str, limit: int = 42) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
