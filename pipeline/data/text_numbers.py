"""Numbers in running Finnish text written out as a reader would say them: dates, times, ranges,
money, percentages, units, ordinals and plain numbers (`numbers_as_words`).

Choices (why):
- Numbers are inflected where the text says how: colon suffixes ("5:llä" -> "viidellä",
  "10 %:n" -> "kymmenen prosentin"), ranges ("5–10" -> "viidestä kymmeneen"); an ordinal takes
  the case of the next noun by its ending ("3. luokalla" -> "kolmannella"). A unit is singular
  only after exactly 1 ("1 km" -> "yksi kilometri").
- Money is built from cardinals and unit words, never num2words(to="currency"), which reads an
  int as cents: "5,50 €" -> "viisi euroa ja viisikymmentä senttiä".
- Decimals: "pilkku", then the fraction as a number when it has at most two digits and no
  leading zero ("3,25" -> "kolme pilkku kaksikymmentäviisi"), else digit by digit.
- Dates: "24.12.2025" -> "kahdeskymmenesneljäs joulukuuta kaksituhatta kaksikymmentäviisi";
  "14.30" is a time (Finnish decimals use a comma).
The text must already be cleaned: one dash spelling (`DASH`) and thousands joined ("1 200" -> "1200").
"""

from __future__ import annotations

import re

from pipeline.data.number_words import (MONTHS, cardinal_case, colon_case, int_words, is_one, noun_case,
                                        number_words, ordinal_suffix_case)
from pipeline.data.text_abbreviations import end_dot

__all__ = ["DASH", "alternation", "numbers_as_words"]

DASH = "\u2013"  # en dash, the canonical range and pause dash after cleanup
_NUM = r"\d+(?:,\d+)?"  # after thousands joining: digits with an optional comma decimal

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


def alternation(keys) -> str:
    """A regex alternative of literal keys, longest first ("km/h" before "km")."""
    return "|".join(re.escape(k) for k in sorted(keys, key=len, reverse=True))


def numbers_as_words(text: str) -> str:
    """Every number in cleaned text as words; the more specific readings go first, so that a
    date, a price or a range is never read as loose numbers."""
    for rewrite in (_dates_and_times, _ranges, _money, _percent_and_units, _numbers):
        text = rewrite(text)
    return text


def _dates_and_times(text: str) -> str:
    def date(m: re.Match) -> str:
        day, month, year = int(m.group(1)), int(m.group(2)), m.group(3)
        if not (1 <= day <= 31 and 1 <= month <= 12):
            return m.group(0)
        words = f"{int_words(str(day), ordinal=True)} {MONTHS[month - 1]}"
        # "juhannus on 21.6." - the date's dot also ends the sentence
        return f"{words} {int_words(year)}" if year else words + end_dot(m)

    def clock(m: re.Match) -> str:  # "klo 9–17.30" -> "kello yhdeksästä seitsemääntoista kolmeenkymmeneen"
        if not m.group(4):
            return f"{m.group(1)} {_time_words(m.group(2), m.group(3))}"
        return (f"{m.group(1)} {_time_words(m.group(2), m.group(3), 'elative')} "
                f"{_time_words(m.group(4), m.group(5), 'illative')}")

    hm = r"(\d{1,2})(?:[.:](\d{2}))?"
    # Times after "klo" first: "klo 9.05." is a time, a bare "9.05." a date.
    text = re.sub(rf"\b([Kk]lo|[Kk]ello)\s+{hm}(?:{DASH}{hm})?(?!\d)", clock, text)
    text = re.sub(r"(?<![\d.,])(\d{1,2})\.(\d{1,2})\.(?:(\d{4})(?!\d)|(?=\s|$|[,;:!?)]))", date, text)
    return _bare_times(text)


def _time_words(hour: str, minute: str | None, case: str = "nominative") -> str:
    """Hours and minutes; "05" minutes read "nolla viisi" (inflected ranges drop the "nolla")."""
    words = int_words(hour, case)
    if minute and minute != "00":
        words += " " + ("nolla " if minute[0] == "0" and case == "nominative" else "")
        words += int_words(minute.lstrip("0"), case)
    return words


def _bare_times(text: str) -> str:
    """"14:30" -> "neljätoista kolmekymmentä", "9:05" -> "yhdeksän nolla viisi"."""
    return re.sub(r"(?<![\d.,:])([01]?\d|2[0-3]):([0-5]\d)(?![\d:])",
                  lambda m: _time_words(m.group(1), m.group(2)), text)


def _ranges(text: str) -> str:
    """"5–10" -> "viidestä kymmeneen", "14.–16." -> "neljännestätoista kuudenteentoista"."""
    text = re.sub(r"(?<![\d,.])(\d+)\.[-\u2013](\d+)\.(?=\s)", lambda m: (
        f"{int_words(m.group(1), 'elative', True)} {int_words(m.group(2), 'illative', True)}"), text)
    unit = rf"(?:\s*({alternation(_UNITS)})(?![\w²]))?"  # "5–10 km" -> "... kilometriä"
    return re.sub(rf"(?<![\d{DASH}])({_NUM}){DASH}({_NUM})(?![\d{DASH}]){unit}",
                  lambda m: f"{number_words(m.group(1), 'elative')} {number_words(m.group(2), 'illative')}"
                  + (f" {_UNITS[m.group(3)][1]}" if m.group(3) else ""), text)


def _money(text: str) -> str:
    symbols = alternation(_CURRENCIES)
    scales = r"milj\.|mrd\.|miljoonaa|miljardia|tuhatta|miljoona|miljardi"

    def say(amount: str, scale: str | None, currency: str) -> str:
        one, many, cent_one, cent_many = _CURRENCIES[currency]
        amount = amount.replace(".", ",")
        if scale:  # "1,5 milj. €" -> "yksi pilkku viisi miljoonaa euroa"
            scale_one, scale_many = _UNITS.get(scale, (scale, scale))
            return f"{number_words(amount)} {scale_one if is_one(amount) else scale_many} {many}"
        whole, _, cents = amount.partition(",")
        cents = int((cents + "0")[:2]) if cents else 0  # "5,5 €" is 50 cents
        parts = [f"{number_words(whole)} {one if is_one(whole) else many}"] if int(whole) or not cents else []
        if cents:
            parts.append(f"{int_words(str(cents))} {cent_one if cents == 1 else cent_many}")
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
            return f"{number_words(number)} prosentti{compound}"
        case = colon_case(suffix) if suffix else "nominative"
        noun = "prosentti" if case == "nominative" and is_one(number) else _PERCENT_FORMS[case]
        return f"{number_words(number, case)} {noun}"

    text = re.sub(rf"(?<!\w)(-?{_NUM})\s*%(?::([a-zäö]+)|-([a-zäö]+))?", percent, text)

    def unit(m: re.Match) -> str:
        one, many = _UNITS[m.group(2)]
        return f"{number_words(m.group(1))} {one if is_one(m.group(1)) else many}" + end_dot(m)

    text = re.sub(rf"(?<!\w)(-?{_NUM})\s*({alternation(_UNIT_GENITIVES)}):n\b",
                  lambda m: f"{number_words(m.group(1), 'genitive')} {_UNIT_GENITIVES[m.group(2)]}", text)
    return re.sub(rf"(?<!\w)(-?{_NUM})\s*({alternation(_UNITS)})(?![\w²])", unit, text)


def _numbers(text: str) -> str:
    def with_suffix(m: re.Match) -> str:
        number, suffix = m.group(1), m.group(2)
        ordinal_case = ordinal_suffix_case(suffix)
        if ordinal_case and "," not in number:
            return int_words(number, ordinal_case, ordinal=True)
        return number_words(number, colon_case(suffix))

    text = re.sub(rf"({_NUM}):([a-zäö]+)\b", with_suffix, text)
    # "2-vuotias" -> "kaksivuotias": a number in a compound word stays nominative.
    text = re.sub(rf"({_NUM})-(?=[a-zäöå])", lambda m: number_words(m.group(1)), text)

    def ordinal(m: re.Match) -> str:  # "3. luokalla" -> "kolmannella luokalla"
        words = m.group(3).split()
        head = next((w for w in words if w not in ("ja", "tai", "sekä") and not re.match(r"\d", w)), "")
        return int_words(m.group(1), noun_case(head), ordinal=True) + m.group(2)

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
                  lambda m: int_words(m.group(1), cardinal_case(m.group(1), m.group(2))), text)
    return re.sub(_NUM, lambda m: number_words(m.group(0)), text)
