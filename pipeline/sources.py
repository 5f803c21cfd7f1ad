"""Where clips come from: the bundled sample, a folder, a zip file or Hugging Face parquet.

Every source ends as the same list of `RawClip`s (audio path, speaker, transcript). Problems
that belong to one clip (missing transcript, undecodable text) travel on the clip as
`problem`; problems with the whole source raise `SourceError`. The user's files are only read.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

from .audio import AUDIO_EXTENSIONS
from .config import PROJECT_ROOT

Progress = Callable[[float, str], None] | None
SAMPLE_DIR = PROJECT_ROOT / "assets" / "sample"
MISSING_TRANSCRIPT = "missing transcript (.lab/.txt)"


class SourceError(ValueError):
    """A source that cannot be read at all; the message names the path or field and what to do."""


def _default_columns() -> dict:
    return {"audio": "audio", "text": "raw_text", "speaker": "speaker_id"}


@dataclass(frozen=True)
class SourceSpec:
    kind: Literal["sample", "folder", "zip", "huggingface"]
    path: str | None = None  # folder, zip file, or (huggingface) a local dir of parquet files
    hf_repo: str | None = None
    hf_config: str | None = None
    hf_split: str = "train"
    hf_revision: str | None = None
    columns: dict = field(default_factory=_default_columns)
    max_clips: int = 3000

    @classmethod
    def from_config(cls, config) -> "SourceSpec":
        ds = config.dataset
        return cls(kind=ds.source, path=ds.path, hf_repo=ds.hf_repo, hf_config=ds.hf_config,
                   hf_split=ds.hf_split, hf_revision=ds.hf_revision,
                   columns=ds.columns.model_dump(), max_clips=ds.max_clips)

    def resolved_path(self) -> Path:
        """`path` as an absolute path (relative paths: the working directory, else the project)."""
        if self.kind == "sample":
            return SAMPLE_DIR
        if not self.path:
            raise SourceError(f"Source '{self.kind}' needs dataset.path (a {self._path_noun()}).")
        path = Path(self.path).expanduser()
        if not path.is_absolute() and not path.exists() and (PROJECT_ROOT / path).exists():
            path = PROJECT_ROOT / path
        return path.resolve()

    def _path_noun(self) -> str:
        return {"folder": "folder of clips", "zip": "zip file",
                "huggingface": "local folder of parquet files"}.get(self.kind, "path")

    def dataset_id(self) -> str:
        """Stable, filesystem-safe name of the dataset this source produces."""
        if self.kind == "sample":
            return "sample"
        if self.kind == "huggingface" and not self.path:
            if not self.hf_repo:
                raise SourceError("Source 'huggingface' needs dataset.hf_repo (e.g. facebook/voxpopuli).")
            parts = ["hf", self.hf_repo, self.hf_config or "", self.hf_split]
            ident = _slug("-".join(p for p in parts if p))
            if self.hf_revision and self.hf_revision not in ("main", "refs/convert/parquet"):
                ident += "-" + _hash8(self.hf_revision)
            return ident
        path = self.resolved_path()
        prefix = {"folder": "folder", "zip": "zip", "huggingface": "hf"}[self.kind]
        name = path.stem if self.kind == "zip" else path.name
        extra = [self.hf_config or "", self.hf_split] if self.kind == "huggingface" else []
        return _slug("-".join([prefix, name, *[e for e in extra if e], _hash8(str(path))]))


@dataclass
class RawClip:
    id: str
    speaker: str
    text: str | None
    source_path: str
    problem: str | None = None  # early rejection reason (e.g. missing transcript)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.").lower()[:120] or "dataset"


def _hash8(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def _report(progress: Progress, fraction: float, message: str) -> None:
    if progress is not None:
        progress(min(max(fraction, 0.0), 1.0), message)


# -- reading ---------------------------------------------------------------------------------
def read_source(spec: SourceSpec, work_dir: Path, progress: Progress = None) -> list[RawClip]:
    """All clips of `spec` (at most `spec.max_clips`); zip/HF audio is unpacked under `work_dir`."""
    work_dir = Path(work_dir)
    if spec.kind == "sample":
        if not SAMPLE_DIR.is_dir():
            raise SourceError(f"The bundled sample {SAMPLE_DIR} is missing; reinstall the project "
                              "or choose another source.")
        clips = read_folder(SAMPLE_DIR)
    elif spec.kind == "folder":
        clips = read_folder(spec.resolved_path())
    elif spec.kind == "zip":
        zip_path = spec.resolved_path()
        root = extract_zip(zip_path, work_dir / "extracted", progress=progress)
        clips = read_folder(root, default_speaker=zip_path.stem)
    elif spec.kind == "huggingface":
        clips = read_huggingface(spec, work_dir, progress=progress)
    else:
        raise SourceError(f"dataset.source '{spec.kind}' is unknown; use sample, folder, zip or huggingface.")
    if len(clips) > spec.max_clips:
        clips = clips[: spec.max_clips]
    _report(progress, 1.0, f"Found {len(clips)} clips.")
    return clips


def read_folder(root: Path, default_speaker: str | None = None) -> list[RawClip]:
    """Clips of a folder: LJSpeech `metadata.csv`, else `<speaker>/<clip>.<audio>` + `.lab`/`.txt`."""
    root = Path(root)
    if not root.is_dir():
        raise SourceError(f"Folder {root} does not exist or is not a folder.")
    given, root = root, _effective_root(root)
    speaker_of_root = default_speaker if root == given and default_speaker else root.name
    csv = _find_metadata_csv(root)
    if csv is not None:
        return read_metadata_csv(csv, default_speaker=speaker_of_root if csv.parent == root else csv.parent.name)
    clips = _read_upstream_layout(root, speaker_of_root)
    if not clips:
        raise SourceError(f"No audio files ({', '.join(AUDIO_EXTENSIONS)}) found in {root}. Expected "
                          "<speaker>/<clip>.wav with <clip>.lab next to it, or an LJSpeech metadata.csv.")
    return clips


def _is_junk(path: Path) -> bool:
    """macOS resource forks and hidden files that zips and copies drag along."""
    return any(part.startswith(".") or part == "__MACOSX" for part in path.parts)


def _effective_root(root: Path) -> Path:
    """Descend through wrapper folders (a zip's top folder) that hold nothing but one folder."""
    while True:
        entries = [p for p in root.iterdir() if not _is_junk(p.relative_to(root))]
        if len(entries) == 1 and entries[0].is_dir():
            root = entries[0]
        else:
            return root


def _find_metadata_csv(root: Path) -> Path | None:
    for candidate in [root / "metadata.csv", *sorted(root.glob("*/metadata.csv"))]:
        if candidate.is_file():
            return candidate
    return None


def _read_upstream_layout(root: Path, root_speaker: str) -> list[RawClip]:
    audio = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS
                   and p.is_file() and not _is_junk(p.relative_to(root)))
    stems = {}
    for path in audio:
        key = path.with_suffix("").relative_to(root).as_posix()
        stems[key] = stems.get(key, 0) + 1
    clips = []
    for path in audio:
        rel = path.relative_to(root)
        speaker = rel.parts[0] if len(rel.parts) > 1 else root_speaker
        clip_id = rel.with_suffix("").as_posix()
        if stems[clip_id] > 1:  # clip.wav and clip.flac side by side: keep both, distinctly named
            clip_id = rel.as_posix()
        text, problem = read_transcript(path)
        clips.append(RawClip(clip_id, speaker, text, str(path), problem))
    return clips


def read_transcript(audio_path: Path) -> tuple[str | None, str | None]:
    """(text, problem) from `<clip>.lab` or `<clip>.txt` next to the audio file."""
    for suffix in (".lab", ".txt"):
        candidate = audio_path.with_suffix(suffix)
        if candidate.is_file():
            return decode_text(candidate.read_bytes(), candidate.name)
    return None, MISSING_TRANSCRIPT


def decode_text(raw: bytes, name: str) -> tuple[str | None, str | None]:
    """UTF-8 text (BOM tolerated) or a problem naming the file."""
    try:
        return raw.decode("utf-8-sig").strip(), None
    except UnicodeDecodeError:
        return None, f"transcript {name} is not UTF-8 text (re-save it as UTF-8)"


# -- fingerprints (dataset cache validity) ----------------------------------------------------
def source_fingerprint(spec: SourceSpec) -> str:
    """Changes whenever the source's content may have changed (names, sizes, mtimes, shards)."""
    digest = hashlib.sha256(repr(sorted(_spec_items(spec))).encode())
    if spec.kind == "huggingface" and not spec.path:
        for name in list_shards(spec):
            digest.update(name.encode())
        return digest.hexdigest()[:16]
    path = spec.resolved_path()
    if not path.exists():
        raise SourceError(f"{path} does not exist; check dataset.path.")
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for item in files:
        stat = item.stat()
        digest.update(f"{item.relative_to(path.parent)}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _spec_items(spec: SourceSpec) -> list[tuple[str, str]]:
    return [(k, repr(v)) for k, v in vars(spec).items()]
