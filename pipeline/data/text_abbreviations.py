"""Finnish abbreviations written out ("esim." -> "esimerkiksi"), and the dots that never end a
sentence, which `split_sentences` must not cut after.

An expanded abbreviation keeps the first letter's case ("Esim." -> "Esimerkiksi").
"""

from __future__ import annotations

import re

__all__ = ["NO_SPLIT_AFTER", "end_dot", "expand_abbreviations"]

# Abbreviations expanded anywhere (case-insensitive on the first letter). The flag says whether
# the dot may also end a sentence (then it is kept when a capital or the end follows).
_ABBREVIATIONS = {
    "esim.": ("esimerkiksi", False), "mm.": ("muun muassa", False), "jne.": ("ja niin edelleen", True),
    "ym.": ("ynnä muuta", True), "yms.": ("ynnä muuta sellaista", True), "ns.": ("niin sanottu", False),
    "tms.": ("tai muuta sellaista", True), "klo": ("kello", False), "ks.": ("katso", False),
    "vrt.": ("vertaa", False), "tri": ("tohtori", False), "prof.": ("professori", False),
    "huom.": ("huomaa", False), "nro": ("numero", False), "puh.": ("puhelin", False), "ca.": ("noin", False),
    "ts.": ("toisin sanoen", False), "hra": ("herra", False), "rva": ("rouva", False),
    "eKr.": ("ennen Kristuksen syntymää", True), "jKr.": ("jälkeen Kristuksen syntymän", True),
    "yht.": ("yhteensä", False), "milj.": ("miljoonaa", True), "mrd.": ("miljardia", True)}
# Single lowercase letters are abbreviations only in lowercase (capitals are initials).
_LOWER_ONLY = {"n.": ("noin", False), "t.": ("tai", False), "v.": ("vuonna", False)}

# Abbreviations after which split_sentences never cuts.
NO_SPLIT_AFTER = {a[:-1].lower() for a, (_, can_end) in {**_ABBREVIATIONS, **_LOWER_ONLY}.items()
                  if a.endswith(".") and not can_end}


def end_dot(m: re.Match) -> str:
    """"." when the dot a match swallowed (an abbreviation's or a date's) also ends a sentence."""
    ends = m.group(0).endswith(".") and re.match(r"\s*($|[A-ZÅÄÖ\"])", m.string[m.end():])
    return "." if ends else ""


def expand_abbreviations(text: str) -> str:
    """Every known abbreviation in `text` as words; capital single letters stay (initials)."""
    def expand(m: re.Match) -> str:
        token = m.group(1)
        key = token[0].lower() + token[1:]
        if key not in _ABBREVIATIONS and token not in _LOWER_ONLY:  # "N." is an initial
            return m.group(0)
        words, can_end = _ABBREVIATIONS.get(key) or _LOWER_ONLY[key]
        if token[0].isupper():
            words = words[0].upper() + words[1:]
        return words + (end_dot(m) if can_end else "")

    keys = sorted({*_ABBREVIATIONS, *_LOWER_ONLY}, key=len, reverse=True)  # longest first
    alternation = "|".join(f"[{k[0]}{k[0].upper()}]{re.escape(k[1:])}" for k in keys)
    return re.sub(rf"(?<![\w.])({alternation})(?![\w])", expand, text)
