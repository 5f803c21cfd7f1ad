"""The committed sample dataset (assets/sample) and its generator (assets/make_sample.py)."""

import importlib.util
import sys
from pathlib import Path

import pytest
import soundfile as sf

from pipeline.data.text import check_transcript, normalize

ASSETS = Path(__file__).resolve().parents[2] / "assets"
SAMPLE = ASSETS / "sample"


def _load_make_sample():
    if "make_sample" not in sys.modules:  # dataclasses need the module registered while loading
        spec = importlib.util.spec_from_file_location("make_sample", ASSETS / "make_sample.py")
        sys.modules["make_sample"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules["make_sample"])
    return sys.modules["make_sample"]


def _speaker_dirs():
    return sorted(p for p in SAMPLE.iterdir() if p.is_dir())


def test_sample_has_several_speakers_with_distinct_counts():
    counts = {d.name: len(list(d.glob("*.ogg"))) for d in _speaker_dirs()}
    assert len(counts) >= 5, counts
    assert len(set(counts.values())) == len(counts), f"clip counts must differ: {counts}"
    assert min(counts.values()) >= 5


def test_sample_matches_generator_settings():
    make_sample = _load_make_sample()
    expected = {s.name: s.clips for s in make_sample.SPEAKERS}
    counts = {d.name: len(list(d.glob("*.ogg"))) for d in _speaker_dirs()}
    assert counts == expected


def test_every_clip_has_a_usable_transcript_and_readable_audio():
    for speaker in _speaker_dirs():
        oggs = sorted(speaker.glob("*.ogg"))
        labs = sorted(speaker.glob("*.lab"))
        assert [p.stem for p in oggs] == [p.stem for p in labs], speaker
        texts = []
        for ogg, lab in zip(oggs, labs):
            text = lab.read_bytes().decode("utf-8").strip()
            assert check_transcript(text) is None, lab
            texts.append(text)
            info = sf.info(ogg)
            assert (info.format, info.subtype, info.channels) == ("OGG", "VORBIS", 1), ogg
            assert info.samplerate in (16000, 22050), ogg
            assert 0.5 <= info.duration <= 20.0, f"{ogg}: {info.duration:.2f} s"
        assert len(set(texts)) == len(texts), f"{speaker.name} repeats a sentence"


def test_audio_decodes_to_speech_not_silence():
    for speaker in _speaker_dirs():
        clip = sorted(speaker.glob("*.ogg"))[0]
        audio, _ = sf.read(clip, dtype="float32")
        assert 0.3 < abs(audio).max() < 1.0, clip  # peak-normalized, no clipping


def test_sample_size_under_limit():
    total = sum(f.stat().st_size for f in SAMPLE.rglob("*") if f.is_file())
    assert total < 15 * 1024 * 1024, f"assets/sample is {total / 1e6:.1f} MB"
    assert (SAMPLE / "README.md").is_file()


def test_sentence_files_are_clean_and_separate():
    make_sample = _load_make_sample()
    sentences = make_sample.read_sentences()
    assert len(sentences) >= 200
    for sentence in sentences:
        assert 5 <= len(sentence.split()) <= 20, sentence
        assert check_transcript(sentence) is None, sentence
        assert not any(c.isdigit() for c in normalize(sentence)), sentence
        normalize(sentence).encode("latin-1")  # Festival needs ISO-8859-1
    examples = [line.strip() for line in (ASSETS / "examples_fi.txt").read_text(encoding="utf-8").splitlines()
                if line.strip()]
    assert 20 <= len(examples) <= 40
    assert not set(examples) & set(sentences), "playground examples must not be training sentences"


def test_sentence_pick_is_deterministic_and_without_repeats():
    make_sample = _load_make_sample()
    sentences = make_sample.read_sentences()
    speaker = make_sample.SPEAKERS[0]
    first = make_sample.pick_sentences(speaker, sentences)
    assert first == make_sample.pick_sentences(speaker, sentences)
    assert len(first) == speaker.clips == len(set(first))
    other = make_sample.pick_sentences(make_sample.SPEAKERS[1], sentences)
    assert first[: len(other)] != other  # speakers get different draws
    with pytest.raises(make_sample.SampleError):
        make_sample.pick_sentences(make_sample.Speaker("x", "espeak", "fi", len(sentences) + 1), sentences)


def test_committed_transcripts_are_the_generator_picks():
    make_sample = _load_make_sample()
    sentences = make_sample.read_sentences()
    for speaker in make_sample.SPEAKERS:
        labs = sorted((SAMPLE / speaker.name).glob("*.lab"))
        committed = [p.read_text(encoding="utf-8").strip() for p in labs]
        assert committed == make_sample.pick_sentences(speaker, sentences), speaker.name


def test_make_sample_rejects_duplicate_sentences(tmp_path):
    make_sample = _load_make_sample()
    path = tmp_path / "s.txt"
    path.write_text("Yksi kaksi kolme neljä viisi.\nYksi kaksi kolme neljä viisi.\n", encoding="utf-8")
    with pytest.raises(make_sample.SampleError, match="repeats"):
        make_sample.read_sentences(path)
    path.write_text("# kommentti\n\n  Yksi kaksi kolme neljä viisi.  \nToinen lause on tässä.\n", encoding="utf-8")
    assert make_sample.read_sentences(path) == ["Yksi kaksi kolme neljä viisi.", "Toinen lause on tässä."]
