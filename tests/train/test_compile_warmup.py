"""The compile warm-up (pipeline.train.warmup): where the cache lives, that its settings let torch
cache the graphs the blocks make, what the warm-up compiles and skips, and what it says on a CPU.

The warm-up's effect on a GPU's first step is a benchmark figure (docs/PERFORMANCE.md), not a test:
here torch caches real graphs on the CPU, in fresh processes, as a GPU run would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from pipeline.config import Config
from pipeline.train import warmup
from pipeline.train.lock import TrainingBusy, TrainingLock

PROJECT = Path(__file__).resolve().parents[2]


def _config(tmp_path: Path, **overrides) -> Config:
    return Config().with_overrides({"studio.workspace": str(tmp_path / "ws"), **overrides})


def test_the_cache_lives_in_the_workspace_one_folder_per_code_version(tmp_path, monkeypatch):
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    config = _config(tmp_path)
    version = warmup.code_version()
    assert len(version) == 12 and version == warmup.code_version()
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    assert warmup.compile_cache_dir(config) == tmp_path / "ws" / "compile_cache" / version
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())  # torch's own default: not a choice
    assert warmup.compile_cache_dir(config) == tmp_path / "ws" / "compile_cache" / version
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))  # a person's choice wins
    assert warmup.compile_cache_dir(config) == tmp_path / "mine"


# A block like the slow transformer's: attention under sdpa_kernel (as cuDNN's is asked for) and
# a custom autograd Function (as the frozen-base linears and LoRA dropout are), forward and backward.
_BLOCK_SCRIPT = textwrap.dedent("""
    import json, sys
    import torch
    from torch._dynamo.utils import counters
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from pipeline.config import Config

    from pipeline.train.warmup import use_compile_cache
    use_compile_cache(Config().with_overrides({"studio.workspace": sys.argv[2]}))

    class Doubled(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, grad):
            return grad * 2

    def block(q):
        with sdpa_kernel([SDPBackend.MATH]):
            out = torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)
        return Doubled.apply(out)

    q = torch.randn(1, 2, 8, 4, requires_grad=True)
    torch.compile(block)(q).sum().backward()
    print(json.dumps(dict(counters["aot_autograd"])))
""")


def _block_counters(tmp_path: Path, where: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")}
    if where == "chosen":  # a folder set in the environment: torch's own rules
        env["TORCHINDUCTOR_CACHE_DIR"] = str(tmp_path / "chosen")
    out = subprocess.run([sys.executable, "-c", _BLOCK_SCRIPT, where, str(tmp_path / "ws")], cwd=PROJECT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_workspace_cache_keeps_the_blocks_graphs_for_the_next_process(tmp_path):
    """torch refuses to cache a graph with a custom autograd Function or sdpa_kernel's node unless
    told it may; the blocks have both. With the workspace's cache a second process loads the graph
    instead of tracing it again. In a cache folder chosen in the environment (not one per code
    version) torch's defaults stay, and it cannot."""
    first = _block_counters(tmp_path, "workspace")
    assert first.get("autograd_cache_bypass", 0) == 0 and first.get("autograd_cache_saved", 0) >= 1, first
    second = _block_counters(tmp_path, "workspace")
    assert second.get("autograd_cache_hit", 0) >= 1 and second.get("autograd_cache_miss", 0) == 0, second
    assert _block_counters(tmp_path, "chosen").get("autograd_cache_bypass", 0) >= 1  # what the settings change


@pytest.fixture
def compiled_here(monkeypatch):
    """The warm-up's bookkeeping on a CPU: training "compiles", and each phase's steps are recorded
    instead of run (the real steps are the training loop's, tested with it)."""
    runs = []

    def fake_phase(settings, ckpt, manifest, work, gpus=1, timeout_s=900):
        runs.append((Path(work).name, gpus, Path(ckpt), len(manifest)))  # the phase: its folder's name
        return {"seconds": 1.0, "first_step_s": 0.5}

    monkeypatch.setattr(warmup, "compiles_here", lambda config: True)
    monkeypatch.setattr(warmup, "warmup_steps", fake_phase)
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    return runs


def test_the_warmup_compiles_each_set_of_graphs_once_and_remembers_it(tmp_path, tiny_checkpoint, compiled_here):
    config = _config(tmp_path)
    result = warmup.warm_compile_cache(config, tiny_checkpoint)
    # on one GPU a run trains full then its speaker LoRA in one process: both, in that order
    assert [phase for phase, *_ in compiled_here] == ["lora", "full", "speaker_lora"]
    assert set(result["phases"]) == {"lora", "full", "speaker_lora"}
    assert all(ckpt == tiny_checkpoint and rows == warmup.WARMUP_CLIPS for _, _, ckpt, rows in compiled_here)
    assert warmup.cache_state(config, tiny_checkpoint) == {"lora": True, "full": True, "speaker_lora": True}

    compiled_here.clear()
    again = warmup.warm_compile_cache(config, tiny_checkpoint)
    assert compiled_here == [] and all("skipped" in row for row in again["phases"].values())
    warmup.warm_compile_cache(config, tiny_checkpoint, modes=("quick_lora",), force=True)
    assert [phase for phase, *_ in compiled_here] == ["lora"]

    # a cold speaker LoRA (its entry lost) trains the full phase before it again, as a run would
    marker = warmup.compile_cache_dir(config) / warmup.MARKER
    entries = json.loads(marker.read_text())["warm"]
    marker.write_text(json.dumps({"warm": [e for e in entries if e["phase"] != "speaker_lora"]}))
    compiled_here.clear()
    again = warmup.warm_compile_cache(config, tiny_checkpoint)
    assert [phase for phase, *_ in compiled_here] == ["full", "speaker_lora"] and "skipped" in again["phases"]["lora"]

    # what a graph depends on: another batch, LoRA rank or model shape is not warm
    assert not any(warmup.cache_state(_config(tmp_path, **{"training.batch_size": 2}), tiny_checkpoint).values())
    assert not warmup.cache_state(_config(tmp_path, **{"training.lora.rank": 16}), tiny_checkpoint)["lora"]
    assert not any(warmup.cache_state(config, None).values())  # the s1-mini shape, not the tiny one
    # ...but not the step count or learning rate
    assert warmup.cache_state(_config(tmp_path, **{"training.quick_lora.steps": 50}), tiny_checkpoint)["lora"]


def test_each_mode_compiles_as_a_fresh_process_would(tmp_path, tiny_checkpoint, compiled_here, monkeypatch):
    """dynamo remembers the sizes a function saw in a process and compiles a changed one as
    symbolic. A run of full_finetune starts a new process: its first graphs are static, whatever
    quick_lora compiled before it in the warm-up's process."""
    symbolic = []

    def backend(gm, example_inputs):
        sizes = [size for t in example_inputs for size in (t.shape if isinstance(t, torch.Tensor) else [t])]
        symbolic.append(any(isinstance(size, torch.SymInt) for size in sizes))
        return gm.forward

    @torch.compile(backend=backend)
    def block(x):
        return x * 2

    def phase(settings, ckpt, manifest, work, gpus=1, timeout_s=900):
        block(torch.ones(5 if Path(work).name == "full" else 3))  # the memory plan's other micro-batch
        return {"seconds": 1.0, "first_step_s": 0.5}

    monkeypatch.setattr(warmup, "warmup_steps", phase)
    warmup.warm_compile_cache(_config(tmp_path), tiny_checkpoint)
    # lora (static); full in a fresh state (static; without the reset it would be symbolic); the
    # speaker LoRA after full in its process (symbolic, as the run's would be)
    assert symbolic == [False, False, True]


def test_the_warmup_runs_as_many_processes_as_a_run_and_keys_on_the_gpu_count(tmp_path, tiny_checkpoint,
                                                                              compiled_here, monkeypatch):
    """Each data-parallel rank compiles for its own GPU (the device is part of torch's cache key):
    the warm-up starts the ranks a run would, and a warm cache for one GPU is not warm for two."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    two = _config(tmp_path, **{"training.gpus": 2})
    warmup.warm_compile_cache(two, tiny_checkpoint, modes=("quick_lora",))
    assert compiled_here[0][:2] == ("lora", 2)
    assert warmup.cache_state(two, tiny_checkpoint, modes=("quick_lora",)) == {"lora": True}
    # each phase starts fresh ranks: the speaker LoRA's graphs are the LoRA phase's
    result = warmup.warm_compile_cache(two, tiny_checkpoint, modes=("full_finetune",))
    assert [phase for phase, *_ in compiled_here] == ["lora", "full"]
    assert result["phases"]["speaker_lora"] == {"skipped": "already compiled for these settings"}
    one = _config(tmp_path, **{"training.gpus": 1})
    assert warmup.cache_state(one, tiny_checkpoint, modes=("quick_lora",)) == {"lora": False}


def test_the_warmup_waits_for_no_training_and_no_training_for_it(tmp_path, tiny_checkpoint, compiled_here,
                                                                   monkeypatch):
    from pipeline.train import jobs

    config = _config(tmp_path)
    with TrainingLock(config.workspace, config.runs_dir / "busy"):
        with pytest.raises(TrainingBusy, match="run 'busy'"):
            warmup.warm_compile_cache(config, tiny_checkpoint)
    assert compiled_here == []

    # while the warm-up holds the GPU, the studio sees no run, and Start says what is happening
    seen = {}

    def during_warmup(settings, ckpt, manifest, work, gpus=1, timeout_s=900):
        seen["job"] = jobs.current_job(config)
        with pytest.raises(jobs.JobError, match="being compiled ahead") as refused:
            jobs.start_job(config)
        seen["refused"] = str(refused.value)
        return {"seconds": 1.0, "first_step_s": 0.5}

    def during_warmup_scripts(settings, ckpt, manifest, work, gpus=1, timeout_s=900):
        during_warmup(settings, ckpt, manifest, work, gpus, timeout_s)
        seen["warming"] = jobs.compile_warmup(config)  # what the Scorecard checks before it takes the GPU
        with pytest.raises(TrainingBusy, match="being compiled ahead"):  # `pipeline run` in a shell
            with TrainingLock(config.workspace, config.runs_dir / "from-a-shell"):
                pass
        return {"seconds": 1.0, "first_step_s": 0.5}

    monkeypatch.setattr(warmup, "warmup_steps", during_warmup_scripts)
    warmup.warm_compile_cache(config, tiny_checkpoint, modes=("quick_lora",))
    assert seen["job"] is None and "python -m pipeline warmup" in seen["refused"]
    assert seen["warming"]["pid"] == os.getpid() and jobs.compile_warmup(config) is None
    assert [run.name for run in config.runs_dir.iterdir()] == ["busy"]  # Start made no run folder

    # a job the studio has just started, whose process does not hold the training lock yet
    (config.workspace / "job.json").write_text(json.dumps({"run_id": "starting", "pid": os.getpid()}))
    compiled_here.clear()
    with pytest.raises(TrainingBusy, match="run 'starting'"):
        warmup.warm_compile_cache(config, tiny_checkpoint, modes=("quick_lora",))
    assert compiled_here == []


def test_the_warmup_removes_other_code_versions_caches(tmp_path, tiny_checkpoint, compiled_here):
    config = _config(tmp_path)
    old = tmp_path / "ws" / "compile_cache" / "0123456789ab"
    (old / "fxgraph").mkdir(parents=True)
    keep = tmp_path / "ws" / "compile_cache" / "notes"
    keep.mkdir()
    warmup.warm_compile_cache(config, tiny_checkpoint, modes=("quick_lora",))
    assert not old.exists() and keep.exists() and warmup.compile_cache_dir(config).is_dir()

    # a run (under the training lock) prunes too, so a `git pull` without a warm-up leaves one folder
    (old / "fxgraph").mkdir(parents=True)
    warmup.use_compile_cache(config)
    assert old.exists()
    warmup.use_compile_cache(config, prune=True)
    assert not old.exists() and keep.exists()


def test_a_cache_folder_set_where_the_user_has_no_name_is_still_a_choice(tmp_path, monkeypatch):
    """torch's default folder is named after the user; in a container whose uid has no name,
    asking for it fails, and the folder set in the environment is the person's choice."""
    import getpass

    def no_name():
        raise KeyError("getpwuid(): uid not found: 12345")

    monkeypatch.setattr(getpass, "getuser", no_name)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert warmup.compile_cache_dir(_config(tmp_path)) == tmp_path / "mine"


def test_a_second_call_in_one_process_follows_the_new_workspace(tmp_path, monkeypatch):
    """What use_compile_cache put in the environment is not mistaken for a person's choice, and
    neither is torch's own default that torch writes there (Triton's included)."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("TRITON_CACHE_DIR", f"{default_cache_dir()}/triton/0")
    first = warmup.use_compile_cache(_config(tmp_path / "a"))
    assert os.environ["TRITON_CACHE_DIR"] == str(first / "triton")
    second = warmup.use_compile_cache(_config(tmp_path / "b"))
    assert second == tmp_path / "b" / "ws" / "compile_cache" / warmup.code_version()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(second) and os.environ["TRITON_CACHE_DIR"] == str(second / "triton")


def test_warmup_on_a_cpu_says_there_is_nothing_to_compile(tmp_path, monkeypatch, capsys):
    from pipeline.cli import main

    monkeypatch.setenv("STUDIO_WORKSPACE", str(tmp_path / "ws"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["warmup"]) == 2
    err = capsys.readouterr().err
    assert "Nothing to compile: training here runs uncompiled" in err and "Traceback" not in err
    assert not (tmp_path / "ws" / "compile_cache").exists()


def test_the_doctor_row_says_whether_the_steps_are_compiled_ahead(tmp_path, tiny_checkpoint, compiled_here,
                                                                  monkeypatch):
    from pipeline.doctor.machine import compile_cache_row
    from pipeline.doctor.row import PASS, WARN

    config = _config(tmp_path)
    cold = compile_cache_row(config, tiny_checkpoint)
    assert cold.status == WARN and "python -m pipeline warmup" in cold.advice and "lora" in cold.detail
    warmup.warm_compile_cache(config, tiny_checkpoint, modes=("quick_lora",))
    warm = compile_cache_row(config, tiny_checkpoint)
    assert warm.status == PASS and "compiled ahead" in warm.detail
    monkeypatch.setattr(warmup, "compiles_here", lambda config: False)
    assert compile_cache_row(config, tiny_checkpoint).detail.startswith("not used")

    # a damaged config.json is the checkpoint rows' to explain: this row says it could not check
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"dim": 1024}')
    monkeypatch.setattr(warmup, "compiles_here", lambda config: True)
    row = compile_cache_row(config, broken)
    assert row.status == WARN and row.detail.startswith("not checked: the model's config.json could not be read")


def test_the_warmup_command_reports_each_phase(tmp_path, tiny_checkpoint, compiled_here, monkeypatch, capsys):
    from pipeline.cli import main

    monkeypatch.setenv("STUDIO_WORKSPACE", str(tmp_path / "ws"))
    timings = iter([{"seconds": 96.0, "first_step_s": 41.0}, {"seconds": 5.0, "first_step_s": None}])
    monkeypatch.setattr(warmup, "warmup_steps", lambda *args, **kwargs: next(timings))
    assert main(["warmup", "--mode", "quick_lora", "--model", str(tiny_checkpoint)]) == 0
    assert main(["warmup", "--mode", "quick_lora", "--model", str(tiny_checkpoint), "--force"]) == 0
    out = " ".join(capsys.readouterr().err.split())  # the CLI's console writes to stderr
    assert "lora compiled in 96 s (first step 41 s)" in out and "lora compiled in 5 s compile cache ready" in out
