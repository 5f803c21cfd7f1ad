"""Where clips come from: the bundled sample, a folder, a zip file or Hugging Face parquet.

Every source ends as the same list of `RawClip`s (audio path, speaker, transcript). Problems
that belong to one clip (missing transcript, undecodable text) travel on the clip as
`problem`; problems with the whole source raise `SourceError`. The user's files are only read.

Local parquet (a Hugging Face export on disk) needs no source kind of its own: a `folder`
source whose path is a `.parquet` file, a folder of parquet files, or a Hub-layout folder
(`<dir>/<config>/<split>-*.parquet`, `<dir>/<config>/<split>/*.parquet`) holding no audio files
is read by `hf_source` with the same column mapping (`dataset.columns`) as the Hub. From the
command line: `--set dataset.source=folder --set dataset.path=<dir>` (`dataset.hf_config` /
`dataset.hf_split` pick among several configs or splits). The `huggingface` source with
`dataset.path` reads the same layouts.

When a source holds more than `max_clips` clips, the clips kept are spread evenly over the
speakers (`balanced_indices`), never the first ones by path, and the result says so
(`Clips.selection`).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import uuid
import zipfile
from pathlib import Path

from pipeline.data.audio import AUDIO_EXTENSIONS
from pipeline.data.source_spec import (GIB, SAMPLE_DIR, Clips, Progress, RawClip, SourceError, SourceSpec, decode_text,
                          format_bytes, is_junk, limit_clips, report)

MISSING_TRANSCRIPT = "missing transcript (.lab/.txt)"
MAX_ZIP_BYTES = 20 * GIB        # uncompressed total of the files kept
MAX_ZIP_FILES = 200_000
MAX_COMPRESSION_RATIO = 100     # audio hardly compresses; far above this is a zip bomb
RATIO_MIN_BYTES = 1024**2       # tiny files (a transcript of spaces) may compress well: not judged alone
DISK_MARGIN_BYTES = GIB // 2    # free space left after unpacking, for the converted copies and the system
EXTRACT_PREFIX = ".extract-"    # `.extract-<pid>-<hex>`: the pid tells a live extraction from a dead one
SKIPPED_NAME = ".skipped.json"  # inside an extraction: the entries not unpacked
# what the folder reader uses: audio, transcripts (.lab/.txt) and metadata.csv
KEPT_SUFFIXES = (*AUDIO_EXTENSIONS, ".lab", ".txt", ".csv")


# -- reading ---------------------------------------------------------------------------------
def read_source(spec: SourceSpec, work_dir: Path, progress: Progress = None) -> Clips:
    """The clips of `spec` (at most `spec.max_clips`, spread over the speakers); zip/HF audio is
    unpacked under `work_dir`. `.available` counts the source's clips, `.notes` says what was skipped."""
    work_dir = Path(work_dir)
    notes: list[str] = []
    if spec.kind == "sample":
        if not SAMPLE_DIR.is_dir():
            raise SourceError(f"The bundled sample {SAMPLE_DIR} is missing; reinstall the project "
                              "or choose another source.")
        clips = read_folder(SAMPLE_DIR)
    elif spec.kind == "folder" and is_parquet_source(spec.resolved_path()):
        from pipeline.data.huggingface import read_huggingface

        clips = read_huggingface(spec, work_dir, progress=progress)
    elif spec.kind == "folder":
        clips = read_folder(spec.resolved_path())
    elif spec.kind == "zip":
        zip_path = spec.resolved_path()
        root = extract_zip(zip_path, work_dir / "extracted", progress=progress)
        notes = extraction_notes(root)
        try:
            clips = read_folder(root, default_speaker=zip_path.stem)
        except SourceError as exc:  # speak of the user's zip, not of the workspace folder it went to
            raise SourceError(str(exc).replace(str(root), f"the zip {zip_path.name}")) from None
    elif spec.kind == "huggingface":
        from pipeline.data.huggingface import read_huggingface

        clips = read_huggingface(spec, work_dir, progress=progress)
    else:
        raise SourceError(f"dataset.source '{spec.kind}' is unknown; use sample, folder, zip or huggingface.")
    if not isinstance(clips, Clips) or len(clips) > spec.max_clips:
        clips = limit_clips(clips, spec.max_clips, notes)
    message = f"Found {clips.available:,} clips" + (f"; {clips.selection}." if clips.selection else ".")
    report(progress, 1.0, message)
    return clips


def is_parquet_source(path: Path) -> bool:
    """True for a `.parquet` file, or a folder with parquet files and no audio or metadata.csv."""
    path = Path(path)
    if path.is_file():
        return path.suffix.lower() == ".parquet"
    if not path.is_dir():
        return False
    parquet = False
    for item in path.rglob("*"):
        if is_junk(item.relative_to(path)):
            continue
        suffix = item.suffix.lower()
        if suffix in AUDIO_EXTENSIONS or item.name == "metadata.csv":
            return False  # audio files win: the folder reader's layouts
        parquet = parquet or suffix == ".parquet"
    return parquet


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


def _effective_root(root: Path) -> Path:
    """Descend through wrapper folders (a zip's top folder) that hold nothing but one folder."""
    while True:
        entries = [p for p in root.iterdir() if not is_junk(p.relative_to(root))]
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
                   and p.is_file() and not is_junk(p.relative_to(root)))
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
def extract_zip(zip_path: Path, dest: Path, progress: Progress = None, max_bytes: int = MAX_ZIP_BYTES,
                max_files: int = MAX_ZIP_FILES, max_ratio: float = MAX_COMPRESSION_RATIO) -> Path:
    """Unpack the audio, transcripts and metadata of `zip_path` into `dest` (reused when the same
    zip was unpacked before); the other entries are listed in `extraction_notes(dest)`.

    Refuses absolute paths, `..` entries, symlinks, names the file system cannot hold,
    compression ratios above `max_ratio` (zip bombs), and archives beyond the size/count limits
    or the free disk space. Messages name the zip by its file name only: an upload's server path
    means nothing to the user.
    """
    zip_path, dest = Path(zip_path), Path(dest)
    name = zip_path.name
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
        raise SourceError(f"{name} is not a readable zip file ({_reason(exc)}).") from None
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f"{EXTRACT_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        with archive:
            members, skipped = _checked_members(name, archive.infolist(), max_bytes, max_files)
            _check_sizes(name, members, stat.st_size, max_ratio)
            _check_names(name, members, tmp)
            _check_disk(name, sum(info.file_size for info in members), dest.parent)
            written = 0
            for n, info in enumerate(members):
                written = _unpack(archive, info, tmp, name, written, max_bytes)
                if n % 50 == 0:
                    report(progress, 0.9 * n / max(len(members), 1), f"Unpacking {name}: {n}/{len(members)}")
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / SKIPPED_NAME).write_text(json.dumps(skipped, ensure_ascii=False))
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
        marker.write_text(stamp)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError) as exc:
        raise SourceError(f"{name} is damaged or uses an unsupported format ({_reason(exc)}).") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def extraction_notes(dest: Path) -> list[str]:
    """What an extraction left out, in words (empty when everything was kept)."""
    try:
        skipped = json.loads((Path(dest) / SKIPPED_NAME).read_text())
    except (OSError, ValueError):
        return []
    if not skipped:
        return []
    shown = ", ".join(_short(n, 60) for n in skipped[:5]) + (", …" if len(skipped) > 5 else "")
    return [f"skipped {len(skipped):,} file{'s' if len(skipped) != 1 else ''} of the zip that "
            f"{'are' if len(skipped) != 1 else 'is'} not audio, transcripts or metadata: {shown}"]


def _reason(exc: BaseException) -> str:
    """An exception's text without the file path some of them carry."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc).split(": '/")[0][:200] or type(exc).__name__


def _short(entry: str, limit: int = 80) -> str:
    return entry if len(entry) <= limit else entry[: limit - 1] + "…"


def _unpack(archive: zipfile.ZipFile, info: zipfile.ZipInfo, tmp: Path, name: str,
            written: int, max_bytes: int) -> int:
    target = tmp / _member_path(info)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with archive.open(info) as src, open(target, "wb") as dst:
            while block := src.read(1 << 20):
                written += len(block)
                if written > max_bytes:  # headers can lie about sizes (zip bombs)
                    raise SourceError(f"{name} unpacks to more than {format_bytes(max_bytes)} (the limit); "
                                      "split it or use a folder source.")
                dst.write(block)
    except OSError as exc:
        entry = _short(info.filename)
        if exc.errno == errno.ENOSPC:
            raise SourceError(f"The disk filled up while unpacking '{entry}' from {name}; free some space "
                              "or use a folder source.") from None
        if exc.errno == errno.ENAMETOOLONG:
            raise SourceError(f"{name}: entry '{entry}' has a name or path too long for the file system; "
                              "shorten it and re-create the zip.") from None
        raise SourceError(f"{name}: entry '{entry}' cannot be unpacked ({_reason(exc)}); "
                          "re-create the zip or use a folder source.") from None
    return written


def _member_path(info: zipfile.ZipInfo) -> str:
    """The entry's path with "/" between folders: zips made on Windows may use "\\", and on
    Linux that would be one file named "anna\\clip1.wav" (the speaker folder lost)."""
    return info.filename.replace("\\", "/")


def _checked_members(name: str, infos: list[zipfile.ZipInfo], max_bytes: int, max_files: int):
    """(entries to unpack, names skipped); raises for entries that must never be unpacked."""
    files, skipped = [], []
    for info in infos:
        entry = info.filename
        parts = re.split(r"[\\/]", entry)
        if entry.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", entry) or ".." in parts:
            raise SourceError(f"{name}: entry '{_short(entry)}' points outside the archive; refusing to unpack "
                              "it. Re-create the zip from the dataset folder itself.")
        if (info.external_attr >> 16) & 0o170000 == 0o120000:
            raise SourceError(f"{name}: entry '{_short(entry)}' is a symbolic link; refusing to unpack it. "
                              "Zip the real files instead.")
        entry = _member_path(info)
        if info.is_dir() or entry.endswith("/") or is_junk(Path(entry)):
            continue
        if Path(entry).suffix.lower() in KEPT_SUFFIXES:
            files.append(info)
        else:
            skipped.append(entry)
    if len(files) > max_files:
        raise SourceError(f"{name} holds {len(files)} files (limit {max_files}); use a folder source.")
    total = sum(info.file_size for info in files)
    if total > max_bytes:
        raise SourceError(f"{name} unpacks to {format_bytes(total)} (limit {format_bytes(max_bytes)}); "
                          "split it or use a folder source.")
    return files, skipped


def _check_sizes(name: str, files: list[zipfile.ZipInfo], zip_size: int, max_ratio: float) -> None:
    """Refuse compression ratios no audio dataset has, per entry and over the whole archive."""
    for info in files:
        if info.file_size >= RATIO_MIN_BYTES and info.file_size > max_ratio * max(info.compress_size, 1):
            raise SourceError(f"{name}: entry '{_short(info.filename)}' expands {info.file_size / max(info.compress_size, 1):,.0f} "
                              f"times ({format_bytes(info.compress_size)} to {format_bytes(info.file_size)}; "
                              f"limit {max_ratio:.0f}:1), which audio never does; refusing a likely zip bomb.")
    total = sum(info.file_size for info in files)
    if total >= RATIO_MIN_BYTES and total > max_ratio * max(zip_size, 1):
        raise SourceError(f"{name} expands {total / max(zip_size, 1):,.0f} times ({format_bytes(zip_size)} to "
                          f"{format_bytes(total)}; limit {max_ratio:.0f}:1), which audio never does; "
                          "refusing a likely zip bomb.")


def _name_limits(folder: Path) -> tuple[int, int]:
    """(longest file name, longest path) in bytes on the file system of `folder`."""
    try:
        return os.pathconf(folder, "PC_NAME_MAX"), os.pathconf(folder, "PC_PATH_MAX")
    except (OSError, ValueError, AttributeError):
        return 255, 4096


def _check_names(name: str, files: list[zipfile.ZipInfo], tmp: Path) -> None:
    """Refuse, before writing anything, entries whose names the file system cannot hold."""
    name_max, path_max = _name_limits(tmp.parent)
    base = len(os.fsencode(str(tmp))) + 1
    for info in files:
        parts = [p for p in re.split(r"[\\/]", info.filename) if p]
        if any(len(os.fsencode(p)) > name_max for p in parts):
            raise SourceError(f"{name}: entry '{_short(info.filename)}' has a file or folder name longer than "
                              f"{name_max} bytes; shorten it and re-create the zip.")
        if base + len(os.fsencode(info.filename)) >= path_max:
            raise SourceError(f"{name}: entry '{_short(info.filename)}' is nested too deep "
                              f"({len(parts)} levels, {len(info.filename):,} characters) to unpack; "
                              "flatten the folders and re-create the zip.")


def _check_disk(name: str, total: int, folder: Path) -> None:
    free = shutil.disk_usage(folder).free
    if total + DISK_MARGIN_BYTES > free:
        raise SourceError(f"{name} unpacks to {format_bytes(total)}, but the workspace disk has only "
                          f"{format_bytes(free)} free (keeping {format_bytes(DISK_MARGIN_BYTES)} spare); "
                          "free some space or use a folder source.")


# -- fingerprints (dataset cache validity) ----------------------------------------------------
def source_fingerprint(spec: SourceSpec) -> str:
    """Changes whenever the source's content may have changed (names, sizes, mtimes, shards)."""
    digest = hashlib.sha256(repr(sorted(_spec_items(spec))).encode())
    if spec.kind == "huggingface" and not spec.path:
        from pipeline.data.huggingface import list_shards

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
    """The spec fields that matter for this kind (a folder of clips ignores the hf_* settings)."""
    relevant = ["kind", "path", "max_clips"]
    if spec.kind == "folder" and spec.path and is_parquet_source(spec.resolved_path()):
        relevant += ["hf_config", "hf_split", "columns"]
    elif spec.kind == "huggingface":
        relevant += ["hf_repo", "hf_config", "hf_split", "hf_revision", "columns"]
    return [(k, repr(getattr(spec, k))) for k in relevant]
