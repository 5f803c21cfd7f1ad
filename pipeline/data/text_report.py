"""What normalization could not read, for a warning beside its result: emoji, pictographs and other
symbols with no spoken form are removed (the model has no reading for them), letters of other
scripts are kept and counted (`Normalization`).
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

__all__ = ["Normalization", "drop_unspoken", "report"]

# Unicode categories with no spoken form: other/modifier symbols (emoji, pictographs, ©),
# combining and enclosing marks left after NFC (emoji modifiers, keycaps), private use,
# unassigned, surrogates, format and control characters.
_UNSPOKEN_CATEGORIES = {"So", "Sk", "Mn", "Me", "Co", "Cn", "Cs", "Cf", "Cc"}


@dataclass(frozen=True)
class Normalization:
    """`normalize`'s text and what it could not read: removed symbols and letters of other scripts."""
    text: str
    removed: str = ""  # each removed character once, in order of appearance
    scripts: tuple[str, ...] = ()  # non-Latin scripts whose letters were kept ("Hiragana", "Cjk")
    foreign_letters: int = 0  # how many letters are not Latin

    @property
    def speakable(self) -> bool:
        """False when nothing is left a voice could read (only punctuation, or nothing)."""
        return any(c.isalnum() for c in self.text)

    def notes(self) -> list[str]:
        """Warnings for the user (empty for plain Finnish)."""
        notes = []
        if self.removed:
            notes.append(f"Removed {_shown(self.removed)}: symbols and emoji have no spoken form.")
        if self.foreign_letters:
            notes.append(f"The model was trained on Finnish; {self.foreign_letters} letter"
                         f"{'s' if self.foreign_letters != 1 else ''} in other scripts ({', '.join(self.scripts)}) "
                         "were kept but will be read wrongly or not at all.")
        return notes


def _shown(chars: str, limit: int = 12) -> str:
    visible = lambda c: unicodedata.category(c) in ("So", "Sk")  # noqa: E731 - marks and controls show as codes
    shown = " ".join(c if visible(c) else f"U+{ord(c):04X}" for c in chars[:limit])
    return shown + (f" and {len(chars) - limit} more" if len(chars) > limit else "")


def _script(char: str) -> str:
    """The script of a letter from its Unicode name ("HIRAGANA LETTER A" -> "Hiragana")."""
    script = unicodedata.name(char, "unknown").split()[0].split("-")[0]
    return script if script == "CJK" else script.title()


def drop_unspoken(text: str) -> tuple[str, str]:
    """`text` with each unspoken character replaced by a space, and those characters once each."""
    kept, removed = [], {}
    for char in text:
        if unicodedata.category(char) in _UNSPOKEN_CATEGORIES:
            removed.setdefault(char, None)
            kept.append(" ")
        else:
            kept.append(char)
    return "".join(kept), "".join(removed)


def report(text: str, removed: str) -> Normalization:
    """The normalized `text` with what was `removed` from it and the non-Latin letters it keeps."""
    foreign = [c for c in text if c.isalpha() and not unicodedata.name(c, "").startswith("LATIN")]
    return Normalization(text, removed, tuple(dict.fromkeys(_script(c) for c in foreign)), len(foreign))
