"""The benchmark's code path on tiny shapes (CPU): JSON layout, batch layout, FLOP accounting."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from unittest import mock

import pytest
import torch

from pipeline.bench.runner import result_path, run_bench
from pipeline.bench.common import bench_shapes, synthetic_batch, train_flops
from pipeline.config import load_config
from pipeline.train.forward import IGNORE
from pipeline.train.loss import compute_loss


@pytest.fixture(scope="module")
def tiny_bench(tmp_path_factory):
    torch.set_num_threads(1)
    config = load_config()
    out = tmp_path_factory.mktemp("bench")
    variants = ["reference-lora", "reference-full", "project-lora", "fast-full@80"]
    return run_bench(config, out_dir=out, tiny=True, variants=variants, device="cpu"), out


def test_tiny_bench_writes_the_json_cost_reads(tiny_bench):
    result, out = tiny_bench
    files = list(out.glob("*.json"))
    assert len(files) == 1 and files[0].name.startswith("cpu-tiny-") and str(files[0]) == result["path"]
    data = json.loads(files[0].read_text())
    for key in ("card", "torch", "date", "command", "train", "reference", "loop", "extract", "generate"):
        assert key in data, key
    assert data["tiny"] is True and data["card"] == "cpu"
    for mode in ("lora", "full"):
        row = data["train"][mode]
        assert row["mode"] == mode and row["step_s"] > 0 and row["tokens_per_s"] > 0 and "peak_gb" in row
        assert data["reference"][mode]["impl"] == "reference" and data["train"]["speedup"][mode] > 0
    assert all("error" not in row for row in data["train"]["variants"])
    # project and fast paths start from the same weights and batch: same first loss
    assert data["train"]["lora"]["loss_first"] == pytest.approx(data["train"]["variants"][2]["loss_first"])
    for mode in ("lora", "full"):  # pipeline.train.loop.train itself ran, and its metrics gave step times
        assert data["loop"][mode]["status"] == "finished" and data["loop"][mode]["step_s"] > 0
    assert data["extract"]["realtime_factor"] > 0 and data["extract"]["frames"] > 0
    # over a written dataset: one codec, then two at once (as a run on a GPU encodes)
    assert set(data["extract"]["dataset"]["batches"]) == {"120", "120x2"}
    assert all(b["realtime_factor"] > 0 and b["failed"] == 0 for b in data["extract"]["dataset"]["batches"].values())
    gen = data["generate"]
    assert gen["frames_per_s"] > 0 and gen["batched_frames_per_s"] > 0 and gen["time_to_first_audio_s"] > 0
    assert gen["check"]["head_rel_diff"] < 1e-4 and gen["check"]["fast_rel_diff"] < 1e-4


def test_cost_module_reads_the_result(tiny_bench):
    from pipeline.estimate.cost import latest_benchmarks

    result, out = tiny_bench
    runs = out.parent / "runs_for_cost"
    (runs / "bench").mkdir(parents=True)
    (runs / "bench" / "tiny.json").write_text(json.dumps(result))
    assert all(not bench.get("tiny") for bench in latest_benchmarks(runs))   # tiny CPU timings are never used
    (runs / "bench" / "x.json").write_text(json.dumps(result | {"tiny": False}))
    bench = latest_benchmarks(runs)[0]                                          # the workspace's own first
    assert bench["path"].endswith("x.json")
    assert bench["train"]["lora"]["tokens_per_s"] == result["train"]["lora"]["tokens_per_s"]


def test_synthetic_batch_is_the_training_layout(tmp_path):
    args, tokenizer, _, batch_size, max_length = bench_shapes(tmp_path, tiny=True)
    batch = synthetic_batch(tokenizer, args, batch_size, max_length, seed=3)
    tokens, labels, lengths = batch["tokens"], batch["labels"], batch["lengths"]
    assert tokens.shape == (batch_size, args.num_codebooks + 1, max_length) == labels.shape
    assert int(lengths.max()) <= max_length and int(lengths.min()) > max_length // 2
    for b, n in enumerate(lengths.tolist()):
        has = labels[b, 0, : n - 1] != IGNORE
        assert torch.equal(labels[b, 0, : n - 1][has], tokens[b, 0, 1:n][has])  # next-token targets
        assert bool((labels[b, :, n:] == IGNORE).all())  # nothing learned from padding
    model_out = _tiny_loss(args, tokenizer, batch)
    assert torch.isfinite(model_out.loss) and model_out.n_tokens > 0


def _tiny_loss(args, tokenizer, batch):
    from fish_speech.models.text2semantic.llama import DualARTransformer

    torch.manual_seed(0)
    return compute_loss(DualARTransformer(args, tokenizer=tokenizer), batch)


def test_flop_accounting(tmp_path):
    args, tokenizer, _, batch_size, max_length = bench_shapes(tmp_path, tiny=True)
    batch = synthetic_batch(tokenizer, args, batch_size, max_length)
    full, lora = train_flops(args, batch, "full"), train_flops(args, batch, "lora", lora_params=1000)
    assert full["step"] == pytest.approx(3 * full["forward"])
    assert lora["step"] == pytest.approx(2 * lora["forward"] + 6 * 1000 * lora["tokens"])
    assert full["tokens"] == int(batch["lengths"].sum()) and 0 < full["frames"] <= full["loss_rows"] <= full["tokens"]
    per_layer = args.dim * (args.n_head + 2 * args.n_local_heads) * args.head_dim + args.n_head * args.head_dim * args.dim \
        + 3 * args.dim * args.intermediate_size
    assert full["parts"]["slow_layers"] == 2 * args.n_layer * per_layer * full["tokens"]
    assert full["parts"]["token_head"] == 2 * args.dim * args.vocab_size * full["loss_rows"]


def test_real_shape_needs_a_gpu_and_unknown_variants_are_refused(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("has a GPU")
    with pytest.raises(ValueError, match="CUDA"):
        run_bench(load_config(), out_dir=tmp_path)
    with pytest.raises(ValueError, match="variant"):
        run_bench(load_config(), which=["train"], out_dir=tmp_path, tiny=True, variants=["turbo-lora"], device="cpu")
    assert result_path(tmp_path, "NVIDIA H100 80GB HBM3", "2026-01-02", False).name == "nvidia-h100-80gb-hbm3-2026-01-02.json"


def test_gpu_idle_merges_overlapping_kernels_and_reports_the_gaps():
    from types import SimpleNamespace

    from pipeline.bench.profile import gpu_idle

    def kernel(name, start, end, device="CUDA"):
        return SimpleNamespace(name=name, device_type=SimpleNamespace(name=device),
                               time_range=SimpleNamespace(start=start, end=end))

    # a and b overlap (two streams), 100 us idle before c, 300 us before d; CPU events are ignored
    events = [kernel("a", 0, 500), kernel("b", 200, 700), kernel("cpu op", 700, 5000, "CPU"),
              kernel("c", 800, 900), kernel("d", 1200, 1300)]
    idle = gpu_idle(SimpleNamespace(events=lambda: events))
    assert idle["span_ms"] == 1.3 and idle["idle_ms"] == 0.4 and idle["gaps_over_50us"] == 2
    assert [(g["ms"], g["after"], g["before"]) for g in idle["longest"]] == [(0.3, "c", "d"), (0.1, "b", "c")]
    assert gpu_idle(SimpleNamespace(events=lambda: [])) == {}


def test_the_compile_section_runs_two_fresh_processes_on_one_workspace(tmp_path, monkeypatch):
    """Skipped where training does not compile; on a GPU, a cold process then a warm one on the cache
    it filled (each process's numbers are its own: pipeline.bench.compile_worker)."""
    import pipeline.bench.compile as compile_section
    import pipeline.train.warmup as warmup

    skipped = run_bench(load_config(), which=["compile"], out_dir=tmp_path, tiny=True, device="cpu")["compile"]
    assert "needs a CUDA GPU" in skipped["skipped"]

    calls = []

    def run(argv, cwd, env, **kwargs):  # each worker process: what it is given
        with mock.patch.dict(os.environ, env, clear=True):  # as the worker sees its settings
            config = load_config(argv[3])
            calls.append((env["STUDIO_WORKSPACE"], config.workspace, config.training.batch_size, argv[4:]))
        first = 90.0 if len(calls) == 1 else 30.5
        return subprocess.CompletedProcess(argv, 0, json.dumps({"first_step_s": first, "graphs": 15}) + "\n", "")

    # a person's workspace and cache folder in the environment are not what the bench measures
    monkeypatch.setenv("STUDIO_WORKSPACE", str(tmp_path / "mine"))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine" / "cache"))
    monkeypatch.setattr(warmup, "compiles_here", lambda config: True)
    monkeypatch.setattr(compile_section.subprocess, "run", run)
    config = load_config().with_overrides({"training.batch_size": 2})
    result = compile_section.bench_compile(config, "cuda", tiny=False)
    assert len({workspace for workspace, *_ in calls}) == 1 and calls[0][3] != calls[1][3]
    workspace = Path(calls[0][0])
    assert workspace.name == "workspace" and not workspace.is_relative_to(tmp_path / "mine")
    assert all(seen == workspace and batch == 2 for _, seen, batch, _ in calls)  # the bench's own settings
    assert result["cold"]["first_step_s"] == 90.0 and result["first_step_saved_s"] == 59.5
