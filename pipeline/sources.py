"""Where clips come from: the bundled sample, a folder, a zip file or Hugging Face parquet.

Every source ends as the same list of `RawClip`s (audio path, speaker, transcript). Problems
that belong to one clip (missing transcript, undecodable text) travel on the clip as
`problem`; problems with the whole source raise `SourceError`. The user's files are only read.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

from .audio import AUDIO_EXTENSIONS
from .config import PROJECT_ROOT

Progress = Callable[[float, str], None] | None
SAMPLE_DIR = PROJECT_ROOT / "assets" / "sample"
MISSING_TRANSCRIPT = "missing transcript (.lab/.txt)"
MAX_ZIP_BYTES = 20 * 1024**3   # uncompressed total
MAX_ZIP_FILES = 200_000


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
    columns: dict = field(default_factory=_default_columns, hash=False)
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
        from .hf_source import read_huggingface

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


# -- LJSpeech metadata.csv ---------------------------------------------------------------------
_HEADER_NAMES = {"file", "filename", "file_name", "path", "audio", "wav", "id"}


def read_metadata_csv(csv: Path, default_speaker: str) -> list[RawClip]:
    """`file|text` or `file|text|speaker` lines; audio in `wavs/` or next to the csv.

    Original LJSpeech has `id|text|normalized text`: a third column that reads like prose
    (spaces, long) is taken as that and ignored, not as a speaker label.
    """
    try:
        lines = csv.read_bytes().decode("utf-8-sig").splitlines()
    except UnicodeDecodeError:
        raise SourceError(f"{csv} is not UTF-8 text; re-save it as UTF-8.") from None
    rows = [(n, line.split("|")) for n, line in enumerate(lines, 1)
            if line.strip() and not line.lstrip().startswith("#")]
    if rows and rows[0][1][0].strip().lower() in _HEADER_NAMES:
        rows = rows[1:]
    for number, row in rows:
        if len(row) < 2:
            raise SourceError(f"{csv} line {number}: no '|' separator; expected file|text or file|text|speaker.")
    thirds = [row[2].strip() for _, row in rows if len(row) > 2]
    labels = sum(1 for t in thirds if t and not re.search(r"\s", t) and len(t) <= 64)
    speaker_column = bool(thirds) and labels >= 0.9 * len(thirds)
    clips, seen = [], {}
    for _, row in rows:
        name, text = row[0].strip(), row[1].strip()
        speaker = row[2].strip() if speaker_column and len(row) > 2 and row[2].strip() else default_speaker
        clip_id = name[: -len(Path(name).suffix)] if Path(name).suffix.lower() in AUDIO_EXTENSIONS else name
        seen[clip_id] = seen.get(clip_id, 0) + 1
        if seen[clip_id] > 1:
            clip_id = f"{clip_id}~{seen[clip_id]}"
        audio = _resolve_listed_audio(csv.parent, name)
        if audio is None:
            clips.append(RawClip(clip_id, speaker, text, str(csv.parent / name),
                                 f"audio file '{name}' listed in {csv.name} not found"))
        else:
            clips.append(RawClip(clip_id, speaker, text, str(audio)))
    if not clips:
        raise SourceError(f"{csv} lists no clips.")
    return clips


def _resolve_listed_audio(base: Path, name: str) -> Path | None:
    for folder in (base / "wavs", base):
        candidates = [folder / name] if Path(name).suffix.lower() in AUDIO_EXTENSIONS else []
        candidates += [folder / f"{name}{ext}" for ext in AUDIO_EXTENSIONS]
        for candidate in candidates:
            # stay inside the dataset folder even if the csv says "../../somewhere"
            if candidate.is_file() and candidate.resolve().is_relative_to(base.resolve()):
                return candidate
    return None


# -- zip ---------------------------------------------------------------------------------------
def extract_zip(zip_path: Path, dest: Path, progress: Progress = None,
                max_bytes: int = MAX_ZIP_BYTES, max_files: int = MAX_ZIP_FILES) -> Path:
    """Unpack `zip_path` into `dest` (reused when the same zip was unpacked before).

    Refuses absolute paths, `..` entries, symlinks, and archives beyond the size/count limits.
    """
    zip_path, dest = Path(zip_path), Path(dest)
    if not zip_path.is_file():
        raise SourceError(f"Zip file {zip_path} does not exist; check dataset.path.")
    stat = zip_path.stat()
    stamp = f"{zip_path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    marker = dest / ".complete"
    if marker.is_file() and marker.read_text() == stamp:
        return dest
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise SourceError(f"{zip_path} is not a readable zip file ({exc}).") from None
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".extract-{uuid.uuid4().hex[:8]}"
    try:
        with archive:
            members = _checked_members(zip_path, archive.infolist(), max_bytes, max_files)
            written = 0
            for n, info in enumerate(members):
                target = tmp / info.filename
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as src, open(target, "wb") as dst:
                    while block := src.read(1 << 20):
                        written += len(block)
                        if written > max_bytes:  # headers can lie about sizes (zip bombs)
                            raise SourceError(f"{zip_path} unpacks to more than {max_bytes / 1e9:.0f} GB; "
                                              "split it or use a folder source.")
                        dst.write(block)
                if n % 50 == 0:
                    _report(progress, 0.9 * n / max(len(members), 1),
                            f"Unpacking {zip_path.name}: {n}/{len(members)}")
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
        marker.write_text(stamp)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError) as exc:
        raise SourceError(f"{zip_path} is damaged or uses an unsupported format ({exc}).") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _checked_members(zip_path: Path, infos: list[zipfile.ZipInfo], max_bytes: int, max_files: int):
    files = []
    for info in infos:
        name = info.filename
        parts = re.split(r"[\\/]", name)
        if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in parts:
            raise SourceError(f"{zip_path}: entry '{name}' points outside the archive; refusing to unpack it. "
                              "Re-create the zip from the dataset folder itself.")
        if (info.external_attr >> 16) & 0o170000 == 0o120000:
            raise SourceError(f"{zip_path}: entry '{name}' is a symbolic link; refusing to unpack it. "
                              "Zip the real files instead.")
        if not info.is_dir() and not _is_junk(Path(name)):
            files.append(info)
    if len(files) > max_files:
        raise SourceError(f"{zip_path} holds {len(files)} files (limit {max_files}); use a folder source.")
    total = sum(info.file_size for info in files)
    if total > max_bytes:
        raise SourceError(f"{zip_path} unpacks to {total / 1e9:.1f} GB (limit {max_bytes / 1e9:.0f} GB); "
                          "split it or use a folder source.")
    return files


# -- fingerprints (dataset cache validity) ----------------------------------------------------
def source_fingerprint(spec: SourceSpec) -> str:
    """Changes whenever the source's content may have changed (names, sizes, mtimes, shards)."""
    digest = hashlib.sha256(repr(sorted(_spec_items(spec))).encode())
    if spec.kind == "huggingface" and not spec.path:
        from .hf_source import list_shards

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
    """The spec fields that matter for this kind (a folder ignores the hf_* settings)."""
    relevant = ["kind", "path", "max_clips"]
    if spec.kind == "huggingface":
        relevant += ["hf_repo", "hf_config", "hf_split", "hf_revision", "columns"]
    return [(k, repr(getattr(spec, k))) for k in relevant]
