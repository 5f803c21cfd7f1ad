"""Compile the training phases ahead of a user's first run, into a compile cache in the workspace.

A fresh training process waits at its first step for torch.compile: tracing, AOT autograd,
inductor's code generation and Triton's kernel builds. For LoRA at the s1-mini shape on an H200
with nothing compiled that is 83-95 s, and about 30 s once the cache holds the graphs.
torch keeps what it compiled on disk (FX and AOT-autograd graphs, Triton kernels, autotuning
picks), keyed by what defines a graph: model shape, micro-batch, sequence length, precision, LoRA
settings, torch version and GPU. Weights and data do not enter the key. So `warm_compile_cache`
runs a few real steps and a validation of every phase the training modes have. It uses random
codes and the base model's shape (its weights when downloaded, random ones otherwise). A user's
run then finds its graphs compiled and only loads them.

Runs keep the cache in `<workspace>/compile_cache/<code version>` (`use_compile_cache`), not in
torch's default under /tmp, which a reboot may empty. TORCHINDUCTOR_CACHE_DIR and TRITON_CACHE_DIR,
when set, win.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from pipeline.atomic import write_json
from pipeline.train.settings import TrainSettings, resolve_device, use_compile

CACHE_DIR_NAME = "compile_cache"
MARKER = "warmup.json"  # what was compiled into the cache, for the doctor and for skipping
CACHE_ENV, TRITON_ENV = "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"
WARMUP_STEPS = 3  # the first step compiles (the validation before it, the no-grad graphs); later ones check reuse
WARMUP_CLIPS = 400  # enough 2-20 s clips for the steps and a held-out set
WARMUP_MAX_FRAMES = 430  # 20 s at 21.5 frames/s
MODE_PHASES = {"quick_lora": ("lora",), "full_finetune": ("full", "speaker_lora")}
# the settings a compiled graph depends on (not the step count, learning rate or seed)
_GRAPH_SETTINGS = ("mode", "batch_size", "max_length", "lora_rank", "lora_alpha", "lora_dropout",
                   "lora_train_embeddings", "gradient_checkpointing", "precision", "compile",
                   "lora_dropout_kernel", "segment_attention_kernel", "cudnn_attention")
_MODEL_SHAPE = ("dim", "n_layer", "n_head", "n_local_heads", "head_dim", "intermediate_size", "vocab_size",
                "codebook_size", "num_codebooks", "n_fast_layer", "fast_dim", "fast_n_head",
                "fast_n_local_heads", "fast_head_dim", "fast_intermediate_size", "attention_qk_norm",
                "fast_attention_qk_norm", "tie_word_embeddings")

_SDPA_KERNEL_NODES = ("_sdpa_kernel", "_backend_from_string")  # what dynamo records for `with sdpa_kernel(...)`

Progress = Callable[[float, str], None] | None


class WarmupError(ValueError):
    """A warm-up that cannot run here; the message says why."""


# -- where the cache lives ----------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def code_version() -> str:
    """A hash of the pipeline package's source: the cache of one version is never read by another."""
    digest = hashlib.sha256()
    root = Path(__file__).resolve().parents[1]
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


_SET_HERE: dict[str, str] = {}  # what use_compile_cache put in this process's environment


def _chosen_by_user(name: str) -> str | None:
    """The environment's cache folder when a person set it: not torch's own default (torch writes
    it into the environment at its first compile) and not what use_compile_cache set before."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    value = os.environ.get(name)
    if not value or value == _SET_HERE.get(name):
        return None
    try:
        default = default_cache_dir()
    except (KeyError, OSError):  # no user name for this uid (a container): torch has no default to tell apart
        return value
    return None if value == default or value.startswith(default + os.sep) else value


def _set(name: str, value: str) -> None:
    os.environ[name] = _SET_HERE[name] = value


def compile_cache_dir(config) -> Path:
    chosen = _chosen_by_user(CACHE_ENV)
    return Path(chosen) if chosen else Path(config.workspace) / CACHE_DIR_NAME / code_version()


def use_compile_cache(config, prune: bool = False) -> Path:
    """Point torch.compile's on-disk cache of this process, and of the processes it starts (the
    data-parallel ranks), at the workspace's. Call it before anything compiles.

    prune: also remove other code versions' cache folders (never read again, ~100 MB each); only
    under the training lock, where no other training can be reading one."""
    directory = compile_cache_dir(config)
    directory.mkdir(parents=True, exist_ok=True)
    if prune:
        _remove_other_versions(directory)
    _set(CACHE_ENV, str(directory))
    if not _chosen_by_user(TRITON_ENV):  # Triton's kernels beside inductor's: one folder holds all a run compiles
        _set(TRITON_ENV, str(directory / "triton"))
    cache_whole_blocks()
    return directory


def cache_whole_blocks() -> None:
    """Let torch cache the AOT-autograd graphs of the transformer blocks too, where this process's
    compile cache is a folder of this code version (use_compile_cache's; data-parallel ranks inherit it).

    The blocks hold custom autograd Functions (frozen-base linears, LoRA dropout, segment
    attention) and the nodes `sdpa_kernel` leaves (cuDNN attention). torch refuses to cache such
    graphs by default, since a changed Function could be read back stale; a new process then
    traces them again (~15 s of a warm start). A folder per code version rules that out. A cache
    folder chosen in the environment keeps torch's defaults."""
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    directory = os.environ.get(CACHE_ENV)
    if not directory or Path(directory).name != code_version():
        return
    functorch_config.autograd_cache_allow_custom_autograd_functions = True
    # sdpa_kernel's nodes only name and set the backend: cacheable, keyed by the torch version
    inductor_config.unsafe_marked_cacheable_functions = {
        **inductor_config.unsafe_marked_cacheable_functions,
        **{f"torch.nn.attention.{name}": torch.__version__ for name in _SDPA_KERNEL_NODES}}


# -- what a run compiles -----------------------------------------------------------------------
def model_args(model_dir: Path | None):
    """The model's DualARModelArgs: from its config.json, or the s1-mini shape when there is none."""
    if model_dir is not None and (Path(model_dir) / "config.json").is_file():
        from fish_speech.models.text2semantic.llama import BaseModelArgs

        return BaseModelArgs.from_pretrained(str(Path(model_dir) / "config.json"))
    from pipeline.model.checkpoints import real_shape_args

    return real_shape_args()


def model_shape(model_dir: Path | None) -> dict:
    """The fields of the model's shape (what its compiled graphs depend on)."""
    fields = dataclasses.asdict(model_args(model_dir))
    return {key: fields.get(key) for key in _MODEL_SHAPE}


def graph_key(config, settings: TrainSettings, shape: dict, after: tuple[str, ...] = ()) -> dict:
    """Everything a phase's compiled graphs depend on, as recorded in the cache's marker: the
    settings, the GPU count and what the memory plan makes of them on this card (each rank's
    micro-batch and recomputation), the model's shape, torch and the GPU; and `after`, the phases
    the same process trained before it (see mode_keys)."""
    from pipeline.train.distributed import World, rank_split, training_gpus
    from pipeline.train.plan import plan_phase

    gpus = training_gpus(config)
    micro, accumulation = rank_split(settings.batch_size, settings.grad_accumulation, World(0, gpus))
    plan = plan_phase(dataclasses.replace(settings, batch_size=micro, grad_accumulation=accumulation),
                      "cuda" if torch.cuda.is_available() else "cpu")
    card = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return {"settings": {name: getattr(settings, name) for name in _GRAPH_SETTINGS},
            "plan": {"gpus": gpus, "micro_batch": plan.micro_batch, "recompute": bool(plan.gradient_checkpointing)},
            "model": shape, "torch": torch.__version__, "card": card, "after": list(after)}


def mode_keys(config, mode: str, shape: dict) -> list[tuple[str, dict]]:
    """(phase, graph_key) of each phase of a training mode, in the order a run trains them.

    On one GPU a run trains its phases in one process, and dynamo remembers the shapes each
    function has seen there: a size that changed from one phase to the next (another micro-batch
    in the memory plan) is compiled as symbolic. So a phase's graphs depend on the phases before
    it, and full_finetune's speaker LoRA is not quick_lora's LoRA. On several GPUs each phase
    starts fresh ranks, and the same settings mean the same graphs."""
    from pipeline.train.distributed import training_gpus

    gpus = training_gpus(config)
    keys, earlier = [], []
    for phase in MODE_PHASES[mode]:
        keys.append((phase, graph_key(config, TrainSettings.from_config(config, phase), shape,
                                      tuple(earlier) if gpus == 1 else ())))
        earlier.append(phase)
    return keys


def _marker(directory: Path) -> list[dict]:
    try:
        entries = json.loads((directory / MARKER).read_text()).get("warm", [])
    except (OSError, ValueError, AttributeError):
        return []
    return entries if isinstance(entries, list) else []


def _is_warm(entries: list[dict], key: dict) -> bool:
    return any(entry.get("key") == key for entry in entries)


def compiles_here(config) -> bool:
    """Whether training on this machine goes through torch.compile (a CUDA GPU, training.compile not off)."""
    settings = TrainSettings.from_config(config, "lora")
    return use_compile(settings, resolve_device(settings))


def cache_state(config, model_dir: Path | None, modes=tuple(MODE_PHASES)) -> dict:
    """{phase: True when the cache holds its graphs for this configuration, model shape, torch and GPU}."""
    entries, shape = _marker(compile_cache_dir(config)), model_shape(model_dir)
    return {phase: _is_warm(entries, key) for mode in modes for phase, key in mode_keys(config, mode, shape)}


# -- warming it ---------------------------------------------------------------------------------
def warmup_steps(settings: TrainSettings, ckpt: Path, manifest, work: Path, gpus: int = 1,
                 timeout_s: float = 900) -> dict:
    """A few steps and a validation of `settings`' phase in `work`, on `gpus` processes as a run
    starts them (each rank compiles for its own GPU), keeping no checkpoint."""
    warm = dataclasses.replace(settings, steps=WARMUP_STEPS, epochs=None, val_every=2, save_every=10**6,
                               patience=None, eval_texts=(), warmup_steps=1, init_adapter=None,
                               save_checkpoints=False)
    started = time.perf_counter()
    if gpus > 1:
        from pipeline.train.launch import train_data_parallel

        outcome = train_data_parallel(work, ckpt, manifest, warm, gpus, timeout_s=timeout_s)
    else:
        from pipeline.train.loop import train

        outcome = train(work, ckpt, manifest, warm)
    if outcome.status != "finished":
        raise WarmupError(f"The warm-up's {settings.mode} steps did not finish: {outcome.message}")
    rows = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines() if line.strip()]
    first = next((r["elapsed_s"] for r in rows if r.get("kind") == "train"), None)
    return {"seconds": round(time.perf_counter() - started, 1), "first_step_s": first}


def warm_compile_cache(config, model_dir: Path | None = None, modes=tuple(MODE_PHASES), force: bool = False,
                       progress: Progress = None) -> dict:
    """Compile every phase of `modes` into the workspace's compile cache (see the module doc).

    model_dir: the base model (its shape and weights); None: random weights of the s1-mini shape.
    Phases whose graphs the cache already holds are skipped unless `force`. Returns
    {"cache": dir, "phases": {phase: {"seconds", "first_step_s"} or {"skipped": reason}}}.
    Holds the machine's training lock: it and a training never share the GPU."""
    from pipeline.train.jobs import current_job, start_lock
    from pipeline.train.lock import WARMUP_HOLDER, TrainingBusy, TrainingLock

    if not compiles_here(config):
        raise WarmupError("Nothing to compile: training here runs uncompiled (no CUDA GPU, or training.compile: off).")
    # the GPU is a training's or the warm-up's: the studio names this holder (pipeline.train.jobs).
    # Under the studio's start lock: a job it started a moment ago may not hold the training lock yet.
    with contextlib.ExitStack() as held:
        with start_lock(config):
            job = current_job(config)
            if job:
                raise TrainingBusy(f"A training job is running: run '{job['run_id']}' (pid {job['pid']}). Warm up "
                                   "when it has finished: its steps are compiled by then anyway.")
            held.enter_context(TrainingLock(config.workspace, Path(config.workspace) / CACHE_DIR_NAME / WARMUP_HOLDER))
        directory = use_compile_cache(config, prune=True)
        return _warm(config, directory, model_dir, modes, force, progress)


def _remove_other_versions(directory: Path) -> None:
    """Other code versions' cache folders beside this one: never read again, ~100 MB each."""
    if directory.name != code_version():  # a folder chosen in the environment: not ours to clean
        return
    for other in directory.parent.iterdir():
        if other.is_dir() and other != directory and len(other.name) == len(directory.name) and \
                all(c in "0123456789abcdef" for c in other.name):
            shutil.rmtree(other, ignore_errors=True)


def _warm(config, directory: Path, model_dir: Path | None, modes, force: bool, progress: Progress) -> dict:
    """Each mode as a run of it trains: its phases in order, in a process whose dynamo state
    starts empty (torch._dynamo.reset), so that each phase compiles the graphs the run will ask for
    (mode_keys). A warm phase that a cold later one follows is trained again: it loads from the cache."""
    from pipeline.data.text import example_sentences
    from pipeline.model.synthetic import random_codes_manifest, write_random_lm
    from pipeline.train.distributed import training_gpus

    shape, gpus = model_shape(model_dir), training_gpus(config)
    plan = {mode: mode_keys(config, mode, shape) for mode in modes}
    result = {"cache": str(directory), "phases": {}}
    total, done = sum(len(keys) for keys in plan.values()), 0
    with tempfile.TemporaryDirectory(prefix="warmup-") as tmp:
        tmp = Path(tmp)
        ckpt, manifest = model_dir, None
        for mode, keys in plan.items():
            entries = _marker(directory)
            cold = [i for i, (_, key) in enumerate(keys) if force or not _is_warm(entries, key)]
            # on one GPU a cold phase needs the phases before it in the same process (mode_keys)
            train_now = list(range(cold[-1] + 1)) if cold and gpus == 1 else cold
            for i, (phase, _) in enumerate(keys):
                if i not in train_now:
                    result["phases"][phase] = {"skipped": "already compiled for these settings"}
            done += len(keys) - len(train_now)
            if train_now:
                torch._dynamo.reset()  # as in a new run's process
            for phase, key in (keys[i] for i in train_now):
                if progress:
                    progress(done / total, f"compiling the {phase} phase's training step (one to two minutes)")
                done += 1
                if ckpt is None:
                    ckpt = write_random_lm(tmp / "model", model_args(None))
                if manifest is None:
                    manifest = random_codes_manifest(tmp / "codes", model_args(model_dir), WARMUP_CLIPS,
                                                     WARMUP_MAX_FRAMES, example_sentences())
                timing = warmup_steps(TrainSettings.from_config(config, phase), Path(ckpt), manifest,
                                      tmp / mode / phase, gpus, config.training.collective_timeout_s)
                result["phases"][phase] = timing
                entries = [e for e in _marker(directory) if e.get("key") != key]
                entries.append({"phase": phase, "key": key, **timing, "date": time.strftime("%Y-%m-%dT%H:%M:%S")})
                write_json(directory / MARKER, {"warm": entries})
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
    if progress:
        progress(1.0, f"compile cache ready: {directory}")
    return result
