"""pipeline.data.cleanup: what a killed process left in the workspace goes at the next start, nothing live."""

import os
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest

from audio_fixtures import speech_like, wav_bytes
from pipeline.data.cleanup import remove_stale_temp
from pipeline.model.codes import cache_path, save_codes
from pipeline.data.sources import extract_zip
from pipeline.data.source_spec import SourceError


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def age(path, seconds):
    then = time.time() - seconds
    os.utime(path, (then, then))
    return path


def test_stale_extractions_and_temp_files_go_live_ones_stay(tmp_path):
    ws = tmp_path / "ws"
    ds = ws / "datasets" / "zip-voices-1234abcd"
    dead = ds / f".extract-{dead_pid()}-0a1b2c3d"
    live = ds / f".extract-{os.getpid()}-0a1b2c3d"               # this process: still extracting
    old_no_pid = ds / ".extract-deadbeef"                          # a name without a pid: by age
    new_no_pid = ds / ".extract-feedbeef"
    for folder in (dead, live, old_no_pid, new_no_pid):
        (folder / "v").mkdir(parents=True, exist_ok=True)
        (folder / "v" / "a.wav").write_bytes(b"x")
    age(old_no_pid, 2 * 3600)
    real = save_codes(cache_path(ws / "codes", "ab" + "0" * 62), np.zeros((2, 3), np.int16))
    stale_code = age(_touch(real.with_name(f".{real.name}.{'f' * 32}.tmp")), 7200)   # codes.save_codes' name
    fresh_code = real.with_name(f".{real.name}.{'e' * 32}.tmp")
    fresh_code.write_bytes(b"being written")
    stale_meta = age(_touch(ds / ".meta.json.1a2b3c4d.tmp"), 7200)
    stale_wav = age(_touch(ds / "audio" / ".clip.1a2b3c4d.tmp.wav"), 7200)
    stale_selection = age(_touch(ws / ".selection.json.1a2b3c4d.tmp"), 7200)
    keep = [_touch(ds / "manifest.parquet"), _touch(ds / "audio" / "clip.wav"), real, fresh_code,
            age(_touch(ds / "notes.tmp"), 7200)]                       # not our temp-name pattern

    removed = remove_stale_temp(ws)
    assert sorted(removed) == sorted([dead, old_no_pid, stale_code, stale_meta, stale_wav, stale_selection])
    assert all(p.exists() for p in [live, new_no_pid, *keep])
    assert not any(p.exists() for p in removed)
    assert remove_stale_temp(ws) == []                                  # idempotent
    assert remove_stale_temp(tmp_path / "no-workspace-yet") == []


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_extraction_folders_carry_the_pid_cleanup_reads(tmp_path, monkeypatch):
    """The name extract_zip gives its folder is the one cleanup recognizes (and keeps while alive)."""
    from pipeline.data import sources

    seen = []
    real_unpack = sources._unpack

    def spy(archive, info, tmp, *args):
        seen.append(tmp)
        assert remove_stale_temp(tmp_path / "ws") == []                 # mid-extraction: untouched
        return real_unpack(archive, info, tmp, *args)

    monkeypatch.setattr(sources, "_unpack", spy)
    archive = tmp_path / "v.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("v/anna/a1.wav", wav_bytes(speech_like(sr=16_000)))
    dest = tmp_path / "ws" / "datasets" / "zip-v" / "extracted"
    extract_zip(archive, dest)
    assert seen and seen[0].name.startswith(f".extract-{os.getpid()}-") and seen[0].parent == dest.parent


def test_atomic_writes_leftovers_in_runs_and_reports_go(tmp_path):
    """pipeline.atomic's temp names, files and folders, wherever the workspace writes them."""
    from pipeline.atomic import temp_path

    ws = tmp_path / "ws"
    run = ws / "runs" / "20260101-000000-quick_lora"
    stale = [age(_touch(temp_path(run / "run.json")), 7200),
             age(_touch(temp_path(run / "artifacts" / "adapter.zip")), 7200),
             age(_touch(temp_path(ws / "doctor" / "report-abc.json")), 7200),
             age(_touch(temp_path(ws / "eval" / "cache" / "key.json")), 7200)]
    merged = temp_path(run / "artifacts" / "merged")      # a merge killed mid-write
    _touch(merged / "model.pth")
    stale.append(age(merged, 7200))
    writing = temp_path(run / "artifacts" / "merged")     # a merge writing now
    _touch(writing / "model.pth")
    keep = [_touch(run / "run.json"), _touch(run / "artifacts" / "merged" / "model.pth"), writing,
            age(_touch(run / "artifacts" / "notes.tmp"), 7200)]

    assert sorted(remove_stale_temp(ws)) == sorted(stale)
    assert all(p.exists() for p in keep) and not any(p.exists() for p in stale)
