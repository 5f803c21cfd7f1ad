"""The doctor's report: a JSON file per model in `workspace/doctor/`, and a rich table.

Reports are cached per model fingerprint: sha256 of config.json, special_tokens.json,
tokenizer.tiktoken and the codec config, with the names, sizes and modification times of the weight
files (hashing 3.6 GB of weights would take longer than most checks).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import platform
from pathlib import Path

from pipeline.atomic import write_text
from pipeline.doctor.row import FAIL, PASS, WARN, Row

REPORT_DIR = "doctor"
_SMALL_FILES = ("config.json", "special_tokens.json", "tokenizer.tiktoken")
_WEIGHT_FILES = ("model.pth", "codec.pth")
STATUS_STYLE = {PASS: "green", WARN: "yellow", FAIL: "red"}


def model_fingerprint(model_dir: str | Path) -> str:
    from pipeline.model.checkpoints import codec_config_path

    model_dir = Path(model_dir).resolve()
    digest = hashlib.sha256(str(model_dir).encode())
    for name in _SMALL_FILES:
        path = model_dir / name
        digest.update(f"\0{name}\0".encode())
        digest.update(path.read_bytes() if path.is_file() else b"<missing>")
    digest.update(codec_config_path(model_dir).read_bytes() if model_dir.is_dir() else b"")
    for name in _WEIGHT_FILES:
        path = model_dir / name
        stat = path.stat() if path.is_file() else None
        digest.update(f"\0{name}\0{stat.st_size if stat else -1}\0{stat.st_mtime_ns if stat else -1}".encode())
    return digest.hexdigest()[:16]


def report_dir(config) -> Path:
    return Path(config.workspace) / REPORT_DIR


def report_path(config, model_dir: str | Path) -> Path:
    return report_dir(config) / f"report-{model_fingerprint(model_dir)}.json"


def build_report(rows: list[Row], model_dir: str | Path, quick: bool) -> dict:
    import torch

    counts = {status: sum(r.status == status for r in rows) for status in (PASS, WARN, FAIL)}
    return {
        "model_dir": str(Path(model_dir).resolve()), "fingerprint": model_fingerprint(model_dir),
        "quick": quick, "created": dt.datetime.now().isoformat(timespec="seconds"),
        "host": platform.node(), "torch": torch.__version__, "ok": counts[FAIL] == 0,
        "counts": counts, "rows": [r.as_dict() for r in rows],
    }


def save_report(config, report: dict) -> Path:
    return write_text(report_dir(config) / f"report-{report['fingerprint']}.json",
                      json.dumps(report, indent=2, ensure_ascii=False))


def load_report(config, model_dir: str | Path) -> dict | None:
    """The saved report of this model (as it is now), or None when none was made or it is unreadable."""
    try:
        path = report_path(config, model_dir)
        data = json.loads(path.read_text(encoding="utf-8"))
        for row in data["rows"]:
            Row.from_dict(row)  # raises on a malformed file
        data["path"] = str(path)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return data


def report_rows(report: dict) -> list[Row]:
    return [Row.from_dict(r) for r in report.get("rows", [])]


def rich_table(rows: list[Row], title: str = "python -m pipeline doctor"):
    from rich.table import Table

    table = Table(title=title, show_lines=False, expand=False)
    table.add_column("", no_wrap=True)
    table.add_column("check", no_wrap=True)
    table.add_column("result")
    table.add_column("what to do")
    group = None
    for row in rows:
        if row.group != group:
            group = row.group
            table.add_section()
        style = STATUS_STYLE[row.status]
        table.add_row(f"[{style}]{row.status}[/{style}]", f"{row.group}: {row.name}", row.detail, row.advice)
    return table


def summary_line(report: dict) -> str:
    c = report["counts"]
    verdict = "ready" if report["ok"] else "NOT ready"
    return (f"{verdict}: {c[PASS]} ✓, {c[WARN]} ⚠, {c[FAIL]} ✗"
            + (" (quick: speech and smoke run skipped)" if report.get("quick") else ""))
