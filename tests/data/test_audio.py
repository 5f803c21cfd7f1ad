"""pipeline.data.audio: decoding, quality numbers, conversion to 44.1 kHz mono."""

import numpy as np
import pytest
import soundfile as sf

from audio_fixtures import speech_like, write_audio
from pipeline.data.audio import (TARGET_SR, AudioError, analyze_audio, load_audio, measure, needs_conversion,
                            to_training_audio)


def test_measure_speech_like_clip(tmp_path):
    path = write_audio(tmp_path / "a.wav", speech_like(seconds=2.0, pad_s=0.3), 22_050)
    info = analyze_audio(path)
    assert info.duration_s == pytest.approx(2.0, abs=1e-3)
    assert (info.sample_rate, info.channels) == (22_050, 1)
    assert 0.2 < info.lead_silence_s < 0.35 and 0.2 < info.trail_silence_s < 0.35
    assert info.snr_db > 40          # noise floor at about -70 dBFS
    assert -25 < info.loudness_db < -10 and info.peak_db == pytest.approx(20 * np.log10(0.3), abs=0.5)
    assert info.clipping_ratio == 0.0 and not info.silent


def test_noisy_clip_has_low_snr():
    clean = measure(speech_like(noise=3e-4)[:, None], 22_050)
    noisy = measure(speech_like(noise=0.08)[:, None], 22_050)
    assert noisy.snr_db < 8 < 40 < clean.snr_db


def test_clipping_and_silence_are_measured():
    y = speech_like() * 10
    clipped = measure(np.clip(y, -1, 1)[:, None], 22_050)
    assert clipped.clipping_ratio > 0.05
    silent = measure(np.zeros((22_050, 1), np.float32), 22_050)
    assert silent.silent
    empty = measure(np.zeros((0, 1), np.float32), 22_050)
    assert empty.duration_s == 0 and empty.silent


def test_text_disguised_as_wav_is_an_audio_error(tmp_path):
    fake = tmp_path / "fake.wav"
    fake.write_text("this is not audio at all\n" * 20)
    with pytest.raises(AudioError, match="fake.wav"):
        load_audio(fake)


def test_stereo_48k_is_converted_once_and_cached(tmp_path):
    y = speech_like(sr=48_000)
    stereo = np.stack([y, 0.5 * y], axis=1)
    src = write_audio(tmp_path / "in" / "s.flac", stereo, 48_000)
    assert needs_conversion(src)
    out = to_training_audio(src, tmp_path / "audio")
    info = sf.info(str(out))
    assert (info.samplerate, info.channels, info.subtype) == (TARGET_SR, 1, "FLOAT")
    assert info.duration == pytest.approx(1.5, abs=1e-3)
    mtime = out.stat().st_mtime_ns
    assert to_training_audio(src, tmp_path / "audio") == out and out.stat().st_mtime_ns == mtime
    assert [p.name for p in (tmp_path / "audio").iterdir()] == [out.name]  # no temp files left
    # the downmix is the channel mean: compare loudness with the mono source
    data, _ = load_audio(out)
    assert np.max(np.abs(data)) == pytest.approx(0.75 * 0.3, rel=0.05)


def test_44k_mono_wav_is_used_in_place(tmp_path):
    src = write_audio(tmp_path / "ok.wav", speech_like(sr=TARGET_SR), TARGET_SR)
    assert not needs_conversion(src)
    assert to_training_audio(src, tmp_path / "audio") == src
    assert not (tmp_path / "audio").exists()
