"""Hugging Face datasets as parquet files: a Hub repo (or a local folder in the same layout).

Reads the Hub's parquet export (`refs/convert/parquet`: `<config>/<split>/0000.parquet`) with
huggingface_hub + pyarrow, no `datasets` dependency, fetching shards one at a time only until
`max_clips` rows are collected. Audio cells (the Hub's {bytes, path} struct) are written out.
"""

from __future__ import annotations

import fnmatch
import os
import re
import uuid
from contextlib import contextmanager
from pathlib import Path

from .audio import AUDIO_EXTENSIONS
from .sources import Progress, RawClip, SourceError, SourceSpec, _report, _slug, decode_text


def _hub_where(spec: SourceSpec) -> str:
    return f"local folder {spec.resolved_path()}" if spec.path else f"Hugging Face dataset '{spec.hf_repo}'"


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
    except (hfe.OfflineModeIsEnabled, hfe.LocalEntryNotFoundError, ConnectionError, TimeoutError):
        raise SourceError(offline) from None
    except hfe.EntryNotFoundError as exc:
        raise SourceError(f"A file of '{repo}' is missing on the Hub ({exc}); check the config/split names.") from None
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


def list_shards(spec: SourceSpec) -> list[str]:
    """Parquet files of `<config>/<split>/`, `<config>/partial-<split>/` or `data/<split>-*`."""
    if spec.path:
        root = spec.resolved_path()
        if not root.is_dir():
            raise SourceError(f"{root} is not a folder of parquet files; check dataset.path.")
        files = [p.relative_to(root).as_posix() for p in root.rglob("*.parquet")]
    else:
        from huggingface_hub import HfApi

        with _hub_errors(spec):
            files = HfApi().list_repo_files(spec.hf_repo, repo_type="dataset", revision=spec.hf_revision)
    parquet = sorted(f for f in files if f.endswith(".parquet"))
    cfg, split = spec.hf_config, spec.hf_split
    patterns = [f"{cfg}/{split}/*.parquet", f"{cfg}/partial-{split}/*.parquet"] if cfg else []
    patterns += [f"data/{split}-*.parquet", f"data/{split}/*.parquet", f"{split}/*.parquet",
                 f"default/{split}/*.parquet", f"{split}-*.parquet"]
    for pattern in patterns:
        regex = re.compile(fnmatch.translate(pattern).replace(".*", "[^/]*"))
        if hits := [f for f in parquet if regex.match(f)]:
            return hits
    found = sorted({f.rsplit("/", 1)[0] if "/" in f else "." for f in parquet})[:20]
    raise SourceError(f"No parquet files for config '{cfg}', split '{split}' in {_hub_where(spec)}. "
                      f"Folders with parquet files: {', '.join(found) or 'none'}. "
                      "Check dataset.hf_config and dataset.hf_split.")


def _fetch_shard(spec: SourceSpec, shard: str) -> Path:
    if spec.path:
        return spec.resolved_path() / shard
    from huggingface_hub import hf_hub_download

    with _hub_errors(spec):
        return Path(hf_hub_download(spec.hf_repo, shard, repo_type="dataset", revision=spec.hf_revision))


def read_huggingface(spec: SourceSpec, work_dir: Path, progress: Progress = None) -> list[RawClip]:
    """Rows of the split's shards, fetched one by one only until `max_clips` rows are read."""
    import pyarrow.parquet as pq

    shards = list_shards(spec)
    audio_col, text_col = spec.columns.get("audio") or "audio", spec.columns.get("text")
    speaker_col = spec.columns.get("speaker")
    if not text_col:
        raise SourceError("dataset.columns.text is empty; name the transcript column.")
    out_dir = Path(work_dir) / "extracted"
    out_dir.mkdir(parents=True, exist_ok=True)
    clips: list[RawClip] = []
    for index, shard in enumerate(shards):
        if len(clips) >= spec.max_clips:
            break
        _report(progress, len(clips) / spec.max_clips, f"Reading shard {index + 1}/{len(shards)}: {shard}")
        local = _fetch_shard(spec, shard)
        try:
            parquet = pq.ParquetFile(local)
        except Exception as exc:
            raise SourceError(f"{_hub_where(spec)}: {shard} is not a readable parquet file "
                              f"({_first_line(exc)}).") from None
        available = parquet.schema_arrow.names
        wanted = {"audio": audio_col, "text": text_col, "speaker": speaker_col}
        missing = [f"columns.{key} = '{col}'" for key, col in wanted.items() if col and col not in available]
        if missing:
            raise SourceError(f"{_hub_where(spec)} ({shard}): {', '.join(missing)} not found. "
                              f"Available columns: {', '.join(available)}. Set dataset.columns accordingly.")
        names = list(dict.fromkeys(c for c in wanted.values() if c))
        for batch in parquet.iter_batches(batch_size=64, columns=names):
            for row in batch.to_pylist():
                if len(clips) >= spec.max_clips:
                    break
                clip_id = f"{_slug(spec.hf_split)}-{len(clips):06d}"
                path, problem = _materialize_audio(row[audio_col], out_dir, clip_id, local.parent, audio_col)
                text, text_problem = _cell_text(row[text_col], text_col)
                speaker = _cell_text(row[speaker_col], speaker_col)[0] if speaker_col else "speaker"
                clips.append(RawClip(clip_id, speaker or "unknown", text, path, problem or text_problem))
            if len(clips) >= spec.max_clips:
                break
    return clips


def _cell_text(value, column: str) -> tuple[str | None, str | None]:
    if value is None:
        return None, None
    if isinstance(value, bytes):
        return decode_text(value, f"in column '{column}'")
    return str(value).strip(), None


_MAGIC = [(b"RIFF", ".wav"), (b"fLaC", ".flac"), (b"OggS", ".ogg"), (b"ID3", ".mp3"), (b"\xff\xfb", ".mp3")]


def _materialize_audio(value, out_dir: Path, clip_id: str, shard_dir: Path, column: str) -> tuple[str, str | None]:
    """(path, problem): the Hub's Audio struct {bytes, path} is written out; a path is used as is."""
    data, name = (value.get("bytes"), value.get("path")) if isinstance(value, dict) else (None, value)
    if data:
        suffix = Path(name).suffix.lower() if isinstance(name, str) else ""
        if suffix not in AUDIO_EXTENSIONS:
            suffix = next((ext for magic, ext in _MAGIC if data.startswith(magic)), ".wav")
        target = out_dir / f"{clip_id}{suffix}"
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)
        return str(target), None
    if isinstance(name, str) and name:
        candidate = Path(name) if Path(name).is_absolute() else shard_dir / name
        if candidate.is_file():
            return str(candidate), None
        return str(candidate), f"audio file '{name}' named in column '{column}' not found"
    return str(out_dir / clip_id), f"no audio in column '{column}'"
