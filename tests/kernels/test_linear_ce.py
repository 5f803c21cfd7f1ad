"""The fused linear cross-entropy computes the same loss, hits and gradients as logits + F.cross_entropy."""

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model

from pipeline.kernels.linear_ce import head_operands, linear_cross_entropy


class _Head(torch.nn.Module):
    def __init__(self, dim=24, vocab=300):
        super().__init__()
        self.out = torch.nn.Linear(dim, vocab, bias=False)

    def forward(self, x):
        return self.out(x)


def _inputs(rows=37, dim=24, vocab=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, dim, generator=g)
    targets = torch.randint(0, vocab, (rows,), generator=g)
    return x, targets


def _with_hits(head, x, targets, rows=None):
    """Some targets the head ranks first or third, so that hit counts are not trivially zero."""
    with torch.no_grad():
        order = head(x)[..., :rows].argsort(-1, descending=True)
    targets = targets.clone()
    targets[:6], targets[6:11] = order[:6, 0], order[6:11, 2]
    return targets


def _reference(head, x, targets, rows=None):
    logits = head(x)[..., :rows].float()
    loss = F.cross_entropy(logits, targets, reduction="sum")
    rank = (logits > logits.gather(1, targets[:, None])).sum(-1)
    return loss, int((rank < 1).sum()), int((rank < 5).sum())


def _grads(module, x):
    return [x.grad.clone()] + [p.grad.clone() for p in module.parameters() if p.requires_grad]


@pytest.mark.parametrize("chunk_rows", [5, 16, 4096])
def test_plain_head_loss_hits_and_gradients(chunk_rows):
    torch.manual_seed(0)
    head = _Head().out
    x, targets = _inputs()
    targets = _with_hits(head, x, targets)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    loss, h1, h5 = linear_cross_entropy(head, x1, targets, chunk_rows=chunk_rows)
    (loss * 0.37).backward()  # a scaled loss: backward must scale the precomputed gradients
    got = _grads(head, x1)
    head.zero_grad()
    ref, r1, r5 = _reference(head, x2, targets)
    (ref * 0.37).backward()
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-5)
    assert (int(h1), int(h5)) == (r1, r5) and r5 > r1 > 0
    for a, b in zip(got, _grads(head, x2)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_lora_head_with_row_limit_trains_a_and_b():
    torch.manual_seed(0)
    model = get_peft_model(_Head(), LoraConfig(r=4, lora_alpha=8, target_modules=["out"], lora_dropout=0.0))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # a trained-looking adapter: the low-rank branch changes the logits
    head = model.base_model.model.out
    x, targets = _inputs(vocab=100)
    targets = _with_hits(head, x, targets, rows=100)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    loss, h1, h5 = linear_cross_entropy(head, x1, targets, rows=100, chunk_rows=8)
    loss.backward()
    got = _grads(model, x1)
    model.zero_grad()
    ref, r1, r5 = _reference(head, x2, targets, rows=100)
    ref.backward()
    want = _grads(model, x2)
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-5)
    assert (int(h1), int(h5)) == (r1, r5) and r1 > 0
    assert len(got) == 3 and all(float(g.abs().max()) > 0 for g in got)  # x, lora_A, lora_B
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # the base weight is frozen: no gradient computed for it
    assert head.base_layer.weight.grad is None


def test_operands_reproduce_the_head_and_refuse_a_bias():
    torch.manual_seed(0)
    model = get_peft_model(_Head(), LoraConfig(r=2, target_modules=["out"]))
    head = model.base_model.model.out
    with torch.no_grad():
        head.lora_B["default"].weight.normal_()
    x, _ = _inputs()
    xs, w, xe, we = head_operands(head, x, rows=50)
    torch.testing.assert_close(xs @ w.T + xe @ we.T, head(x)[:, :50])
    assert head_operands(torch.nn.Linear(4, 3, bias=True), torch.randn(2, 4)) is None


def test_biased_head_falls_back_to_the_straightforward_loss():
    torch.manual_seed(0)
    head = torch.nn.Linear(24, 300)
    x, targets = _inputs()
    loss, h1, _ = linear_cross_entropy(head, x, targets)
    ref, r1, _ = _reference(head, x, targets)
    torch.testing.assert_close(loss, ref)
    assert int(h1) == r1


def test_no_grad_evaluation_and_bf16_autocast():
    torch.manual_seed(0)
    head = _Head().out
    x, targets = _inputs()
    with torch.no_grad():
        loss, _, _ = linear_cross_entropy(head, x, targets, chunk_rows=10)
        ref, _, _ = _reference(head, x, targets)
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-5)
    xa = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low, _, _ = linear_cross_entropy(head, xa, targets)
    low.backward()
    assert low.dtype == torch.float32 and abs(float(low) - float(ref)) / float(ref) < 2e-2
    assert xa.grad.dtype == torch.float32 and head.weight.grad.dtype == torch.float32


def test_compiled_chunks_keep_one_graph_per_head_for_every_row_count():
    """Each head's chunk function compiles once, its rows symbolic and its vocabulary fixed: a
    second head, or a shorter last chunk, must not recompile (each recompilation is seconds of a
    GPU run's first step). Both marks are needed: without the per-head copies the second head's
    vocabulary recompiles the first head's function, without the targets' mark the new row count does."""
    torch._dynamo.reset()
    heads = {vocab: _Head(vocab=vocab).out for vocab in (300, 40)}
    with torch._dynamo.config.patch(error_on_recompile=True):
        for vocab, head in heads.items():
            for rows in (37, 29, 11):
                x, targets = _inputs(rows=rows, vocab=vocab)
                with torch.no_grad():
                    got = linear_cross_entropy(head, x, targets, chunk_rows=16, compiled=True)
                torch.testing.assert_close(got[0], _reference(head, x, targets)[0], rtol=1e-5, atol=1e-4)
