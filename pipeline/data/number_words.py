"""A digit string read as Finnish words, in the grammatical case the text around it asks for.

Number words are num2words(lang="fi") output unchanged, with its spacing at thousands
("kaksituhatta kaksikymmentäviisi") and standard ordinals ("kahdeskymmenesneljäs"). The case comes
from a colon suffix ("5:llä" -> "viidellä"), an ordinal's suffix ("3:nnen") or the noun after the
number ("3. luokalla" -> "kolmannella"); unknown endings stay nominative.
"""

from __future__ import annotations

import re

from num2words import num2words

__all__ = ["MONTHS", "int_words", "number_words", "is_one", "colon_case", "ordinal_suffix_case", "noun_case",
           "cardinal_case"]

MONTHS = ["tammikuuta", "helmikuuta", "maaliskuuta", "huhtikuuta", "toukokuuta", "kesäkuuta",
          "heinäkuuta", "elokuuta", "syyskuuta", "lokakuuta", "marraskuuta", "joulukuuta"]

# Case endings in back-vowel form (front-vowel "llä" is matched as "lla" via _back_vowels).
# After a colon ("5:llä"); an ordinal's suffix ("3:nnen"); a noun after an ordinal ("3. luokalla").
_COLON_CASES = {"ssa": "inessive", "sta": "elative", "lla": "adessive", "lta": "ablative",
                "lle": "allative", "ksi": "translative", "ta": "partitive", "na": "essive",
                "a": "partitive", "n": "genitive"}
_ORDINAL_SUFFIXES = {"s": "nominative", "nen": "nominative", "nnen": "genitive", "sen": "genitive",
                     "ntena": "essive", "sena": "essive", "nnella": "adessive", "nnessa": "inessive",
                     "nteen": "illative", "seen": "illative"}
_NOUN_ENDINGS = [("ssa", "inessive"), ("sta", "elative"), ("lla", "adessive"), ("lta", "ablative"),
                 ("lle", "allative"), ("ksi", "translative"), ("seen", "illative"), ("siin", "illative"),
                 ("tta", "partitive"), ("kertaa", "partitive"), ("na", "essive")]

is_one = re.compile(r"-?1").fullmatch  # exactly 1 takes a singular noun ("1,0" does not)


def int_words(digits: str, case: str = "nominative", ordinal: bool = False) -> str:
    """Read a digit string; leading zeros or very long strings are read digit by digit."""
    if (len(digits) > 1 and digits.startswith("0")) or len(digits) > 12:
        return " ".join(num2words(int(d), lang="fi") for d in digits)
    return num2words(int(digits), lang="fi", to="ordinal" if ordinal else "cardinal", case=case)


def number_words(number: str, case: str = "nominative") -> str:
    """A cardinal that may carry a comma decimal: "3,5" -> "kolme pilkku viisi"."""
    negative = number.startswith("-")
    whole, _, frac = number.lstrip("-").partition(",")
    words = int_words(whole, case)
    if frac:  # "3,25" -> "... pilkku kaksikymmentäviisi", "3,05" / "3,125" digit by digit
        short = len(frac) <= 2 and not frac.startswith("0")
        words += " pilkku " + " ".join(int_words(d, case) for d in ([frac] if short else frac))
    return ("miinus " + words) if negative else words


def _back_vowels(word: str) -> str:
    return word.lower().translate(str.maketrans("äöy", "aou"))


def colon_case(suffix: str) -> str:
    """The grammatical case a colon suffix like "llä" or "een" marks."""
    suffix = _back_vowels(suffix)
    if suffix in _COLON_CASES:
        return _COLON_CASES[suffix]
    if re.fullmatch(r"t?[aeiou]{1,2}", suffix):  # "4:ää", "3:a", "5:tä"
        return "partitive"
    return "illative" if re.fullmatch(r"[hs]?[aeiou]{1,2}n|[st]een", suffix) else "nominative"


def ordinal_suffix_case(suffix: str) -> str | None:
    """The case an ordinal's colon suffix marks ("nnen" -> genitive), None when it is no ordinal's."""
    return _ORDINAL_SUFFIXES.get(_back_vowels(suffix))


def noun_case(word: str) -> str:
    """Guess an ordinal's case from the noun after it; month names keep the date nominative."""
    word = word.lower().strip(".,;:!?\"')")
    if word in MONTHS or len(word) < 4:
        return "nominative"
    for ending, case in _NOUN_ENDINGS:
        if _back_vowels(word).endswith(ending):
            return case
    return "genitive" if word.endswith("n") and not word.endswith("nen") else "nominative"


def cardinal_case(number: str, word: str) -> str:
    """A small cardinal agrees with the noun after it ("5 minuutissa" -> "viidessä") where the
    ending is unambiguous: not "5 ihmistä"/"5 lasta" (partitive), "kertaan"/"maan", "1 puhelin"."""
    case = noun_case(word)
    if case == "genitive":
        ambiguous = number == "1" or re.search(r"([aeiouyäö])\1n$|h[aeiouyäö]n$", word)
        return "nominative" if ambiguous else case
    return case if case in ("inessive", "adessive", "ablative", "allative", "translative", "illative") \
        else "nominative"
