"""What the Playground's modules share: its error, the run folders newest first, and whether a
folder holds a complete model or adapter."""

from __future__ import annotations

from pathlib import Path

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")  # as pipeline.model.adapters


class PlaygroundError(ValueError):
    """A model, adapter or vote the Playground cannot use; the message says what to do."""


def has_files(path: Path, names) -> bool:
    return path.is_dir() and all((path / name).is_file() for name in names)


def run_dirs(config) -> list[Path]:
    """Run directories, newest first (run ids start with a timestamp)."""
    root = Path(config.runs_dir)
    return sorted((p for p in root.iterdir() if p.is_dir()), reverse=True) if root.is_dir() else []
