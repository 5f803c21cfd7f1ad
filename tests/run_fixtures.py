"""Shared set-up of the run tests (workflow, jobs, Training tab, browser): a workspace holding the
bundled sample (40 clips, spread over all 6 speakers) already analysed and VQ-encoded with the tiny
checkpoint, built once per test session and copied for each test, plus very short training
settings so a whole run takes seconds on CPU.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from pipeline.config import Config, load_config

# Small and fast: 40 clips, 512-token sequences, a handful of steps, evaluation every 3 steps.
RUN_OVERRIDES = {
    "dataset.source": "sample", "dataset.max_clips": 40,
    "training.quick_lora.steps": 6, "training.max_length": 512, "training.batch_size": 2,
    "training.val_every": 3, "training.save_every": 3, "training.warmup_steps": 1,
    "training.full_finetune.epochs": 0.05, "training.full_finetune.speaker_max_steps": 4,
    "training.full_finetune.speaker_patience": 2,
}
_PREPARED: dict[str, Path] = {}


def run_config(checkpoint: Path, **overrides) -> Config:
    """launchable.yaml + the tiny checkpoint + RUN_OVERRIDES (+ `overrides`, dotted keys)."""
    return load_config(overrides={"base_model.local_dir": str(checkpoint), **RUN_OVERRIDES, **overrides})


def prepared_workspace(tmp_path_factory, checkpoint: Path) -> Path:
    """A workspace with the sample dataset and its codes, built once per session (read-only)."""
    key = str(checkpoint)
    if key not in _PREPARED:
        import os

        from pipeline.model.codes import extract_codes
        from pipeline.data.dataset import load_dataset
        from pipeline.data.source_spec import SourceSpec

        root = tmp_path_factory.mktemp("prepared-ws")
        previous = os.environ.get("STUDIO_WORKSPACE")
        os.environ["STUDIO_WORKSPACE"] = str(root)
        try:
            config = run_config(checkpoint)
            dataset = load_dataset(SourceSpec.from_config(config), config)
            extract_codes(dataset.manifest, checkpoint, config.workspace / "codes")
        finally:
            if previous is None:
                os.environ.pop("STUDIO_WORKSPACE", None)
            else:
                os.environ["STUDIO_WORKSPACE"] = previous
        _PREPARED[key] = root
    return _PREPARED[key]


def fresh_workspace(tmp_path_factory, checkpoint: Path, target: Path) -> Path:
    """A private copy of the prepared workspace at `target` (datasets and codes, no runs)."""
    shutil.copytree(prepared_workspace(tmp_path_factory, checkpoint), target)
    return target
