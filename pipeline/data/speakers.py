"""Per-speaker statistics and the recommended speaker for single-voice training."""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.atomic import write_text

PITCH_CLIPS = 8          # pyin is slow (~0.3-0.5 s per clip): bound its cost per speaker...
PITCH_SPEAKERS = 16      # ...and per dataset: only the speakers with the most accepted audio
PITCH_SECONDS = 6.0
PITCH_SR = 16_000
PITCH_CACHE = "pitch.json"
CLIPS_PER_PITCH_WORKER = 8  # a worker's start-up costs about as much as pyin on 8-16 clips
TIE_MARGIN = 0.05        # speakers within 5 % of the most minutes are compared on quality

STAT_COLUMNS = ["speaker", "clips", "accepted", "rejected_share", "usable_minutes", "duration_mean",
                "duration_median", "duration_min", "duration_max", "pitch_hz", "loudness_db", "snr_db",
                "speaking_rate"]


@dataclass(frozen=True)
class Recommendation:
    speaker: str
    reason: str


def _median(values: pd.Series) -> float:
    values = values.dropna()
    return float(values.median()) if len(values) else math.nan


def clip_f0(job: tuple[str, float]) -> np.ndarray:
    """Voiced f0 values (Hz) of up to PITCH_SECONDS of one clip after its lead silence; empty when
    the clip cannot be read (it then just does not contribute). Runs in a worker process."""
    import librosa

    path, lead = job
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            y, sr = librosa.load(path, sr=PITCH_SR, mono=True, offset=lead, duration=PITCH_SECONDS)
            f0, voiced, _ = librosa.pyin(y, fmin=60.0, fmax=500.0, sr=sr, frame_length=1024, hop_length=512)
    except Exception:
        return np.array([])
    return f0[voiced & np.isfinite(f0)]


def _pitch_job(row) -> tuple[str, float]:
    lead = row["lead_silence_s"] if np.isfinite(row["lead_silence_s"]) else 0.0
    return str(row["audio_path"] or row["source_path"]), float(lead)


def _no_pitch(job) -> np.ndarray:
    return np.array([])


def speaker_pitches(picks: dict[str, pd.DataFrame], workers: int | None = None) -> dict[str, float]:
    """Median voiced f0 (Hz) of each speaker's picked clips (NaN without voiced frames). pyin takes
    ~0.3-0.5 s per clip, so every clip of every speaker is one item of one process pool."""
    from pipeline.data.parallel import map_in_processes, worker_count

    jobs = [(speaker, _pitch_job(row)) for speaker, rows in picks.items() for _, row in rows.iterrows()]
    if workers is None:  # a worker first imports librosa and compiles pyin's numba code (seconds)
        workers = max(1, min(worker_count(), len(jobs) // CLIPS_PER_PITCH_WORKER))
    # a clip whose worker dies (twice) counts as unvoiced: pitch is a statistic, not a reason to
    # fail the dataset (its clips were measured and listed before)
    f0s = map_in_processes(clip_f0, [job for _, job in jobs], workers=workers, on_crash=_no_pitch)
    voiced: dict[str, list[np.ndarray]] = {speaker: [] for speaker in picks}
    for (speaker, _), f0 in zip(jobs, f0s):
        voiced[speaker].append(f0)
    result = {}
    for speaker, arrays in voiced.items():
        values = np.concatenate(arrays) if arrays else np.array([])
        result[speaker] = float(np.median(values)) if values.size else math.nan
    return result


def _pitch_by_speaker(manifest: pd.DataFrame, cache_dir: Path | None) -> dict[str, float]:
    """Median pitch of the PITCH_SPEAKERS speakers with the most audio (others: absent), cached in
    `cache_dir/pitch.json` keyed by the clips measured."""
    cache_path = Path(cache_dir) / PITCH_CACHE if cache_dir else None
    cache = {}
    if cache_path and cache_path.is_file():
        try:
            cache = json.loads(cache_path.read_text())
        except (OSError, ValueError):
            cache = {}
    accepted = manifest[manifest["status"] == "ok"].sort_values("id")
    top = accepted.groupby("speaker")["duration_s"].sum().sort_values(ascending=False).index[:PITCH_SPEAKERS]
    accepted = accepted[accepted["speaker"].isin(top)]
    result, to_measure, keys = {}, {}, {}
    for speaker, rows in accepted.groupby("speaker", sort=True):
        # spread the picks over the speaker's clips, deterministically
        picks = rows.iloc[np.linspace(0, len(rows) - 1, min(PITCH_CLIPS, len(rows))).astype(int)]
        key = "|".join(picks["audio_hash"].astype(str))
        entry = cache.get(str(speaker))
        if entry and entry.get("key") == key:
            result[speaker] = entry["pitch_hz"] if entry["pitch_hz"] is not None else math.nan
        else:
            to_measure[speaker], keys[speaker] = picks, key
    if to_measure:
        for speaker, pitch in speaker_pitches(to_measure).items():
            result[speaker] = pitch
            cache[str(speaker)] = {"key": keys[speaker], "pitch_hz": None if math.isnan(pitch) else pitch}
        if cache_path:
            write_text(cache_path, json.dumps(cache, indent=1))
    return result


def speaker_stats(manifest: pd.DataFrame, cache_dir: Path | None = None, pitch: bool = True) -> pd.DataFrame:
    """One row per speaker (columns STAT_COLUMNS), most usable minutes first."""
    pitches = _pitch_by_speaker(manifest, cache_dir) if pitch else {}
    rows = []
    for speaker, group in manifest.groupby("speaker", sort=True):
        ok = group[group["status"] == "ok"]
        durations = ok["duration_s"].dropna()
        rows.append({
            "speaker": str(speaker),
            "clips": int(len(group)),
            "accepted": int(len(ok)),
            "rejected_share": float(1.0 - len(ok) / len(group)) if len(group) else 0.0,
            "usable_minutes": float(durations.sum() / 60.0),
            "duration_mean": float(durations.mean()) if len(durations) else math.nan,
            "duration_median": _median(durations),
            "duration_min": float(durations.min()) if len(durations) else math.nan,
            "duration_max": float(durations.max()) if len(durations) else math.nan,
            "pitch_hz": float(pitches.get(speaker, math.nan)),
            "loudness_db": _median(ok["loudness_db"]),
            "snr_db": _median(ok["snr_db"]),
            "speaking_rate": _median(ok["speaking_rate"]),
        })
    stats = pd.DataFrame(rows, columns=STAT_COLUMNS)
    return stats.sort_values(["usable_minutes", "speaker"], ascending=[False, True], ignore_index=True)


def recommend_speaker(stats: pd.DataFrame) -> Recommendation:
    """Most usable minutes; among speakers within 5 % of the top, better SNR then fewer rejections."""
    usable = stats[stats["accepted"] > 0]
    if usable.empty:
        return Recommendation("", "No speaker has accepted clips, so none can be recommended; "
                                  "check the rejection reasons.")
    top_minutes = usable["usable_minutes"].max()
    tied = usable[usable["usable_minutes"] >= top_minutes * (1 - TIE_MARGIN)].copy()
    tied["_snr"] = tied["snr_db"].fillna(-math.inf)
    best = tied.sort_values(["_snr", "rejected_share", "usable_minutes", "speaker"],
                            ascending=[False, True, False, True]).iloc[0]
    name = str(best["speaker"])
    facts = (f"{best['usable_minutes']:.1f} usable minutes in {int(best['accepted'])} accepted clips, "
             f"median SNR {best['snr_db']:.0f} dB, {best['rejected_share']:.0%} of its clips rejected")
    if len(usable) == 1:
        return Recommendation(name, f"{name} is the only speaker with accepted clips: {facts}.")
    others = usable[usable["speaker"] != name].sort_values("usable_minutes", ascending=False)
    runner = others.iloc[0]
    if len(tied) > 1:
        why = (f"{name} ties for the most audio and has the best quality among those close to the top "
               f"(within {TIE_MARGIN:.0%})")
    else:
        why = f"{name} has the most usable audio"
    return Recommendation(name, f"{why}: {facts}. Next: {runner['speaker']} with "
                                f"{runner['usable_minutes']:.1f} minutes, median SNR {runner['snr_db']:.0f} dB.")


# -- policies and rankings ---------------------------------------------------------------------
# speaker.policy values that choose a speaker from the statistics ("manual" takes speaker.name)
RANKING_POLICIES = ("recommended", "most_clips")
RANKING_COLUMNS = ["speaker", "usable_minutes", "accepted", "snr_db", "rank_minutes", "rank_clips"]


def _minutes_order(usable: pd.DataFrame) -> list[str]:
    """Speakers in the order `recommend_speaker` would pick them, one after another: the most
    minutes, and among those within TIE_MARGIN of that, better SNR, then fewer rejections."""
    left = [(str(r.speaker), float(r.usable_minutes), float(r.snr_db) if np.isfinite(r.snr_db) else -math.inf,
             float(r.rejected_share) if np.isfinite(r.rejected_share) else 1.0)
            for r in usable.itertuples()]
    order = []
    while left:
        top = max(minutes for _, minutes, _, _ in left)
        tied = [row for row in left if row[1] >= top * (1 - TIE_MARGIN)]
        best = min(tied, key=lambda row: (-row[2], row[3], -row[1], row[0]))
        order.append(best[0])
        left.remove(best)
    return order


def _clips_order(usable: pd.DataFrame) -> list[str]:
    """The reference rule: most accepted clips; equal counts go to more usable minutes."""
    ranked = usable.sort_values(["accepted", "usable_minutes", "speaker"], ascending=[False, False, True])
    return [str(s) for s in ranked["speaker"]]


def speaker_rankings(stats: pd.DataFrame) -> pd.DataFrame:
    """Both rankings side by side (columns RANKING_COLUMNS), in the order of the minutes ranking.

    `rank_minutes` follows `recommend_speaker` (rank 1 is its pick), `rank_clips` the `most_clips`
    policy; speakers without accepted clips get no rank and come last.
    """
    frame = stats.assign(speaker=stats["speaker"].astype(str))
    usable = frame[frame["accepted"] > 0]
    by_minutes = {name: i + 1 for i, name in enumerate(_minutes_order(usable))}
    by_clips = {name: i + 1 for i, name in enumerate(_clips_order(usable))}
    table = frame[["speaker", "usable_minutes", "accepted", "snr_db"]].copy()
    table["rank_minutes"] = table["speaker"].map(by_minutes).astype("Int64")
    table["rank_clips"] = table["speaker"].map(by_clips).astype("Int64")
    return table.sort_values(["rank_minutes", "speaker"], na_position="last", ignore_index=True)[RANKING_COLUMNS]


def recommend_by_policy(stats: pd.DataFrame, policy: str = "recommended") -> Recommendation:
    """The speaker `policy` chooses: `recommended` (usable minutes, then quality) or `most_clips`."""
    if policy == "recommended":
        return recommend_speaker(stats)
    if policy != "most_clips":
        raise ValueError(f"speaker.policy '{policy}' does not rank speakers; use one of: "
                         f"{', '.join(RANKING_POLICIES)} (or manual with speaker.name).")
    usable = stats[stats["accepted"] > 0]
    if usable.empty:
        return recommend_speaker(stats)  # the same "no accepted clips" answer
    order = _clips_order(usable)
    best = usable[usable["speaker"].astype(str) == order[0]].iloc[0]
    facts = (f"{int(best['accepted'])} accepted clips, {best['usable_minutes']:.1f} usable minutes, "
             f"median SNR {best['snr_db']:.0f} dB")
    if len(order) == 1:
        return Recommendation(order[0], f"{order[0]} is the only speaker with accepted clips: {facts}.")
    runner = usable[usable["speaker"].astype(str) == order[1]].iloc[0]
    return Recommendation(order[0], f"{order[0]} has the most accepted clips: {facts}. Next: "
                                    f"{order[1]} with {int(runner['accepted'])} clips "
                                    f"({runner['usable_minutes']:.1f} minutes).")
