"""The dataset facade the studio and the CLI call: source → manifest → speaker statistics.

A dataset lives in `workspace/datasets/<id>/` (manifest.parquet, speakers.parquet, meta.json,
audio/, extracted/). `load_dataset` rebuilds it only when the source's fingerprint or the
quality limits changed (or the cached files cannot be read), so a second load is a cache hit.
`list_prepared_datasets` describes every dataset built in the workspace, whoever built it.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

from pipeline.atomic import replacing, write_text
from pipeline.data.manifest import MANIFEST_NAME, Limits, build_manifest, load_manifest, summarize
from pipeline.data.source_spec import SourceError, SourceSpec
from pipeline.data.sources import read_source, source_fingerprint
from pipeline.data.speakers import Recommendation, recommend_speaker, speaker_stats

Progress = Callable[[float, str], None] | None
META_NAME = "meta.json"
SPEAKERS_NAME = "speakers.parquet"
FORMAT_VERSION = 2  # bump when the manifest's meaning changes, to invalidate old caches


class DatasetError(ValueError):
    """A dataset that does not exist in the workspace or cannot be read."""


@dataclass
class Dataset:
    id: str
    dir: Path
    spec: SourceSpec
    manifest: pd.DataFrame
    speakers: pd.DataFrame
    recommendation: Recommendation
    summary: dict

    def accepted(self) -> pd.DataFrame:
        return self.manifest[self.manifest["status"] == "ok"].reset_index(drop=True)

    def rejected(self) -> pd.DataFrame:
        return self.manifest[self.manifest["status"] != "ok"].reset_index(drop=True)

    def speaker_names(self) -> list[str]:
        """Speakers with accepted clips, most usable minutes first."""
        return [str(s) for s in self.speakers.loc[self.speakers["accepted"] > 0, "speaker"]]

    def clips_of(self, speaker: str, n: int = 3, seed: int | None = None) -> pd.DataFrame:
        """Up to `n` random accepted clips of `speaker` (a new seed reshuffles)."""
        rows = self.accepted()
        rows = rows[rows["speaker"] == speaker]
        return rows.sample(n=min(n, len(rows)), random_state=seed).reset_index(drop=True)


def datasets_root(config) -> Path:
    return Path(config.workspace) / "datasets"


def _scaled(progress: Progress, start: float, end: float) -> Progress:
    if progress is None:
        return None
    return lambda fraction, message: progress(round(start + (end - start) * min(max(fraction, 0.0), 1.0), 4), message)


def _cache_key(spec: SourceSpec, config, fingerprint: str) -> dict:
    return {"version": FORMAT_VERSION, "fingerprint": fingerprint,
            "limits": dataclasses.asdict(Limits.from_config(config))}


def _write_json(path: Path, data: dict) -> None:
    write_text(path, json.dumps(data, indent=1, ensure_ascii=False, default=str))


def _read_meta(directory: Path) -> dict | None:
    try:
        return json.loads((directory / META_NAME).read_text())
    except (OSError, ValueError):
        return None


def load_dataset(spec: SourceSpec, config, progress: Progress = None, force: bool = False) -> Dataset:
    """Read, validate and describe the dataset of `spec`, reusing the cached build when unchanged.

    Raises SourceError for a source that cannot be read at all. When the Hub is unreachable but
    this dataset was built before, the cached build is used. A cached build that cannot be read
    is rebuilt; `force` rebuilds in any case.
    """
    dataset_id = spec.dataset_id()
    directory = datasets_root(config) / dataset_id
    meta = _read_meta(directory)
    cached = meta is not None and (directory / MANIFEST_NAME).is_file()
    try:
        key = _cache_key(spec, config, source_fingerprint(spec))
    except SourceError:
        if cached and not force and spec.kind == "huggingface" and not spec.path:  # Hub offline
            dataset = open_dataset(config, dataset_id)
            if progress:
                progress(1.0, "Source unreachable; using the dataset built earlier.")
            return dataset
        raise
    if cached and not force and meta.get("cache_key") == key:
        try:
            dataset = open_dataset(config, dataset_id)
        except DatasetError as exc:  # a damaged cache is a miss, not a dead end
            if progress:
                progress(0.0, f"{exc} Rebuilding it.")
        else:
            if progress:
                progress(1.0, "Dataset unchanged; loaded from the workspace.")
            return dataset

    directory.mkdir(parents=True, exist_ok=True)
    clips = read_source(spec, directory, progress=_scaled(progress, 0.0, 0.3))
    if not clips:
        raise SourceError(f"The source {dataset_id} holds no clips.")
    manifest = build_manifest(clips, directory, config, progress=_scaled(progress, 0.3, 0.9))
    if progress:
        progress(0.9, "Measuring speakers (pitch on a few clips each)...")
    speakers = speaker_stats(manifest, cache_dir=directory)
    recommendation = recommend_speaker(speakers)
    summary = summarize(manifest) | selection_summary(clips)
    with replacing(directory / SPEAKERS_NAME) as tmp:
        speakers.to_parquet(tmp, index=False)
    _write_json(directory / META_NAME, {
        "id": dataset_id, "spec": dataclasses.asdict(spec), "cache_key": key, "summary": summary,
        "recommendation": dataclasses.asdict(recommendation),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    })
    if progress:
        progress(1.0, f"{summary['accepted']} of {summary['total']} clips accepted "
                      f"({summary['accepted_minutes']:.1f} min, {summary['accepted_speakers']} speakers)"
                      + (f"; {summary['selection']}." if summary["selection"] else "."))
    return Dataset(dataset_id, directory, spec, manifest, speakers, recommendation, summary)


def selection_summary(clips) -> dict:
    """The summary's account of what the source held and what was used or skipped."""
    available = getattr(clips, "available", len(clips))
    return {"source_clips": int(available), "selection": getattr(clips, "selection", ""),
            "source_notes": list(getattr(clips, "notes", []))}


def load_configured_dataset(config, progress: Progress = None, force: bool = False) -> Dataset:
    """`load_dataset` for the source `config.dataset` names (what the CLI and the workflow train on)."""
    return load_dataset(SourceSpec.from_config(config), config, progress=progress, force=force)


def open_dataset(config, dataset_id: str) -> Dataset:
    """A dataset built earlier, from the workspace only (no source access)."""
    directory = datasets_root(config) / dataset_id
    meta = _read_meta(directory)
    if meta is None or not (directory / MANIFEST_NAME).is_file():
        known = ", ".join(list_datasets(config)) or "none yet"
        raise DatasetError(f"Dataset '{dataset_id}' is not in {datasets_root(config)} (known: {known}); "
                           "load it from its source first.")
    manifest = _read_table(directory / MANIFEST_NAME, ("id", "speaker", "status", "duration_s"))
    if manifest is None:
        raise DatasetError(f"The saved manifest of dataset '{dataset_id}' cannot be read; "
                           "load the dataset from its source again to rebuild it.")
    speakers = _read_table(directory / SPEAKERS_NAME, ("speaker", "accepted"))
    if speakers is None:  # derived data: recompute rather than fail
        speakers = speaker_stats(manifest, directory)
    try:
        rec = meta.get("recommendation")
        recommendation = Recommendation(**rec) if rec else recommend_speaker(speakers)
        spec = SourceSpec(**meta["spec"])
    except (KeyError, TypeError) as exc:
        raise DatasetError(f"The saved description (meta.json) of dataset '{dataset_id}' is incomplete ({exc}); "
                           "load the dataset from its source again to rebuild it.") from None
    return Dataset(dataset_id, directory, spec, manifest, speakers, recommendation,
                   meta.get("summary") or summarize(manifest))


def _read_table(path: Path, columns: tuple[str, ...]) -> pd.DataFrame | None:
    """A parquet file of ours, or None when it is missing, damaged or lacks `columns`."""
    import pyarrow

    try:
        table = load_manifest(path)
    except (OSError, ValueError, pyarrow.ArrowException):
        return None
    return table if set(columns) <= set(table.columns) else None


def list_datasets(config) -> list[str]:
    """Ids of the datasets built in this workspace."""
    root = datasets_root(config)
    if not root.is_dir():
        return []
    return sorted(d.name for d in root.iterdir() if (d / MANIFEST_NAME).is_file() and (d / META_NAME).is_file())


def list_prepared_datasets(config) -> list[dict]:
    """Every dataset built in this workspace (by the studio or the CLI), newest first.

    Each item: `id`, `spec` (the source, as `SourceSpec` fields), `summary` (counts, minutes,
    speakers, selection) and `created` (ISO time, '' when unknown). Unreadable entries are left out.
    """
    items = []
    for dataset_id in list_datasets(config):
        meta = _read_meta(datasets_root(config) / dataset_id)
        if not isinstance(meta, dict) or not isinstance(meta.get("spec"), dict):
            continue
        items.append({"id": dataset_id, "spec": meta["spec"], "summary": meta.get("summary") or {},
                      "created": str(meta.get("created") or "")})
    return sorted(items, key=lambda item: (item["created"], item["id"]), reverse=True)
