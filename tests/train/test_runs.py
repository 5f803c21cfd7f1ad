"""pipeline.train.runs: the one owner of a run's record (run.json), written all or nothing."""

import ast
import json
from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.train.runs import (RUN_FILE, RunError, create_run, is_run, list_runs, read_run, run_dir_for,
                                 update_run)

ROOT = Path(__file__).resolve().parents[2]


def _config(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIO_WORKSPACE", str(tmp_path / "ws"))
    return load_config()


def test_update_run_merges_and_leaves_no_temp_file(tmp_path):
    run_dir = tmp_path / "r1"
    update_run(run_dir, id="r1", status="created")
    state = update_run(run_dir, status="running", phase="lora")
    assert read_run(run_dir) == state
    assert state["id"] == "r1" and state["status"] == "running" and state["stage_started_at"] > 0
    assert sorted(p.name for p in run_dir.iterdir()) == [RUN_FILE]  # the temp name went with the rename


def test_a_failed_write_keeps_the_previous_record(tmp_path, monkeypatch):
    from pipeline import atomic

    run_dir = tmp_path / "r1"
    update_run(run_dir, id="r1", status="running")

    def full_disk(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "replace", full_disk)
    with pytest.raises(OSError, match="No space"):
        update_run(run_dir, status="finished")
    assert read_run(run_dir)["status"] == "running"
    assert sorted(p.name for p in run_dir.iterdir()) == [RUN_FILE]  # no temp file left behind


def test_unreadable_or_foreign_records_read_as_empty(tmp_path):
    assert read_run(tmp_path / "missing") == {}
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / RUN_FILE).write_text("{half")
    assert read_run(tmp_path / "broken") == {}
    (tmp_path / "list").mkdir()
    (tmp_path / "list" / RUN_FILE).write_text(json.dumps(["not", "a", "record"]))
    assert read_run(tmp_path / "list") == {} and is_run(tmp_path / "list") and not is_run(tmp_path / "missing")


def test_create_run_records_mode_and_phases_and_lists_newest_first(tmp_path, monkeypatch):
    config = _config(tmp_path, monkeypatch)
    first = create_run(config, "20260101-000000-quick_lora", mode="quick_lora")
    second = create_run(config, "20260102-000000-full_finetune", mode="full_finetune")
    assert read_run(first)["phases"] == ["lora"] and read_run(second)["phases"] == ["full", "speaker_lora"]
    assert [r["id"] for r in list_runs(config)] == [second.name, first.name]
    update_run(first, status="finished")
    assert create_run(config, first.name)  # an existing run is left as it is
    assert read_run(first)["status"] == "finished"
    with pytest.raises(RunError, match="not a run id"):
        run_dir_for(config, "../elsewhere")


def _string_constants(path: Path):
    """String constants of a module that are not docstrings."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    return [node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


def test_only_the_runs_module_names_the_run_file():
    owner = ROOT / "pipeline" / "train" / "runs.py"
    naming = [str(path.relative_to(ROOT)) for package in ("pipeline", "studio") for path in (ROOT / package).rglob("*.py")
              if path != owner and any(RUN_FILE in text for text in _string_constants(path))]
    assert not naming, f"read and write run.json through pipeline.train.runs: {naming}"
