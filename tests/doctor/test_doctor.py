"""`python -m pipeline doctor` on the tiny model (every row passes, labelled random weights), on
deliberately broken copies of it (each its own ✗ with its advice, non-zero exit), and with Hub
failures injected with huggingface_hub's own error classes."""

from __future__ import annotations

import json
import re
import shutil

import huggingface_hub
import pytest
import torch
from huggingface_hub import errors as hf_errors

from pipeline.config import Config
from pipeline.doctor.checkpoint import checkpoint_rows
from pipeline.doctor.command import main as doctor_main
from pipeline.doctor.hub import access_row, hub_rows
from pipeline.doctor.report import load_report
from pipeline.doctor.row import FAIL, PASS, WARN
from hub_fakes import fake_response, raising

REPO = "fishaudio/openaudio-s1-mini"


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No test here may touch the network: the Hub is offline unless a test injects an answer."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)


@pytest.fixture
def copy(tiny_checkpoint, tmp_path):
    target = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, target)
    return target


def _doctor(model_dir, workspace, *extra):
    return doctor_main(["doctor", "--model", str(model_dir), "--set", f"studio.workspace={workspace}", *extra])


def _report(workspace, model_dir):
    config = Config().with_overrides({"studio.workspace": str(workspace)})
    report = load_report(config, model_dir)
    assert report is not None
    return {r["name"]: r for r in report["rows"]}


def test_tiny_model_quick_check_passes_and_is_cached(copy, tmp_path, capsys):
    assert _doctor(copy, tmp_path / "ws", "--quick") == 0
    rows = _report(tmp_path / "ws", copy)
    assert not [r for r in rows.values() if r["status"] == FAIL]
    assert rows["shape"]["status"] == WARN and "tiny test model (random weights)" in rows["shape"]["detail"]
    for name in ("files", "weights", "tokenizer", "codec config", "forward = generation", "round trip"):
        assert rows[name]["status"] == PASS, rows[name]
    assert "random weights" in rows["forward = generation"]["detail"]
    assert "random weights give noise" in rows["round trip"]["detail"]
    assert "21.53 frames/s" in rows["codec config"]["detail"]
    assert rows["speech"]["detail"] == rows["LoRA smoke run"]["detail"] == "skipped (--quick)"
    assert rows["access"]["status"] == WARN and "HF_HUB_OFFLINE" in rows["access"]["detail"]
    assert "doctor" in capsys.readouterr().out  # the table


def test_tiny_model_speech_and_lora_smoke_run(tiny_checkpoint, tmp_path):
    from pipeline.doctor.model_checks import smoke_row, speech_row

    config = Config().with_overrides({"studio.workspace": str(tmp_path / "ws")})
    speech = speech_row(tiny_checkpoint, torch.device("cpu"), True, tmp_path, max_frames=12)
    assert speech.status == PASS and "frames/s" in speech.detail and "random weights" in speech.detail
    assert "signal: " in speech.detail and "DNSMOS" in speech.detail  # scored by what the scorecard offers offline
    assert (tmp_path / "doctor-speech.wav").is_file()
    smoke = smoke_row(config, tiny_checkpoint, tmp_path, torch.device("cpu"))  # the 20 steps of the real check
    assert smoke.status == PASS, smoke
    assert "8 clips of sample" in smoke.detail and "adapter saved" in smoke.detail
    assert "merged vs stacked" in smoke.detail
    assert not list(tmp_path.glob("doctor-smoke-*"))  # the run and the merged model are removed


def _rows_of(model_dir):
    return {r.name: r for r in checkpoint_rows(model_dir)}


def _special_with_semantic(copy, count):
    special = json.loads((copy / "special_tokens.json").read_text())
    first = min(v for k, v in special.items() if k.startswith("<|semantic:"))
    kept = {k: v for k, v in special.items() if not k.startswith("<|semantic:")}
    kept.update({f"<|semantic:{i}|>": first + i for i in range(count)})
    (copy / "special_tokens.json").write_text(json.dumps(kept))


def _edit_config(copy, **changes):
    config = json.loads((copy / "config.json").read_text())
    config.update(changes)
    (copy / "config.json").write_text(json.dumps(config))


def _break_missing(copy):
    (copy / "codec.pth").unlink()


def _break_truncated(copy):
    data = (copy / "model.pth").read_bytes()
    (copy / "model.pth").write_bytes(data[: len(data) // 2])


def _break_semantic(copy):
    _special_with_semantic(copy, 1024)


def _break_codebook(copy):
    _edit_config(copy, codebook_size=128)


def _break_sample_rate(copy):
    path = copy / "codec_config.yaml"  # the tiny codec's config (the real model uses the wheel's)
    path.write_text(path.read_text().replace("sample_rate: 44100", "sample_rate: 24000"))


def _break_shape(copy):
    """A model that claims to be the real s1-mini (no random-weights marker) with another fast_head_dim."""
    from pipeline.model.checkpoints import real_shape_args

    (copy / "RANDOM_WEIGHTS").unlink()
    real = real_shape_args()
    fields = json.loads((copy / "config.json").read_text())
    _edit_config(copy, **({k: getattr(real, k) for k in fields if hasattr(real, k)} | {"fast_head_dim": 128}))


@pytest.mark.parametrize("breaking, row, detail, advice", [
    (_break_missing, "files", r"missing or empty: codec\.pth", r"python -m pipeline download"),
    (_break_truncated, "weights", r"model\.pth cannot be read.*cut short", r"re-?download|pipeline download"),
    (_break_semantic, "tokenizer", r"1,024 semantic tokens.*codebook_size 64", r"same repository"),
    (_break_codebook, "tokenizer", r"64 semantic tokens.*codebook_size 128", r"same repository"),
    (_break_sample_rate, "codec config", r"24 kHz.*assumes 44\.1 kHz", r"codec that comes with openaudio-s1-mini"),
    (_break_shape, "shape", r"config\.json says fast_head_dim 128; the bench shape assumes 64",
     r"update pipeline's real shape"),
])
def test_broken_checkpoint_fails_its_row_with_advice(copy, tmp_path, breaking, row, detail, advice):
    breaking(copy)
    found = _rows_of(copy)[row]
    assert found.status == FAIL, found
    assert re.search(detail, found.detail), found.detail
    assert re.search(advice, found.advice), found.advice
    assert _doctor(copy, tmp_path / "ws", "--quick") == 1
    rows = _report(tmp_path / "ws", copy)
    assert rows[row]["status"] == FAIL
    assert rows["forward = generation"]["status"] == WARN and "not run" in rows["forward = generation"]["detail"]


def test_shape_of_the_real_model_passes(copy):
    _break_shape(copy)
    _edit_config(copy, fast_head_dim=64)
    assert _rows_of(copy)["shape"].status == PASS




@pytest.mark.parametrize("error, detail, advice", [
    (hf_errors.GatedRepoError("gated", response=fake_response(403)), "licence not accepted",
     f"accept the licence at https://huggingface.co/{REPO} and set HF_TOKEN"),
    (hf_errors.RepositoryNotFoundError("401 Client Error", response=fake_response(401)), "needs a login",
     "Set HF_TOKEN"),
    (hf_errors.LocalEntryNotFoundError("Cannot connect"), "Hub unreachable", "huggingface.co is reachable"),
])
def test_hub_failures_map_to_advice(tmp_path, monkeypatch, error, detail, advice):
    monkeypatch.setattr("pipeline.doctor.hub.unreachable_reason", lambda: None)
    monkeypatch.setattr(huggingface_hub, "auth_check", raising(error))
    row = access_row(REPO, needed=True)
    assert row.status == FAIL and detail in row.detail
    assert advice.lower() in row.advice.lower()
    assert access_row(REPO, needed=False).status == WARN  # the files are here: nothing to download


def test_hub_without_token_and_offline_fail_fast_when_the_model_is_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub, "auth_check", raising(AssertionError("offline must not ask the Hub")))
    token, access = hub_rows(REPO, tmp_path / "nothing")
    assert token.status == FAIL and "HF_TOKEN" in token.advice and REPO in token.advice
    assert access.status == FAIL and "HF_HUB_OFFLINE" in access.detail


def test_hub_access_granted(monkeypatch):
    monkeypatch.setattr("pipeline.doctor.hub.unreachable_reason", lambda: None)
    monkeypatch.setattr(huggingface_hub, "auth_check", lambda *a, **k: None)
    assert access_row(REPO, needed=True).status == PASS


def test_a_check_that_raises_is_its_rows_failure_not_the_doctors(copy, tmp_path, monkeypatch):
    """A transport error huggingface_hub does not wrap, a config.json whose numbers break the shape
    arithmetic: each becomes the ✗ of its own row, and every other row is still reported."""
    class RemoteProtocolError(Exception):  # as an HTTP client raises when a proxy drops the request
        pass

    monkeypatch.setattr("pipeline.doctor.hub.unreachable_reason", lambda: None)
    monkeypatch.setattr(huggingface_hub, "auth_check", raising(RemoteProtocolError("Server disconnected")))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps(config | {"n_head": 0}))
    monkeypatch.setattr("pipeline.doctor.machine.cpu_row", raising(RuntimeError("no /proc here")))
    assert _doctor(copy, tmp_path / "ws", "--quick") == 1
    rows = _report(tmp_path / "ws", copy)
    assert rows["access"]["status"] == FAIL and "RemoteProtocolError" in rows["access"]["detail"]
    assert rows["CPU"]["status"] == FAIL and "no /proc here" in rows["CPU"]["detail"]
    assert rows["weights"]["status"] == FAIL and rows["files"]["status"] == PASS and "GPU" in rows


def test_missing_model_folder_fails_with_download_advice(tmp_path):
    assert _doctor(tmp_path / "absent", tmp_path / "ws", "--quick") == 1
    rows = _report(tmp_path / "ws", tmp_path / "absent")
    assert rows["files"]["status"] == FAIL and "pipeline download" in rows["files"]["advice"]


def test_studio_view_shows_the_cached_report(copy, tmp_path):
    from studio.tabs.machine import cached_view, table_rows

    config = Config().with_overrides({"studio.workspace": str(tmp_path / "ws"), "base_model.local_dir": str(copy)})
    summary, table = cached_view(config)
    assert "No check of this model yet" in summary and table == []
    _break_missing(copy)
    assert _doctor(copy, tmp_path / "ws", "--quick") == 1
    summary, table = cached_view(config)
    assert "NOT ready" in summary and "report-" in summary
    files = next(r for r in table if r[1] == "checkpoint: files")
    assert files[0] == FAIL and "pipeline download" in files[3]
    assert table_rows(None) == []


def test_the_gpus_for_training_row(monkeypatch):
    from pipeline.doctor.machine import data_parallel_row

    monkeypatch.setattr(torch.distributed, "is_nccl_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    assert data_parallel_row(Config(), count=1).status == PASS
    row = data_parallel_row(Config().with_overrides({"training.grad_accumulation": 2}), count=8)  # batch 8
    assert row.status == PASS and row.detail.startswith("8 of 8 GPUs")
    row = data_parallel_row(Config(), count=8)  # a batch of 4: auto takes 4 of the 8
    assert row.status == WARN and row.detail.startswith("4 of 8 GPUs") and "multiple of 8" in row.advice
    row = data_parallel_row(Config().with_overrides({"training.gpus": 3}), count=8)
    assert row.status == FAIL and "does not split evenly over 3 GPUs" in row.advice


def test_the_training_attention_row(monkeypatch):
    import pipeline.kernels.runtime as runtime
    from pipeline.doctor.machine import attention_row

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert attention_row(Config()).detail == "torch's choice (no CUDA GPU)"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    off = attention_row(Config().with_overrides({"speed.cudnn_attention": False}))
    assert off.status == PASS and "speed.cudnn_attention: false" in off.detail
    monkeypatch.setattr(runtime, "cudnn_attention_runs_on", lambda device: False)  # an A100, say
    assert attention_row(Config()).status == PASS and "Hopper" in attention_row(Config()).detail
    monkeypatch.setattr(runtime, "cudnn_attention_runs_on", lambda device: True)
    asked = []
    monkeypatch.setattr(runtime, "cudnn_attention_takes", lambda *shape: asked.append(shape[1:4]) or True)
    assert attention_row(Config()).detail == "cuDNN's fused kernel, asked for by name"
    assert asked == [(16, 8, 128)]  # s1-mini's slow transformer: 16 query heads over 8 K/V heads of 128
    monkeypatch.setattr(runtime, "cudnn_attention_takes", lambda *shape: False)
    refused = attention_row(Config())
    assert refused.status == WARN and "refuses" in refused.detail and "Training still runs" in refused.advice
