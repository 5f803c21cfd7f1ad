"""pipeline.data.manifest: every bad clip is rejected with the right reason, good ones are converted."""

import shutil

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from audio_fixtures import speech_like, test_config, write_clip
from pipeline.data.manifest import COLUMNS, build_manifest, reason_category, summarize
from pipeline.data.sources import read_folder


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("manifest")
    root = tmp / "data"
    for i in range(3):
        write_clip(root, "good", f"g{i}", f"Hyvä lause numero {i}.", seed=i)
    y = speech_like(sr=48_000, seed=7)
    write_clip(root, "good", "stereo48k", "Stereo ja nopea.", data=np.stack([y, y], 1), sr=48_000, ext=".flac")
    write_clip(root, "good", "mp3", "Pakattu lause.", data=speech_like(sr=22_050, seed=8), ext=".mp3")
    bad = root / "bad"
    write_clip(root, "bad", "corrupt", "Rikki.")
    raw = (bad / "corrupt.wav").read_bytes()
    (bad / "corrupt.wav").write_bytes(b"RIFF\x00\x00garbage" + raw[60:200])
    (bad / "empty.wav").write_bytes(b"")
    (bad / "empty.lab").write_text("Tyhjä.")
    write_clip(root, "bad", "zero", "Ei näytteitä.", data=np.zeros(0, np.float32))
    write_clip(root, "bad", "silent", "Hiljaista.", data=np.zeros(22_050, np.float32))
    write_clip(root, "bad", "clipping", "Liian kovaa.", data=np.clip(speech_like(seed=3) * 20, -1, 1))
    (bad / "mislabelled.wav").write_text("RIFF? no, this is a text file pretending to be audio\n" * 10)
    (bad / "mislabelled.lab").write_text("Teksti.")
    write_clip(root, "bad", "nolab", None)
    write_clip(root, "bad", "latin1", None, seed=4)
    (bad / "latin1.lab").write_bytes("Hyvää yötä".encode("latin-1"))
    write_clip(root, "bad", "noletters", "!!! ???", seed=5)
    write_clip(root, "bad", "short", "Lyhyt.", data=speech_like(seconds=0.4, pad_s=0.05))
    write_clip(root, "bad", "long", "Pitkä.", data=speech_like(seconds=6.0, seed=6))
    write_clip(root, "bad", "noisy", "Kohinaa.", data=speech_like(noise=0.1, seed=9))
    shutil.copy(root / "good" / "g0.wav", root / "good" / "zcopy.wav")           # same bytes
    (root / "good" / "zcopy.lab").write_text("Kopio eri tekstillä.")
    write_clip(root, "good", "zsametext", "Hyvä lause numero 1.", seed=11)    # same speaker+text
    config = test_config(tmp, max_duration_s=5.0)
    clips = read_folder(root)
    calls = []
    manifest = build_manifest(clips, tmp / "ds", config, progress=lambda f, m: calls.append((f, m)))
    return manifest.set_index("id", drop=False), tmp, calls


EXPECTED = {
    "bad/corrupt": "unreadable audio", "bad/empty": "empty audio", "bad/zero": "empty audio",
    "bad/silent": "silent audio", "bad/clipping": "clipping", "bad/mislabelled": "unreadable audio",
    "bad/nolab": "missing transcript", "bad/latin1": "bad transcript", "bad/noletters": "bad transcript",
    "bad/short": "too short", "bad/long": "too long", "bad/noisy": "low SNR",
    "good/zcopy": "duplicate", "good/zsametext": "duplicate",
}


def test_each_bad_clip_is_rejected_for_its_reason(built):
    manifest, _, _ = built
    got = {i: reason_category(r) for i, r in manifest["reason"].items() if r}
    assert got == EXPECTED
    assert manifest.loc["good/zcopy", "reason"] == "duplicate of good/g0 (same audio)"
    assert manifest.loc["good/zsametext", "reason"].startswith("duplicate of good/g1")
    assert "latin1.lab" in manifest.loc["bad/latin1", "reason"]


def test_good_clips_are_accepted_and_converted(built):
    manifest, tmp, _ = built
    ok = manifest[manifest["status"] == "ok"]
    assert set(ok.index) == {"good/g0", "good/g1", "good/g2", "good/stereo48k", "good/mp3"}
    for clip_id in ok.index:
        info = sf.info(ok.loc[clip_id, "audio_path"])
        assert (info.samplerate, info.channels) == (44_100, 1)
        assert ok.loc[clip_id, "audio_path"].startswith(str(tmp / "ds" / "audio"))
    stereo = ok.loc["good/stereo48k"]
    assert (stereo["sample_rate"], stereo["channels"]) == (48_000, 2)
    assert stereo["duration_s"] == pytest.approx(1.5, abs=0.01)
    assert ok.loc["good/g1", "normalized_text"] == "Hyvä lause numero yksi."
    assert 5 < ok.loc["good/g1", "speaking_rate"] < 30
    assert (ok["reason"] == "").all() and ok["snr_db"].gt(30).all()


def test_schema_types_and_persisted_parquet(built):
    manifest, tmp, calls = built
    assert list(manifest.columns) == COLUMNS
    assert manifest["duration_s"].dtype == np.float64 and manifest["sample_rate"].dtype == np.int64
    on_disk = pd.read_parquet(tmp / "ds" / "manifest.parquet")
    assert len(on_disk) == len(manifest) and list(on_disk.columns) == COLUMNS
    assert calls and calls[-1][0] == 1.0 and all(0 <= f <= 1 for f, _ in calls)


def test_summary_counts_reasons(built):
    manifest, _, _ = built
    summary = summarize(manifest)
    assert (summary["total"], summary["accepted"], summary["rejected"]) == (len(manifest), 5, 14)
    assert summary["reasons"]["duplicate"] == 2 and summary["reasons"]["unreadable audio"] == 2
    assert summary["accepted_minutes"] == pytest.approx(7.5 / 60, abs=0.01)
    assert summary["speakers"] == 2 and summary["accepted_speakers"] == 1


def test_reason_categories():
    assert reason_category("too short: 0.30 s < 0.60 s") == "too short"
    assert reason_category("transcript is empty") == "empty transcript"
    assert reason_category("missing transcript (.lab/.txt)") == "missing transcript"
    assert reason_category("conversion failed: disk full") == "conversion failed"


# -- parallel analysis ------------------------------------------------------------------------
def _relative(manifest: pd.DataFrame, root) -> pd.DataFrame:
    """The manifest with its converted-audio paths relative to the dataset folder (they differ by folder)."""
    out = manifest.copy()
    out["audio_path"] = [p.replace(str(root), "<ds>") for p in out["audio_path"]]
    return out


def test_parallel_analysis_gives_exactly_the_serial_manifest_on_the_sample(tmp_path):
    from pipeline.data.source_spec import SourceSpec
    from pipeline.data.sources import read_source

    clips = read_source(SourceSpec(kind="sample"), tmp_path / "work")
    assert len(clips) >= 16  # enough for the process pool to be used
    config = test_config(tmp_path)
    calls = []
    serial = build_manifest(clips, tmp_path / "serial", config, workers=1)
    parallel = build_manifest(clips, tmp_path / "parallel", config, workers=2,
                              progress=lambda f, m: calls.append((f, m)))
    pd.testing.assert_frame_equal(_relative(serial, tmp_path / "serial"), _relative(parallel, tmp_path / "parallel"))
    fractions = [f for f, _ in calls]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    assert calls[-1][1] == f"Checked {len(clips)}/{len(clips)} clips"


def test_a_corrupt_clip_in_the_parallel_path_is_rejected_with_its_reason(tmp_path):
    root = tmp_path / "data"
    ids = [f"{'ab'[i % 2]}/c{i:02d}" for i in range(17)]
    for i, clip_id in enumerate(ids):
        write_clip(root, clip_id[0], clip_id[2:], f"Lause numero {i}.", data=speech_like(seconds=0.8, seed=i))
    raw = (root / "b" / "c05.wav").read_bytes()
    (root / "b" / "c05.wav").write_bytes(b"RIFF\x00\x00garbage" + raw[60:200])
    manifest = build_manifest(read_folder(root), tmp_path / "ds", test_config(tmp_path), workers=2)
    rows = manifest.set_index("id")
    assert rows.loc["b/c05", "status"] == "rejected"
    assert rows.loc["b/c05", "reason"].startswith("unreadable audio") and "c05.wav" in rows.loc["b/c05", "reason"]
    assert (rows.drop(index="b/c05")["status"] == "ok").all()
    assert sorted(manifest["id"]) == sorted(ids) and list(manifest["id"]) == [c.id for c in read_folder(root)]


def _die_on_seven(n: int) -> int:
    """A stand-in for a decoder that segfaults on one file: the process dies without a Python error."""
    if n == 7:
        import os

        os._exit(139)
    return n * n


def test_a_clip_that_kills_its_worker_is_rejected_and_the_rest_are_kept():
    from pipeline.data.parallel import map_in_processes

    done = []
    results = map_in_processes(_die_on_seven, range(20), workers=2, on_done=done.append,
                               on_crash=lambda n: f"crashed on {n}")
    assert results == [n * n if n != 7 else "crashed on 7" for n in range(20)]
    assert done == list(range(1, 21))


def test_worker_count_from_the_environment(monkeypatch):
    from pipeline.data.parallel import WORKERS_ENV, available_cores, worker_count

    monkeypatch.delenv(WORKERS_ENV, raising=False)
    assert worker_count() == available_cores() and worker_count(3) == 3
    monkeypatch.setenv(WORKERS_ENV, "1")
    assert worker_count() == 1
    monkeypatch.setenv(WORKERS_ENV, "many")
    with pytest.raises(ValueError, match=WORKERS_ENV):
        worker_count()
