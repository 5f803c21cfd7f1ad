"""Synthesis with the tiny random checkpoint: shapes, reproducibility, chunking, prompts, adapters."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

from pipeline.model.checkpoints import LM_FILES, CheckpointError
from pipeline.generate.synth import PAUSE_SECONDS, SpeechResult, Synthesizer, SynthError, save_wav

FRAME = 2048
SR = 44100


@pytest.fixture(scope="module")
def synth(tiny_checkpoint):
    return Synthesizer(tiny_checkpoint, device="cpu")


def _expected_samples(result: SpeechResult) -> int:
    pause = int(PAUSE_SECONDS * SR)
    return result.frames * FRAME + pause * (len(result.chunks) - 1)


def test_speaks_finite_audio_of_plausible_length(synth, tmp_path):
    result = synth.speak("Hyvää huomenta, Suomi!", max_new_tokens=12, seed=0)
    assert result.sample_rate == SR and result.audio.dtype == np.float32 and result.audio.ndim == 1
    assert np.isfinite(result.audio).all() and np.abs(result.audio).max() <= 1.0
    assert 0 < result.frames <= 12
    assert len(result.audio) == _expected_samples(result)
    assert result.seconds == pytest.approx(len(result.audio) / SR)
    assert [c.shape for c in result.codes] == [(4, result.frames)]
    assert result.audio.std() > 0  # noise, not silence
    path = save_wav(result, tmp_path / "out" / "speech.wav")
    data, sr = sf.read(path, dtype="float32")
    assert sr == SR and len(data) == len(result.audio)


def test_same_seed_same_audio_other_seed_differs(synth):
    text = "Tämä on toistettava lause."
    a = synth.speak(text, max_new_tokens=10, seed=7)
    b = synth.speak(text, max_new_tokens=10, seed=7)
    c = synth.speak(text, max_new_tokens=10, seed=8)
    assert np.array_equal(a.audio, b.audio)
    assert not (a.frames == c.frames and all(np.array_equal(x, y) for x, y in zip(a.codes, c.codes)))


def test_text_is_normalized_and_long_text_split(synth):
    progress = []
    text = "Kello on 12.30. " + " ".join(f"Tämä on lause numero {i}." for i in range(1, 5))
    result = synth.speak(text, max_new_tokens=4, seed=1, progress=lambda f, m: progress.append(f))
    assert len(result.chunks) == 5
    assert "12" not in result.normalized_text and "kaksitoista" in result.normalized_text
    assert len(result.codes) == 5 and sum(c.shape[1] for c in result.codes) == result.frames
    assert len(result.audio) == _expected_samples(result)
    assert progress[0] == 0 and progress[-1] == 1.0 and len(progress) == 6


def test_reference_clip_is_the_voice_prompt(synth, tmp_path):
    t = np.arange(int(0.6 * SR)) / SR
    ref = tmp_path / "ref.wav"
    sf.write(ref, (0.3 * np.sin(2 * np.pi * 180 * t)).astype(np.float32), SR)
    plain = synth.speak("Moi maailma.", max_new_tokens=8, seed=3)
    prompted = synth.speak("Moi maailma.", reference_audio=ref, reference_text="Tämä on viite.",
                           max_new_tokens=8, seed=3)
    assert np.isfinite(prompted.audio).all()
    # Same seed, different context: the prompt reached the model.
    assert not (plain.frames == prompted.frames and np.array_equal(plain.codes[0], prompted.codes[0]))
    with pytest.raises(SynthError, match="transcript"):
        synth.speak("Moi.", reference_audio=ref)
    with pytest.raises(SynthError, match="does not exist"):
        synth.speak("Moi.", reference_audio=tmp_path / "none.wav", reference_text="x")


def test_bad_inputs_are_clear_errors(synth):
    with pytest.raises(SynthError, match="no text"):
        synth.speak("   ")
    with pytest.raises(SynthError, match="temperature"):
        synth.speak("Moi.", temperature=0)
    with pytest.raises(SynthError, match="top_p"):
        synth.speak("Moi.", top_p=1.5)


def test_too_long_reference_and_prompt_are_rejected(synth, tmp_path):
    ref = tmp_path / "long.wav"
    sf.write(ref, np.zeros(int(SR * 31), dtype=np.float32) + 0.01, SR)
    with pytest.raises(SynthError, match="at most 30 s"):
        synth.speak("Moi.", reference_audio=ref, reference_text="Pitkä viite.", max_new_tokens=4)
    # A prompt that leaves no room to generate (only reachable with a short-context model).
    config = synth.model.config
    saved, config.max_seq_len = config.max_seq_len, 40
    try:
        with pytest.raises(SynthError, match="shorter"):
            synth.speak("Tämä on aika pitkä lause, joka ei mahdu lyhyeen kontekstiin.", max_new_tokens=4)
    finally:
        config.max_seq_len = saved


def test_separate_codec_dir(tiny_checkpoint, tmp_path):
    lm_only = tmp_path / "lm"
    lm_only.mkdir()
    for name in LM_FILES:
        shutil.copy(tiny_checkpoint / name, lm_only / name)
    with pytest.raises(CheckpointError, match=r"codec\.pth"):
        Synthesizer(lm_only, device="cpu")
    result = Synthesizer(lm_only, device="cpu", codec_dir=tiny_checkpoint).speak("Moi.", max_new_tokens=4, seed=0)
    assert np.isfinite(result.audio).all()


def test_adapters_are_applied(synth, tiny_checkpoint, tmp_path):
    from pipeline.model.adapters import attach_lora, save_adapter
    from pipeline.model.checkpoints import load_lm

    model, _ = load_lm(tiny_checkpoint)
    peft_model = attach_lora(model, rank=4, alpha=8, dropout=0.0)
    zero_dir = save_adapter(peft_model, tmp_path / "zero")  # untrained: lora_B == 0
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    trained_dir = save_adapter(peft_model, tmp_path / "trained")

    base = synth.speak("Moi maailma.", max_new_tokens=8, seed=5)
    zero = Synthesizer(tiny_checkpoint, device="cpu", adapters=[(str(zero_dir), 1.0)])
    assert np.array_equal(zero.speak("Moi maailma.", max_new_tokens=8, seed=5).audio, base.audio)
    trained = Synthesizer(tiny_checkpoint, device="cpu", adapters=[(str(trained_dir), 1.0)])
    other = trained.speak("Moi maailma.", max_new_tokens=8, seed=5)
    assert not (other.frames == base.frames and np.array_equal(other.codes[0], base.codes[0]))
    # Weight 0 switches the adapter off again.
    off = Synthesizer(tiny_checkpoint, device="cpu", adapters=[(str(trained_dir), 0.0)])
    assert np.array_equal(off.speak("Moi maailma.", max_new_tokens=8, seed=5).audio, base.audio)


def test_emoji_only_is_nothing_to_say_and_other_input_is_noted(synth):
    with pytest.raises(SynthError, match="Nothing to say.*😀"):
        synth.speak("😀 🎉", max_new_tokens=4, seed=1)
    with_emoji = synth.speak("Hei 😀", max_new_tokens=4, seed=1)
    assert with_emoji.normalized_text == "Hei" and "😀" in with_emoji.notes[0]
    japanese = synth.speak("こんにちは", max_new_tokens=4, seed=1)
    assert any("trained on Finnish" in n for n in japanese.notes)
    assert synth.speak("Hei.", max_new_tokens=4, seed=1).notes == []


def test_stream_yields_before_each_chunk_and_stops_when_closed(synth, monkeypatch):
    text = "Ensimmäinen lause. Toinen lause. Kolmas lause."
    calls = []
    real = synth.generate_codes
    monkeypatch.setattr(synth, "generate_codes", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    steps = synth.stream(text, max_new_tokens=4, seed=5)
    first = next(steps)
    assert (first.index, first.total, first.result) == (0, 3, None) and calls == []
    next(steps)  # chunk 1 generated, chunk 2 announced
    steps.close()  # the client went away
    assert calls == ["Ensimmäinen lause."]

    calls.clear()
    whole = list(synth.stream(text, max_new_tokens=4, seed=5))
    assert [s.index for s in whole] == [0, 1, 2, 3] and whole[-1].result is not None and len(calls) == 3
    # whatever runs between two chunks leaves a seeded result unchanged
    noisy = []
    for step in synth.stream(text, max_new_tokens=4, seed=5):
        torch.rand(100)
        noisy.append(step)
    assert all(np.array_equal(a, b) for a, b in zip(noisy[-1].result.codes, whole[-1].result.codes))
