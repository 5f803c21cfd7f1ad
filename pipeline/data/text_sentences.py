"""Long text cut into synthesis-sized pieces (`split_sentences`): at sentence ends, never after an
abbreviation, an initial or a date, and a sentence still too long at commas and then at spaces.
"""

from __future__ import annotations

import re
import textwrap
import unicodedata

from pipeline.data.text_abbreviations import NO_SPLIT_AFTER

__all__ = ["split_sentences"]

_SENTENCE_END = re.compile(r"([.!?]+[\"')\]]*)\s+(?=[\"'(\[-]?[A-ZÅÄÖ0-9\u2013])")


def _protected(before: str) -> bool:
    """True when the dot ending `before` belongs to an abbreviation, an initial or a date."""
    last = before.split()[-1] if before.strip() else ""
    stem = last.rstrip(".").lstrip("(\"'")
    return last.endswith(".") and (stem.lower() in NO_SPLIT_AFTER
                                   or re.fullmatch(r"[A-ZÅÄÖ]|\d{1,2}\.\d{1,2}", stem) is not None)


def _wrap(sentence: str, max_chars: int) -> list[str]:
    """Cut a long sentence at commas/semicolons, then at spaces, into pieces <= max_chars."""
    pieces: list[str] = []
    for part in re.split(r"(?<=[,;:])\s+", sentence):
        if pieces and len(pieces[-1]) + 1 + len(part) <= max_chars:
            pieces[-1] += " " + part
        else:
            pieces.extend(textwrap.wrap(part, max_chars, break_on_hyphens=False))
    return pieces


def split_sentences(text: str, max_chars: int = 200) -> list[str]:
    """Split text into sentences (never after abbreviations, initials, ordinals or dates),
    cutting sentences longer than `max_chars` at commas and then at spaces."""
    if max_chars < 10:
        raise ValueError(f"max_chars must be at least 10, got {max_chars}")
    text = re.sub(r"\s+", " ", unicodedata.normalize("NFC", text)).strip()
    sentences, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        if m.group(1).startswith(".") and _protected(text[start:m.start(1) + 1]):
            continue
        sentences.append(text[start:m.end(1)].strip())
        start = m.end()
    sentences.append(text[start:].strip())
    return [piece for s in sentences if s for piece in _wrap(s, max_chars)]
