"""FastGenerator (static cache, per-frame step) computes what fish-speech's generation computes."""

from __future__ import annotations

import pytest
import torch

from pipeline.checkpoints import load_lm
from pipeline.bench_reference import reference_logits
from pipeline.fastgen import FastGenerator, effective_weight
from pipeline.tokens import Utterance, build_sequence


@pytest.fixture(scope="module")
def lm(tiny_checkpoint):
    torch.manual_seed(0)
    model, tokenizer = load_lm(tiny_checkpoint)
    # larger weights than the checkpoint's init, so that wrong positions/masks change logits clearly
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.normal_(0, 0.2)
    return model, tokenizer


def _prompt(tokenizer, n, text="Hyvää päivää.", frames=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    n_sem = len(tokenizer.semantic_id_to_token_id)
    codes = torch.randint(0, n_sem, (n, frames), generator=g)
    ref = Utterance("Moi vaan!", codes)
    return build_sequence(tokenizer, n, [ref, Utterance(text, None)], for_generation=True).tokens


def _frames(tokenizer, n, count, seed=1):
    """(n+1, count) frames as generation writes them: semantic token id, then codes."""
    g = torch.Generator().manual_seed(seed)
    n_sem = len(tokenizer.semantic_id_to_token_id)
    codes = torch.randint(0, n_sem, (n, count), generator=g)
    return torch.cat([codes[:1] + tokenizer.semantic_begin_id, codes])


def test_teacher_forced_logits_match_fish_speech_generation(lm):
    model, tokenizer = lm
    n = model.config.num_codebooks
    prompt, frames = _prompt(tokenizer, n), _frames(tokenizer, n, 6)
    gen = FastGenerator(model, batch_size=1, max_len=256, compile=False, cuda_graph=False)
    head0, fast = gen.teacher_forced_logits(prompt, frames)
    ref_head, ref_fast = reference_logits(model, prompt, frames)
    rows = [gen.im_end] + list(range(gen.sem_begin, gen.sem_end + 1))
    assert head0.shape == (6, len(rows)) and fast.shape == (6, n - 1, gen.residual_vocab)
    torch.testing.assert_close(head0, ref_head[:, rows], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fast, ref_fast[..., : gen.residual_vocab], rtol=1e-4, atol=1e-4)
    # a cache shorter than the prompt + frames is refused, not silently wrapped
    with pytest.raises(ValueError, match="does not fit"):
        FastGenerator(model, max_len=prompt.shape[1], compile=False).start([prompt])


def test_batched_greedy_equals_one_stream_each(lm):
    """Streams with different prompt lengths decode independently (own positions and masks)."""
    model, tokenizer = lm
    n = model.config.num_codebooks
    prompts = [_prompt(tokenizer, n, "Lyhyt.", frames=3, seed=2),
               _prompt(tokenizer, n, "Tämä kehote on selvästi pidempi kuin toinen.", frames=9, seed=3)]
    assert prompts[0].shape[1] != prompts[1].shape[1]
    greedy = dict(max_new_tokens=7, temperature=0.5, top_p=1e-4, repetition_penalty=1.0, stop_at_end=False)
    batch = FastGenerator(model, batch_size=2, max_len=128, compile=False).generate(prompts, **greedy)
    single = FastGenerator(model, batch_size=1, max_len=128, compile=False)
    for prompt, got in zip(prompts, batch):
        want = single.generate([prompt], **greedy)[0]
        assert torch.equal(got, want)
        assert got.shape == (n + 1, 7)
        codes0 = got[0] - tokenizer.semantic_begin_id
        is_end = got[0] == tokenizer.get_token_id("<|im_end|>")
        assert bool(((codes0 == got[1]) | is_end).all())  # row 1 repeats codebook 0
        assert int(got[2:].max()) < min(1024, model.config.codebook_size)


def test_sampling_is_seeded_and_stops_at_im_end(lm):
    model, tokenizer = lm
    n = model.config.num_codebooks
    gen = FastGenerator(model, batch_size=1, max_len=128, compile=False)
    prompt = _prompt(tokenizer, n)
    torch.manual_seed(5)
    a = gen.generate([prompt], max_new_tokens=40, temperature=1.0, top_p=1.0)[0]
    torch.manual_seed(5)
    b = gen.generate([prompt], max_new_tokens=40, temperature=1.0, top_p=1.0)[0]
    assert torch.equal(a, b) and 1 <= a.shape[1] <= 40
    im_end = tokenizer.get_token_id("<|im_end|>")
    allowed = (a[0] == im_end) | ((a[0] >= tokenizer.semantic_begin_id) & (a[0] <= tokenizer.semantic_end_id))
    assert bool(allowed.all())  # codebook 0 only ever samples audio or the end token
    ends = (a[0] == im_end).nonzero()
    if len(ends):
        assert int(ends[0]) == a.shape[1] - 1  # nothing after <|im_end|>
    # force an immediate end: the head row of <|im_end|> dominates
    with torch.no_grad():
        gen.head0[0] = gen.head0[1:].abs().sum(0) * 10
        gen.head0[1:] *= 0
    try:
        out = gen.generate([prompt], max_new_tokens=20, temperature=0.7, top_p=0.8)[0]
    finally:
        gen.refresh_weights()
    assert out.shape[1] == 1 and int(out[0, 0]) == im_end


def test_effective_weight_includes_lora_deltas(lm):
    from pipeline.adapters import attach_lora, remove_adapters

    model, _ = lm
    peft_model = attach_lora(model, rank=4, alpha=8, dropout=0.0)
    try:
        layer = model.output
        with torch.no_grad():
            for name, p in layer.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.5)
        x = torch.randn(3, model.config.dim)
        torch.testing.assert_close(x @ effective_weight(layer).T, layer(x), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(effective_weight(layer), layer.get_base_layer().weight)
    finally:
        remove_adapters(peft_model)


def test_synthesizer_fast_path_speaks(tiny_checkpoint):
    """pipeline.synth with fast=True (the CUDA default) decodes through FastGenerator."""
    from pipeline.synth import Synthesizer

    synth = Synthesizer(tiny_checkpoint, device="cpu", fast=True)
    a = synth.speak("Hyvää huomenta!", max_new_tokens=10, seed=3)
    b = synth.speak("Hyvää huomenta!", max_new_tokens=10, seed=3)
    assert synth._fastgen is not None and synth.fast  # it really went through fastgen
    assert 0 < a.frames <= 10 and a.codes[0].shape == (synth.num_codebooks, a.frames)
    assert all((c >= 0).all() and (c < 64).all() for c in a.codes)
    assert __import__("numpy").array_equal(a.audio, b.audio)
