"""What the Dataset tab shows, as plain values: HTML snippets, tables and the source spec.

Pure functions of a `pipeline.data.dataset.Dataset` (or its manifest), kept apart from the event
wiring in `dataset_tab.py` so they can be tested without a server.
"""

from __future__ import annotations

import html
import math

import pandas as pd

from studio.logic.charts import per_speaker_table
from pipeline.data.source_spec import SAMPLE_DIR, SourceError, SourceSpec
from pipeline.data.speakers import RANKING_POLICIES, recommend_by_policy, speaker_rankings

ALL_SPEAKERS = "All speakers"
STATUS_FILTERS = [("All", "all"), ("Accepted", "ok"), ("Rejected", "rejected")]
CLIP_COLUMNS = ["id", "speaker", "text", "duration_s", "snr_db", "loudness_db", "speaking_rate",
                "status", "reason"]
REJECTED_COLUMNS = ["id", "speaker", "reason", "duration_s", "snr_db", "clipping_ratio", "text",
                    "source_path"]
# Table headers people read; the manifest keeps its column names.
HEADERS = {
    "duration_s": "duration (s)", "snr_db": "SNR (dB)", "loudness_db": "loudness (dBFS)",
    "speaking_rate": "chars/s", "clipping_ratio": "clipping", "source_path": "file",
    "usable_minutes": "usable min", "rejected_share": "rejected", "duration_mean": "mean (s)",
    "duration_median": "median (s)", "duration_min": "min (s)", "duration_max": "max (s)",
    "pitch_hz": "pitch (Hz)", "accepted": "accepted clips", "rank_minutes": "rank by minutes",
    "rank_clips": "rank by clips",
}
FOLDER_INFO = ("<speaker>/<clip>.wav with .lab/.txt beside it, an LJSpeech metadata.csv, or parquet: "
               "one .parquet file, a folder of them, or a Hugging Face layout (<folder>/<config>/"
               "train-00000-of-00001.parquet), read with the Hugging Face column mapping")
POLICY_LABELS = {"recommended": "most usable minutes, then quality", "most_clips": "most accepted clips"}
# Friendly names for the speaker statistics the pipeline computes; unknown columns keep their name.
STAT_LABELS = {
    "clips": "Clips", "accepted": "Accepted clips", "usable_minutes": "Usable minutes",
    "duration_median": "Median clip (s)", "duration_mean": "Mean clip (s)",
    "duration_min": "Shortest clip (s)", "duration_max": "Longest clip (s)", "pitch_hz": "Median pitch (Hz)", "loudness_db": "Loudness (dBFS)", "snr_db": "SNR (dB)",
    "speaking_rate": "Speaking rate (chars/s)", "rejected_share": "Rejected share",
}


def esc(value) -> str:
    return html.escape("" if value is None else str(value))


def note(message: str, kind: str = "info") -> str:
    """A message box (`kind`: info, ok, error) for the tab's status areas."""
    return f"<div class='note {kind}'>{esc(message)}</div>"


def make_spec(kind: str, folder: str | None, zip_file: str | None, hf_repo: str | None,
              hf_config: str | None, hf_split: str | None, hf_revision: str | None,
              col_audio: str | None, col_text: str | None, col_speaker: str | None,
              max_clips: float | None) -> SourceSpec:
    """The source the form describes; a missing required field raises `SourceError`."""
    def clean(value):
        value = (value or "").strip() if isinstance(value, str) or value is None else value
        return value or None

    if max_clips is None or (isinstance(max_clips, float) and math.isnan(max_clips)) or int(max_clips) < 1:
        raise SourceError("Max clips must be a whole number of at least 1.")
    common = dict(max_clips=int(max_clips))
    if kind == "sample":
        return SourceSpec(kind="sample", **common)
    if kind == "folder":
        if not clean(folder):
            raise SourceError("Enter the path of a folder on the server (e.g. /data/my_voice).")
        return SourceSpec(kind="folder", path=clean(folder), **common)
    if kind == "zip":
        if not clean(zip_file):
            raise SourceError("Upload a .zip of clips first (wav/flac/mp3 with .lab/.txt transcripts, "
                              "or an LJSpeech metadata.csv).")
        return SourceSpec(kind="zip", path=clean(zip_file), **common)
    if kind == "huggingface":
        if not clean(hf_repo):
            raise SourceError("Enter a Hugging Face dataset repository id (e.g. facebook/voxpopuli).")
        if not clean(col_audio) or not clean(col_text):
            raise SourceError("Name the Hugging Face columns that hold the audio and the transcript.")
        columns = {"audio": clean(col_audio), "text": clean(col_text), "speaker": clean(col_speaker)}
        return SourceSpec(kind="huggingface", hf_repo=clean(hf_repo), hf_config=clean(hf_config),
                          hf_split=clean(hf_split) or "train", hf_revision=clean(hf_revision),
                          columns=columns, **common)
    raise SourceError(f"Unknown source '{kind}': choose sample, folder, zip or huggingface.")


def sample_description() -> str:
    """One line about the bundled sample, counted from its folder (speakers = subfolders)."""
    if not SAMPLE_DIR.is_dir():
        return "The bundled sample is missing from this installation."
    speakers = [d for d in SAMPLE_DIR.iterdir() if d.is_dir() and not d.name.startswith(".")]
    clips = sum(1 for d in speakers for _ in d.glob("*.lab"))
    return (f"A small Finnish sample bundled with the studio: {len(speakers)} synthetic voices, "
            f"{clips} clips. Good for a first look and for trying the workflow.")


# -- prepared datasets --------------------------------------------------------------------------
def describe_source(source: dict | None) -> str:
    """Where a prepared dataset came from, in a few words (from its source spec dict)."""
    source = source or {}
    kind = source.get("kind")
    if kind == "sample":
        return "bundled sample"
    if kind == "huggingface" and not source.get("path"):
        repo = "/".join(p for p in (source.get("hf_repo"), source.get("hf_config")) if p)
        return f"Hugging Face {repo} ({source.get('hf_split') or 'train'})"
    if source.get("path"):
        return f"{kind} {source['path']}" if kind else str(source["path"])
    return kind or "unknown source"


def prepared_choices(entries: list[dict]) -> list[tuple[str, str]]:
    """Dropdown entries `(label, dataset id)` for datasets already prepared in the workspace."""
    choices = []
    for entry in entries:
        summary = entry.get("summary") or {}
        counts = []
        if summary.get("accepted") is not None and summary.get("total") is not None:
            counts.append(f"{summary['accepted']}/{summary['total']} clips accepted")
        if summary.get("accepted_minutes") is not None:
            counts.append(f"{float(summary['accepted_minutes']):.1f} min")
        created = str(entry.get("created") or "")[:16].replace("T", " ")
        source = entry.get("source") or entry.get("spec")  # both names of the source spec occur
        parts = [str(entry["id"]), describe_source(source), ", ".join(counts), created]
        choices.append((" · ".join(p for p in parts if p), str(entry["id"])))
    return choices


def check_prepared(choice: str | None, known: list[str]) -> str:
    """The picked prepared dataset id; a missing or unknown pick raises `SourceError`."""
    if not choice:
        if not known:
            raise SourceError("No prepared datasets in this workspace yet: prepare one from the CLI "
                              "(python -m pipeline prepare) or load a source with the other forms.")
        raise SourceError("Choose a prepared dataset from the list first.")
    if choice not in known:
        raise SourceError(f"Prepared dataset '{choice}' is not in this workspace any more; "
                          "refresh the list and choose another.")
    return choice


# -- summary -----------------------------------------------------------------------------------
def summary_numbers(dataset) -> dict:
    """Totals from the pipeline's summary, filled in from the manifest where a key is missing."""
    manifest, given = dataset.manifest, dict(dataset.summary or {})
    ok = manifest["status"].eq("ok")
    reasons = given.get("reasons")
    if reasons is None:
        reasons = manifest.loc[~ok, "reason"].fillna("").replace("", "unspecified").value_counts().to_dict()
    return {
        "total": int(given.get("total", len(manifest))),
        "accepted": int(given.get("accepted", ok.sum())),
        "rejected": int(given.get("rejected", (~ok).sum())),
        "accepted_minutes": float(given.get("accepted_minutes",
                                            manifest.loc[ok, "duration_s"].fillna(0).sum() / 60)),
        "speakers": int(given.get("speakers", manifest["speaker"].nunique())),
        "reasons": {str(k): int(v) for k, v in sorted(reasons.items(), key=lambda kv: -kv[1])},
    }


def summary_html(dataset) -> str:
    numbers = summary_numbers(dataset)
    cards = [
        ("Clips", f"{numbers['total']:,}", ""),
        ("Accepted", f"{numbers['accepted']:,}", "ok"),
        ("Rejected", f"{numbers['rejected']:,}", "bad" if numbers["rejected"] else ""),
        ("Usable minutes", f"{numbers['accepted_minutes']:.1f}", ""),
        ("Speakers", f"{numbers['speakers']:,}", ""),
    ]
    parts = ["<div class='stat-cards'>"]
    for label, value, kind in cards:
        parts.append(f"<div class='stat-card {kind}'><div class='value'>{value}</div>"
                     f"<div class='label'>{label}</div></div>")
    parts.append("</div>")
    given = getattr(dataset, "summary", None) or {}
    for note in [given.get("selection"), *(given.get("source_notes") or [])]:  # clips left out, files skipped
        if note:
            parts.append(f"<div class='summary-meta source-note'>ℹ️ {esc(note)}</div>")
    if numbers["reasons"]:
        items = "".join(f"<li><b>{count}</b> × {esc(reason)}</li>"
                        for reason, count in numbers["reasons"].items())
        parts.append(f"<div class='summary-meta'>Rejection reasons:<ul class='reason-list'>{items}</ul></div>")
    else:
        parts.append("<div class='summary-meta'>No clips were rejected.</div>")
    parts.append(f"<div class='summary-meta'>Dataset <code>{esc(dataset.id)}</code>, saved in the "
                 f"workspace under <code>datasets/{esc(dataset.dir.name)}</code></div>")
    return "".join(parts)


def empty_summary_html() -> str:
    return ("<div class='empty-note'>No dataset loaded yet. Choose a source on the left and press "
            "<b>Load dataset</b>.</div>")


# -- speakers ---------------------------------------------------------------------------------
def ranking_policy(policy: str | None) -> str:
    """The ranking behind the preselected speaker: the configured one, else usable minutes."""
    return policy if policy in RANKING_POLICIES else "recommended"


def recommendation_for(dataset, policy: str = "recommended"):
    """The dataset's pick under `policy` (the stored recommendation for `recommended`)."""
    if ranking_policy(policy) == "recommended" and dataset.recommendation is not None:
        return dataset.recommendation
    return recommend_by_policy(dataset.speakers, ranking_policy(policy))


def recommendation_md(dataset, policy: str = "recommended") -> str:
    """The pick of the active policy, with the other policy's pick beside it."""
    policy = ranking_policy(policy)
    rec = recommendation_for(dataset, policy)
    if rec is None or not getattr(rec, "speaker", None):
        return "**No speaker can be recommended:** no speaker has accepted clips."
    text = f"**Recommended speaker: {rec.speaker}.** {rec.reason}"
    other = next(p for p in RANKING_POLICIES if p != policy)
    alt = recommendation_for(dataset, other)
    if alt.speaker and alt.speaker != rec.speaker:
        text += (f"\n\nBy {POLICY_LABELS[other]} (speaker.policy `{other}`) it would be "
                 f"**{alt.speaker}**; both rankings are in the table below.")
    elif alt.speaker:
        text += f"\n\n{rec.speaker} also ranks first by {POLICY_LABELS[other]} (speaker.policy `{other}`)."
    return text


def ranking_table(dataset) -> pd.DataFrame:
    """Speaker, usable minutes, accepted clips and the rank under each policy, minutes order."""
    table = speaker_rankings(dataset.speakers).drop(columns=["snr_db"])
    table["usable_minutes"] = table["usable_minutes"].round(1)
    for column in ("rank_minutes", "rank_clips"):
        table[column] = table[column].astype(object).where(table[column].notna(), "–")
    return table.rename(columns=HEADERS)


def speaker_choices(dataset) -> list[tuple[str, str]]:
    """Dropdown entries `(label, speaker)`, most usable minutes first, each policy's pick marked."""
    recommended = getattr(dataset.recommendation, "speaker", None)
    most_clips = recommendation_for(dataset, "most_clips").speaker
    choices = []
    for row in per_speaker_table(dataset.manifest).itertuples():
        label = f"{row.speaker} · {row.usable_minutes:.1f} min, {row.accepted} clips"
        if row.speaker == recommended:
            label += " · ★ recommended"
        if row.speaker == most_clips:
            label += " · most clips"
        choices.append((label, row.speaker))
    return choices


def initial_speaker(dataset, saved: str | None = None, configured: str | None = None,
                    policy: str = "recommended") -> str | None:
    """The saved pick if it belongs to this dataset, else the configured one, else the policy's pick."""
    speakers = set(dataset.manifest["speaker"].astype(str))
    for candidate in (saved, configured, getattr(recommendation_for(dataset, policy), "speaker", None)):
        if candidate and str(candidate) in speakers:
            return str(candidate)
    choices = speaker_choices(dataset)
    return choices[0][1] if choices else None


def _format_stat(name: str, value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if name == "rejected_share":
        return f"{float(value):.0%}"
    if isinstance(value, float):
        return f"{value:,.1f}"
    return esc(value)


def speaker_card_html(dataset, speaker: str | None) -> str:
    if not speaker:
        return "<div class='empty-note'>Choose a speaker.</div>"
    stats = dataset.speakers
    rows = stats[stats["speaker"].astype(str) == str(speaker)]
    if rows.empty:
        return f"<div class='empty-note'>No statistics for speaker {esc(speaker)}.</div>"
    record = rows.iloc[0].to_dict()
    lines = "".join(f"<tr><td>{esc(STAT_LABELS.get(k, k))}</td><td>{_format_stat(k, v)}</td></tr>"
                    for k, v in record.items() if k != "speaker")
    return f"<div class='speaker-card'><table>{lines}</table></div>"


def speaker_table(dataset) -> pd.DataFrame:
    stats = dataset.speakers.copy()
    if "rejected_share" in stats:
        stats["rejected_share"] = (stats["rejected_share"] * 100).round(0).astype("Int64").astype(str) + " %"
    return stats.round(2).rename(columns=HEADERS)


def gallery_items(dataset, speaker: str | None, seed: int | None, n: int = 3) -> list[tuple]:
    """`n` slots of `(audio path or None, player label, transcript caption)` for the speaker."""
    clips = dataset.clips_of(speaker, n=n, seed=seed) if speaker else pd.DataFrame()
    items = []
    for _, clip in clips.head(n).iterrows():
        label = f"{clip['id']} · {float(clip['duration_s']):.1f} s"
        items.append((str(clip["audio_path"]), label, f"“{clip['text']}”"))
    while len(items) < n:
        items.append((None, f"Clip {len(items) + 1}", "No more accepted clips for this speaker."))
    return items


# -- clip tables -------------------------------------------------------------------------------
def _display(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    shown = frame[[c for c in columns if c in frame.columns]].copy()
    numeric = shown.select_dtypes("number").columns
    shown[numeric] = shown[numeric].round(2)
    return shown.reset_index(drop=True).rename(columns=HEADERS)


def clip_table(manifest: pd.DataFrame, speaker: str | None = ALL_SPEAKERS, status: str | None = "all",
               query: str | None = "") -> pd.DataFrame:
    """Clips filtered by speaker, status (`all`/`ok`/`rejected`) and a case-blind text search."""
    rows = manifest
    if speaker and speaker != ALL_SPEAKERS:
        rows = rows[rows["speaker"].astype(str) == str(speaker)]
    if status and status != "all":
        rows = rows[rows["status"] == status]
    query = (query or "").strip()
    if query:
        haystack = (rows["text"].fillna("").astype(str) + " " + rows["id"].astype(str) + " "
                    + rows["reason"].fillna("").astype(str))
        rows = rows[haystack.str.contains(query, case=False, regex=False)]
    return _display(rows, CLIP_COLUMNS)


def rejected_table(manifest: pd.DataFrame) -> pd.DataFrame:
    return _display(manifest[manifest["status"] != "ok"], REJECTED_COLUMNS)
