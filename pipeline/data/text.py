"""Finnish text normalization for TTS: `normalize` writes out what a reader would say,
`split_sentences` cuts long text into synthesis-sized pieces, `check_transcript` says why a
transcript is unusable.

Choices (why):
- Case is kept for the letters the writer typed; number words are lowercase; an expanded
  abbreviation keeps the first letter's case ("Esim." -> "Esimerkiksi").
- Number words are num2words(lang="fi") output unchanged, with its spacing at thousands
  ("kaksituhatta kaksikymmentäviisi") and standard ordinals ("kahdeskymmenesneljäs").
- Numbers are inflected where the text says how: colon suffixes ("5:llä" -> "viidellä",
  "10 %:n" -> "kymmenen prosentin"), ranges ("5–10" -> "viidestä kymmeneen"); an ordinal takes
  the case of the next noun by its ending ("3. luokalla" -> "kolmannella"); unknown endings
  stay nominative. A unit is singular only after exactly 1 ("1 km" -> "yksi kilometri").
- Money is built from cardinals and unit words, never num2words(to="currency"), which reads an
  int as cents: "5,50 €" -> "viisi euroa ja viisikymmentä senttiä".
- Decimals: "pilkku", then the fraction as a number when it has at most two digits and no
  leading zero ("3,25" -> "kolme pilkku kaksikymmentäviisi"), else digit by digit.
- Dates: "24.12.2025" -> "kahdeskymmenesneljäs joulukuuta kaksituhatta kaksikymmentäviisi";
  "14.30" is a time (Finnish decimals use a comma); "1 200" and "1.200" are thousands.
- Fancy quotes become ASCII quotes, dashes between words " - ", the ellipsis "...".
- Emoji, pictographs and other symbols with no spoken form are removed (the model has no reading
  for them); letters of other scripts are kept. `normalize_report` says what was removed and
  which other scripts remain, for a warning beside the result.
"""

from __future__ import annotations

import re
import textwrap
import unicodedata
from dataclasses import dataclass

from num2words import num2words

from pipeline.config import PROJECT_ROOT

__all__ = ["normalize", "normalize_report", "split_sentences", "check_transcript"]

_MONTHS = ["tammikuuta", "helmikuuta", "maaliskuuta", "huhtikuuta", "toukokuuta", "kesäkuuta",
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

# "prosentti" in each case, for "10 %:lla" -> "kymmenellä prosentilla".
_PERCENT_FORMS = {"nominative": "prosenttia", "genitive": "prosentin", "partitive": "prosenttia",
                  "inessive": "prosentissa", "elative": "prosentista", "illative": "prosenttiin",
                  "adessive": "prosentilla", "ablative": "prosentilta", "allative": "prosentille",
                  "essive": "prosenttina", "translative": "prosentiksi"}

# Units read only right after a number: "unit=singular (after exactly 1)|partitive (otherwise)".
_UNITS = dict((unit, tuple(words.split("|"))) for unit, words in (item.split("=") for item in (
    "km/h=kilometri tunnissa|kilometriä tunnissa;m/s=metri sekunnissa|metriä sekunnissa;"
    "km²=neliökilometri|neliökilometriä;m²=neliömetri|neliömetriä;m2=neliömetri|neliömetriä;"
    "kWh=kilowattitunti|kilowattituntia;km=kilometri|kilometriä;cm=senttimetri|senttimetriä;"
    "mm=millimetri|millimetriä;m=metri|metriä;kg=kilogramma|kilogrammaa;mg=milligramma|milligrammaa;"
    "g=gramma|grammaa;t=tonni|tonnia;dl=desilitra|desilitraa;ml=millilitra|millilitraa;l=litra|litraa;"
    "°C=aste|astetta;°=aste|astetta;h=tunti|tuntia;min=minuutti|minuuttia;s=sekunti|sekuntia;"
    "kpl=kappale|kappaletta;kW=kilowatti|kilowattia;MW=megawatti|megawattia;ha=hehtaari|hehtaaria;"
    "v.=vuosi|vuotta;milj.=miljoona|miljoonaa;mrd.=miljardi|miljardia;tuh.=tuhat|tuhatta").split(";")))
_UNIT_GENITIVES = dict(item.split("=") for item in (  # "10 km:n" -> "kymmenen kilometrin"
    "km=kilometrin;m=metrin;cm=senttimetrin;mm=millimetrin;kg=kilogramman;g=gramman;t=tonnin;l=litran;"
    "°C=asteen;h=tunnin;min=minuutin;s=sekunnin;kpl=kappaleen;m²=neliömetrin;ha=hehtaarin").split(";"))

_EURO, _DOLLAR = ("euro", "euroa", "sentti", "senttiä"), ("dollari", "dollaria", "sentti", "senttiä")
_POUND = ("punta", "puntaa", "penny", "pennyä")
_CURRENCIES = {"€": _EURO, "EUR": _EURO, "$": _DOLLAR, "USD": _DOLLAR, "£": _POUND, "GBP": _POUND}

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
_NO_SPLIT_AFTER = {a[:-1].lower() for a, (_, can_end) in {**_ABBREVIATIONS, **_LOWER_ONLY}.items()
                   if a.endswith(".") and not can_end}

_NUM = r"\d+(?:,\d+)?"  # after thousands joining: digits with an optional comma decimal
_is_one = re.compile(r"-?1").fullmatch  # exactly 1 takes a singular noun ("1,0" does not)
_DASH = "\u2013"  # en dash, the canonical range and pause dash after cleanup
# Soft hyphen and zero-width characters go; odd spaces, quotes and dashes get one spelling each.
_CHAR_MAP = str.maketrans({**dict.fromkeys("\u00ad\u200b\u200c\u200d\u2060\ufeff"),
                           **dict.fromkeys("\u00a0\u2007\u202f\u2009\u2002\u2003\r\n\t", " "),
                           **dict.fromkeys("\u201c\u201d\u201e\u201f\u00ab\u00bb\u2033", '"'),
                           **dict.fromkeys("\u2018\u2019\u201a\u201b\u2032\u00b4`", "'"),
                           **dict.fromkeys("\u2212\u2010\u2011", "-"),
                           **dict.fromkeys("\u2012\u2014\u2015", _DASH), "\u2026": "..."})


def _alternation(keys) -> str:
    """A regex alternative of literal keys, longest first ("km/h" before "km")."""
    return "|".join(re.escape(k) for k in sorted(keys, key=len, reverse=True))


def _end_dot(m: re.Match) -> str:
    """"." when the dot a match swallowed (an abbreviation's or a date's) also ends a sentence."""
    ends = m.group(0).endswith(".") and re.match(r"\s*($|[A-ZÅÄÖ\"])", m.string[m.end():])
    return "." if ends else ""


def _int_words(digits: str, case: str = "nominative", ordinal: bool = False) -> str:
    """Read a digit string; leading zeros or very long strings are read digit by digit."""
    if (len(digits) > 1 and digits.startswith("0")) or len(digits) > 12:
        return " ".join(num2words(int(d), lang="fi") for d in digits)
    return num2words(int(digits), lang="fi", to="ordinal" if ordinal else "cardinal", case=case)


def _number_words(number: str, case: str = "nominative") -> str:
    """A cardinal that may carry a comma decimal: "3,5" -> "kolme pilkku viisi"."""
    negative = number.startswith("-")
    whole, _, frac = number.lstrip("-").partition(",")
    words = _int_words(whole, case)
    if frac:  # "3,25" -> "... pilkku kaksikymmentäviisi", "3,05" / "3,125" digit by digit
        short = len(frac) <= 2 and not frac.startswith("0")
        words += " pilkku " + " ".join(_int_words(d, case) for d in ([frac] if short else frac))
    return ("miinus " + words) if negative else words


def _back_vowels(word: str) -> str:
    return word.lower().translate(str.maketrans("äöy", "aou"))


def _colon_case(suffix: str) -> str:
    """The grammatical case a colon suffix like "llä" or "een" marks."""
    suffix = _back_vowels(suffix)
    if suffix in _COLON_CASES:
        return _COLON_CASES[suffix]
    if re.fullmatch(r"t?[aeiou]{1,2}", suffix):  # "4:ää", "3:a", "5:tä"
        return "partitive"
    return "illative" if re.fullmatch(r"[hs]?[aeiou]{1,2}n|[st]een", suffix) else "nominative"


def _noun_case(word: str) -> str:
    """Guess an ordinal's case from the noun after it; month names keep the date nominative."""
    word = word.lower().strip(".,;:!?\"')")
    if word in _MONTHS or len(word) < 4:
        return "nominative"
    for ending, case in _NOUN_ENDINGS:
        if _back_vowels(word).endswith(ending):
            return case
    return "genitive" if word.endswith("n") and not word.endswith("nen") else "nominative"


def _cardinal_case(number: str, word: str) -> str:
    """A small cardinal agrees with the noun after it ("5 minuutissa" -> "viidessä") where the
    ending is unambiguous: not "5 ihmistä"/"5 lasta" (partitive), "kertaan"/"maan", "1 puhelin"."""
    case = _noun_case(word)
    if case == "genitive":
        ambiguous = number == "1" or re.search(r"([aeiouyäö])\1n$|h[aeiouyäö]n$", word)
        return "nominative" if ambiguous else case
    return case if case in ("inessive", "adessive", "ablative", "allative", "translative", "illative") \
        else "nominative"


def _clean(text: str) -> str:
    text = unicodedata.normalize("NFC", text).translate(_CHAR_MAP)
    text = re.sub(r"(?<=\d)\s*[-\u2013]\s*(?=\d)", _DASH, text)  # "5 - 10" -> range "5–10"
    text = re.sub(r"\s+[-\u2013]\s+", " - ", text)  # a dash between words is a pause
    # Thousands separators: "1 200 000" / "1.200" -> "1200000" / "1200".
    return re.sub(r"(?<![\d,.])\d{1,3}(?:([ .])\d{3})(?:\1\d{3})*(?![\d]|[.,]\d)",
                  lambda m: re.sub(r"[ .]", "", m.group(0)), text)


def _dates_and_times(text: str) -> str:
    def date(m: re.Match) -> str:
        day, month, year = int(m.group(1)), int(m.group(2)), m.group(3)
        if not (1 <= day <= 31 and 1 <= month <= 12):
            return m.group(0)
        words = f"{_int_words(str(day), ordinal=True)} {_MONTHS[month - 1]}"
        # "juhannus on 21.6." - the date's dot also ends the sentence
        return f"{words} {_int_words(year)}" if year else words + _end_dot(m)

    def clock(m: re.Match) -> str:  # "klo 9–17.30" -> "kello yhdeksästä seitsemääntoista kolmeenkymmeneen"
        if not m.group(4):
            return f"{m.group(1)} {_time_words(m.group(2), m.group(3))}"
        return (f"{m.group(1)} {_time_words(m.group(2), m.group(3), 'elative')} "
                f"{_time_words(m.group(4), m.group(5), 'illative')}")

    hm = r"(\d{1,2})(?:[.:](\d{2}))?"
    # Times after "klo" first: "klo 9.05." is a time, a bare "9.05." a date.
    text = re.sub(rf"\b([Kk]lo|[Kk]ello)\s+{hm}(?:{_DASH}{hm})?(?!\d)", clock, text)
    text = re.sub(r"(?<![\d.,])(\d{1,2})\.(\d{1,2})\.(?:(\d{4})(?!\d)|(?=\s|$|[,;:!?)]))", date, text)
    return _bare_times(text)


def _time_words(hour: str, minute: str | None, case: str = "nominative") -> str:
    """Hours and minutes; "05" minutes read "nolla viisi" (inflected ranges drop the "nolla")."""
    words = _int_words(hour, case)
    if minute and minute != "00":
        words += " " + ("nolla " if minute[0] == "0" and case == "nominative" else "")
        words += _int_words(minute.lstrip("0"), case)
    return words


def _bare_times(text: str) -> str:
    """"14:30" -> "neljätoista kolmekymmentä", "9:05" -> "yhdeksän nolla viisi"."""
    return re.sub(r"(?<![\d.,:])([01]?\d|2[0-3]):([0-5]\d)(?![\d:])",
                  lambda m: _time_words(m.group(1), m.group(2)), text)


def _ranges(text: str) -> str:
    """"5–10" -> "viidestä kymmeneen", "14.–16." -> "neljännestätoista kuudenteentoista"."""
    text = re.sub(r"(?<![\d,.])(\d+)\.[-\u2013](\d+)\.(?=\s)", lambda m: (
        f"{_int_words(m.group(1), 'elative', True)} {_int_words(m.group(2), 'illative', True)}"), text)
    unit = rf"(?:\s*({_alternation(_UNITS)})(?![\w²]))?"  # "5–10 km" -> "... kilometriä"
    return re.sub(rf"(?<![\d{_DASH}])({_NUM}){_DASH}({_NUM})(?![\d{_DASH}]){unit}",
                  lambda m: f"{_number_words(m.group(1), 'elative')} {_number_words(m.group(2), 'illative')}"
                  + (f" {_UNITS[m.group(3)][1]}" if m.group(3) else ""), text)


def _money(text: str) -> str:
    symbols = _alternation(_CURRENCIES)
    scales = r"milj\.|mrd\.|miljoonaa|miljardia|tuhatta|miljoona|miljardi"

    def say(amount: str, scale: str | None, currency: str) -> str:
        one, many, cent_one, cent_many = _CURRENCIES[currency]
        amount = amount.replace(".", ",")
        if scale:  # "1,5 milj. €" -> "yksi pilkku viisi miljoonaa euroa"
            scale_one, scale_many = _UNITS.get(scale, (scale, scale))
            return f"{_number_words(amount)} {scale_one if _is_one(amount) else scale_many} {many}"
        whole, _, cents = amount.partition(",")
        cents = int((cents + "0")[:2]) if cents else 0  # "5,5 €" is 50 cents
        parts = [f"{_number_words(whole)} {one if _is_one(whole) else many}"] if int(whole) or not cents else []
        if cents:
            parts.append(f"{_int_words(str(cents))} {cent_one if cents == 1 else cent_many}")
        return " ja ".join(parts)

    amount = r"(\d+(?:[,.]\d{1,2}(?!\d))?)"
    text = re.sub(rf"(?<![\w]){amount}\s*(?:({scales})\s*)?({symbols})(?![A-Za-z])",
                  lambda m: say(m.group(1), m.group(2), m.group(3)), text)
    return re.sub(rf"(?<![\w])({symbols})\s*{amount}(?:\s*({scales}))?(?![\d])",
                  lambda m: say(m.group(2), m.group(3), m.group(1)), text)


def _percent_and_units(text: str) -> str:
    def percent(m: re.Match) -> str:
        number, suffix, compound = m.group(1), m.group(2), m.group(3)
        if compound:  # "5 %-yksikköä" -> "viisi prosenttiyksikköä"
            return f"{_number_words(number)} prosentti{compound}"
        case = _colon_case(suffix) if suffix else "nominative"
        noun = "prosentti" if case == "nominative" and _is_one(number) else _PERCENT_FORMS[case]
        return f"{_number_words(number, case)} {noun}"

    text = re.sub(rf"(?<!\w)(-?{_NUM})\s*%(?::([a-zäö]+)|-([a-zäö]+))?", percent, text)

    def unit(m: re.Match) -> str:
        one, many = _UNITS[m.group(2)]
        return f"{_number_words(m.group(1))} {one if _is_one(m.group(1)) else many}" + _end_dot(m)

    text = re.sub(rf"(?<!\w)(-?{_NUM})\s*({_alternation(_UNIT_GENITIVES)}):n\b",
                  lambda m: f"{_number_words(m.group(1), 'genitive')} {_UNIT_GENITIVES[m.group(2)]}", text)
    return re.sub(rf"(?<!\w)(-?{_NUM})\s*({_alternation(_UNITS)})(?![\w²])", unit, text)


def _numbers(text: str) -> str:
    def with_suffix(m: re.Match) -> str:
        number, suffix = m.group(1), m.group(2)
        if _back_vowels(suffix) in _ORDINAL_SUFFIXES and "," not in number:
            return _int_words(number, _ORDINAL_SUFFIXES[_back_vowels(suffix)], ordinal=True)
        return _number_words(number, _colon_case(suffix))

    text = re.sub(rf"({_NUM}):([a-zäö]+)\b", with_suffix, text)
    # "2-vuotias" -> "kaksivuotias": a number in a compound word stays nominative.
    text = re.sub(rf"({_NUM})-(?=[a-zäöå])", lambda m: _number_words(m.group(1)), text)

    def ordinal(m: re.Match) -> str:  # "3. luokalla" -> "kolmannella luokalla"
        words = m.group(3).split()
        head = next((w for w in words if w not in ("ja", "tai", "sekä") and not re.match(r"\d", w)), "")
        return _int_words(m.group(1), _noun_case(head), ordinal=True) + m.group(2)

    text = re.sub(r"(?<![\d,.])(\d+)\.(\s+)(?=((?:(?:ja|tai|sekä|\d+\.)\s+)*[a-zäöå][\w-]*))",
                  ordinal, text)
    # A dot between digits that is not a date or a thousands separator: "14.30" reads as a
    # time when it can be one (Finnish writes decimals with a comma), else as a decimal.
    text = re.sub(r"(?<![\d.,])([01]?\d|2[0-3])\.([0-5]\d)(?![\d]|\.\d)",
                  lambda m: f"{m.group(1)}:{m.group(2)}", text)
    text = _bare_times(text)
    text = re.sub(r"(?<![\d.,])(\d+)\.(\d+)(?![\d]|\.\d)", r"\1,\2", text)
    text = re.sub(r"(?<![\w])-(?=\d)", "miinus ", text)
    text = re.sub(r"(?<![\w,.:])(\d{1,3})(?=\s+([a-zäöå]+)\b)",
                  lambda m: _int_words(m.group(1), _cardinal_case(m.group(1), m.group(2))), text)
    return re.sub(_NUM, lambda m: _number_words(m.group(0)), text)


def _abbreviations(text: str) -> str:
    def expand(m: re.Match) -> str:
        token = m.group(1)
        key = token[0].lower() + token[1:]
        if key not in _ABBREVIATIONS and token not in _LOWER_ONLY:  # "N." is an initial
            return m.group(0)
        words, can_end = _ABBREVIATIONS.get(key) or _LOWER_ONLY[key]
        if token[0].isupper():
            words = words[0].upper() + words[1:]
        return words + (_end_dot(m) if can_end else "")

    keys = sorted({*_ABBREVIATIONS, *_LOWER_ONLY}, key=len, reverse=True)  # longest first
    alternation = "|".join(f"[{k[0]}{k[0].upper()}]{re.escape(k[1:])}" for k in keys)
    return re.sub(rf"(?<![\w.])({alternation})(?![\w])", expand, text)


_SYMBOLS = {"&": "ja", "+": "plus", "=": "on", "§": "pykälä", "%": "prosenttia", "€": "euroa",
            "$": "dollaria", "°": "astetta"}


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


def _drop_unspoken(text: str) -> tuple[str, str]:
    kept, removed = [], {}
    for char in text:
        if unicodedata.category(char) in _UNSPOKEN_CATEGORIES:
            removed.setdefault(char, None)
            kept.append(" ")
        else:
            kept.append(char)
    return "".join(kept), "".join(removed)


def normalize_report(text: str) -> Normalization:
    """`normalize`, and what it removed or kept unread (for a warning beside the result)."""
    if not isinstance(text, str):
        raise TypeError(f"normalize expects str, got {type(text).__name__}")
    text = _clean(text)
    for rewrite in (_dates_and_times, _ranges, _money, _percent_and_units, _numbers, _abbreviations):
        text = rewrite(text)
    text = re.sub(_alternation(_SYMBOLS), lambda m: f" {_SYMBOLS[m.group(0)]} ", text)
    text, removed = _drop_unspoken(text)
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"\s+([,.;:!?)])", r"\1", text)
    text = re.sub(r"\(\s+", "(", text).strip()
    foreign = [c for c in text if c.isalpha() and not unicodedata.name(c, "").startswith("LATIN")]
    return Normalization(text, removed, tuple(dict.fromkeys(_script(c) for c in foreign)), len(foreign))


def normalize(text: str) -> str:
    """Spoken-form Finnish: numbers, dates, times, money, units and abbreviations as words.

    >>> normalize("Hinta on 5,50 € ja alennus 12 %.")
    'Hinta on viisi euroa ja viisikymmentä senttiä ja alennus kaksitoista prosenttia.'
    """
    return normalize_report(text).text


_SENTENCE_END = re.compile(r"([.!?]+[\"')\]]*)\s+(?=[\"'(\[-]?[A-ZÅÄÖ0-9\u2013])")


def _protected(before: str) -> bool:
    """True when the dot ending `before` belongs to an abbreviation, an initial or a date."""
    last = before.split()[-1] if before.strip() else ""
    stem = last.rstrip(".").lstrip("(\"'")
    return last.endswith(".") and (stem.lower() in _NO_SPLIT_AFTER
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
