"""The Playground's downloads: each run's files (adapter zip, merged model, phase-1 model,
evaluation audio), the zips made on request, and the disk the runs use. Every download carries a
model card (`pipeline.model.model_card`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.model.model_card import CARD_NAME, is_model_card, run_card_facts, write_model_card
from pipeline.train.runs import read_run
from studio.logic.playground_base import ADAPTER_FILES, PlaygroundError, has_files, run_dirs

MERGED_ZIP_SUFFIX = "-merged.zip"  # runs/<id>/artifacts/<id>-merged.zip
PHASE1_ZIP_SUFFIX = "-phase1.zip"  # the language-adapted model of a full fine-tune


def disk_usage(*paths: str | Path) -> tuple[int, int]:
    """(bytes, of which shared): file sizes under `paths`, each file (inode) once; shared are
    files with other hard links (e.g. a merged model's codec.pth linked to the base model's)."""
    seen, total, shared = set(), 0, 0
    for root in paths:
        root = Path(root)
        files = [root] if root.is_file() else (p for p in root.rglob("*") if p.is_file() and not p.is_symlink())
        for path in files:
            try:
                stat = path.stat()
            except OSError:  # removed meanwhile (training prunes old checkpoints)
                continue
            if (stat.st_dev, stat.st_ino) in seen:
                continue
            seen.add((stat.st_dev, stat.st_ino))
            total += stat.st_size
            shared += stat.st_size if stat.st_nlink > 1 else 0
    return total, shared


def format_bytes(size: float) -> str:
    for unit in ("B", "KB", "MB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


@dataclass
class RunArtifacts:
    run_id: str
    dir: Path
    mode: str
    status: str
    adapter_zip: Path | None
    merged_dir: Path | None
    merged_zip: Path | None  # made on request (GBs): present once asked for and still newer than merged/
    phase1_dir: Path | None  # full_finetune: the language-adapted model, the base for new speakers
    phase1_zip: Path | None
    merged_files: list[Path]
    audio_files: list[Path]
    size_bytes: int
    shared_bytes: int  # hard-linked elsewhere too (see disk_usage)


def list_run_artifacts(config) -> list[RunArtifacts]:
    """Each run's downloadable files (adapter zip, merged model files, evaluation audio) and size."""
    runs = []
    for run_dir in run_dirs(config):
        state = read_run(run_dir)
        recorded = state.get("artifacts") or {}
        merged = _first_existing(recorded.get("merged"), run_dir / "artifacts" / "merged")
        merged = merged if merged and merged.is_dir() else None
        size, shared = disk_usage(run_dir)
        zips = [p for p in sorted((run_dir / "artifacts").glob("*.zip"))
                if not p.name.endswith((MERGED_ZIP_SUFFIX, PHASE1_ZIP_SUFFIX))]
        phase1 = _first_existing(recorded.get("phase1_model"))
        phase1 = phase1 if phase1 and phase1.is_dir() else None
        runs.append(RunArtifacts(
            run_id=run_dir.name, dir=run_dir, mode=str(state.get("mode", "")), status=str(state.get("status", "")),
            adapter_zip=_first_existing(recorded.get("adapter_zip"), *zips),
            merged_dir=merged, merged_zip=_fresh_zip(run_dir, merged, MERGED_ZIP_SUFFIX),
            phase1_dir=phase1, phase1_zip=_fresh_zip(run_dir, phase1, PHASE1_ZIP_SUFFIX),
            merged_files=sorted(p for p in merged.glob("*") if p.is_file()) if merged else [],
            audio_files=sorted((run_dir / "audio").glob("*.wav")), size_bytes=size, shared_bytes=shared))
    return runs


def _first_existing(*paths) -> Path | None:
    """run.json's recorded path, else the conventional one (a moved workspace keeps working)."""
    return next((Path(p) for p in paths if p and Path(p).exists()), None)


def _fresh_zip(run_dir: Path, model: Path | None, suffix: str) -> Path | None:
    path = run_dir / "artifacts" / f"{run_dir.name}{suffix}"
    if model is None or not path.is_file():
        return None
    newest = max((p.stat().st_mtime for p in model.iterdir() if p.is_file()), default=0)
    return path if path.stat().st_mtime >= newest else None


def _adapter_zip_has_card(zip_path: Path) -> bool:
    import zipfile

    try:
        with zipfile.ZipFile(zip_path) as zf:
            return is_model_card(zf.read(CARD_NAME).decode("utf-8", "replace"))
    except (OSError, KeyError, zipfile.BadZipFile):
        return False


def run_artifacts(config, run_id: str) -> RunArtifacts:
    found = next((r for r in list_run_artifacts(config) if r.run_id == run_id), None)
    if found is None:
        raise PlaygroundError(f"Run {run_id} is not there any more (deleted?); refresh the list.")
    return found


def _card_facts(run_dir: Path) -> dict:
    return run_card_facts(run_dir, read_run(run_dir))


def prepare_downloads(config, run_id: str) -> RunArtifacts:
    """Make sure the run's downloads carry its model card: the merged folder's README.md, and the
    adapter zip's (re-zipped from the run's adapter when it holds none, e.g. peft's template)."""
    from pipeline.model.merge import export_adapter

    run = run_artifacts(config, run_id)
    facts = None
    if run.merged_dir is not None and not is_model_card(_read_text(run.merged_dir / CARD_NAME)):
        facts = _card_facts(run.dir)
        write_model_card(run.merged_dir, facts, "merged")
    adapter = (read_run(run.dir).get("artifacts") or {}).get("adapter")
    if run.adapter_zip is not None and not _adapter_zip_has_card(run.adapter_zip) and adapter \
            and has_files(Path(adapter), ADAPTER_FILES):
        export_adapter(adapter, run.adapter_zip, card=facts or _card_facts(run.dir))
    return run_artifacts(config, run_id)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return ""


def merged_zip(config, run_id: str, which: str = "merged") -> Path:
    """One zip of the run's merged model (`which="merged"`) or of its language-adapted phase-1
    model (`"phase1"`, full fine-tunes) with its model card, under runs/<id>/artifacts/; made once
    and again only when the folder changed. Files kept only to resume training are left out."""
    from pipeline.model.merge import export_model_zip

    run = prepare_downloads(config, run_id)
    folder, existing, suffix, kind = ((run.merged_dir, run.merged_zip, MERGED_ZIP_SUFFIX, "merged") if which == "merged"
                                      else (run.phase1_dir, run.phase1_zip, PHASE1_ZIP_SUFFIX, "full"))
    if folder is None:
        what = "merged model" if which == "merged" else "language-adapted (phase-1) model"
        raise PlaygroundError(f"Run {run_id} has no {what}: it is written when a run finishes"
                              + ("" if which == "merged" else " (full_finetune runs only)") + ".")
    if existing is not None:
        return existing
    return export_model_zip(folder, run.dir / "artifacts" / f"{run_id}{suffix}", card=_card_facts(run.dir), kind=kind)


def total_disk_usage(config) -> tuple[int, int]:
    """(bytes, shared bytes) of all runs together (a file shared by two runs counts once)."""
    return disk_usage(*run_dirs(config))
