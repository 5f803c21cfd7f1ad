"""Writes that are all or nothing: a temporary file beside the target, then `os.replace`.

A process killed mid-write leaves the old file (or none) and a hidden `.<name>.<hex>.tmp`, never
half a file; `pipeline.data.cleanup` removes such temp files at the next start.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def temp_path(path: str | Path) -> Path:
    """A unique hidden temp name in the target's folder (same file system: the rename is atomic)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")


@contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """Yield a temp path to write (file or folder); on success it replaces `path`, else it goes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        yield tmp
        if tmp.is_dir() and path.is_dir():
            shutil.rmtree(path)  # a folder cannot be renamed over another
        os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def write_bytes(path: str | Path, data: bytes) -> Path:
    with replacing(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    with replacing(path) as tmp:
        tmp.write_text(text, encoding=encoding)
    return Path(path)


def write_json(path: str | Path, data, indent: int | None = 2) -> Path:
    """JSON (values it cannot encode as their str) written atomically."""
    return write_text(path, json.dumps(data, indent=indent, default=str))
