"""Speech as it is generated (tiny model, CPU): the pieces join to the whole decode, a seed gives
`speak`'s codes, closing the stream stops the sampling, and the frames come in blocks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.generate import streaming
from pipeline.generate.fastgen import FastGenerator
from pipeline.generate.synth import PAUSE_SECONDS, Synthesizer, SynthError

TEXT = "Hyvää huomenta, Suomi! Tämä on toinen lause."
# LEFT_CONTEXT frames before each window leave ~5e-6 (peaks ~0.1) on the tiny codec, from its
# windowed attention; 1e-4 is 20x that margin and still far below the 7e-2 of no context.
TOLERANCE = 1e-4


@pytest.fixture(scope="module", params=[False, True], ids=["wheel", "fast"])
def synth(request, tiny_checkpoint):
    """The wheel's generate (per-chunk pieces) and the fast decoder run eagerly (frame blocks)."""
    torch.set_num_threads(1)
    return Synthesizer(tiny_checkpoint, device="cpu", fast=request.param)


def _run(synth, **options):
    steps = list(streaming.stream_audio(synth, TEXT, **options))
    pieces = [s.audio for s in steps if s.audio.size]
    return steps, pieces, steps[-1].result


def test_pieces_join_to_the_whole_decode_and_seed_gives_speaks_codes(synth):
    spoken = synth.speak(TEXT, max_new_tokens=60, seed=3)
    steps, pieces, result = _run(synth, max_new_tokens=60, seed=3)
    assert result is not None and all(s.result is None for s in steps[:-1])
    assert all(np.array_equal(a, b) for a, b in zip(spoken.codes, result.codes)) and len(result.codes) == 2
    assert np.array_equal(spoken.audio, result.audio)  # the saved file is speak's
    joined = np.concatenate(pieces)
    assert joined.dtype == np.float32 and len(joined) == len(result.audio)
    assert np.abs(joined - result.audio).max() <= TOLERANCE
    # the pause between the chunks is its own piece, between the chunks' audio
    pause = int(PAUSE_SECONDS * synth.sample_rate)
    assert any(len(p) == pause and not p.any() for p in pieces)
    if synth.fast:  # frames come in blocks: more pieces than chunks + pause
        assert len(pieces) > 3
        assert len(pieces[0]) == streaming.FIRST_FRAMES * synth.codec.frame_length
    else:  # the wheel's generate: one piece per chunk
        assert len(pieces) == 3


def test_seeded_stream_ignores_random_draws_between_pieces(synth):
    _, _, quiet = _run(synth, max_new_tokens=40, seed=5)
    noisy = None
    for step in streaming.stream_audio(synth, TEXT, max_new_tokens=40, seed=5):
        torch.rand(50)
        noisy = step.result or noisy
    assert all(np.array_equal(a, b) for a, b in zip(quiet.codes, noisy.codes))


def test_closing_the_stream_stops_sampling(synth, monkeypatch):
    calls = []
    real = synth.code_blocks
    monkeypatch.setattr(synth, "code_blocks", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    steps = streaming.stream_audio(synth, TEXT, max_new_tokens=60, seed=3)
    announced = next(steps)
    assert (announced.index, announced.total, announced.audio.size) == (0, 2, 0) and calls == []
    first = next(steps)
    assert first.audio.size > 0 and first.index == 0
    steps.close()  # the listener went away
    assert calls == ["Hyvää huomenta, Suomi!"]  # the second chunk never started


def test_fast_stream_stops_decoding_when_closed(tiny_checkpoint, monkeypatch):
    synth = Synthesizer(tiny_checkpoint, device="cpu", fast=True)
    synth.speak("Moi.", max_new_tokens=4, seed=0)  # builds the fast decoder
    frames = []
    real = FastGenerator._run_step
    monkeypatch.setattr(FastGenerator, "_run_step", lambda self, length: frames.append(length) or real(self, length))
    steps = streaming.stream_audio(synth, "Hyvää huomenta, Suomi!", max_new_tokens=60, seed=3)  # 60 frames in all
    assert next(steps).audio.size == 0
    assert len(next(steps).audio) == streaming.FIRST_FRAMES * synth.codec.frame_length
    steps.close()
    assert len(frames) == streaming.FIRST_FRAMES  # nothing decoded after the first block


def test_generate_stream_blocks_join_to_generate(tiny_checkpoint):
    synth = Synthesizer(tiny_checkpoint, device="cpu", fast=True)
    gen = FastGenerator(synth.model, compile=False, cuda_graph=False)
    prompt, room = synth._prompt_tokens("Hyvää päivää.", [], 50)
    torch.manual_seed(11)
    whole = gen.generate([prompt], room)[0]
    torch.manual_seed(11)
    blocks = list(gen.generate_stream(prompt, room, first=8, every=16))
    joined = torch.cat(blocks, dim=1)
    ends = int(whole[0, -1]) == gen.im_end
    assert torch.equal(joined, whole[:, :-1] if ends else whole)
    assert [b.shape[1] for b in blocks[:-1]] == [8] + [16] * (len(blocks) - 2)
    assert (joined[0] != gen.im_end).all()


def test_window_decoder_matches_one_decode_only_with_context(synth):
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 64, (synth.num_codebooks, 80), generator=g)
    whole = synth.decode(codes)

    def joined(context):
        window = streaming.WindowDecoder(synth.decode, synth.codec.frame_length, context=context)
        return np.concatenate([window.push(codes[:, i:i + 8]) for i in range(0, 80, 8)] + [window.finish()])

    assert len(joined(streaming.LEFT_CONTEXT)) == len(whole)
    assert np.abs(joined(streaming.LEFT_CONTEXT) - whole).max() <= TOLERANCE
    assert np.abs(joined(0) - whole).max() > 100 * TOLERANCE  # the context is what makes it match


def test_bad_options_are_synth_errors_before_any_piece(synth):
    with pytest.raises(SynthError, match="no text"):
        next(streaming.stream_audio(synth, "   "))
    with pytest.raises(SynthError, match="temperature"):
        next(streaming.stream_audio(synth, "Moi.", temperature=0))


def test_bench_times_the_first_audio_on_a_cpu(tmp_path):
    from pipeline.bench.common import bench_shapes
    from pipeline.bench.streaming import bench_streaming

    figures = bench_streaming(bench_shapes(tmp_path, tiny=True), torch.device("cpu"), tiny=True)
    assert 0 < figures["ttfa_ms"] <= figures["total_s"] * 1000 and figures["audio_s"] > 0
    assert figures["real_time_factor"] == pytest.approx(figures["total_s"] / figures["audio_s"], rel=1e-2)
    assert figures["calls"] == 1 and figures["frames"] > 0


def test_a_decoder_error_after_the_first_piece_ends_the_call_with_a_clear_message(tiny_checkpoint, monkeypatch):
    """Audio already played cannot be taken back: the call stops with a SynthError (shown as a
    note), and the next call builds the decoder again."""
    synth = Synthesizer(tiny_checkpoint, device="cpu", fast=True)
    real = FastGenerator.generate_stream

    def breaks_after_one_block(self, *args, **kwargs):
        blocks = real(self, *args, **kwargs)
        yield next(blocks)
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(FastGenerator, "generate_stream", breaks_after_one_block)
    heard = []
    with pytest.raises(SynthError, match="Live decoding stopped partway through this sentence .*Speak again"):
        for step in streaming.stream_audio(synth, TEXT, max_new_tokens=60, seed=3):
            heard.append(step.audio.size)
    assert sum(heard) > 0 and synth._fastgen is None
    monkeypatch.setattr(FastGenerator, "generate_stream", real)
    assert streaming_result(synth).frames > 0  # the next call speaks


def streaming_result(synth):
    return list(streaming.stream_audio(synth, TEXT, max_new_tokens=20, seed=3))[-1].result
