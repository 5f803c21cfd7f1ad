"""The Playground's live speech (studio.logic.playground_live.live_speech): progress, audio chunks as
16-bit WAVs while the codes are sampled, then the saved file, over the fake runs of test_playground."""

from __future__ import annotations

import functools
import io
from pathlib import Path

import numpy as np
import soundfile as sf

from studio.logic import playground as pg
from studio.logic import playground_live as live
from test_playground import SPEAK, cache, workspace_env, world  # noqa: F401 - fixtures

TEXT = "Yksi lause. Toinen lause."


def _chunks_audio(updates) -> np.ndarray:
    pieces = [sf.read(io.BytesIO(u.chunk), dtype="float32") for u in updates if u.chunk]
    assert all(sr == 44100 for _, sr in pieces)
    return np.concatenate([data for data, _ in pieces])


def test_live_speech_yields_audio_chunks_then_the_saved_file(world, cache, tiny_checkpoint):  # noqa: F811
    config, _ = world
    updates = list(live.live_speech(config, cache, str(tiny_checkpoint), [], TEXT, **SPEAK))
    first, last = updates[0], updates[-1]
    assert (first.fraction, first.chunk, first.path) == (0.0, None, None)  # announced before any work
    assert all(u.path is None and u.result is None for u in updates[:-1])
    assert last.path.parent == Path(config.workspace) / pg.OUTPUT_DIR_NAME and last.fraction == 1.0
    saved, _ = sf.read(last.path, dtype="float32")
    played = _chunks_audio(updates)
    assert len(played) == len(saved) > 0
    assert np.abs(played - saved).max() <= 2 / 32768  # both 16-bit: the same samples give the same file
    spoken, _ = pg.speak_to_file(config, cache, str(tiny_checkpoint), [], TEXT, **SPEAK)
    assert all(np.array_equal(a, b) for a, b in zip(spoken.codes, last.result.codes))  # the seed's codes


def test_live_speech_of_the_fast_decoder_plays_before_the_sentence_ends(world, tiny_checkpoint):  # noqa: F811
    config, _ = world
    cache = pg.SynthCache(size=1, device="cpu", factory=functools.partial(pg.Synthesizer, fast=True))
    before = set((Path(config.workspace) / pg.OUTPUT_DIR_NAME).glob("*.wav"))
    steps = live.live_speech(config, cache, str(tiny_checkpoint), [], "Hyvää huomenta, Suomi!", max_new_tokens=60,
                           seed=3)
    assert next(steps).chunk is None
    chunk = next(steps).chunk  # the first frames, long before the sentence's 60
    assert len(sf.read(io.BytesIO(chunk))[0]) == 8 * 2048
    steps.close()  # the browser went away: nothing more sampled, nothing saved, the model free again
    assert set((Path(config.workspace) / pg.OUTPUT_DIR_NAME).glob("*.wav")) == before
    with cache.use(str(tiny_checkpoint)):
        pass


def test_streaming_needs_ffmpeg(monkeypatch):
    import pipeline.doctor.machine as machine

    monkeypatch.setattr(machine.shutil, "which", lambda name: None)
    assert not live.can_stream_audio() and machine.playback_row().status == machine.WARN
    monkeypatch.setattr(machine.shutil, "which", lambda name: None if name == "ffprobe" else f"/usr/bin/{name}")
    assert not live.can_stream_audio()  # gradio also needs ffprobe to serve audio files
    assert "ffprobe not found" in machine.playback_row().detail
    monkeypatch.setattr(machine.shutil, "which", lambda name: f"/usr/bin/{name}")
    assert live.can_stream_audio() and machine.playback_row().status == machine.PASS
