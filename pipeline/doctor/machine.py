"""Machine rows: GPU, driver and CUDA, library versions, bf16, free disk, CPU cores, fast kernels,
how many GPUs a training uses, and whether the Playground can play speech live."""

from __future__ import annotations

import os
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

import torch

from pipeline.doctor.row import FAIL, PASS, WARN, Row, guarded

GROUP = "machine"
MIN_GPU_GB = 20.0  # below this the real model's LoRA training needs small batches (pipeline.train.memory_plan)
MIN_CPU_CORES = 4  # audio decoding and the data loader share the cores with the studio


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _driver_version() -> str | None:
    """The NVIDIA driver version (torch reports only the CUDA runtime it was built with)."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.strip().splitlines()[0] if out.strip() else None


def gpu_row() -> Row:
    if not torch.cuda.is_available():
        return Row(GROUP, "GPU", WARN, "no CUDA GPU visible to torch: training and speech run on the CPU (slow)",
                   "On a GPU machine check nvidia-smi and that torch is a CUDA build (torch.version.cuda).")
    props = torch.cuda.get_device_properties(0)
    memory_gb = props.total_memory / 1e9
    count = torch.cuda.device_count()
    detail = (f"{props.name}, {memory_gb:.0f} GB (compute {props.major}.{props.minor})"
              + (f", {count} GPUs" if count > 1 else "")
              + f"; driver {_driver_version() or 'unknown'}, CUDA runtime {torch.version.cuda}")
    if memory_gb < MIN_GPU_GB:
        return Row(GROUP, "GPU", WARN, detail,
                   f"Under {MIN_GPU_GB:.0f} GB: training fits only with small micro-batches; a 24 GB+ GPU is faster.")
    return Row(GROUP, "GPU", PASS, detail)


def software_row() -> Row:
    triton = _version("triton")
    parts = [f"torch {torch.__version__}", f"Triton {triton or 'not installed'}",
             f"fish-speech {_version('fish-speech') or 'not installed'}",
             f"huggingface_hub {_version('huggingface_hub') or 'not installed'}"]
    major, minor = (int(x) for x in torch.__version__.split(".")[:2])
    if (major, minor) < (2, 9):
        return Row(GROUP, "software", FAIL, ", ".join(parts),
                   "torch >= 2.9 is required: run bash setup.sh (it installs torch 2.9.1).")
    if _version("fish-speech") is None:
        return Row(GROUP, "software", FAIL, ", ".join(parts), "fish-speech is missing: run bash setup.sh.")
    if torch.cuda.is_available() and triton is None:
        return Row(GROUP, "software", WARN, ", ".join(parts),
                   "Install Triton (it ships with CUDA builds of torch) for the fast kernels.")
    return Row(GROUP, "software", PASS, ", ".join(parts))


def bf16_row() -> Row:
    if not torch.cuda.is_available():
        return Row(GROUP, "bf16", WARN, "not checked without a GPU (CPU training uses fp32)")
    if torch.cuda.is_bf16_supported():
        return Row(GROUP, "bf16", PASS, "supported: training and speech run in bf16 (precision: auto)")
    return Row(GROUP, "bf16", FAIL, "this GPU has no bf16: precision auto would train in bf16 and fail",
               "Use an Ampere or newer GPU (A10, A100, L4, H100…), or set training.precision: fp32 (slower).")


def disk_needed_gb(config, model_dir: Path) -> float:
    """Disk a run of the configured mode writes, in GB, plus the base model when it is not here yet.

    Same sizes as pipeline.estimate.cost's output estimate (bf16 model.pth, the codec copied into the merged
    model); a full fine-tune also keeps checkpoints with fp32 optimizer state (12 bytes a weight)."""
    from pipeline.estimate.cost import CODEC_GB

    model_file = Path(model_dir) / "model.pth"
    model_gb = model_file.stat().st_size / 1e9 if model_file.is_file() else 1.74
    missing_base = 0.0 if model_file.is_file() else model_gb + CODEC_GB
    codes_gb = 0.5  # VQ codes of a few thousand clips, with room to spare
    if config.training_mode.selected == "full_finetune":
        params = model_gb / 2 * 1e9
        checkpoints = (config.training.keep_last + 1) * model_gb + params * 12 / 1e9
        run = checkpoints + 2 * model_gb + CODEC_GB
    else:
        run = model_gb + CODEC_GB + 0.2  # merged model + adapters
    return round(missing_base + codes_gb + run, 1)


def disk_row(config, model_dir: Path) -> Row:
    workspace = Path(config.workspace)
    probe = workspace if workspace.exists() else next(p for p in workspace.parents if p.exists())
    free_gb = shutil.disk_usage(probe).free / 1e9
    need = disk_needed_gb(config, model_dir)
    mode = config.training_mode.selected
    detail = f"{free_gb:.0f} GB free at {probe}; a {mode} run needs about {need:g} GB"
    if free_gb < need:
        return Row(GROUP, "disk", FAIL, detail,
                   f"Free {need - free_gb:.0f} GB or move the workspace (studio.workspace / STUDIO_WORKSPACE) to a larger disk.")
    if free_gb < 1.5 * need:
        return Row(GROUP, "disk", WARN, detail, "Little room beyond one run: remove old runs under runs/ first.")
    return Row(GROUP, "disk", PASS, detail)


def cpu_row() -> Row:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    memory = ""
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        memory = f", {pages * size / 1e9:.0f} GB memory"
    except (ValueError, OSError, AttributeError):
        pass
    detail = f"{cores} CPU cores{memory}"
    if cores < MIN_CPU_CORES:
        return Row(GROUP, "CPU", WARN, detail, "Audio preparation and code extraction will be slow on so few cores.")
    return Row(GROUP, "CPU", PASS, detail)


def kernels_row(config) -> Row:
    """Whether the fused Triton kernels (decode, segment attention, LoRA down-projection) will run."""
    from pipeline.kernels.runtime import AVAILABLE, triton_kernels_run_on

    if not AVAILABLE:
        return Row(GROUP, "fast kernels", WARN, "not used: Triton is not installed (compiled PyTorch layers instead)",
                   "Install a CUDA build of torch (it brings Triton) for the fused kernels.")
    if not torch.cuda.is_available():
        return Row(GROUP, "fast kernels", WARN, "not used: no CUDA GPU (they need one)")
    if not triton_kernels_run_on(torch.device("cuda", 0)):
        return Row(GROUP, "fast kernels", WARN, "not used: this GPU is older than Ampere (the kernels are bf16)",
                   "Expected on this GPU: generation uses the compiled layers, training the PyTorch path.")
    if not config.speed.fused_decoder:
        return Row(GROUP, "fast kernels", WARN, "the fused decoder is switched off (speed.fused_decoder: false, "
                   "or FASTGEN_FUSED=0)", "Set speed.fused_decoder: true in launchable.yaml (and unset FASTGEN_FUSED).")
    return Row(GROUP, "fast kernels", PASS, "used: fused Triton decoder, segment attention and LoRA kernels")


def attention_row(config) -> Row:
    """Which kernel computes the slow transformer's attention in training here (speed.cudnn_attention)."""
    from pipeline.kernels.runtime import cudnn_attention_runs_on, cudnn_attention_takes
    from pipeline.model.checkpoints import real_shape_args

    name = "training attention"
    if not torch.cuda.is_available():
        return Row(GROUP, name, PASS, "torch's choice (no CUDA GPU)")
    if not config.speed.cudnn_attention:
        return Row(GROUP, name, PASS, "torch's choice (speed.cudnn_attention: false, or CUDNN_ATTENTION=0)")
    gpu = torch.device("cuda", 0)
    if not cudnn_attention_runs_on(gpu):
        return Row(GROUP, name, PASS, "torch's choice (cuDNN's kernel is asked for on Hopper or newer GPUs with cuDNN 9)")
    shape = real_shape_args()
    if cudnn_attention_takes(gpu, shape.n_head, shape.n_local_heads, shape.head_dim, torch.bfloat16):
        return Row(GROUP, name, PASS, "cuDNN's fused kernel, asked for by name")
    return Row(GROUP, name, WARN, f"torch's choice: cuDNN {torch.backends.cudnn.version()} refuses s1-mini's "
               "grouped-query attention", "Training still runs; a newer torch (bash setup.sh) may bring a cuDNN that "
               "takes it (docs/PERFORMANCE.md: 1.7x faster than flash on an H200).")


def compile_cache_row(config, model_dir: Path) -> Row:
    """Whether the selected mode's training steps are compiled ahead (`python -m pipeline warmup`)."""
    from pipeline.train.settings import TrainError
    from pipeline.train.warmup import cache_state, compile_cache_dir, compiles_here

    name = "compile cache"
    if not compiles_here(config):
        return Row(GROUP, name, PASS, "not used: training here runs uncompiled (no CUDA GPU, or training.compile: off)")
    mode = config.training_mode.selected
    try:
        state = cache_state(config, model_dir, modes=(mode,))  # its shape; the s1-mini shape before a download
    except TrainError:  # a batch that does not split over the GPUs: the GPUs row says so
        return Row(GROUP, name, WARN, "not checked: the training settings do not split over this machine's GPUs")
    except (OSError, ValueError, KeyError, TypeError) as error:  # an unreadable config.json: the checkpoint rows say why
        return Row(GROUP, name, WARN, f"not checked: the model's config.json could not be read ({type(error).__name__}: "
                   f"{error})", "See the checkpoint rows; once the model loads, run `python -m pipeline warmup`.")
    cold = [phase for phase, warm in state.items() if not warm]
    if not cold:
        return Row(GROUP, name, PASS, f"{mode}'s steps compiled ahead ({compile_cache_dir(config)}): a run's first "
                   "step loads them instead of compiling")
    return Row(GROUP, name, WARN, f"not compiled ahead for these settings ({', '.join(cold)}): a run's first step "
               "compiles, about a minute longer", "Run `python -m pipeline warmup` once (bash setup.sh does on a GPU "
               "machine): it compiles every mode's steps on random codes, a minute or two each.")


def data_parallel_row(config, count: int | None = None) -> Row:
    """How many processes training.gpus starts here, and whether the global batch splits over them."""
    from pipeline.train.distributed import training_gpus
    from pipeline.train.settings import TrainError

    count = torch.cuda.device_count() if count is None else count
    if count <= 1:
        return Row(GROUP, "GPUs for training", PASS, "one process (training.gpus: "
                   f"{config.training.gpus}; {'one GPU' if count else 'no GPU'} here)")
    if not torch.distributed.is_available() or not torch.distributed.is_nccl_available():
        return Row(GROUP, "GPUs for training", FAIL, f"{count} GPUs, but this torch has no NCCL",
                   "Install a CUDA build of torch (bash setup.sh) to train on several GPUs, or set training.gpus: 1.")
    try:
        gpus = training_gpus(config)
    except TrainError as exc:
        return Row(GROUP, "GPUs for training", FAIL, f"{count} GPUs, training.gpus: {config.training.gpus}", str(exc))
    t = config.training
    detail = f"{gpus} of {count} GPUs, data-parallel (torchrun, NCCL); a global batch of {t.batch_size * t.grad_accumulation}"
    if gpus < count:
        return Row(GROUP, "GPUs for training", WARN, detail,
                   f"The global batch (training.batch_size x grad_accumulation) splits evenly over {gpus} only: "
                   f"make it a multiple of {count} to use every GPU.")
    return Row(GROUP, "GPUs for training", PASS, detail)


PLAYBACK_TOOLS = ("ffmpeg", "ffprobe")  # Gradio encodes streamed audio with ffmpeg and probes files with ffprobe


def live_playback_available() -> bool:
    """Whether the Playground can play speech while it is generated (what the studio asks too)."""
    return all(shutil.which(tool) for tool in PLAYBACK_TOOLS)


def playback_row() -> Row:
    missing = [tool for tool in PLAYBACK_TOOLS if not shutil.which(tool)]
    if missing:
        return Row(GROUP, "live playback", WARN, f"{' and '.join(missing)} not found: speech plays once it is complete",
                   "Install ffmpeg (Debian/Ubuntu: apt-get install ffmpeg, or re-run bash setup.sh as root).")
    return Row(GROUP, "live playback", PASS, "ffmpeg and ffprobe found: the Playground plays speech as it is generated")


def machine_rows(config, model_dir: Path) -> list[Row]:
    checks = [("GPU", gpu_row), ("GPUs for training", lambda: data_parallel_row(config)), ("software", software_row),
              ("bf16", bf16_row), ("disk", lambda: disk_row(config, model_dir)), ("CPU", cpu_row),
              ("fast kernels", lambda: kernels_row(config)), ("training attention", lambda: attention_row(config)),
              ("compile cache", lambda: compile_cache_row(config, model_dir)), ("live playback", playback_row)]
    return [guarded(GROUP, name, check) for name, check in checks]
