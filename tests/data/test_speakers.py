"""pipeline.data.speakers: per-speaker statistics, pitch (cached) and the recommendation."""

import math

import numpy as np
import pandas as pd
import pytest

from audio_fixtures import speech_like, test_config, write_clip
from pipeline.data import speakers as speakers_module
from pipeline.data.manifest import build_manifest
from pipeline.data.sources import read_folder
from pipeline.data.speakers import (STAT_COLUMNS, Recommendation, recommend_by_policy, recommend_speaker,
                               speaker_rankings, speaker_stats)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("speakers")
    root = tmp / "data"
    for i in range(4):  # low voice, 4 clips of 2 s
        write_clip(root, "low", f"l{i}", f"Matala ääni sanoo {i}.", data=speech_like(2.0, f0=110, seed=i))
    for i in range(2):  # high voice, 2 accepted + 1 rejected (too short)
        write_clip(root, "high", f"h{i}", f"Korkea ääni sanoo {i}.", data=speech_like(1.5, f0=230, seed=10 + i))
    write_clip(root, "high", "short", "Lyhyt.", data=speech_like(0.3, pad_s=0.02))
    return build_manifest(read_folder(root), tmp / "ds", test_config(tmp)), tmp / "ds"


def test_speaker_stats_numbers(manifest):
    frame, ds_dir = manifest
    stats = speaker_stats(frame, cache_dir=ds_dir).set_index("speaker")
    assert list(speaker_stats(frame, cache_dir=ds_dir).columns) == STAT_COLUMNS
    assert list(stats.index) == ["low", "high"]  # most usable minutes first
    assert stats.loc["low", "clips"] == 4 and stats.loc["low", "accepted"] == 4
    assert stats.loc["high", "clips"] == 3 and stats.loc["high", "accepted"] == 2
    assert stats.loc["high", "rejected_share"] == pytest.approx(1 / 3)
    assert stats.loc["low", "usable_minutes"] == pytest.approx(8 / 60, abs=1e-3)
    assert stats.loc["high", "duration_min"] == pytest.approx(1.5, abs=1e-3)
    assert stats.loc["low", "pitch_hz"] == pytest.approx(110, rel=0.05)
    assert stats.loc["high", "pitch_hz"] == pytest.approx(230, rel=0.05)
    assert stats.loc["low", "snr_db"] > 30 and stats.loc["low", "speaking_rate"] > 0


def test_pitch_is_cached_in_dataset_dir(manifest, monkeypatch):
    frame, ds_dir = manifest
    first = speaker_stats(frame, cache_dir=ds_dir)
    assert (ds_dir / "pitch.json").is_file()

    def boom(picks, workers=None):
        raise AssertionError("pitch recomputed despite the cache")

    monkeypatch.setattr(speakers_module, "speaker_pitches", boom)
    again = speaker_stats(frame, cache_dir=ds_dir)
    pd.testing.assert_frame_equal(first, again)


def stats_frame(rows):
    base = {c: math.nan for c in STAT_COLUMNS}
    return pd.DataFrame([{**base, "clips": r[2], "rejected_share": r[4], **dict(
        speaker=r[0], usable_minutes=r[1], accepted=r[2], snr_db=r[3])} for r in rows])


def test_recommendation_prefers_minutes_then_quality():
    rec = recommend_speaker(stats_frame([("a", 10.0, 100, 20.0, 0.1), ("b", 6.0, 60, 40.0, 0.0)]))
    assert rec.speaker == "a"
    assert "10.0 usable minutes" in rec.reason and "b" in rec.reason and "6.0" in rec.reason

    # within 5 % of the top: better SNR wins
    rec = recommend_speaker(stats_frame([("a", 10.0, 100, 20.0, 0.1), ("b", 9.7, 95, 35.0, 0.0)]))
    assert rec.speaker == "b" and "35 dB" in rec.reason


def test_recommendation_edge_cases():
    only = recommend_speaker(stats_frame([("solo", 3.0, 30, 30.0, 0.0), ("none", 0.0, 0, math.nan, 1.0)]))
    assert only.speaker == "solo" and "only speaker" in only.reason
    nobody = recommend_speaker(stats_frame([("x", 0.0, 0, math.nan, 1.0)]))
    assert nobody == Recommendation("", nobody.reason) and "No speaker" in nobody.reason


def test_pitch_only_for_the_speakers_with_most_audio(manifest, monkeypatch):
    frame, _ = manifest
    measured = []
    monkeypatch.setattr(speakers_module, "PITCH_SPEAKERS", 1)
    monkeypatch.setattr(speakers_module, "speaker_pitches",
                        lambda picks, workers=None: measured.append(set(picks)) or dict.fromkeys(picks, 100.0))
    stats = speaker_stats(frame).set_index("speaker")
    assert measured == [{"low"}]
    assert stats.loc["low", "pitch_hz"] == 100.0 and math.isnan(stats.loc["high", "pitch_hz"])


def test_most_clips_policy_picks_the_speaker_with_most_accepted_clips():
    # "a" has the most minutes (long clips), "b" the most clips (short ones)
    stats = stats_frame([("a", 10.0, 40, 30.0, 0.0), ("b", 6.0, 90, 30.0, 0.0), ("c", 1.0, 10, 30.0, 0.0)])
    assert recommend_by_policy(stats, "recommended") == recommend_speaker(stats)
    rec = recommend_by_policy(stats, "most_clips")
    assert rec.speaker == "b" and "90 accepted clips" in rec.reason and "a with 40 clips" in rec.reason
    # equal clip counts: more usable minutes first
    tie = stats_frame([("x", 2.0, 50, 30.0, 0.0), ("y", 3.0, 50, 30.0, 0.0)])
    assert recommend_by_policy(tie, "most_clips").speaker == "y"
    nobody = stats_frame([("x", 0.0, 0, math.nan, 1.0)])
    assert recommend_by_policy(nobody, "most_clips").speaker == ""
    with pytest.raises(ValueError, match="speaker.policy 'manual'"):
        recommend_by_policy(stats, "manual")


def test_rankings_show_both_policies_and_match_the_recommendation():
    stats = stats_frame([("a", 10.0, 40, 20.0, 0.1), ("b", 9.8, 90, 35.0, 0.0), ("c", 6.0, 95, 30.0, 0.0),
                         ("d", 0.0, 0, math.nan, 1.0)])
    table = speaker_rankings(stats).set_index("speaker")
    # within 5 % of the top, better SNR first: b before a, as recommend_speaker picks
    assert recommend_speaker(stats).speaker == "b"
    assert table.loc[["b", "a", "c"], "rank_minutes"].tolist() == [1, 2, 3]
    assert table.loc[["c", "b", "a"], "rank_clips"].tolist() == [1, 2, 3]
    assert pd.isna(table.loc["d", "rank_minutes"]) and pd.isna(table.loc["d", "rank_clips"])
    assert list(table.index) == ["b", "a", "c", "d"]  # minutes order, unranked last


def test_pitch_in_worker_processes_equals_the_serial_one(manifest):
    from pipeline.data.speakers import speaker_pitches

    frame, _ = manifest
    ok = frame[frame["status"] == "ok"]
    picks = {speaker: rows for speaker, rows in ok.groupby("speaker")}
    serial = speaker_pitches(picks, workers=1)
    # more jobs than PARALLEL_MIN_ITEMS, so a real pool runs them
    many = {f"{speaker}{i}": rows for i in range(3) for speaker, rows in picks.items()}
    parallel = speaker_pitches(many, workers=2)
    assert all(parallel[f"{speaker}{i}"] == serial[speaker] for i in range(3) for speaker in picks)
    assert serial["low"] == pytest.approx(110, rel=0.05)


def test_a_clip_whose_pitch_worker_dies_counts_as_unvoiced(manifest, monkeypatch):
    """The pool gives a clip whose process died twice to on_crash (tests/data/test_manifest.py);
    pitch then treats it as unvoiced instead of failing the dataset."""
    import pipeline.data.parallel as parallel
    from pipeline.data.speakers import speaker_pitches

    frame, _ = manifest
    ok = frame[frame["status"] == "ok"]
    picks = {speaker: rows for speaker, rows in ok.groupby("speaker")}
    crashing = str(picks["low"].iloc[0]["audio_path"])

    def pool(fn, items, workers=None, on_crash=None, **kwargs):
        return [on_crash(item) if item[0] == crashing else fn(item) for item in items]

    monkeypatch.setattr(parallel, "map_in_processes", pool)
    pitches = speaker_pitches({"low": picks["low"].iloc[:1], **{k: v for k, v in picks.items() if k != "low"}})
    assert np.isnan(pitches["low"]) and all(np.isfinite(v) for k, v in pitches.items() if k != "low")
