"""Hugging Face datasets as parquet files: a Hub repo, or the same files on disk.

Reads the Hub's parquet export (`refs/convert/parquet`: `<config>/<split>/0000.parquet`) with
huggingface_hub + pyarrow, no `datasets` dependency, fetching shards one at a time only until
they hold `max_clips` rows. On disk (`spec.path`, from the `huggingface` or the `folder` source)
it reads a `.parquet` file, a folder of parquet files, or the Hub's layouts
(`<config>/<split>/*.parquet`, `<config>/<split>-00000-of-00001.parquet`, `data/<split>-*`).
Rows are picked across speakers (`balanced_indices`) from the speaker column alone; only the
picked rows' audio cells (the Hub's {bytes, path} struct) are written out.
"""

from __future__ import annotations

import fnmatch
import re
from contextlib import contextmanager
from pathlib import Path

from pipeline.atomic import write_bytes
from pipeline.data.audio import AUDIO_EXTENSIONS
from pipeline.data.hub import HubUnreachable, require_hub
from pipeline.data.source_spec import (Clips, Progress, RawClip, SourceError, SourceSpec, balanced_indices, decode_text, is_junk,
                          report, slug)

# split names a Hub export uses: files named after another split are not this one's
_KNOWN_SPLITS = {"train", "test", "validation", "valid", "dev", "eval", "other", "validated", "invalidated"}


def _hub_where(spec: SourceSpec) -> str:
    return f"local parquet {spec.resolved_path()}" if spec.path else f"Hugging Face dataset '{spec.hf_repo}'"


@contextmanager
def _hub_errors(spec: SourceSpec):
    """Translate huggingface_hub failures into a SourceError that says what to do."""
    from huggingface_hub import errors as hfe

    repo, page = spec.hf_repo, f"https://huggingface.co/datasets/{spec.hf_repo}"
    offline = (f"Cannot reach the Hugging Face Hub for '{repo}' (offline?). Check the network, "
               "or choose the bundled sample (dataset.source: sample).")
    try:
        yield
    except hfe.GatedRepoError:
        raise SourceError(f"Hugging Face dataset '{repo}' is gated: accept its licence on {page} "
                          "and set HF_TOKEN to a token of that account.") from None
    except hfe.RepositoryNotFoundError:
        raise SourceError(f"Hugging Face dataset '{repo}' was not found: check dataset.hf_repo; "
                          "for a private dataset set HF_TOKEN.") from None
    except hfe.RevisionNotFoundError:
        raise SourceError(f"Revision '{spec.hf_revision}' of '{repo}' does not exist: check dataset.hf_revision "
                          "(refs/convert/parquet holds the Hub's parquet export).") from None
    except HubUnreachable as exc:
        raise SourceError(offline.replace("(offline?)", f"({exc})")) from None
    except (hfe.OfflineModeIsEnabled, hfe.LocalEntryNotFoundError, ConnectionError, TimeoutError):
        raise SourceError(offline) from None
    except hfe.EntryNotFoundError as exc:
        raise SourceError(f"A file of '{repo}' is missing on the Hub ({exc}); check the config/split names.") from None
    except hfe.HFValidationError:
        raise SourceError(f"'{repo}' is not a Hugging Face repository id (owner/name, e.g. facebook/voxpopuli). "
                          "For parquet files on this machine, give their folder or file as a folder source "
                          "(dataset.source: folder, dataset.path: <folder>).") from None
    except hfe.HfHubHTTPError as exc:
        raise SourceError(f"The Hugging Face Hub refused a request for '{repo}' ({_first_line(exc)}). "
                          "If the dataset is private or gated, set HF_TOKEN.") from None
    except OSError as exc:
        raise SourceError(f"{offline} ({_first_line(exc)})") from None
    except Exception as exc:
        # network errors of the HTTP clients huggingface_hub may use (httpx, httpx2, requests, ...)
        if type(exc).__module__.split(".")[0].startswith(("httpx", "httpcore", "requests", "urllib3")):
            raise SourceError(f"{offline} ({_first_line(exc)})") from None
        raise


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def _local_files(spec: SourceSpec) -> tuple[Path, list[str]]:
    """(folder, parquet files relative to it) of a local source: a `.parquet` file or a folder."""
    root = spec.resolved_path()
    if root.is_file() and root.suffix.lower() == ".parquet":
        return root.parent, [root.name]
    if not root.is_dir():
        raise SourceError(f"{root} is not a parquet file or a folder of parquet files; check dataset.path.")
    files = [p.relative_to(root).as_posix() for p in root.rglob("*.parquet")
             if not is_junk(p.relative_to(root)) and p.is_file()]
    return root, files


def list_shards(spec: SourceSpec) -> list[str]:
    """Parquet files of the split: `<config>/<split>/`, `<config>/partial-<split>/`,
    `<config>/<split>-*`, `data/<split>-*` …; on disk also a plain folder of parquet files."""
    if spec.path:
        files = _local_files(spec)[1]
    else:
        from huggingface_hub import HfApi

        from huggingface_hub.utils import validate_repo_id

        with _hub_errors(spec):
            validate_repo_id(spec.hf_repo)  # a malformed id is the user's to fix, reachable Hub or not
            require_hub()
            files = HfApi().list_repo_files(spec.hf_repo, repo_type="dataset", revision=spec.hf_revision)
    parquet = sorted(f for f in files if f.endswith(".parquet"))
    cfg, split = spec.hf_config, spec.hf_split
    if hits := _match_layout(parquet, cfg, split):
        return hits
    if spec.path and (hits := _local_split(spec, parquet, cfg, split)):
        return hits
    found = sorted({f.rsplit("/", 1)[0] if "/" in f else "." for f in parquet})[:20]
    raise SourceError(f"No parquet files for config '{cfg}', split '{split}' in {_hub_where(spec)}. "
                      f"Folders with parquet files: {', '.join(found) or 'none'}. "
                      "Check dataset.hf_config and dataset.hf_split.")


def _match_layout(parquet: list[str], cfg: str | None, split: str) -> list[str]:
    patterns = [f"{cfg}/{split}/*.parquet", f"{cfg}/partial-{split}/*.parquet",
                f"{cfg}/{split}-*.parquet", f"{cfg}/{split}.parquet"] if cfg else []
    patterns += [f"data/{split}-*.parquet", f"data/{split}/*.parquet", f"{split}/*.parquet",
                 f"default/{split}/*.parquet", f"{split}-*.parquet", f"{split}.parquet"]
    for pattern in patterns:
        regex = re.compile(fnmatch.translate(pattern).replace(".*", "[^/]*"))
        if hits := [f for f in parquet if regex.match(f)]:
            return hits
    return []


def _split_of(file: str) -> tuple[str, str] | None:
    """(config folder, split) a file's path names, e.g. 'fi/train-0000.parquet' → ('fi', 'train')."""
    parts = file.split("/")
    for depth, part in enumerate(parts):
        name = part[: -len(".parquet")] if part.endswith(".parquet") else part
        token = re.split(r"[-.]", name.removeprefix("partial-"), maxsplit=1)[0].lower()
        if token in _KNOWN_SPLITS:
            return "/".join(parts[:depth]), token
    return None


def _local_split(spec: SourceSpec, parquet: list[str], cfg: str | None, split: str) -> list[str]:
    """On disk: the split's files under any one config folder, or every file of a plain folder."""
    splits = {f: _split_of(f) for f in parquet}
    if not any(splits.values()):
        return parquet  # no split names anywhere: the folder is the split
    wanted = [f for f in parquet if splits[f] and splits[f][1] == split.lower()]
    configs = sorted({splits[f][0] for f in wanted})
    if cfg and cfg in configs:
        configs, wanted = [cfg], [f for f in wanted if splits[f][0] == cfg]
    if len(configs) > 1:
        shown = ", ".join(c or "." for c in configs[:10])
        raise SourceError(f"{_hub_where(spec)} holds split '{split}' of several configs ({shown}); "
                          "point dataset.path at one of these folders, or set dataset.hf_config.")
    return wanted


def _fetch_shard(spec: SourceSpec, shard: str) -> Path:
    if spec.path:
        return _local_files(spec)[0] / shard
    from huggingface_hub import hf_hub_download

    with _hub_errors(spec):
        return Path(hf_hub_download(spec.hf_repo, shard, repo_type="dataset", revision=spec.hf_revision))


def _open_shard(spec: SourceSpec, shard: str, local: Path, wanted: dict):
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(local)
    except Exception as exc:
        raise SourceError(f"{_hub_where(spec)}: {shard} is not a readable parquet file "
                          f"({_first_line(exc)}).") from None
    available = parquet.schema_arrow.names
    missing = [f"columns.{key} = '{col}'" for key, col in wanted.items() if col and col not in available]
    if missing:
        raise SourceError(f"{_hub_where(spec)} ({shard}): {', '.join(missing)} not found. "
                          f"Available columns: {', '.join(available)}. Set dataset.columns accordingly.")
    return parquet


def _speakers_of(parquet, column: str | None) -> list[str]:
    """The speaker label of every row, read from that one column (no audio is decoded)."""
    rows = parquet.metadata.num_rows
    if not column:
        return ["speaker"] * rows
    values = parquet.read(columns=[column]).column(0).to_pylist()
    return [_cell_text(v, column)[0] or "unknown" for v in values]


def read_huggingface(spec: SourceSpec, work_dir: Path, progress: Progress = None) -> Clips:
    """At most `max_clips` rows of the split, spread over the speakers.

    From the Hub, shards are fetched one by one only until they hold `max_clips` rows; on disk
    every shard's speaker column is read, so the pick spans the whole split.
    """
    shards = list_shards(spec)
    audio_col, text_col = spec.columns.get("audio") or "audio", spec.columns.get("text")
    speaker_col = spec.columns.get("speaker")
    if not text_col:
        raise SourceError("dataset.columns.text is empty; name the transcript column.")
    wanted = {"audio": audio_col, "text": text_col, "speaker": speaker_col}
    opened, speakers = [], []
    for index, shard in enumerate(shards):
        if not spec.path and len(speakers) >= spec.max_clips:
            break
        report(progress, 0.5 * min(len(speakers) / spec.max_clips, 1.0),
                f"Reading shard {index + 1}/{len(shards)}: {shard}")
        local = _fetch_shard(spec, shard)
        parquet = _open_shard(spec, shard, local, wanted)
        opened.append((local, parquet, len(speakers)))
        speakers += _speakers_of(parquet, speaker_col)
    chosen = set(balanced_indices(speakers, spec.max_clips))
    notes = []
    if len(opened) < len(shards):
        notes.append(f"read {len(opened)} of {len(shards)} shards of the split (enough for dataset.max_clips)")
    out_dir = Path(work_dir) / "extracted"
    out_dir.mkdir(parents=True, exist_ok=True)
    clips = Clips(available=len(speakers), notes=notes)
    names = list(dict.fromkeys(c for c in wanted.values() if c))
    for local, parquet, offset in opened:
        picked = [i for i in range(offset, offset + parquet.metadata.num_rows) if i in chosen]
        if not picked:
            continue
        position = offset
        for batch in parquet.iter_batches(batch_size=64, columns=names):
            if position > picked[-1]:
                break
            for row in batch.to_pylist():
                if position in chosen:
                    clip_id = f"{slug(spec.hf_split)}-{position:06d}"
                    path, problem = _materialize_audio(row[audio_col], out_dir, clip_id, local.parent, audio_col)
                    text, text_problem = _cell_text(row[text_col], text_col)
                    clips.append(RawClip(clip_id, speakers[position], text, path, problem or text_problem))
                position += 1
            report(progress, 0.5 + 0.5 * len(clips) / max(len(chosen), 1), f"Read {len(clips)}/{len(chosen)} clips")
    return clips


def _cell_text(value, column: str) -> tuple[str | None, str | None]:
    if value is None:
        return None, None
    if isinstance(value, bytes):
        return decode_text(value, f"in column '{column}'")
    return str(value).strip(), None


_MAGIC = [(b"RIFF", ".wav"), (b"fLaC", ".flac"), (b"OggS", ".ogg"), (b"ID3", ".mp3"), (b"\xff\xfb", ".mp3")]


def _materialize_audio(value, out_dir: Path, clip_id: str, shard_dir: Path, column: str) -> tuple[str, str | None]:
    """(path, problem): the Hub's Audio struct {bytes, path} or a plain binary cell (the encoded
    file) is written out; a path is used as is."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        data, name = bytes(value), None
    else:
        data, name = (value.get("bytes"), value.get("path")) if isinstance(value, dict) else (None, value)
    if data:
        suffix = Path(name).suffix.lower() if isinstance(name, str) else ""
        if suffix not in AUDIO_EXTENSIONS:
            suffix = next((ext for magic, ext in _MAGIC if data.startswith(magic)), ".wav")
        target = out_dir / f"{clip_id}{suffix}"
        write_bytes(target, data)
        return str(target), None
    if isinstance(name, str) and name:
        candidate = Path(name) if Path(name).is_absolute() else shard_dir / name
        if candidate.is_file():
            return str(candidate), None
        return str(candidate), f"audio file '{name}' named in column '{column}' not found"
    return str(out_dir / clip_id), f"no audio in column '{column}'"
