"""Finnish text normalization for TTS, the module callers import: `normalize` writes out what a
reader would say, `normalize_report` also says what it could not read, `split_sentences` cuts long
text into synthesis-sized pieces, `check_transcript` says why a transcript is unusable, and
`example_sentences` are the project's fixed evaluation sentences.

The work is split by topic: `number_words` (a digit string as Finnish words, in a case),
`text_numbers` (numbers in running text: dates, times, ranges, money, units), `text_abbreviations`,
`text_sentences` (`split_sentences`) and `text_report` (the removed symbols and foreign letters).

Choices (why):
- Case is kept for the letters the writer typed; number words are lowercase.
- "1 200" and "1.200" are thousands.
- Fancy quotes become ASCII quotes, dashes between words " - ", the ellipsis "...".
- Emoji, pictographs and other symbols with no spoken form are removed; letters of other scripts
  are kept (`normalize_report` lists both, for a warning beside the result).
"""

from __future__ import annotations

import re
import unicodedata

from pipeline.config import PROJECT_ROOT
from pipeline.data.text_abbreviations import expand_abbreviations
from pipeline.data.text_numbers import DASH, alternation, numbers_as_words
from pipeline.data.text_report import Normalization, drop_unspoken, report
from pipeline.data.text_sentences import split_sentences

__all__ = ["normalize", "normalize_report", "split_sentences", "check_transcript"]

# Soft hyphen and zero-width characters go; odd spaces, quotes and dashes get one spelling each.
_CHAR_MAP = str.maketrans({**dict.fromkeys("\u00ad\u200b\u200c\u200d\u2060\ufeff"),
                           **dict.fromkeys("\u00a0\u2007\u202f\u2009\u2002\u2003\r\n\t", " "),
                           **dict.fromkeys("\u201c\u201d\u201e\u201f\u00ab\u00bb\u2033", '"'),
                           **dict.fromkeys("\u2018\u2019\u201a\u201b\u2032\u00b4`", "'"),
                           **dict.fromkeys("\u2212\u2010\u2011", "-"),
                           **dict.fromkeys("\u2012\u2014\u2015", DASH), "\u2026": "..."})

_SYMBOLS = {"&": "ja", "+": "plus", "=": "on", "§": "pykälä", "%": "prosenttia", "€": "euroa",
            "$": "dollaria", "°": "astetta"}


def _clean(text: str) -> str:
    text = unicodedata.normalize("NFC", text).translate(_CHAR_MAP)
    text = re.sub(r"(?<=\d)\s*[-\u2013]\s*(?=\d)", DASH, text)  # "5 - 10" -> range "5–10"
    text = re.sub(r"\s+[-\u2013]\s+", " - ", text)  # a dash between words is a pause
    # Thousands separators: "1 200 000" / "1.200" -> "1200000" / "1200".
    return re.sub(r"(?<![\d,.])\d{1,3}(?:([ .])\d{3})(?:\1\d{3})*(?![\d]|[.,]\d)",
                  lambda m: re.sub(r"[ .]", "", m.group(0)), text)


def normalize_report(text: str) -> Normalization:
    """`normalize`, and what it removed or kept unread (for a warning beside the result)."""
    if not isinstance(text, str):
        raise TypeError(f"normalize expects str, got {type(text).__name__}")
    # Numbers first: after a number "v." is a unit ("5 v." -> "viisi vuotta"), elsewhere "vuonna".
    text = expand_abbreviations(numbers_as_words(_clean(text)))
    text = re.sub(alternation(_SYMBOLS), lambda m: f" {_SYMBOLS[m.group(0)]} ", text)
    text, removed = drop_unspoken(text)
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"\s+([,.;:!?)])", r"\1", text)
    text = re.sub(r"\(\s+", "(", text).strip()
    return report(text, removed)


def normalize(text: str) -> str:
    """Spoken-form Finnish: numbers, dates, times, money, units and abbreviations as words.

    >>> normalize("Hinta on 5,50 € ja alennus 12 %.")
    'Hinta on viisi euroa ja viisikymmentä senttiä ja alennus kaksitoista prosenttia.'
    """
    return normalize_report(text).text


_MOJIBAKE = re.compile("Ã[\u0080-\u00bf]|â€")  # UTF-8 read as Latin-1/cp1252


def check_transcript(text: str | bytes | None) -> str | None:
    """Why a transcript cannot be used for training, or None when it can."""
    if text is None:
        return "transcript is missing"
    try:
        text = text.decode("utf-8") if isinstance(text, bytes) else text
    except UnicodeDecodeError as err:
        return f"transcript is not valid UTF-8 (byte {err.start}); save the .lab file as UTF-8"
    if not isinstance(text, str):
        return f"transcript is not text but {type(text).__name__}"
    if not text.strip():
        return "transcript is empty"
    if "\ufffd" in text:
        return "transcript contains the replacement character U+FFFD (it was decoded with the wrong encoding)"
    if _MOJIBAKE.search(text):
        return "transcript looks mis-decoded (e.g. 'Ã¤' for 'ä'); re-read it as UTF-8"
    control = [c for c in text if unicodedata.category(c) in ("Cc", "Cs", "Co") and c not in "\t\n\r"]
    if control:
        return f"transcript contains control characters ({', '.join(f'U+{ord(c):04X}' for c in control[:3])})"
    if not any(c.isalnum() for c in text):
        return "transcript contains only punctuation or symbols"
    if not any(c.isalpha() for c in normalize(text)):
        return "transcript contains no letters (nor numbers that read as words)"
    return None


EXAMPLES_PATH = PROJECT_ROOT / "assets" / "examples_fi.txt"


def example_sentences() -> list[str]:
    """The project's fixed Finnish evaluation sentences (assets/examples_fi.txt), none if it is missing."""
    try:
        return [line.strip() for line in EXAMPLES_PATH.read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError:
        return []
