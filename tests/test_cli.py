"""`python -m pipeline …` as a user runs it: real subprocesses on the bundled sample and the tiny model."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

from pipeline.model.tiny_checkpoint import write_tiny_checkpoint

ROOT = Path(__file__).resolve().parent.parent


def pipeline_cli(*args, workspace: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = os.environ | {"STUDIO_WORKSPACE": str(workspace), "PYTHONUNBUFFERED": "1"}
    env.pop("PIPELINE_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_help_lists_every_command(tmp_path):
    out = pipeline_cli("--help", workspace=tmp_path)
    assert out.returncode == 0
    for command in ("download", "prepare", "extract", "train", "merge", "say", "run", "bench", "tiny-model", "doctor",
                    "evaluate"):
        assert command in out.stdout


def test_tiny_model_command_writes_a_loadable_labelled_checkpoint(tmp_path):
    from pipeline.model.checkpoints import describe_checkpoint, load_lm

    out = pipeline_cli("tiny-model", "--out", str(tmp_path / "tiny"), workspace=tmp_path)
    assert out.returncode == 0 and "produces noise" in out.stderr
    assert "random weights: produces noise" in describe_checkpoint(tmp_path / "tiny")
    assert load_lm(tmp_path / "tiny")[0].config.num_codebooks > 0


def test_bad_override_is_one_readable_line(tmp_path):
    out = pipeline_cli("prepare", "--set", "training.lora.rnak=4", workspace=tmp_path)
    assert out.returncode == 2
    assert "training.lora.rnak" in out.stderr and "Traceback" not in out.stderr
    out = pipeline_cli("say", "Hei", "--model", str(tmp_path / "nowhere"), workspace=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr and "nowhere" in out.stderr


@pytest.mark.slow
def test_run_on_the_sample_and_the_tiny_model_end_to_end(tmp_path):
    """The whole launchable.yaml workflow headless, on 2 CPU cores, then speech from its merged model."""
    tiny = write_tiny_checkpoint(tmp_path / "tiny")
    workspace = tmp_path / "ws"
    settings = ["--set", "dataset.source=sample", "--set", f"base_model.local_dir={tiny}",
                "--set", "training.quick_lora.steps=6", "--set", "training.max_length=512",
                "--set", "training.batch_size=2", "--set", "training.val_every=3", "--set", "training.save_every=3",
                "--set", "training.eval_sentences=1", "--set", "training.eval_max_frames=20"]
    out = pipeline_cli("run", *settings, "--run-id", "cli", workspace=workspace)
    assert out.returncode == 0, out.stderr[-3000:]
    run_dir = workspace / "runs" / "cli"
    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "finished" and run["dataset"] == "sample"
    manifest_rows = len(__import__("pandas").read_parquet(workspace / "datasets" / "sample" / "manifest.parquet"))
    assert manifest_rows == 175
    merged = Path(run["artifacts"]["merged"])
    assert (merged / "model.pth").exists() and (merged / "config.json").exists()
    assert Path(run["artifacts"]["adapter_zip"]).stat().st_size > 0
    assert len(run["audio"]) == 3 and all(sf.info(p).frames > 0 for p in run["audio"])
    assert sorted(p.name for p in (run_dir / "phases" / "lora" / "audio").iterdir()) == ["step_000003", "step_000006"]
    assert "run cli finished" in out.stderr

    wav = tmp_path / "hei.wav"
    out = pipeline_cli("say", "Hyvää huomenta, 5 kissaa!", "--model", str(merged), "--out", str(wav),
                       "--seed", "1", workspace=workspace)
    assert out.returncode == 0, out.stderr[-3000:]
    assert sf.info(wav).frames > 0 and "viisi kissaa" in out.stderr


def test_prepare_local_parquet_force_selection_and_start_cleanup(tmp_path):
    import pyarrow.parquet as pq
    from test_sources import voxpopuli_table

    hub = tmp_path / "voxpopuli"
    (hub / "fi").mkdir(parents=True)
    pq.write_table(voxpopuli_table(0, 6), hub / "fi" / "train-00000-of-00001.parquet")
    workspace = tmp_path / "ws"
    leftover = workspace / "datasets" / "zip-old" / ".extract-999999999-0a1b2c3d"   # no such pid
    (leftover / "v").mkdir(parents=True)
    settings = ["--set", "dataset.source=folder", "--set", f"dataset.path={hub}", "--set", "dataset.max_clips=3"]
    out = pipeline_cli("prepare", *settings, workspace=workspace)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "using 3 of 6 clips" in out.stderr and "3 speakers" in out.stderr
    assert not leftover.exists()
    again = pipeline_cli("prepare", *settings, workspace=workspace)
    assert "Dataset unchanged" in again.stderr and "Checked" not in again.stderr
    forced = pipeline_cli("prepare", *settings, "--force", workspace=workspace)
    assert forced.returncode == 0 and "Checked 3/3 clips" in forced.stderr


def test_extract_prints_a_short_summary(tmp_path, monkeypatch, capsys):
    import pandas as pd

    from pipeline import cli

    from pipeline.model import codes
    from pipeline.model.codes import ExtractReport

    failed = {f"spk/clip{i:04d}": "unreadable audio: truncated file" for i in range(40)}
    paths = {f"spk/ok{i:04d}": f"/ws/codes/ab/{'0' * 64}.npy" for i in range(2000)}
    report = ExtractReport(total=2040, hits=1500, computed=500, failed=failed, audio_seconds=9000.0,
                           computed_seconds=2000.0, wall_seconds=40.0, codes_paths=paths, manifest=pd.DataFrame())
    monkeypatch.setattr(cli, "_dataset", lambda config, force=False: type("D", (), {"manifest": pd.DataFrame()})())
    monkeypatch.setattr(codes, "extract_codes", lambda *a, **k: report)
    monkeypatch.setenv("STUDIO_WORKSPACE", str(tmp_path))
    assert cli.main(["extract", "--model", str(tmp_path)]) == 0
    printed = capsys.readouterr().err
    assert "2040 clips: 1500 cached, 500 encoded, 40 failed" in printed and "40.0 s" in printed
    assert "spk/clip0000" in printed and "spk/clip0004" in printed and "spk/clip0005" not in printed
    assert "35 more failures" in printed and "/ws/codes" not in printed and len(printed) < 1000
