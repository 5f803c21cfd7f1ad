"""`python -m pipeline …` as a user runs it: real subprocesses on the bundled sample and the tiny model."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

from pipeline.tiny_checkpoint import write_tiny_checkpoint

ROOT = Path(__file__).resolve().parent.parent


def pipeline_cli(*args, workspace: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = os.environ | {"STUDIO_WORKSPACE": str(workspace), "PYTHONUNBUFFERED": "1"}
    env.pop("PIPELINE_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_help_lists_every_command(tmp_path):
    out = pipeline_cli("--help", workspace=tmp_path)
    assert out.returncode == 0
    for command in ("download", "prepare", "extract", "train", "merge", "say", "run", "bench", "tiny-model"):
        assert command in out.stdout


def test_tiny_model_command_writes_a_loadable_labelled_checkpoint(tmp_path):
    from pipeline.checkpoints import describe_checkpoint, load_lm

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
