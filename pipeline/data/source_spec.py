"""What every dataset source shares: the source spec, a raw clip, the clips read (with what was
left out), the error type, and small helpers (speaker-fair limits, slugs, progress)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

from pipeline.config import PROJECT_ROOT

Progress = Callable[[float, str], None] | None
SAMPLE_DIR = PROJECT_ROOT / "assets" / "sample"
GIB = 1024**3


def decode_text(raw: bytes, name: str) -> tuple[str | None, str | None]:
    """UTF-8 text (BOM tolerated) or a problem naming the file."""
    try:
        return raw.decode("utf-8-sig").strip(), None
    except UnicodeDecodeError:
        return None, f"transcript {name} is not UTF-8 text (re-save it as UTF-8)"


class SourceError(ValueError):
    """A source that cannot be read at all; the message names the path or field and what to do."""


def format_bytes(n: float) -> str:
    """Sizes in messages, always in binary units (KiB, MiB, GiB)."""
    for unit, scale in (("GiB", GIB), ("MiB", 1024**2), ("KiB", 1024)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} bytes"


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
        return {"folder": "folder of clips or of parquet files", "zip": "zip file",
                "huggingface": "local folder of parquet files"}.get(self.kind, "path")

    def __post_init__(self):
        # a local export typed where a repo id goes: read it from disk instead of asking the Hub
        if self.kind == "huggingface" and not self.path and _looks_local(self.hf_repo):
            object.__setattr__(self, "path", self.hf_repo)
            object.__setattr__(self, "hf_repo", None)

    def dataset_id(self) -> str:
        """Stable, filesystem-safe name of the dataset this source produces."""
        if self.kind == "sample":
            return "sample"
        if self.kind == "huggingface" and not self.path:
            if not self.hf_repo:
                raise SourceError("Source 'huggingface' needs dataset.hf_repo (e.g. facebook/voxpopuli).")
            parts = ["hf", self.hf_repo, self.hf_config or "", self.hf_split]
            ident = slug("-".join(p for p in parts if p))
            if self.hf_revision and self.hf_revision not in ("main", "refs/convert/parquet"):
                ident += "-" + _hash8(self.hf_revision)
            return ident
        path = self.resolved_path()
        prefix = {"folder": "folder", "zip": "zip", "huggingface": "hf"}[self.kind]
        name = path.stem if self.kind == "zip" else path.name
        extra = [self.hf_config or "", self.hf_split] if self.kind == "huggingface" else []
        return slug("-".join([prefix, name, *[e for e in extra if e], _hash8(str(path))]))


@dataclass
class RawClip:
    id: str
    speaker: str
    text: str | None
    source_path: str
    problem: str | None = None  # early rejection reason (e.g. missing transcript)


class Clips(list):
    """The clips `read_source` returns, plus how many the source held (`available`, when known)."""

    def __init__(self, clips=(), available: int | None = None, notes: list[str] | None = None):
        super().__init__(clips)
        self.available = len(self) if available is None else available
        self.notes = list(notes or [])

    @property
    def selection(self) -> str:
        """'using 3,000 of 10,000 clips (…)' when clips were left out, else ''."""
        if self.available <= len(self):
            return ""
        speakers = len({c.speaker for c in self})
        return (f"using {len(self):,} of {self.available:,} clips (spread evenly over {speakers:,} "
                f"speaker{'s' if speakers != 1 else ''}; raise dataset.max_clips to use more)")


def balanced_indices(speakers: list[str], limit: int) -> list[int]:
    """At most `limit` positions of `speakers`, spread evenly over the speakers (deterministic).

    Every speaker gets an equal share (a speaker with fewer clips keeps them all and its unused
    share goes to the others); within a speaker, the picks are evenly spaced through its clips.
    """
    if len(speakers) <= limit:
        return list(range(len(speakers)))
    groups: dict[str, list[int]] = {}
    for index, speaker in enumerate(speakers):
        groups.setdefault(speaker, []).append(index)
    shares = _fair_shares({s: len(v) for s, v in groups.items()}, limit)
    chosen = []
    for speaker, indices in groups.items():
        count, share = len(indices), shares[speaker]
        chosen += [indices[j * count // share] for j in range(share)]
    return sorted(chosen)


def _fair_shares(counts: dict[str, int], limit: int) -> dict[str, int]:
    shares = dict.fromkeys(counts, 0)
    pending = sorted(counts, key=lambda s: (counts[s], s))
    remaining = limit
    while pending and counts[pending[0]] <= remaining // len(pending):
        speaker = pending.pop(0)
        shares[speaker] = counts[speaker]
        remaining -= counts[speaker]
    if pending:
        share, extra = divmod(remaining, len(pending))
        for n, speaker in enumerate(sorted(pending)):  # the remainder goes to the first names
            shares[speaker] = share + (1 if n < extra else 0)
    return shares


def limit_clips(clips: list[RawClip], max_clips: int, notes: list[str] | None = None) -> Clips:
    keep = balanced_indices([c.speaker for c in clips], max_clips)
    return Clips([clips[i] for i in keep], available=len(clips), notes=notes)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.").lower()[:120] or "dataset"


def _looks_local(repo: str | None) -> bool:
    if not repo:
        return False
    if repo.startswith(("/", "./", "../", "~")) or repo.endswith(".parquet"):
        return True
    return repo.count("/") != 1 and Path(repo).expanduser().exists()


def _hash8(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def report(progress: Progress, fraction: float, message: str) -> None:
    if progress is not None:
        progress(min(max(fraction, 0.0), 1.0), message)


def is_junk(path: Path) -> bool:
    """macOS resource forks and hidden files that zips and copies drag along."""
    return any(part.startswith(".") or part == "__MACOSX" for part in path.parts)
