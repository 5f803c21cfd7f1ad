"""Every ForwardOptions combination (the GPU speed-ups) computes the same loss and gradients."""

import contextlib
import dataclasses

import pytest
import torch

import pipeline.train.forward as fw
from pipeline.model.adapters import unwrap
import pipeline.train.loss as loss_module
from pipeline.model.adapters import attach_lora
from pipeline.bench.common import synthetic_batch
from pipeline.model.checkpoints import load_lm
from fish_speech.models.text2semantic.llama import DualARTransformer


@pytest.fixture(scope="module")
def lora_model(tiny_checkpoint):
    base, tokenizer = load_lm(tiny_checkpoint)
    # GQA in the fast transformer (as s1-mini: 16 heads over 8 K/V heads)
    args = dataclasses.replace(base.config, fast_n_head=4, fast_n_local_heads=2, fast_head_dim=8, initializer_range=0.1)
    torch.manual_seed(0)
    model = attach_lora(DualARTransformer(args, tokenizer=tokenizer), rank=4, dropout=0.0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)  # a trained-looking adapter, so that its gradients are all non-zero
    batch = synthetic_batch(tokenizer, args, 2, 192, device=torch.device("cpu"))
    return model.train(), batch


def _loss_and_grads(model, batch, **kwargs):
    model.zero_grad(set_to_none=True)
    out = loss_module.compute_loss(model, batch, **kwargs)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return out, grads


def _assert_same(a, b, tol=1e-5):
    (out_a, grads_a), (out_b, grads_b) = a, b
    torch.testing.assert_close(out_a.loss, out_b.loss, rtol=tol, atol=tol)
    torch.testing.assert_close(out_a.token_loss, out_b.token_loss, rtol=tol, atol=tol)
    assert (out_a.top1, out_a.top5, out_a.n_tokens) == (out_b.top1, out_b.top5, out_b.n_tokens)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 10
    for name in grads_a:
        assert float(grads_b[name].abs().max()) > 0, name
        rel = float((grads_a[name] - grads_b[name]).norm() / grads_b[name].norm())
        assert rel < 1e-5, (name, rel)  # fp32 rounding of a different summation order only


def test_fused_cross_entropy_equals_the_chunked_path(lora_model):
    model, batch = lora_model
    straight = _loss_and_grads(model, batch, options=fw.ForwardOptions(fused_ce=False, fused_linears=False))
    fused = _loss_and_grads(model, batch, options=fw.ForwardOptions(fused_ce=True, fused_linears=False), chunk_rows=50)
    _assert_same(fused, straight)


def test_fused_linears_equal_the_peft_modules(lora_model):
    """LoRA branches as extra matmul columns and w1|w3 as one matmul: same loss, same LoRA gradients."""
    model, batch = lora_model
    plain = _loss_and_grads(model, batch, options=fw.ForwardOptions(fused_linears=False))
    fused = _loss_and_grads(model, batch, options=fw.ForwardOptions(fused_linears=True))
    _assert_same(fused, plain)


@pytest.mark.parametrize("frames_only", [True, False])
def test_compiled_path_layout_equals_the_plain_path(lora_model, monkeypatch, frames_only):
    """The compiled path's layout (frames padded to a bucket or every position, packed flex attention
    over all frames), run eagerly: CPU inductor has no flex-attention backward; the GPU bench
    compares the compiled kernels with the same check (`check` in its JSON)."""
    model, batch = lora_model
    straight = _loss_and_grads(model, batch, options=fw.ForwardOptions(fused_ce=False, fused_linears=False))
    monkeypatch.setattr(fw, "compiled_block", lambda stack: fw._block)
    for module in (fw, loss_module):  # the norms and fast inputs eagerly too
        monkeypatch.setattr(module, "maybe_compiled", lambda fn, compiled: fn)
    monkeypatch.setattr(loss_module, "FRAME_BUCKET", 24)  # the real 1024 would pad this small batch to every position
    frames = int((batch["labels"][:, 1] != fw.IGNORE).sum())
    assert frames % 24 and frames < batch["labels"][:, 1].numel() - 24  # padding really happens
    options = fw.ForwardOptions(fused_ce=True, flex_fast_attention=True, frames_only=frames_only)
    _assert_same(_loss_and_grads(model, batch, compile_blocks=True, options=options), straight)


@pytest.mark.parametrize("segments,length", [(1, 10), (13, 10), (64, 10), (100, 7), (9, 128)])
def test_segment_block_mask_lists_exactly_the_needed_key_blocks(segments, length):
    mask = fw.segment_block_mask(segments, length, torch.device("cpu"))
    total = segments * length
    pos = torch.arange(total)
    dense = (pos[:, None] // length == pos[None] // length) & (pos[:, None] >= pos[None])
    blocks = -(-total // fw.FLEX_BLOCK)
    padded = torch.zeros(blocks * fw.FLEX_BLOCK, blocks * fw.FLEX_BLOCK, dtype=torch.bool)
    padded[:total, :total] = dense
    needed = padded.view(blocks, fw.FLEX_BLOCK, blocks, fw.FLEX_BLOCK).any(3).any(1)
    assert torch.equal(mask.to_dense()[0, 0].bool(), needed)
    assert mask.mask_mod(0, 0, torch.tensor(length), torch.tensor(length - 1)).item() is False


def test_flex_attention_of_packed_frames_equals_per_frame_attention(lora_model):
    model, _ = lora_model
    base = unwrap(model)
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(23, base.config.dim, generator=g)
    codes = torch.randint(0, 16, (23, base.config.num_codebooks), generator=g)
    with torch.no_grad():
        per_frame = fw.fast_hidden(base, hidden, codes)
        packed = fw.fast_hidden(base, hidden, codes, flex_attention=True)
        shuffled = fw.fast_hidden(base, hidden.flip(0), codes.flip(0), flex_attention=True).flip(0)
    torch.testing.assert_close(packed, per_frame, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(shuffled, per_frame, rtol=1e-5, atol=1e-5)  # frames do not see each other


def test_cudnn_attention_is_asked_for_in_the_slow_stack_only_where_it_runs(lora_model, monkeypatch):
    """The option reaches the slow transformer's SDPA call (and nothing else) only on a device where
    runtime says cuDNN attention runs; on the CPU nothing changes."""
    model, batch = lora_model
    assert not fw.runtime.cudnn_attention_runs_on(torch.device("cpu"))
    plain = _loss_and_grads(model, batch, options=fw.ForwardOptions(cudnn_attention=False))
    asked = []

    def recording(backends):
        asked.append(list(backends))
        return contextlib.nullcontext()  # the CPU has no cuDNN attention: the default kernel computes

    monkeypatch.setattr(fw, "sdpa_kernel", recording)
    _assert_same(_loss_and_grads(model, batch, options=fw.ForwardOptions(cudnn_attention=True)), plain)
    assert not asked  # not a Hopper GPU: never asked for
    monkeypatch.setattr(fw.runtime, "cudnn_attention_takes", lambda *shape: True)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # cuDNN takes half precision only
        loss_module.compute_loss(model, batch, options=fw.ForwardOptions(cudnn_attention=True))
        assert asked == [[fw.SDPBackend.CUDNN_ATTENTION]] * len(unwrap(model).layers)  # slow layers only
        asked.clear()
        loss_module.compute_loss(model, batch, options=fw.ForwardOptions(cudnn_attention=False))
    loss_module.compute_loss(model, batch, options=fw.ForwardOptions(cudnn_attention=True))  # fp32: never
    assert not asked


def test_a_cudnn_that_refuses_the_shape_leaves_the_choice_to_torch(monkeypatch):
    """Where cuDNN's attention runs but refuses this attention (here: a CPU posing as a Hopper GPU,
    where no cuDNN kernel exists), the probe says no and training keeps torch's own kernel."""
    fw.runtime.cudnn_attention_takes.cache_clear()
    monkeypatch.setattr(fw.runtime, "cudnn_attention_runs_on", lambda device: True)
    try:
        assert not fw.runtime.cudnn_attention_takes(torch.device("cpu"), 4, 2, 16, torch.bfloat16)
        assert not fw.runtime.cudnn_attention_takes(torch.device("cpu"), 4, 2, 16, torch.float32)  # never fp32
    finally:
        fw.runtime.cudnn_attention_takes.cache_clear()


@pytest.mark.skipif(not (torch.cuda.is_available() and fw.runtime.cudnn_attention_runs_on(torch.device("cuda"))),
                    reason="needs a Hopper+ GPU with cuDNN 9")
def test_cudnn_attention_gives_the_written_out_attentions_loss_and_gradients(tiny_checkpoint):
    base, tokenizer = load_lm(tiny_checkpoint)
    args = dataclasses.replace(base.config, head_dim=64, dim=256, n_head=4, n_local_heads=2, initializer_range=0.1)
    torch.manual_seed(0)
    model = attach_lora(DualARTransformer(args, tokenizer=tokenizer), rank=4, dropout=0.0).cuda().train()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    batch = synthetic_batch(tokenizer, args, 2, 512, device=torch.device("cuda"))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        with fw.sdpa_kernel([fw.SDPBackend.MATH]):  # attention written out: the meaning of GQA, no fused kernel
            plain, plain_grads = _loss_and_grads(model, batch, options=fw.ForwardOptions(cudnn_attention=False))
        cudnn, cudnn_grads = _loss_and_grads(model, batch, options=fw.ForwardOptions(cudnn_attention=True))
    torch.testing.assert_close(cudnn.loss, plain.loss, rtol=1e-2, atol=1e-2)
    for name in plain_grads:
        rel = float((cudnn_grads[name] - plain_grads[name]).norm() / plain_grads[name].norm().clamp(min=1e-12))
        assert rel < 3e-2, (name, rel)  # bf16 attention: a different kernel's rounding only
