"""Packed training samples in the inference layout (pipeline.model.tokens).

Several consecutive clips of ONE speaker are packed into one causal sequence of at most
`max_length` columns, so each clip after the first is conditioned on earlier clips of the same
voice exactly like a reference prompt at inference. Loss is on audio frames and <|im_end|> only.
Padding is only at the end, so no attention mask is needed.

Everything is a pure function of (seed, position): batch `p` of the training stream is always
the same batch, which is how a resumed run continues with the data it would have seen.
"""

from __future__ import annotations

import bisect
import math
import threading
import zlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from pipeline.model.tokens import Utterance, build_sequence, sequence_overhead, to_labels, utterance_length

IGNORE = -100


class SamplesError(ValueError):
    """No usable training data (missing columns, every clip rejected)."""


@dataclass(frozen=True)
class Clip:
    id: str
    speaker: str
    text: str
    codes_path: str
    n_frames: int
    length: int  # columns this clip takes in a packed sequence


@dataclass
class TrainingData:
    train: "PackedSamples"
    val: "PackedSamples | None"
    rejected: dict[str, str] = field(default_factory=dict)  # clip id → reason

    def summary(self) -> dict:
        """The data's counts (computed once: the loop writes them with its state)."""
        if not hasattr(self, "_summary"):
            self._summary = self._count()
        return dict(self._summary)

    def _count(self) -> dict:
        return {
            "train_clips": len(self.train.clips),
            "val_clips": len(self.val.clips) if self.val else 0,
            "speakers": len({c.speaker for c in self.train.clips}),
            "train_sequences_per_epoch": len(self.train.groups_for_epoch(0)),
            "batches_per_epoch": self.train.batches_per_epoch,
            "rejected": len(self.rejected),
        }


def _text_of(row) -> str:
    for column in ("normalized_text", "text"):
        value = row.get(column)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return ""


def _frames(path: str, num_codebooks: int) -> int:
    arr = np.load(path, mmap_mode="r")  # header only
    if arr.ndim != 2 or arr.shape[0] != num_codebooks or arr.shape[1] == 0:
        raise ValueError(f"codes shape {arr.shape}, expected ({num_codebooks}, frames)")
    return int(arr.shape[1])


def prepare_clips(manifest: pd.DataFrame, tokenizer, num_codebooks: int, max_length: int) -> tuple[list[Clip], dict[str, str]]:
    """Usable clips in manifest order, and the reason each other clip was left out."""
    missing = [c for c in ("id", "speaker", "codes_path") if c not in manifest.columns]
    if missing or not ({"text", "normalized_text"} & set(manifest.columns)):
        raise SamplesError(
            f"The manifest lacks column(s) {missing or ['text']}; extract codes first (pipeline.model.codes.extract_codes)."
        )
    clips, rejected = [], {}
    budget = max_length - sequence_overhead(tokenizer)
    for row in manifest.to_dict("records"):
        clip_id = str(row["id"])
        if "status" in row and row["status"] not in (None, "ok"):
            continue  # rejected upstream, reason already in the manifest
        path, text = row.get("codes_path"), _text_of(row)
        if not isinstance(path, str) or not path:
            error = row.get("codes_error")
            rejected[clip_id] = (f"no codes: {error}" if isinstance(error, str) and error
                                 else "no codes (extraction failed or not run)")
            continue
        if not text:
            rejected[clip_id] = "empty transcript"
            continue
        try:
            n_frames = _frames(path, num_codebooks)
        except (OSError, ValueError, EOFError) as exc:
            rejected[clip_id] = f"unreadable codes {path}: {exc}"
            continue
        length = utterance_length(tokenizer, text, n_frames)
        if length > budget:
            rejected[clip_id] = f"too long: {length} tokens > max_length {max_length}; raise max_length or shorten the clip"
            continue
        clips.append(Clip(clip_id, str(row["speaker"]), text, path, n_frames, length))
    return clips, rejected


def split_clips(clips: list[Clip], val_fraction: float, seed: int) -> tuple[list[Clip], list[Clip]]:
    """Per-speaker held-out clips: speakers with >= 3 clips give max(1, round(fraction * n))."""
    by_speaker: dict[str, list[Clip]] = {}
    for clip in clips:
        by_speaker.setdefault(clip.speaker, []).append(clip)
    held = set()
    for speaker, items in by_speaker.items():
        if len(items) < 3:
            continue
        n_val = min(len(items) - 2, max(1, round(val_fraction * len(items))))
        rng = np.random.default_rng([seed, zlib.crc32(speaker.encode("utf-8"))])
        held.update(items[i].id for i in rng.choice(len(items), size=n_val, replace=False))
    return [c for c in clips if c.id not in held], [c for c in clips if c.id in held]


class PackedSamples:
    """Batches {tokens (B, C+1, L), labels (B, C+1, L), lengths (B,)} addressed by position.

    Epoch e packs each speaker's clips in manifest order starting at a seeded random offset
    (so a different clip opens each sequence every epoch), then shuffles the sequences. The
    training stream is the epochs' sequences one after another; batch p holds stream items
    p*B .. p*B+B-1, so every batch is full (an epoch boundary may fall inside one). With
    shuffle=False (validation) iterating gives one pass over the fixed packing.

    `width_multiple` rounds every batch's width up (compiled training uses few distinct shapes).
    """

    def __init__(self, clips, tokenizer, num_codebooks: int, max_length: int, batch_size: int,
                 seed: int = 0, shuffle: bool = True, width_multiple: int = 1):
        if not clips:
            raise SamplesError("No usable clips to build training sequences from.")
        self.clips, self.tokenizer, self.num_codebooks = list(clips), tokenizer, num_codebooks
        self.max_length, self.batch_size, self.seed, self.shuffle = max_length, batch_size, seed, shuffle
        self.width_multiple = width_multiple
        self.pad_id = tokenizer.get_token_id("<|pad|>") if "<|pad|>" in tokenizer.all_special_tokens_with_ids else 0
        self._overhead = sequence_overhead(tokenizer)
        self._by_speaker: dict[str, list[Clip]] = {}
        for clip in self.clips:
            self._by_speaker.setdefault(clip.speaker, []).append(clip)
        self._epochs: dict[int, list[list[Clip]]] = {}  # a few recent epochs' packings
        self._starts = [0]  # stream index where epoch e starts, for every epoch packed so far
        self._codes: dict[str, torch.Tensor] = {}
        # the loop builds the next step's batches on a helper thread while it reads progress here
        self._lock = threading.RLock()

    # -- packing ---------------------------------------------------------------------------
    def _pack(self, clips: list[Clip]) -> list[list[Clip]]:
        groups, current, used = [], [], self._overhead
        for clip in clips:
            if current and used + clip.length > self.max_length:
                groups.append(current)
                current, used = [], self._overhead
            current.append(clip)
            used += clip.length
        if current:
            groups.append(current)
        return groups

    def groups_for_epoch(self, epoch: int) -> list[list[Clip]]:
        with self._lock:
            return self._groups_for_epoch(epoch)

    def _groups_for_epoch(self, epoch: int) -> list[list[Clip]]:
        if epoch not in self._epochs:
            groups = []
            rng = np.random.default_rng([self.seed, epoch])
            for speaker in sorted(self._by_speaker):
                items = self._by_speaker[speaker]
                start = int(rng.integers(len(items))) if self.shuffle else 0
                groups += self._pack(items[start:] + items[:start])
            if self.shuffle:
                groups = [groups[i] for i in rng.permutation(len(groups))]
            if len(self._epochs) >= 3:  # bounded memory; any epoch can be packed again identically
                self._epochs.pop(min(self._epochs))
            self._epochs[epoch] = groups
        return self._epochs[epoch]

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(len(self.groups_for_epoch(0)) / self.batch_size)

    def _locate_item(self, index: int) -> tuple[int, int]:
        """(epoch, index within that epoch) of stream item `index`."""
        with self._lock:
            return self._locate(index)

    def _locate(self, index: int) -> tuple[int, int]:
        while self._starts[-1] <= index:  # pack epochs up to the one holding `index`, once
            epoch = len(self._starts) - 1
            self._starts.append(self._starts[-1] + len(self.groups_for_epoch(epoch)))
        epoch = bisect.bisect_right(self._starts, index) - 1
        return epoch, index - self._starts[epoch]

    def epoch_progress(self, position: int) -> float:
        """Epochs completed after `position` batches (fractional)."""
        epoch, index = self._locate_item(position * self.batch_size)
        return epoch + index / len(self.groups_for_epoch(epoch))

    # -- tensors ---------------------------------------------------------------------------
    def _clip_codes(self, clip: Clip) -> torch.Tensor:
        if clip.id not in self._codes:
            self._codes[clip.id] = torch.from_numpy(np.load(clip.codes_path).astype(np.int64))
        return self._codes[clip.id]

    def sequence(self, group: list[Clip]):
        utts = [Utterance(c.text, self._clip_codes(c)) for c in group]
        return build_sequence(self.tokenizer, self.num_codebooks, utts)

    def collate(self, groups: list[list[Clip]], rows: int | None = None) -> dict:
        """Pad at the end to a common width (a multiple of width_multiple); `rows` adds empty
        sequences (no loss) so that a short last batch keeps the usual shape."""
        seqs = [self.sequence(g) for g in groups]
        longest = max(len(s) for s in seqs)  # <= max_length: packing never exceeds it
        width = max(longest, min(math.ceil(longest / self.width_multiple) * self.width_multiple, self.max_length))
        n = max(rows or 0, len(seqs))
        tokens = torch.zeros((n, self.num_codebooks + 1, width), dtype=torch.long)
        labels = torch.full_like(tokens, IGNORE)
        tokens[:, 0] = self.pad_id
        for i, seq in enumerate(seqs):
            tokens[i, :, : len(seq)] = seq.tokens
            labels[i, :, : len(seq)] = to_labels(seq)
        lengths = torch.tensor([len(s) for s in seqs] + [0] * (n - len(seqs)), dtype=torch.long)
        return {"tokens": tokens, "labels": labels, "lengths": lengths}

    def batch(self, position: int) -> dict:
        """Training batch `position` of the stream (always batch_size sequences)."""
        first = position * self.batch_size
        groups = []
        for index in range(first, first + self.batch_size):
            epoch, i = self._locate_item(index)
            groups.append(self.groups_for_epoch(epoch)[i])
        return self.collate(groups)

    def __len__(self) -> int:
        return self.batches_per_epoch

    def __iter__(self):
        """One pass over epoch 0's sequences (what validation uses); the last batch is padded
        with empty rows to the usual batch size."""
        groups = self.groups_for_epoch(0)
        for start in range(0, len(groups), self.batch_size):
            yield self.collate(groups[start : start + self.batch_size], rows=self.batch_size)


def make_training_data(manifest: pd.DataFrame, tokenizer, num_codebooks: int, *, max_length: int,
                       batch_size: int, val_fraction: float, seed: int, width_multiple: int = 1) -> TrainingData:
    """Train and held-out packed samples from a manifest with a `codes_path` column."""
    clips, rejected = prepare_clips(manifest, tokenizer, num_codebooks, max_length)
    if not clips:
        reasons = sorted(set(rejected.values()))[:3]
        raise SamplesError(f"No clip is usable for training ({len(rejected)} rejected, e.g. {reasons}).")
    train_clips, val_clips = split_clips(clips, val_fraction, seed)
    common = dict(tokenizer=tokenizer, num_codebooks=num_codebooks, max_length=max_length, batch_size=batch_size,
                  seed=seed, width_multiple=width_multiple)
    train = PackedSamples(train_clips, shuffle=True, **common)
    val = PackedSamples(val_clips, shuffle=False, **common) if val_clips else None
    return TrainingData(train=train, val=val, rejected=rejected)
