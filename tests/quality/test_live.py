"""Scoring during training (pipeline.quality.live) on real audio of the bundled sample, with the real
resemblyzer and DNSMOS models and the tiny random Whisper; no download."""

from __future__ import annotations

import math

import pytest

from pipeline.config import load_config
from pipeline.quality import live
from pipeline.quality.live import LiveScorer, asr_source, live_scorer
from quality_fixtures import SAMPLE, tiny_asr  # noqa: F401 (a fixture)

KEYS = {"val_similarity", "val_ovrl", "val_cer"}


def _clips(speaker: str, picks) -> list[tuple[str, object]]:
    audio = sorted((SAMPLE / speaker).glob("*.ogg"))
    return [(audio[i].with_suffix(".lab").read_text(encoding="utf-8").strip(), audio[i]) for i in picks]


@pytest.fixture(scope="module")
def whisper_folder(tiny_asr, tmp_path_factory):
    """The tiny Whisper saved as a local model folder, as evaluation.asr_model may name one."""
    folder = tmp_path_factory.mktemp("whisper-folder")
    tiny_asr.model.save_pretrained(folder)
    tiny_asr.processor.save_pretrained(folder)
    return folder


@pytest.fixture()
def offline(monkeypatch):
    import huggingface_hub

    from pipeline.data import hub

    monkeypatch.setattr(hub, "unreachable_reason", lambda: "offline in this test")
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)


def test_live_scorer_means_on_real_audio_models_loaded_once(tiny_asr):
    references = [path for _, path in _clips("festival_mv", (1, 2))]
    scorer = LiveScorer(tiny_asr, references, device="cpu")
    same = scorer(100, _clips("festival_mv", (0,)))
    assert set(same) == KEYS and scorer.notes == []
    assert same["val_similarity"] > 0.8 and 1 <= same["val_ovrl"] <= 5 and same["val_cer"] >= 0
    other = scorer(200, _clips("espeak_f2", (0, 1)))
    assert set(other) == KEYS and other["val_similarity"] < same["val_similarity"]
    assert scorer.scorers.loads == 1  # the speaker encoder, once for both steps (the ASR came ready)
    assert scorer(300, [("Moi.", SAMPLE / "missing.wav")]) == {}


def test_live_scorer_from_config_with_a_local_whisper_folder(whisper_folder, tmp_path, monkeypatch, offline):
    monkeypatch.setenv("STUDIO_WORKSPACE", str(tmp_path / "ws"))
    config = load_config(None, {"evaluation.asr_model": str(whisper_folder)})
    assert asr_source(str(whisper_folder)) == (True, "local folder")
    scorer = live_scorer(config, device="cpu")
    scores = scorer(10, _clips("festival_lj", (0,)))
    # no dataset selected: no reference speaker, so no similarity, said once
    assert set(scores) == {"val_ovrl", "val_cer"} and len(scorer.notes) == 1 and "reference" in scorer.notes[0]
    assert scorer(20, _clips("festival_lj", (1,))).keys() == scores.keys() and len(scorer.notes) == 1
    assert live_scorer(config.with_overrides({"training.eval_sentences": 0})) is None


def test_live_scorer_without_asr_or_with_a_failing_scorer_leaves_keys_out(tmp_path, monkeypatch, offline):
    monkeypatch.setenv("STUDIO_WORKSPACE", str(tmp_path / "ws"))
    config = load_config()  # openai/whisper-large-v3-turbo: not cached here, and the Hub is "offline"
    usable, why = asr_source(config.evaluation.asr_model)
    assert not usable and "evaluation.asr_model" in why and "offline in this test" in why
    scorer = live_scorer(config, device="cpu")
    scorer.scorers.references = [path for _, path in _clips("festival_mv", (1,))]
    scorer.off.discard("similarity")

    calls = []

    def broken(audio, rate):
        calls.append(rate)
        raise RuntimeError("onnxruntime session failed")

    monkeypatch.setattr(live, "dnsmos", broken)
    scores = scorer(5, _clips("festival_mv", (0,)))
    assert set(scores) == {"val_similarity"} and math.isfinite(scores["val_similarity"])
    assert scorer(6, _clips("festival_mv", (0,))).keys() == {"val_similarity"} and len(calls) == 1  # not retried
    assert [n for n in scorer.notes if "DNSMOS failed" in n and "onnxruntime" in n] and len(scorer.notes) == 3
