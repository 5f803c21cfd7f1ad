"""The voice-quality scorecard: CER/WER, speaker similarity, DNSMOS, signal checks, selection,
the cached scorecard of a model and the `evaluate` command. Real resemblyzer and DNSMOS weights
(they ship in their wheels); a tiny random Whisper built offline stands in for the Hub's ASR."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.config import load_config
from pipeline.quality.asr import ASRError, Transcriber, cer_text, error_rates
from pipeline.quality.command import add_evaluate_command
from pipeline.quality.naturalness import dnsmos
from pipeline.quality.scorecard import (
    ModelSpec,
    Scorers,
    SpeakOptions,
    bootstrap_interval,
    evaluate,
    model_hash,
    parse_adapter,
    read_scorecard,
)
from pipeline.quality.configured import scorecard_table
from pipeline.train.select import best_checkpoint, quality_score
from pipeline.quality.signal_checks import check_signal, reached_end
from pipeline.quality.speaker import SpeakerEncoder, cosine
from pipeline.quality.tiny_asr import TINY_ASR_NAME
from pipeline.generate.synth import Synthesizer
from pipeline.data.text import example_sentences, normalize

from quality_fixtures import SAMPLE, tiny_asr  # noqa: F401 (a fixture)
from quality_fixtures import sample_clip as _clip


# -- CER / WER ------------------------------------------------------------------------------------
@pytest.mark.parametrize("reference, hypothesis, cer, wer", [
    ("Kissa istuu puussa.", "kissa istuu puussa", 0.0, 0.0),  # case and punctuation do not count
    ("Juna lähtee kello 8.45.", "Juna lähtee kello kahdeksan neljäkymmentäviisi.", 0.0, 0.0),  # numbers spelled out
    ("Kahvi maksaa 3 €.", "kahvi maksaa kolme euroa", 0.0, 0.0),
    ("äiti", "aiti", 0.25, 1.0),  # ä is its own letter: one substitution in four
    ("Hyvää yötä", "hyvää yätä", 0.1, 0.5),  # 10 characters with the space, one wrong; 1 of 2 words
    ("Öljy", "", 1.0, 1.0),  # nothing recognised
    ("moi moi", "moi", 4 / 7, 0.5),  # " moi" deleted: 4 of 7 characters, 1 of 2 words
])
def test_error_rates_exact(reference, hypothesis, cer, wer):
    rates = error_rates(reference, hypothesis)
    assert rates.cer == pytest.approx(cer) and rates.wer == pytest.approx(wer)


def test_cer_text_normalizes_numbers_and_punctuation():
    assert cer_text("Suomi itsenäistyi 6.12.1917!") == cer_text(normalize("Suomi itsenäistyi 6.12.1917!")).lower()
    assert cer_text("WhatsApp-viesti, 25 %") == "whatsapp viesti kaksikymmentäviisi prosenttia"
    with pytest.raises(ValueError, match="no words"):
        error_rates("...", "moi")


def test_cer_pipeline_end_to_end_with_tiny_whisper(tiny_asr):
    audio, rate = _clip("festival_mv")
    sentence = (SAMPLE / "festival_mv" / sorted(p.name for p in (SAMPLE / "festival_mv").glob("*.lab"))[0]).read_text()
    texts = tiny_asr.transcribe([(audio, rate), (audio[: rate], rate)])
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    rows = Scorers(tiny_asr, speaker=False, naturalness=False).score([(audio, rate, sentence)])
    assert rows[0]["hypothesis"] == texts[0]
    assert rows[0]["cer"] == pytest.approx(error_rates(sentence, texts[0]).cer) and rows[0]["cer"] > 0
    assert math.isnan(rows[0]["similarity"]) and math.isnan(rows[0]["ovrl"])


def test_asr_from_hub_unreachable_says_what_to_do(monkeypatch):
    import transformers
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(*args, **kwargs):
        raise LocalEntryNotFoundError("Cannot find the requested files in the disk cache")

    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", offline)
    with pytest.raises(ASRError, match="openai/whisper-large-v3-turbo.*evaluation.asr_model"):
        Transcriber.from_pretrained("openai/whisper-large-v3-turbo", device="cpu")
    scorers = Scorers("openai/whisper-large-v3-turbo", speaker=False, naturalness=False, device="cpu")
    rows = scorers.score([(np.zeros(1600, np.float32), 16000, "Moi.")])
    assert math.isnan(rows[0]["cer"]) and not scorers.cacheable and "could not be loaded" in scorers.notes[0]


# -- speaker similarity ---------------------------------------------------------------------------
def test_same_speaker_scores_higher_than_different_speakers_all_pairs():
    encoder = SpeakerEncoder("cpu")
    speakers = sorted(p.name for p in SAMPLE.iterdir() if p.is_dir())
    embeddings = {s: [encoder.embed(*_clip(s, n)) for n in (0, 1)] for s in speakers}
    for a in speakers:
        same = cosine(*embeddings[a])
        for b in speakers:
            if b != a:
                other = max(cosine(x, y) for x in embeddings[a] for y in embeddings[b])
                assert same > other, f"{a}: same speaker {same:.3f} <= vs {b} {other:.3f}"
    assert encoder.embed(np.zeros(22050, np.float32), 22050) is None  # silence has no speaker


def test_scorers_similarity_against_reference_clips():
    references = sorted((SAMPLE / "festival_mv").glob("*.ogg"))[1:3]
    scorers = Scorers(None, references=references, naturalness=False, device="cpu")
    same, other = scorers.score([(*_clip("festival_mv"), "x"), (*_clip("espeak_f2"), "x")])
    assert same["similarity"] > 0.8 and same["similarity"] > other["similarity"]


# -- DNSMOS and signal checks --------------------------------------------------------------------
def test_dnsmos_clean_beats_noisy_and_silence_is_flagged():
    audio, rate = _clip("festival_lj")
    noise = np.random.default_rng(0).standard_normal(audio.size).astype(np.float32)
    noise *= np.sqrt(np.mean(audio ** 2) / np.mean(noise ** 2))  # 0 dB SNR
    clean, noisy = dnsmos(audio, rate), dnsmos(np.clip(audio + noise, -1, 1), rate)
    assert 1 <= noisy.ovrl < clean.ovrl <= 5 and noisy.bak < clean.bak
    silent = dnsmos(np.zeros(rate * 2, np.float32), rate)
    assert silent.flag == "silent" and math.isnan(silent.ovrl)
    assert "silent" in check_signal(np.zeros(rate * 2, np.float32), rate, "Moi kaikille.").flags


def test_signal_checks():
    rate = 16000
    text = "Tervetuloa Suomeen, toivottavasti viihdyt täällä."
    t = np.arange(int(3.5 * rate)) / rate
    speech = (0.5 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    speech[: rate // 2] = 0  # half a second of leading silence
    good = check_signal(speech, rate, text)
    assert good.flags == [] and 0.5 < good.duration_ratio < 2 and good.silence_share == pytest.approx(0.5 / 3.5, abs=0.01)
    short = check_signal(speech[: rate // 2 + 1600], rate, text, ended=False)
    assert any(f.startswith("too short") for f in short.flags) and "cut at max length" in short.flags
    clipped = check_signal(np.clip(speech * 4, -1, 1), rate, text)
    assert any(f.startswith("clipping") for f in clipped.flags)
    assert reached_end([10, 30], 31) and not reached_end([10, 31], 31)


# -- selection ------------------------------------------------------------------------------------
def _metrics(phase: Path, rows: list[dict], kept: list[int]) -> None:
    phase.mkdir(parents=True)
    lines = [json.dumps({"kind": "train", "step": r["step"], "loss": 1.0}) for r in rows]
    lines += [json.dumps({"kind": "val", **r}) for r in rows]
    (phase / "metrics.jsonl").write_text("\n".join(lines) + "\n{\"kind\": \"va")  # torn last line
    for step in kept:
        (phase / "checkpoints" / f"step_{step:06d}").mkdir(parents=True)


def test_best_checkpoint_by_score_and_by_loss(tmp_path):
    rows = [{"step": 100, "val_loss": 2.0, "val_cer": 0.50, "val_similarity": 0.70, "val_ovrl": 2.5},
            {"step": 200, "val_loss": 1.5, "val_cer": 0.10, "val_similarity": 0.85, "val_ovrl": 3.2},
            {"step": 300, "val_loss": 1.2, "val_cer": 0.30, "val_similarity": 0.80, "val_ovrl": 3.0},
            {"step": 400, "val_loss": 1.1, "val_cer": 0.05, "val_similarity": 0.90, "val_ovrl": 3.5}]
    _metrics(tmp_path / "lora", rows, kept=[100, 200, 300])  # step 400 pruned from disk
    by_score = best_checkpoint(tmp_path / "lora", by="score")
    assert by_score.step == 200 and by_score.by == "score"
    assert by_score.checkpoint == tmp_path / "lora" / "checkpoints" / "step_000200"
    assert by_score.value == pytest.approx(quality_score(0.10, 0.85, 3.2)) and "step 200" in by_score.reason
    assert best_checkpoint(tmp_path / "lora", by="loss").step == 300
    assert best_checkpoint(tmp_path / "lora", by="score", require_checkpoint=False).step == 400
    assert quality_score(0.0, 1.0, 5.0) == 1.0 and quality_score() is None


def test_best_checkpoint_without_scores_falls_back_to_loss(tmp_path):
    _metrics(tmp_path / "p", [{"step": 3, "val_loss": 2.0}, {"step": 6, "val_loss": 1.0}], kept=[3, 6])
    chosen = best_checkpoint(tmp_path / "p", by="score")
    assert (chosen.step, chosen.by) == (6, "loss") and "no scorecard" in chosen.reason
    assert best_checkpoint(tmp_path / "empty", by="loss") is None
    with pytest.raises(ValueError, match="select_by"):
        best_checkpoint(tmp_path / "p", by="ears")


# -- the scorecard ------------------------------------------------------------------------------
def test_bootstrap_interval():
    stats = bootstrap_interval([0.1, 0.2, 0.3, float("nan"), None])
    assert stats["mean"] == pytest.approx(0.2) and stats["n"] == 3 and 0.1 <= stats["low"] < 0.2 < stats["high"] <= 0.3
    assert bootstrap_interval([float("nan")]) is None
    assert parse_adapter("runs/x/step_1:0.5") == ("runs/x/step_1", 0.5) and parse_adapter("a/b") == ("a/b", 1.0)


def test_scorecard_of_tiny_model_written_and_cached(tiny_checkpoint, tiny_asr, tmp_path):
    built = []

    def factory(*args, **kwargs):
        built.append(args)
        return Synthesizer(*args, **kwargs)

    spec = ModelSpec(str(tiny_checkpoint), label="tiny")
    sentences = example_sentences()[:2]
    reference = sorted((SAMPLE / "espeak_f2").glob("*.ogg"))[:1]
    options = SpeakOptions(max_new_tokens=6)
    run = lambda: evaluate(spec, tmp_path / "out", tmp_path / "cache", sentences, seed=1, options=options,
                           scorers=Scorers(tiny_asr, references=reference, device="cpu"), synth_factory=factory,
                           device="cpu")
    first = run()
    assert (first.spoken, first.scored, len(built)) == (2, 2, 1)
    rows, summary = read_scorecard(tmp_path / "out")
    assert list(rows["sentence"]) == sentences and rows["cer"].notna().all() and rows["ovrl"].notna().all()
    assert rows["similarity"].isna().all()  # random weights speak noise: no speech for the speaker encoder
    assert not rows["ended"].any()  # 6 frames: cut at max length
    assert all(Path(p).is_file() for p in rows["audio_path"])
    assert summary["random_weights"] and "random weights" in summary["description"]
    assert summary["scorers"]["asr"] == TINY_ASR_NAME and summary["metrics"]["cer"]["n"] == 2
    assert summary["model_hash"] == model_hash(spec) and summary["cut_at_max_length"] == 2

    scorers = Scorers(tiny_asr, references=reference, device="cpu")
    second = evaluate(spec, tmp_path / "out", tmp_path / "cache", sentences, seed=1, options=options,
                      scorers=scorers, synth_factory=factory, device="cpu")
    assert (second.spoken, second.scored, len(built), scorers.loads) == (0, 0, 1, 0)  # nothing loaded
    pd.testing.assert_frame_equal(second.rows, first.rows)
    assert not list((tmp_path / "out").rglob("*.tmp*"))
    table = scorecard_table([summary])
    assert table.loc[0, "note"] == "random weights: produces noise" and table.loc[0, "CER"].count("[") == 1


def test_evaluate_command_on_tiny_model(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIO_WORKSPACE", str(tmp_path / "ws"))
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config")
    common.add_argument("--set", action="append")
    parser = argparse.ArgumentParser()
    add_evaluate_command(parser.add_subparsers(dest="command"), [common])
    args = parser.parse_args(["evaluate", "--model", str(tiny_checkpoint), "--asr-model", "none",
                              "--set", "evaluation.sentences=1", "--set", "evaluation.max_new_tokens=4"])
    assert args.func(args) == 0
    summary = json.loads((tmp_path / "ws" / "eval" / tiny_checkpoint.name / "summary.json").read_text())
    assert summary["sentences"] == 1 and summary["scorers"]["asr"] is None and summary["random_weights"]
    bad = parser.parse_args(["evaluate", "--model", str(tmp_path / "missing")])
    with pytest.raises(ValueError, match="--model"):
        bad.func(bad)


# -- configuration and sentences ---------------------------------------------------------------
def test_evaluation_config_and_sentences():
    config = load_config()
    assert config.evaluation.asr_model == "openai/whisper-large-v3-turbo" and config.evaluation.language == "fi"
    assert config.training.select_by == "loss"
    sentences = example_sentences()
    assert len(sentences) >= 20 and len(set(sentences)) == len(sentences)
    assert any("?" in s for s in sentences) and sum(any(c.isdigit() for c in s) for s in sentences) >= 5
    assert not any(c.isdigit() for s in sentences for c in normalize(s))


def test_run_models_lists_checkpoints_on_their_base_and_the_merged_model(tiny_checkpoint, tmp_path, monkeypatch):
    import shutil

    from pipeline.quality.scorecard import EvaluationError, eval_dir
    from pipeline.quality.configured import run_models

    monkeypatch.setenv("STUDIO_WORKSPACE", str(tmp_path / "ws"))
    config = load_config()
    run_dir = config.runs_dir / "20250101-000000-quick_lora"
    step = run_dir / "phases" / "lora" / "checkpoints" / "step_000003"
    step.mkdir(parents=True)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (step / name).write_text("{}")
    shutil.copytree(tiny_checkpoint, run_dir / "artifacts" / "merged")
    (run_dir / "run.json").write_text(json.dumps({"mode": "quick_lora", "base_model": str(tiny_checkpoint)}))
    specs = run_models(config, run_dir.name)
    assert [(s.label, s.model_dir, s.adapters) for s in specs] == [
        ("lora-step_000003", str(tiny_checkpoint), ((str(step), 1.0),)),
        ("merged", str(run_dir / "artifacts" / "merged"), ())]
    assert eval_dir(config, "merged", run_dir.name) == run_dir / "eval" / "merged"
    with pytest.raises(EvaluationError, match="does not exist"):
        run_models(config, "nope")
