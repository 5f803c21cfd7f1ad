"""Extraction over a dataset in the bench's extract section: `extract_codes` itself (loader threads,
the encoder thread, cache writes) on FLAC clips of 2-20 s at 16 kHz that the bench writes, so
decoding and resampling are exercised, at two batch sizes. Reports the real-time factor and the
GPU's idle share (NVML, sampled) per batch size: the codec's speed is `bench_extract`'s batch
figure; this is what a run gets."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pandas as pd
import soundfile as sf
import torch

from pipeline.bench.common import free_memory
from pipeline.bench.synthetic_dataset import write_dataset
from pipeline.bench.workflow import GpuSampler, encoding_since
from pipeline.data.parallel import worker_count
from pipeline.model.codec_batches import CODECS_PER_GPU

BATCH_SECONDS = (120.0, 360.0)  # audio per batch: a 24 GB card's default, and a big card's


def _manifest(folder: Path) -> pd.DataFrame:
    rows = [{"id": path.stem, "audio_path": str(path), "duration_s": sf.info(str(path)).duration, "status": "ok"}
            for path in sorted(folder.rglob("*.flac"))]
    return pd.DataFrame(rows)


def bench_extract_dataset(codec, codec_config: Path, device, tiny: bool, clips: int | None = None) -> dict:
    """{"clips", "audio_s", "batches": {"<batch seconds>" or "<batch seconds>x<codecs>": {"realtime_factor",
    "gpu_idle_share", ...}}}: one codec at each of BATCH_SECONDS, then CODECS_PER_GPU codecs (each on
    its own CUDA stream, as a run encodes) at the largest."""
    from pipeline.model.checkpoints import CODEC_CONFIG_NAME, codec_copy
    from pipeline.model.codes import extract_codes

    clips = clips or (6 if tiny else 400)
    result: dict = {"clips": clips, "batches": {}}
    with tempfile.TemporaryDirectory(prefix="bench-extract-") as tmp:
        tmp = Path(tmp)
        result["dataset"] = write_dataset(tmp / "data", clips, *((0.5, 1.5) if tiny else (2.0, 20.0)),
                                          threads=worker_count())
        manifest = _manifest(tmp / "data")
        shutil.copy(codec_config, tmp / CODEC_CONFIG_NAME)
        torch.save({}, tmp / "codec.pth")  # the cache key's codec identity only; the codec is given
        runs = [(seconds, [codec]) for seconds in (BATCH_SECONDS[:1] if tiny else BATCH_SECONDS)]
        # as extract_codes loads them: copies of the first on the same GPU
        runs.append((runs[-1][0], [codec] + [codec_copy(codec, codec_config) for _ in range(CODECS_PER_GPU - 1)]))
        for batch_seconds, codecs in runs:
            free_memory(device)
            label = f"{batch_seconds:.0f}" + (f"x{len(codecs)}" if len(codecs) > 1 else "")
            with GpuSampler(device) as gpu:
                report = extract_codes(manifest, tmp, tmp / f"codes-{label}", batch_seconds=batch_seconds,
                                       codec=codecs, progress=lambda *_: None)
                since = encoding_since(report)
            result["audio_s"] = round(report.audio_seconds, 1)
            result["batches"][label] = {
                "realtime_factor": round(report.throughput, 1), "wall_s": round(report.wall_seconds, 2),
                "gpu_idle_share": gpu.idle_share(), "gpu_idle_share_encoding": gpu.idle_share(since),
                "gpu_idle_note": gpu.note,
                "codec_idle_share": round(report.gpu_idle_share, 3), "failed": len(report.failed),
                "loader_threads": report.loader_threads}
    return result
