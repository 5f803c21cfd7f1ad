"""Proof that a training checkpoint is whole: sizes and hashes of its files, written last.

A checkpoint folder is written under a temporary name and renamed into place, so a crash mid-save
leaves no half folder. That does not protect it from what happens afterwards: a disk that
fills, a copy cut short, a file truncated by hand. `integrity.json` lists every file's size and
SHA-256 and is written after all of them, so a folder whose files still match it is the
checkpoint that was saved. Resuming verifies it first and, if a file differs, falls back to an
older checkpoint; the message names the file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pipeline.atomic import write_text

INTEGRITY_FILE = "integrity.json"


def _sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != INTEGRITY_FILE)


def write_integrity(folder: Path) -> Path:
    """Record every file of `folder` (call it after the last file is written)."""
    folder = Path(folder)
    files = {str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in _files(folder)}
    return write_text(folder / INTEGRITY_FILE, json.dumps({"files": files}, indent=1))


def forget(folder: Path, name: str) -> None:
    """Delete one recorded file and its entry (pruning drops older checkpoints' resume state)."""
    folder = Path(folder)
    (folder / name).unlink(missing_ok=True)
    path = folder / INTEGRITY_FILE
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return
    if record.get("files", {}).pop(name, None) is not None:
        write_text(path, json.dumps(record, indent=1))


def problem(folder: Path) -> str | None:
    """What is wrong with the checkpoint in `folder`, naming the file, or None when it is whole.

    A folder without a record (written by an older version) is not judged here: loading it
    is the check.
    """
    folder = Path(folder)
    path = folder / INTEGRITY_FILE
    if not path.exists():
        return None
    try:
        files = json.loads(path.read_text())["files"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        return f"{path.name} is unreadable"
    for name, expected in files.items():
        target = folder / name
        if not target.is_file():
            return f"{name} is missing"
        size = target.stat().st_size
        if size != expected["bytes"]:
            return f"{name} has {size:,} bytes, {expected['bytes']:,} were saved (truncated or replaced)"
        if _sha256(target) != expected["sha256"]:
            return f"{name} differs from what was saved (its content hash does not match)"
    return None
