"""Removal of temporary files a killed process left in the workspace.

Atomic writes (pipeline.atomic) go to a hidden temporary name (`.<name>.<hex>.tmp`: in the codes
cache, the datasets, the workspace root, each run folder and its artifacts, the doctor's reports
and the scorecard cache; a merged model folder is written as such a folder) and zip extraction to
a `.extract-<pid>-<hex>` folder beside its destination; a process killed mid-write leaves them
behind. `remove_stale_temp` runs at start-up and removes only what no live process can still be
writing: an extraction folder whose process is gone (or, without a pid in its name, untouched for
`max_age_s`), a temporary file or folder untouched for `max_age_s` (an atomic write takes
seconds).
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

from pipeline.data.sources import EXTRACT_PREFIX

STALE_AFTER_S = 3600.0
_TEMP_FILE = re.compile(r"^\..+\.tmp(\.[A-Za-z0-9]+)?$")      # `.x.npy.<hex>.tmp`, `.<stem>.<hex>.tmp.wav`
_EXTRACT_DIR = re.compile(rf"^{re.escape(EXTRACT_PREFIX)}(?:(\d+)-)?[0-9a-f]+$")
_TEMP_DIR = re.compile(r"^\..+\.[0-9a-f]{32}\.tmp$")          # pipeline.atomic.replacing's folders


def remove_stale_temp(workspace: str | Path, max_age_s: float = STALE_AFTER_S, now: float | None = None) -> list[Path]:
    """Remove stale extraction folders and temporary files under `workspace`; return what went."""
    workspace = Path(workspace)
    now = time.time() if now is None else now
    removed: list[Path] = []
    datasets, codes = workspace / "datasets", workspace / "codes"
    for dataset in _children(datasets):
        for entry in _children(dataset):
            if entry.is_dir() and (match := _EXTRACT_DIR.match(entry.name)) and \
                    _stale(entry, match.group(1), max_age_s, now):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
        for folder in (dataset, dataset / "audio", dataset / "extracted"):
            removed += _remove_temp_files(folder, max_age_s, now)
    for folder in (workspace, *_children(codes)):  # the root: selection.json's atomic writes
        removed += _remove_temp_files(folder, max_age_s, now)
    for run in _children(workspace / "runs"):      # run.json, artifacts (zips, the merged folder)
        removed += _remove_temp_files(run, max_age_s, now)
        removed += _remove_temp_files(run / "artifacts", max_age_s, now)
        removed += _remove_temp_dirs(run / "artifacts", max_age_s, now)
    for folder in (workspace / "doctor", workspace / "eval" / "cache"):
        removed += _remove_temp_files(folder, max_age_s, now)
    return removed


def _children(folder: Path) -> list[Path]:
    try:
        return sorted(folder.iterdir()) if folder.is_dir() else []
    except OSError:
        return []


def _remove_temp_files(folder: Path, max_age_s: float, now: float) -> list[Path]:
    removed = []
    for entry in _children(folder):
        if _TEMP_FILE.match(entry.name) and entry.is_file() and _age(entry, now) > max_age_s:
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def _remove_temp_dirs(folder: Path, max_age_s: float, now: float) -> list[Path]:
    removed = []
    for entry in _children(folder):
        if _TEMP_DIR.match(entry.name) and entry.is_dir() and _age(entry, now) > max_age_s:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def _stale(folder: Path, pid: str | None, max_age_s: float, now: float) -> bool:
    if pid is not None:
        return not pid_alive(int(pid))  # a live owner keeps its folder, however long it takes
    return _age(folder, now) > max_age_s


def _age(path: Path, now: float) -> float:
    try:
        return now - path.stat().st_mtime
    except OSError:
        return 0.0


def pid_alive(pid: int | None) -> bool:
    """True when a process with this id exists (another user's counts as alive); a zombie (a
    finished child not yet reaped) does not."""
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return True
