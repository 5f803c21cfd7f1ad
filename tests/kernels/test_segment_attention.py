"""pipeline.kernels.segment_attention: causal attention within packed short segments (the fast transformer).

The kernels run in Triton's interpreter on the CPU and are compiled for sm_90 (no GPU needed);
their speed is measured by `python -m pipeline bench` on a GPU.
"""

import pytest
from triton_interpreter import interpret

from pipeline.kernels import segment_attention

pytestmark = pytest.mark.skipif(segment_attention.triton is None, reason="no Triton in this torch build")

KERNELS = """
import torch, torch.nn.functional as F
from pipeline.kernels import segment_attention as sa

torch.manual_seed(0)
# rows that are not a multiple of a tile (120 rows for 10-position segments), grouped and plain heads
for segments, length, heads, kv_heads, D in [(25, 10, 4, 2, 16), (19, 7, 2, 2, 64), (3, 10, 2, 1, 32)]:
    N = segments * length
    q, k, v = (torch.randn(N, h, D, requires_grad=True) for h in (heads, kv_heads, kv_heads))
    assert sa.applies(q, k, length)
    out = sa.segment_attention(q, k, v, length)
    grad = torch.randn_like(out)
    out.backward(grad)
    got = [out.detach(), q.grad, k.grad, v.grad]
    q2, k2, v2 = (t.detach().clone().requires_grad_() for t in (q, k, v))
    # the straightforward path: every segment its own causal sequence through SDPA
    ref = F.scaled_dot_product_attention(*(t.view(segments, length, -1, D).transpose(1, 2) for t in (q2, k2, v2)),
                                         is_causal=True, enable_gqa=heads != kv_heads).transpose(1, 2).reshape(N, heads, D)
    ref.backward(grad)
    for a, b in zip(got, [ref.detach(), q2.grad, k2.grad, v2.grad]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
# inputs with a row stride (views into a wider projection output) give the same result
qkv = torch.randn(40, 4 * 16 + 2 * 2 * 16)
q, k, v = qkv.split([64, 32, 32], -1)
q, k, v = q.view(40, 4, 16), k.view(40, 2, 16), v.view(40, 2, 16)
torch.testing.assert_close(sa.segment_attention(q, k, v, 10), sa.segment_attention(q.contiguous(), k.contiguous(),
                                                                                    v.contiguous(), 10))
# packed: the qkv projection output in, the rotary embedding inside the kernels, one gradient for qkv
from fish_speech.models.text2semantic.llama import apply_rotary_emb, precompute_freqs_cis
for segments, length, heads, kv_heads, D in [(25, 10, 4, 2, 16), (3, 10, 2, 1, 32), (14, 9, 2, 2, 64)]:
    N = segments * length
    freqs = precompute_freqs_cis(length, D, base=100)  # (length, D/2, 2) in bf16, as the wheel keeps it
    qkv = torch.randn(N, (heads + 2 * kv_heads) * D, requires_grad=True)
    out = sa.packed_segment_attention(qkv, freqs, heads, kv_heads, length)
    grad = torch.randn_like(out)
    out.backward(grad)
    qkv2 = qkv.detach().clone().requires_grad_()
    q, k, v = qkv2.split([heads * D, kv_heads * D, kv_heads * D], -1)
    q, k, v = (t.view(segments, length, -1, D) for t in (q, k, v))
    q, k = apply_rotary_emb(q, freqs), apply_rotary_emb(k, freqs)
    ref = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)), is_causal=True,
                                         enable_gqa=heads != kv_heads).transpose(1, 2).reshape(N, heads, D)
    ref.backward(grad)
    torch.testing.assert_close(out.detach(), ref.detach(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(qkv.grad, qkv2.grad, rtol=1e-4, atol=1e-4)
# a freqs_cis of another shape is refused (the kernels read it unmasked)
try:
    sa.packed_segment_attention(qkv, precompute_freqs_cis(5, D), heads, kv_heads, length)
    raise AssertionError("a too short freqs_cis was accepted")
except ValueError as exc:
    assert "freqs_cis must be" in str(exc)
print("ok")
"""

FORWARD = """
import dataclasses, sys, torch
import pipeline.train.forward as fw
from pipeline.train.loss import compute_loss
from pipeline.model.adapters import attach_lora
from pipeline.bench.common import synthetic_batch
from pipeline.model.checkpoints import load_lm
from pipeline.model.tiny_checkpoint import write_tiny_checkpoint

base, tokenizer = load_lm(write_tiny_checkpoint(__import__("pathlib").Path(sys.argv[1]), seed=0))
if sys.argv[2] == "packed":  # no qk-norm in the fast layers (as s1-mini): qkv and the rotation go into the kernels
    torch.manual_seed(0)
    base = type(base)(dataclasses.replace(base.config, fast_attention_qk_norm=False), tokenizer=tokenizer)
model = attach_lora(base, rank=4, dropout=0.0)
with torch.no_grad():
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.normal_(0, 0.2)
batch = synthetic_batch(tokenizer, base.config, 2, 96, device=torch.device("cpu"))
calls = []
kernel, packed_kernel = fw.segment_attention.segment_attention, fw.segment_attention.packed_segment_attention
fw.segment_attention.segment_attention = lambda *a: calls.append("split") or kernel(*a)
fw.segment_attention.packed_segment_attention = lambda *a: calls.append("packed") or packed_kernel(*a)

def loss_and_grads(packed):
    model.zero_grad(set_to_none=True)
    out = compute_loss(model, batch, options=fw.ForwardOptions(flex_fast_attention=packed))
    out.loss.backward()
    return out.loss.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]

per_frame, per_frame_grads = loss_and_grads(False)
assert not calls
packed, packed_grads = loss_and_grads(True)  # the fast transformer's attention through the kernels
assert set(calls) == {sys.argv[2]}, calls
torch.testing.assert_close(packed, per_frame, rtol=1e-5, atol=1e-5)
for a, b in zip(packed_grads, per_frame_grads):
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
calls.clear()  # the option switches the kernels off: flex attention instead
off = fw.ForwardOptions(flex_fast_attention=True, segment_attention_kernel=False)
with torch.no_grad():
    torch.testing.assert_close(compute_loss(model, batch, options=off).loss, per_frame, rtol=1e-5, atol=1e-5)
assert not calls, calls
print("ok")
"""


def test_kernels_match_sdpa_per_segment():
    interpret(KERNELS)


@pytest.mark.parametrize("path", ["split", "packed"])
def test_training_forward_through_the_kernels_matches_per_frame_attention(tmp_path, path):
    """split: fast layers with qk-norm (q, k normed and rotated outside); packed: without (s1-mini's
    fast layers), the qkv projection output into the kernels and the rotation inside them."""
    interpret(FORWARD, str(tmp_path / "tiny"), path)


def test_kernels_compile_for_sm90():
    triton = segment_attention.triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kernels = [("forward", segment_attention._segment_attention_fwd), ("backward", segment_attention._segment_attention_bwd)]
    for (name, kernel), rope in [(k, rope) for k in kernels for rope in (False, True)]:
        sig = {n: "*bf16" if n.endswith("_ptr") else "i32" if n == "N" or n.startswith("stride") else "constexpr"
               for n in kernel.arg_names}
        sig["lse_ptr"] = "*fp32"
        consts = {"LENGTH": 10, "GROUP": 2, "D": 64, "TILE_": segment_attention.TILE, "scale": 0.125, "ROPE": rope}
        triton.compile(ASTSource(kernel, sig, consts), target=GPUTarget("cuda", 90, 32),
                       options=segment_attention.SETTINGS[name])
