"""FastGenerator (static cache, per-frame step) computes what fish-speech's generation computes."""

from __future__ import annotations

import shutil

import pytest
import torch

from pipeline.bench.reference import reference_logits
from pipeline.model.checkpoints import load_lm
from pipeline.generate.fastgen import FastGenerator, effective_weight
from pipeline.model.tokens import Utterance, build_sequence


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
    greedy = {"max_new_tokens": 7, "temperature": 0.5, "top_p": 1e-4, "repetition_penalty": 1.0,
              "stop_at_end": False}
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
    from pipeline.model.adapters import attach_lora, remove_adapters

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
    """pipeline.generate.synth with fast=True (the CUDA default) decodes through FastGenerator."""
    from pipeline.generate.synth import Synthesizer

    synth = Synthesizer(tiny_checkpoint, device="cpu", fast=True)
    a = synth.speak("Hyvää huomenta!", max_new_tokens=10, seed=3)
    b = synth.speak("Hyvää huomenta!", max_new_tokens=10, seed=3)
    assert synth._fastgen is not None and synth.fast  # it really went through fastgen
    assert 0 < a.frames <= 10 and a.codes[0].shape == (synth.num_codebooks, a.frames)
    assert all((c >= 0).all() and (c < 64).all() for c in a.codes)
    assert __import__("numpy").array_equal(a.audio, b.audio)


def test_synthesizer_falls_back_from_the_fused_decoder_to_the_compiled_layers(tiny_checkpoint, monkeypatch):
    """A fused decoder that fails (e.g. a Triton compile error on an unusual GPU) is replaced by the
    compiled layers, not by fish-speech's slow generate, and the request still gets its audio."""
    import pipeline.generate.fastgen as fastgen
    from pipeline.kernels import decode_layer as decode_kernels
    from pipeline.generate.synth import Synthesizer

    class FusedFirst(fastgen.FastGenerator):  # as on a GPU: fused unless told otherwise
        def __init__(self, model, batch_size=1, fused=None, **kwargs):
            super().__init__(model, batch_size, fused=fused is None, **kwargs)

    def broken(*args, **kwargs):
        raise RuntimeError("ptxas fatal: simulated")

    if not decode_kernels.AVAILABLE:
        pytest.skip("no Triton in this torch build")
    monkeypatch.setattr(fastgen, "FastGenerator", FusedFirst)
    monkeypatch.setattr(decode_kernels, "layer", broken)
    synth = Synthesizer(tiny_checkpoint, device="cpu", fast=True)
    speech = synth.speak("Hyvää huomenta!", max_new_tokens=6, seed=3)
    assert synth.fast and synth._fastgen is not None and not synth._fastgen.fused
    assert 0 < speech.frames <= 6


def _rows(gen):
    return [gen.im_end] + list(range(gen.sem_begin, gen.sem_end + 1))


def test_kv_caches_hold_fish_speech_kv_and_nothing_else(lm):
    """After teacher-forced steps every written cache position holds the K/V fish-speech's own
    KV caches hold; positions never written (incl. the spare one) are untouched."""
    model, tokenizer = lm
    n = model.config.num_codebooks
    prompt, frames = _prompt(tokenizer, n), _frames(tokenizer, n, 4)
    gen = FastGenerator(model, batch_size=1, max_len=256, compile=False)
    sentinel = 1234.5
    for cache in gen.kc + gen.vc + gen.fkc + gen.fvc:
        cache.fill_(sentinel)
    gen.teacher_forced_logits(prompt, frames)
    written = prompt.shape[1] + frames.shape[1] - 1  # prefill T-1 columns, then one per step
    seq = torch.cat([prompt, frames], dim=1)
    model.setup_caches(max_batch_size=1, max_seq_len=model.config.max_seq_len, dtype=torch.float32)
    try:
        with torch.inference_mode():
            out = model.forward_generate(seq[None, :, :written], torch.arange(written))
            model.forward_generate_fast(out.hidden_states[0, -1][None], torch.tensor([0]))
            for k in range(1, n):  # the last frame's fast passes: codes of codebooks 0..n-2
                model.forward_generate_fast(model.fast_embeddings(frames[k, -1].view(1)), torch.tensor([k]))
        for ours, layer in zip(zip(gen.kc, gen.vc), model.layers):
            for mine, ref in zip(ours, (layer.attention.kv_cache.k_cache, layer.attention.kv_cache.v_cache)):
                assert mine.shape[2] == gen.S + 1
                torch.testing.assert_close(mine[:, :, :written], ref[:, :, :written], rtol=1e-5, atol=1e-5)
                assert bool((mine[:, :, written:] == sentinel).all())
        for ours, layer in zip(zip(gen.fkc, gen.fvc), model.fast_layers):
            for mine, ref in zip(ours, (layer.attention.kv_cache.k_cache, layer.attention.kv_cache.v_cache)):
                torch.testing.assert_close(mine, ref, rtol=1e-5, atol=1e-5)  # all n positions written
    finally:
        for layer in list(model.layers) + list(model.fast_layers):
            layer.attention.kv_cache = None
        model.max_seq_len = model.max_batch_size = -1


def test_stacked_lora_adapters_decode_like_fish_speech(lm):
    """Two active peft adapters (linears, heads and embeddings) merged by refresh_weights give the
    logits fish-speech computes through the peft modules; without adapters the base tensors are
    used as they are (only w1|w3 is a new tensor)."""
    from pipeline.model.adapters import attach_lora, remove_adapters

    model, tokenizer = lm
    n = model.config.num_codebooks
    prompt, frames = _prompt(tokenizer, n), _frames(tokenizer, n, 4)
    gen = FastGenerator(model, batch_size=1, max_len=256, compile=False)  # built before the adapters
    base_head0, base_fast = gen.teacher_forced_logits(prompt, frames)
    peft_model = attach_lora(model, rank=4, alpha=8, dropout=0.0, train_embeddings=True)
    try:
        attach_lora(peft_model, rank=2, alpha=4, dropout=0.0, train_embeddings=True, adapter_name="second")
        peft_model.base_model.set_adapter(["default", "second"], inference_mode=True)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_" in name:  # peft starts lora_B (embeddings: lora_embedding_A) at zero
                    p.normal_(0, 0.3)
        model.eval()
        gen.refresh_weights()
        head0, fast = gen.teacher_forced_logits(prompt, frames)
        ref_head, ref_fast = reference_logits(model, prompt, frames)
        torch.testing.assert_close(head0, ref_head[:, _rows(gen)], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(fast, ref_fast[..., : gen.residual_vocab], rtol=1e-4, atol=1e-4)
        assert (head0 - base_head0).abs().max() > 1e-2 and (fast - base_fast).abs().max() > 1e-2
    finally:
        remove_adapters(peft_model)
    gen.refresh_weights()
    head0, fast = gen.teacher_forced_logits(prompt, frames)
    torch.testing.assert_close(head0, base_head0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast, base_fast, rtol=1e-5, atol=1e-5)
    layer, block = model.layers[0], gen.slow_blocks[0]
    assert block.wqkv.data_ptr() == layer.attention.wqkv.weight.data_ptr()
    assert block.w2.data_ptr() == layer.feed_forward.w2.weight.data_ptr()
    assert torch.equal(block.w13, torch.cat([layer.feed_forward.w1.weight, layer.feed_forward.w3.weight]))


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="torch.compile on CPU needs a C++ compiler")
def test_compiled_step_matches_eager_in_few_graphs_without_cache_copies(lm):
    """compile=True (the CUDA path, here on CPU): same logits as eager; one graph per frame piece
    (every slow layer and length shares one); the slow block is 6 matrix products (w1|w3 fused)
    and writes the caches in place (no buffer the size of a cache is allocated)."""
    from torch._dynamo.utils import counters
    from torch._inductor import utils as inductor_utils

    model, tokenizer = lm
    n = model.config.num_codebooks
    prompt, frames = _prompt(tokenizer, n), _frames(tokenizer, n, 3)
    eager = FastGenerator(model, batch_size=1, max_len=128, compile=False)
    gen = FastGenerator(model, batch_size=1, max_len=128, compile=True)
    torch._dynamo.reset()
    before = counters["stats"]["unique_graphs"]
    fresh_cache = getattr(inductor_utils, "fresh_cache", None) or inductor_utils.fresh_inductor_cache
    with fresh_cache():  # compile for real (a cache hit would hide the generated code)
        (head0, fast), sources = inductor_utils.run_and_get_code(gen.teacher_forced_logits, prompt, frames)
    assert counters["stats"]["unique_graphs"] - before == 5  # embed, slow block, head 0, codebook, finish
    want_head, want_fast = eager.teacher_forced_logits(prompt, frames)
    torch.testing.assert_close(head0, want_head, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fast, want_fast, rtol=1e-4, atol=1e-4)
    slow = [s.split("def call(")[1].split("def benchmark_compiled_module")[0] for s in sources if "bmm(" in s]
    assert len(slow) == 1
    assert slow[0].count("extern_kernels.mm(") == 4 and slow[0].count("extern_kernels.bmm(") == 2
    shapes = [line.split("((")[1].split(")")[0].split(", ") for line in slow[0].splitlines() if "empty_strided" in line]
    assert shapes  # ... and none is a copy of a cache or of its attended part: (B * kv_heads, S+1 | L, head_dim)
    assert not [s for s in shapes if s[-1] == str(model.config.head_dim)
                and any(d == str(gen.S + 1) or not d.isdigit() for d in s)]
    torch._dynamo.reset()


@pytest.mark.parametrize("vocab", [64, 1024, 1500])  # pairwise ranks up to 1,024 tokens, a sort above
def test_top_p_cut_matches_a_stable_sort(vocab):
    """The decoder's top-p cut (pipeline.generate.fastgen_step._beyond_top_p) removes exactly what fish-speech's
    sort + cumulative softmax removes, ties ranked by index (a stable sort), the top token kept."""
    from pipeline.generate.fastgen_step import _beyond_top_p

    g = torch.Generator().manual_seed(vocab)
    # bf16-rounded logits (many exact ties, as the decoder's are), held in float64 so that the two
    # summation orders cannot straddle the threshold
    logits = (torch.randn(4, vocab, generator=g) * 3).to(torch.bfloat16).double()
    logits[3] = logits[3, 0]  # a row of nothing but ties
    for top_p in (1e-4, 0.3, 0.8, 0.999):  # (at 1.0 either order may round the last sum past it)
        top = torch.tensor(top_p, dtype=torch.float64)
        ordered, order = torch.sort(logits, dim=-1, descending=True, stable=True)
        remove = torch.cumsum(torch.softmax(ordered, dim=-1), dim=-1) > top
        remove[:, 0] = False
        want = remove.scatter(1, order, remove)
        got = _beyond_top_p(logits, top)
        assert torch.equal(got, want), (top_p, (got != want).sum())
        assert not got.all(-1).any()  # something always survives


def test_decode_options_reach_the_decoder(lm, monkeypatch):
    """DecodeOptions (config.speed) decide the fused decoder, the one-row products and the compile
    mode; without options the defaults with the environment's overrides apply."""
    from pipeline.config import Config
    from pipeline.generate.fastgen import DecodeOptions

    model, _ = lm
    options = DecodeOptions.from_speed(Config().with_overrides({"speed.gemv": False, "speed.fused_decoder": False}).speed)
    gen = FastGenerator(model, batch_size=1, max_len=128, compile=False, options=options)
    assert gen.options == options and not gen.fused
    assert gen.slow_dims.gemv is False and gen.fast_dims.gemv is False
    monkeypatch.setenv("FASTGEN_GEMV", "0")
    assert FastGenerator(model, batch_size=1, max_len=128, compile=False).fast_dims.gemv is False
    monkeypatch.delenv("FASTGEN_GEMV")
    assert FastGenerator(model, batch_size=1, max_len=128, compile=False).options == DecodeOptions()
