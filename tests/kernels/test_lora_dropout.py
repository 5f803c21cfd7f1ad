"""pipeline.kernels.lora_dropout: LoRA's down-projection with the dropout mask drawn inside the kernels.

The kernels run in Triton's interpreter on the CPU (TRITON_INTERPRET=1, a subprocess) and are
compiled for sm_90 (no GPU needed); their speed is measured by `python -m pipeline bench` on a GPU.
"""

import pytest
from triton_interpreter import interpret as _interpret

from pipeline.kernels import lora_dropout as lora_down

pytestmark = pytest.mark.skipif(lora_down.triton is None, reason="no Triton in this torch build")

MASK = """
import torch
from pipeline.kernels import lora_dropout as ld

M, K = 512, 1024
for p in (0.01, 0.25):
    th = ld.threshold_for(p)
    drop = ~ld.keep_mask(torch.tensor([7], dtype=torch.int32), M, K, th)
    q = th / 65536  # p rounded to 16 bits
    assert abs(q - p) <= 2 ** -17
    tol = 6 * (q * (1 - q) / (M * K)) ** 0.5
    assert abs(drop.float().mean().item() - q) < tol, (p, drop.float().mean().item())
    if p == 0.25:  # every 16-bit half of every Philox word, every row of a tile: the same rate
        by_column = drop.view(M, K // 8, 8).float().mean((0, 1))
        by_row = drop.view(M // 64, 64, K).float().mean((0, 2))
        assert (by_column - q).abs().max() < 6 * (q * (1 - q) / (M * K / 8)) ** 0.5, by_column
        assert (by_row - q).abs().max() < 6 * (q * (1 - q) / (M * K / 64)) ** 0.5, by_row
        other = ~ld.keep_mask(torch.tensor([8], dtype=torch.int32), M, K, th)  # the next adapter's seed
        both = (drop & other).float().mean().item()
        assert abs(both - q * q) < 6 * (q * q / (M * K)) ** 0.5, both  # independent masks
print("ok")
"""

KERNELS = """
import torch
from pipeline.kernels import lora_dropout as ld

torch.manual_seed(0)
for M, K, adapters, r in [(150, 256, 2, 8), (70, 200, 1, 4), (64, 1024, 3, 16), (40, 128, 2, 32)]:
    th = ld.threshold_for(0.2)
    seed = torch.tensor([1234], dtype=torch.int32)
    x, a = torch.randn(M, K), torch.randn(adapters, r, K) / K ** 0.5
    scale, gu, gx = torch.rand(adapters) + 0.5, torch.randn(M, adapters * r), torch.randn(M, K)
    masks = [ld.keep_mask(seed + i, M, K, th) for i in range(adapters)]
    want_u = torch.cat([scale[i] * (x * masks[i]) @ a[i].T for i in range(adapters)], -1)
    want_gx = gx + sum(scale[i] * masks[i] * (gu[:, i * r:(i + 1) * r] @ a[i]) for i in range(adapters))
    want_ga = torch.stack([scale[i] * gu[:, i * r:(i + 1) * r].T @ (x * masks[i]) for i in range(adapters)])
    torch.testing.assert_close(ld.down(x, a, seed, scale, th), want_u, rtol=1e-4, atol=1e-4)
    xu = ld.down(x, a, seed, scale, th, with_x=True)  # [x | u], rows padded to 64 elements
    assert xu.shape == (M, K + adapters * r) and xu.stride(0) % 64 == 0
    assert torch.equal(xu[:, :K], x)
    torch.testing.assert_close(xu[:, K:], want_u, rtol=1e-4, atol=1e-4)
    # the gradient of [x | u] as one buffer with padded rows (what the fused linear's backward passes)
    g = torch.zeros(M, K + adapters * r + 24)[:, : K + adapters * r]
    g[:, :K], g[:, K:] = gx, gu
    torch.testing.assert_close(ld.grad_input(g, K, True, a, seed, scale, th), want_gx, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ld.grad_input(gu, 0, False, a, seed, scale, th), want_gx - gx, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ld.grad_weight(x, gu, 0, a, seed, scale, th), want_ga, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ld.grad_weight(xu, g, K, a, seed, scale, th), want_ga, rtol=1e-4, atol=1e-4)
    # GLU: the input is [gate | up] and x = silu(gate) * up is made in the kernels, forward and backward
    gate_up = torch.randn(M, 2 * K, requires_grad=True)
    m = torch.nn.functional.silu(gate_up[:, :K]) * gate_up[:, K:]
    m.backward(want_gx)
    want_um = torch.cat([scale[i] * (m.detach() * masks[i]) @ a[i].T for i in range(adapters)], -1)
    mu = ld.down(gate_up.detach(), a, seed, scale, th, with_x=True, glu=True)
    torch.testing.assert_close(mu[:, :K], m.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mu[:, K:], want_um, rtol=1e-4, atol=1e-4)
    got = ld.grad_input(g, K, True, a, seed, scale, th, glu=gate_up.detach())
    torch.testing.assert_close(got, gate_up.grad, rtol=1e-4, atol=1e-4)
print("ok")
"""

LINEARS = """
import torch
from peft import LoraConfig, get_peft_model
from pipeline.kernels import lora_dropout as ld
from pipeline.kernels.fused_linear import lora_branches, shared_input_linear

from pipeline.train.forward import _feed_forward

class FF(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w1, self.w3 = torch.nn.Linear(64, 48, bias=False), torch.nn.Linear(64, 48, bias=False)
        self.w2 = torch.nn.Linear(48, 64, bias=False)

torch.manual_seed(0)
model = get_peft_model(FF(), LoraConfig(r=4, lora_alpha=8, target_modules=["w1", "w2", "w3"], lora_dropout=0.3)).train()
with torch.no_grad():
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.normal_(0, 0.5)
ff = model.base_model.model
x = torch.randn(2, 37, 64)
branches = [lora_branches(m)[1][0] for m in (ff.w1, ff.w3)]
assert ld.kernel_applies(x, branches)

TH = ld.threshold_for(0.3)
KEEP = 1 - TH / 65536

def run(fn):
    model.zero_grad(set_to_none=True)
    x1 = x.clone().requires_grad_()
    torch.manual_seed(5)
    outs = fn(x1)
    sum((o * (i + 1)).sin().sum() for i, o in enumerate(outs)).backward()
    grads = [x1.grad] + [p.grad for p in model.parameters() if p.requires_grad]
    return [o.detach() for o in outs], [g for g in grads if g is not None]

def dropped(x1, seed, i):  # x with adapter i's mask, as the kernels draw it
    return x1 * ld.keep_mask(seed + i, x1.shape[0] * x1.shape[1], x1.shape[-1], TH).view(x1.shape) / KEEP

def first_seed():  # the kernels' seed: the first draw after manual_seed
    return torch.randint(0, 2**31 - 1 - ld.MAX_ADAPTERS, (1,), dtype=torch.int32)

def reference(x1):  # peft's formula with the kernels' masks
    seed = first_seed()
    return [m.base_layer(x1) + b(a(dropped(x1, seed, i))) * s
            for i, (m, (a, _, s, b)) in enumerate(zip((ff.w1, ff.w3), branches))]

def low_reference(x1):
    seed = first_seed()
    return [torch.cat([a(dropped(x1, seed, i)) * s for i, (a, _, s, _) in enumerate(branches)], -1)]

def ff_reference(x1):  # w2(silu(w1 x) * w3 x), two kernel calls: two seeds in this order
    gate, up = reference(x1)
    m, seed = torch.nn.functional.silu(gate) * up, first_seed()
    a, _, s, b = lora_branches(ff.w2)[1][0]
    return [ff.w2.base_layer(m) + b(a(dropped(m, seed, 0))) * s]

cases = [(lambda x1: shared_input_linear([ff.w1, ff.w3], x1), reference, 5),
         (lambda x1: [ld.low_rank_inputs(x1, branches)], low_reference, 3),  # the heads' path (linear_ce)
         (lambda x1: [_feed_forward(ff, x1, True)], ff_reference, 7)]  # silu(gate) * up inside the kernels
glu_calls = []
fused = ld.dropped_linear
ld.dropped_linear = lambda *a, glu=False, **k: glu_calls.append(glu) or fused(*a, glu=glu, **k)
for fn, ref_fn, n_grads in cases:
    got, got_grads = run(fn)
    want, want_grads = run(ref_fn)
    assert len(got_grads) == len(want_grads) == n_grads and all(float(g.abs().max()) > 0 for g in got_grads)
    for a_, b_ in zip(got + got_grads, want + want_grads):
        torch.testing.assert_close(a_, b_, rtol=1e-4, atol=1e-4)
assert True in glu_calls  # the feed-forward took the kernels' silu(gate) * up path
# a fresh draw per call; the same draw after the same RNG state (how recomputation replays it)
torch.manual_seed(1); one = ld.low_rank_inputs(x, branches)
two = ld.low_rank_inputs(x, branches)
torch.manual_seed(1); again = ld.low_rank_inputs(x, branches)
assert torch.equal(one, again) and not torch.equal(one, two)
print("ok")
"""

CHECKPOINTING = """
import dataclasses, sys, torch
import pipeline.train.forward as fw
from pipeline.train.loss import compute_loss
from pipeline.model.adapters import attach_lora
from pipeline.bench.common import synthetic_batch
from pipeline.model.checkpoints import load_lm
from pipeline.model.tiny_checkpoint import write_tiny_checkpoint
from fish_speech.models.text2semantic.llama import DualARTransformer

base, tokenizer = load_lm(write_tiny_checkpoint(__import__("pathlib").Path(sys.argv[1]), seed=0))
torch.manual_seed(0)
model = attach_lora(DualARTransformer(base.config, tokenizer=tokenizer), rank=4, dropout=0.1).train()
with torch.no_grad():
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.normal_(0, 0.2)
batch = synthetic_batch(tokenizer, base.config, 2, 96, device=torch.device("cpu"))

def loss_and_grads(checkpointing, seed=3):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    out = compute_loss(model, batch, gradient_checkpointing=checkpointing)
    out.loss.backward()
    return out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

import pipeline.kernels.lora_dropout as ld
calls = []
draw = ld.operands
ld.operands = lambda *a: calls.append(1) or draw(*a)
plain, plain_grads = loss_and_grads(False)
assert calls, "the kernel path was not taken"
recomputed, grads = loss_and_grads(True)  # recomputation must draw the very same masks
torch.testing.assert_close(recomputed, plain, rtol=1e-5, atol=1e-5)
for name in plain_grads:
    torch.testing.assert_close(grads[name], plain_grads[name], rtol=1e-4, atol=1e-5)
other, _ = loss_and_grads(False, seed=4)
assert not torch.equal(other, plain)  # dropout is live: another RNG state, another loss
calls.clear()  # the option switches the kernels off: torch draws the dropout
compute_loss(model, batch, options=fw.ForwardOptions(lora_dropout_kernel=False)).loss.backward()
assert not calls
print("ok")
"""


def test_mask_has_the_dropout_rate_everywhere_and_adapters_draw_independently():
    _interpret(MASK)


def test_kernels_match_torch_with_the_same_mask():
    """Forward, input gradient (with and without the base path's gradient) and A's gradient, for
    ragged row counts, a width that is not a multiple of the tile, 1-3 adapters, ranks 4-32."""
    _interpret(KERNELS)


def test_fused_linear_and_head_path_equal_peft_with_the_kernels_masks():
    _interpret(LINEARS)


def test_gradient_checkpointing_replays_the_same_masks(tmp_path):
    """compute_loss on a tiny LoRA model with dropout: recomputation in backward draws the same
    masks (same loss and gradients with and without checkpointing)."""
    _interpret(CHECKPOINTING, str(tmp_path / "tiny"))


def test_kernels_compile_for_sm90():
    triton = lora_down.triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    target = GPUTarget("cuda", 90, 32)
    def tiles(name):  # the launchers' own choice: "<kernel>_glu" for the SiLU variant
        _, _, consts, options = lora_down._settings(name.removesuffix("_glu"), 8, name.endswith("_glu"))
        return consts | {"RANK": 8}, options

    assert tiles("grad_input_glu")[0]["ROWS"] == lora_down.TILES["grad_input_glu"]["ROWS"] != \
        tiles("grad_input")[0]["ROWS"]  # the SiLU variant really gets its own tile

    scalars = {"seed_ptr": "*i32", "scale_ptr": "*fp32", "M": "i32", "K": "i32", "threshold": "i32"}
    variants = [("down_glu" if glu else "down", lora_down._down_kernel, {"x_ptr": "*bf16", "a_ptr": "*bf16", "out_ptr": "*bf16",
                                                  "stride_x": "i32", "stride_out": "i32", "u_col": "i32"},
                 {"WRITE_X": write, "GLU": glu}) for write, glu in [(True, False), (False, False), (True, True)]]
    variants.append(("grad_weight", lora_down._grad_weight_kernel,
                     {"x_ptr": "*bf16", "g_ptr": "*bf16", "part_ptr": "*fp32", "stride_x": "i32", "stride_g": "i32",
                      "gu_col": "i32"}, {}))
    grad_input = {"g_ptr": "*bf16", "a_ptr": "*bf16", "out_ptr": "*bf16", "glu_ptr": "*bf16", "stride_g": "i32",
                  "gu_col": "i32", "stride_glu": "i32"}
    variants += [("grad_input_glu" if glu else "grad_input", lora_down._grad_input_kernel, grad_input, {"ADAPTERS": n, "HAS_BASE": base, "GLU": glu})
                 for n, base, glu in [(1, True, False), (2, True, False), (1, False, False), (1, True, True)]]
    for name, kernel, pointers, extra in variants:
        consts, tile = tiles(name)
        consts |= extra
        sig = {n: (pointers | scalars).get(n, "constexpr") for n in kernel.arg_names}
        triton.compile(ASTSource(kernel, sig, consts), target=target, options=tile)
