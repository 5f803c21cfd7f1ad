"""Finnish normalization, sentence splitting and transcript checks (pipeline/data/text.py).

Expected strings were written out by hand after checking num2words(lang="fi") output.
"""

import re

import pytest

from pipeline.data.text import check_transcript, normalize, split_sentences

CASES = [
    # cardinals, thousands separators
    ("Kaupungissa asuu 1 200 ihmistä.", "Kaupungissa asuu tuhat kaksisataa ihmistä."),
    ("Kylässä asuu 1.200 ihmistä.", "Kylässä asuu tuhat kaksisataa ihmistä."),
    ("Yleisöä oli 1\u00a0234\u00a0567.", "Yleisöä oli miljoona kaksisataakolmekymmentäneljätuhatta "
     "viisisataakuusikymmentäseitsemän."),
    ("Hän on 21 vuotta.", "Hän on kaksikymmentäyksi vuotta."),
    ("Koodi on 007.", "Koodi on nolla nolla seitsemän."),
    # ordinals, with the case taken from the noun
    ("Tänään on kuun 1. päivä.", "Tänään on kuun ensimmäinen päivä."),
    ("Hän oli 3. luokalla ja voitti 1. palkinnon.",
     "Hän oli kolmannella luokalla ja voitti ensimmäisen palkinnon."),
    ("Asun 2. kerroksessa.", "Asun toisessa kerroksessa."),
    ("Hän saapui 5. päivänä.", "Hän saapui viidentenä päivänä."),
    ("He voittivat 2. kertaa.", "He voittivat toista kertaa."),
    ("Oppilaat 3. ja 4. luokalla.", "Oppilaat kolmannella ja neljännellä luokalla."),
    ("2. maailmansota päättyi.", "toinen maailmansota päättyi."),
    ("Hän täytti 30. Sitten juhlittiin.", "Hän täytti kolmekymmentä. Sitten juhlittiin."),
    ("Sain 3:nnen palkinnon.", "Sain kolmannen palkinnon."),
    # decimals, negatives
    ("Arvo on 3,5.", "Arvo on kolme pilkku viisi."),
    ("Arvo on 3,25 tai 3,05.", "Arvo on kolme pilkku kaksikymmentäviisi tai kolme pilkku nolla viisi."),
    ("Pii on 3,141.", "Pii on kolme pilkku yksi neljä yksi."),
    ("Pakkasta on -5 astetta ja \u22123 huomenna.", "Pakkasta on miinus viisi astetta ja miinus kolme huomenna."),
    # percentages
    ("Alennus on 12 %.", "Alennus on kaksitoista prosenttia."),
    ("Alennus on 12%.", "Alennus on kaksitoista prosenttia."),
    ("Vain 1 % vastasi.", "Vain yksi prosentti vastasi."),
    ("Korko on 2,5 %.", "Korko on kaksi pilkku viisi prosenttia."),
    ("Hinnat nousivat 3,5 %:lla.", "Hinnat nousivat kolmella pilkku viidellä prosentilla."),
    ("Inflaatio oli 2 %:n tuntumassa.", "Inflaatio oli kahden prosentin tuntumassa."),
    ("Korot nousivat 0,25 %-yksikköä.", "Korot nousivat nolla pilkku kaksikymmentäviisi prosenttiyksikköä."),
    # currency: an int is whole units, never cents
    ("Kahvi maksaa 5 €.", "Kahvi maksaa viisi euroa."),
    ("Kahvi maksaa 1 €.", "Kahvi maksaa yksi euro."),
    ("Pulla maksaa 5,50 €.", "Pulla maksaa viisi euroa ja viisikymmentä senttiä."),
    ("Karkki maksaa 0,05 € ja 1,01 €.", "Karkki maksaa viisi senttiä ja yksi euro ja yksi sentti."),
    ("Lippu maksaa €5.", "Lippu maksaa viisi euroa."),
    ("Kirja maksaa $10.", "Kirja maksaa kymmenen dollaria."),
    ("Kirja maksaa $10.50.", "Kirja maksaa kymmenen dollaria ja viisikymmentä senttiä."),
    ("Talo maksoi 250 000 €.", "Talo maksoi kaksisataaviisikymmentätuhatta euroa."),
    ("Budjetti on 1,5 milj. €.", "Budjetti on yksi pilkku viisi miljoonaa euroa."),
    ("Hinta on 100 EUR.", "Hinta on sata euroa."),
    # dates and clock times
    ("Joulu on 24.12.2025.", "Joulu on kahdeskymmenesneljäs joulukuuta kaksituhatta kaksikymmentäviisi."),
    ("Hän syntyi 1.1.2000 Oulussa.", "Hän syntyi ensimmäinen tammikuuta kaksituhatta Oulussa."),
    ("Juhannus on 21.6. Tervetuloa!", "Juhannus on kahdeskymmenesensimmäinen kesäkuuta. Tervetuloa!"),
    ("Joulu 24.12. on kiva.", "Joulu kahdeskymmenesneljäs joulukuuta on kiva."),
    ("Kokous alkaa klo 14.30.", "Kokous alkaa kello neljätoista kolmekymmentä."),
    ("Bussi lähtee klo 9.05.", "Bussi lähtee kello yhdeksän nolla viisi."),
    ("Klo 7 herätys.", "Kello seitsemän herätys."),
    ("Auki klo 9.00\u201317.00.", "Auki kello yhdeksästä seitsemääntoista."),
    ("Ottelu alkaa 18:30.", "Ottelu alkaa kahdeksantoista kolmekymmentä."),
    ("Ovet aukeavat 14.00.", "Ovet aukeavat neljätoista."),
    # ranges, colon case suffixes, compounds
    ("Paikalla oli 5\u201310 henkeä.", "Paikalla oli viidestä kymmeneen henkeä."),
    ("Paikalla oli 5 - 10 henkeä.", "Paikalla oli viidestä kymmeneen henkeä."),
    ("Sain 5:llä eurolla kahvin 2000:n jälkeen.", "Sain viidellä eurolla kahvin kahdentuhannen jälkeen."),
    ("Luku nousi 6:teen ja 100:aan.", "Luku nousi kuuteen ja sataan."),
    ("Kauppa on 5\u201310 km päässä.", "Kauppa on viidestä kymmeneen kilometriä päässä."),
    ("Hinta on 5\u201310 € ja kasvu 2\u20133 %.",
     "Hinta on viidestä kymmeneen euroa ja kasvu kahdesta kolmeen prosenttia."),
    ("Kisat ovat 14.\u201316. heinäkuuta.", "Kisat ovat neljännestätoista kuudenteentoista heinäkuuta."),
    ("Hän voitti 10 km:n kisan.", "Hän voitti kymmenen kilometrin kisan."),
    ("Hän on 2-vuotias.", "Hän on kaksivuotias."),
    ("Asuin Oulussa 1990-luvulla.", "Asuin Oulussa tuhat yhdeksänsataayhdeksänkymmentäluvulla."),
    # a small cardinal agrees with an unambiguous noun case, never with a partitive
    ("Lämpö nousee 15 asteeseen 5 minuutissa.", "Lämpö nousee viiteentoista asteeseen viidessä minuutissa."),
    ("Tuli 4 hengelle 2 tunnin päästä.", "Tuli neljälle hengelle kahden tunnin päästä."),
    ("Paikalla oli 5 ihmistä ja 5 lasta, 3 kertaa.", "Paikalla oli viisi ihmistä ja viisi lasta, kolme kertaa."),
    ("Ostin 1 puhelin.", "Ostin yksi puhelin."),
    # units
    ("Matka on 1 km ja 1,5 km.", "Matka on yksi kilometri ja yksi pilkku viisi kilometriä."),
    ("Ajoimme 80 km/h.", "Ajoimme kahdeksankymmentä kilometriä tunnissa."),
    ("Ostin 2 kg ja 250 g ja 1 l.", "Ostin kaksi kilogrammaa ja kaksisataaviisikymmentä grammaa ja yksi litra."),
    ("Lämpöä on 20°C ja 1 °C.", "Lämpöä on kaksikymmentä astetta ja yksi aste."),
    ("Asunto on 120 m².", "Asunto on satakaksikymmentä neliömetriä."),
    ("Sade oli 5 mm. Mm. Helsingissä satoi.", "Sade oli viisi millimetriä. Muun muassa Helsingissä satoi."),
    ("Hän on 30 v.", "Hän on kolmekymmentä vuotta."),
    # abbreviations
    ("Esim. omenat, päärynät jne. Kaikki käy.",
     "Esimerkiksi omenat, päärynät ja niin edelleen. Kaikki käy."),
    ("Tuli n. 50 henkeä, mm. tri Virtanen ja prof. Laine.",
     "Tuli noin viisikymmentä henkeä, muun muassa tohtori Virtanen ja professori Laine."),
    ("N. Virtanen, ks. sivu 5.", "N. Virtanen, katso sivu viisi."),
    ("Tämä on ns. kokeilu, yms.", "Tämä on niin sanottu kokeilu, ynnä muuta sellaista."),
    ("Talo valmistui v. 2020.", "Talo valmistui vuonna kaksituhatta kaksikymmentä."),
    ("A & B, 2+2=4 ja § 5.", "A ja B, kaksi plus kaksi on neljä ja pykälä viisi."),
    # typography and whitespace
    ("\u201cHei\u201d \u2014 hän sanoi \u2026 ja lähti.", '"Hei" - hän sanoi... ja lähti.'),
    ("  Monta    välilyöntiä\n\nja rivinvaihtoa  .", "Monta välilyöntiä ja rivinvaihtoa."),
    ("Pehmeä\u00adtavuviiva", "Pehmeätavuviiva"),
    ("Ha\u0308me", "Häme"),  # decomposed "ä" is composed (NFC)
    ("", ""),
]


@pytest.mark.parametrize("raw, expected", CASES)
def test_normalize(raw, expected):
    assert normalize(raw) == expected


@pytest.mark.parametrize("raw", [raw for raw, _ in CASES])
def test_normalize_leaves_no_digits_and_is_idempotent(raw):
    once = normalize(raw)
    assert not re.search(r"\d", once)
    assert normalize(once) == once


def test_normalize_rejects_non_text():
    with pytest.raises(TypeError):
        normalize(12)


def test_split_sentences_respects_abbreviations_initials_and_ordinals():
    text = ("Hei! Mitä kuuluu? Esim. Helsinki on kaunis. Tri Virtanen tuli 3. kerran. "
            "J. K. Paasikivi oli presidentti. Hän sanoi: \"Kyllä.\" Sitten lähti... "
            "Ostimme omenoita jne. Loppu")
    assert split_sentences(text) == [
        "Hei!", "Mitä kuuluu?", "Esim. Helsinki on kaunis.", "Tri Virtanen tuli 3. kerran.",
        "J. K. Paasikivi oli presidentti.", 'Hän sanoi: "Kyllä."', "Sitten lähti...",
        "Ostimme omenoita jne.", "Loppu"]


def test_split_sentences_falls_back_to_commas_then_spaces():
    text = ("Tämä on pitkä lause, jossa on monta osaa, ja se jatkuu vielä pitkään, "
            "kunnes se loppuu lopulta tähän pisteeseen.")
    pieces = split_sentences(text, max_chars=40)
    assert pieces == ["Tämä on pitkä lause,", "jossa on monta osaa,", "ja se jatkuu vielä pitkään,",
                      "kunnes se loppuu lopulta tähän", "pisteeseen."]
    assert " ".join(pieces) == text
    words = split_sentences("a" * 50 + " " + "b" * 30, max_chars=40)
    assert all(len(p) <= 40 for p in words) and "".join(words) == "a" * 50 + "b" * 30


def test_split_sentences_edge_cases():
    assert split_sentences("") == []
    assert split_sentences("  Yksi lause ilman pistettä  ") == ["Yksi lause ilman pistettä"]
    with pytest.raises(ValueError):
        split_sentences("Hei.", max_chars=0)


@pytest.mark.parametrize("text, reason_part", [
    (None, "missing"),
    ("", "empty"),
    ("   \n", "empty"),
    ("...!?", "only punctuation"),
    ("€", "only punctuation"),
    ("½", "no letters"),
    ("Hyvä\ufffd", "U+FFFD"),
    (b"\xff\xfe", "not valid UTF-8"),
    ("Hyv\u00c3\u00a4\u00c3\u00a4 huomenta", "mis-decoded"),
    ("Hei\x00 maailma", "control characters"),
    ("Hei\x1b[0m", "control characters"),
])
def test_check_transcript_rejects(text, reason_part):
    reason = check_transcript(text)
    assert reason is not None and reason_part in reason


@pytest.mark.parametrize("text", ["Hei", "Hyvää huomenta, Suomi!", "123", "Rivi\nja toinen",
                                  "Hinta on 5 €.".encode("utf-8")])
def test_check_transcript_accepts(text):
    assert check_transcript(text) is None


def test_normalize_report_removes_emoji_and_names_other_scripts():
    from pipeline.data.text import normalize_report

    only_emoji = normalize_report("😀🎉")
    assert only_emoji.text == "" and not only_emoji.speakable and only_emoji.removed == "😀🎉"
    assert "😀" in only_emoji.notes()[0]

    mixed = normalize_report("Hei 👋 maailma! 1️⃣")
    assert mixed.text == "Hei maailma! yksi" and mixed.speakable
    assert "👋" in mixed.notes()[0] and "U+FE0F" in mixed.notes()[0]

    japanese = normalize_report("こんにちは世界")
    assert japanese.text == "こんにちは世界" and japanese.foreign_letters == 7
    assert japanese.scripts == ("Hiragana", "CJK")
    assert "trained on Finnish" in japanese.notes()[0] and "Hiragana" in japanese.notes()[0]

    assert normalize_report("Hyvää päivää, Åsa!").notes() == []  # Finnish (and Swedish letters): no warning
    assert normalize("Hinta 5 € 😀") == "Hinta viisi euroa"  # symbols with a reading are read, not removed
