"""Cross-entropy of a linear head without keeping its logits ("fused linear cross-entropy").

The token head of s1-mini maps 1,024 features to a 155,776-token vocabulary: the straightforward
loss materialises (rows x 155,776) logits, copies them to fp32, keeps them (or recomputes them)
for backward and runs softmax twice. Here, row chunk by row chunk, the forward pass computes the
logits once in the compute dtype, the loss, the top-1/top-5 hits and, when gradients are needed,
d(loss)/d(logits) = softmax - onehot, immediately turned into the gradients of the head's input
and weight; only those (inputs-sized and weight-sized) tensors wait for backward, which just
scales them by the incoming gradient. The same idea as Liger-Kernel's FusedLinearCrossEntropy,
written in torch ops (plus an optional torch.compile of the per-chunk softmax) so that it also
runs on the CPU, with peft LoRA heads handled as extra columns of one matmul.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.kernels.fused_linear import lora_branches
from pipeline.kernels import runtime
from pipeline.kernels.lora_dropout import compute_dtype, low_rank_inputs


def head_operands(head: torch.nn.Module, x: torch.Tensor, rows: int | None = None, dropout_kernel: bool = True):
    """(x, weight, x_extra, w_extra) with head(x)[..., :rows] == x @ weight.T + x_extra @ w_extra.T.

    A peft LoRA head contributes its low-rank branches as extra columns: x_extra = the scaled
    A(dropout(x)) of every active adapter, w_extra = their B matrices (grads flow to both through
    autograd; dropout_kernel: through pipeline.kernels.lora_dropout's kernels where they apply).
    Returns None for heads this cannot express (bias, DoRA, other adapter types)."""
    parts = lora_branches(head)
    if parts is None:
        return None
    base, branches = parts
    if not branches:
        return x, base.weight[:rows], None, None
    x_extra = low_rank_inputs(x, branches, enabled=dropout_kernel)
    w_extra = torch.cat([b.weight[:rows] for *_, b in branches], -1)
    return x, base.weight[:rows], x_extra, w_extra


def rank_hits(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-1 and top-5 hits from the target's rank (logits strictly above it): one pass over the
    logits instead of a top-k over a 155k vocabulary (6 % of a step on an H200). No no_grad
    decorator: inside the compiled chunk functions it would break the graph, and a comparison
    carries no gradient anyway."""
    target_logit = logits.gather(-1, targets.unsqueeze(-1))
    rank = (logits > target_logit).sum(-1)
    return (rank < 1).sum(), (rank < 5).sum()


def _ce_loss(logits: torch.Tensor, targets: torch.Tensor):
    """Summed CE and top-1/top-5 hits of one chunk (hits from the target's rank: one pass, no top-k)."""
    lf = logits.float()
    target_logit = lf.gather(1, targets[:, None])
    loss = (torch.logsumexp(lf, dim=-1) - target_logit[:, 0]).sum()
    return (loss, *rank_hits(lf, targets))


def _ce_loss_and_grad(logits: torch.Tensor, targets: torch.Tensor):
    """_ce_loss plus d(summed CE)/d(logits) = softmax - onehot, in the logits' dtype."""
    lf = logits.float()
    lse = torch.logsumexp(lf, dim=-1, keepdim=True)
    target_logit = lf.gather(1, targets[:, None])
    loss = (lse[:, 0] - target_logit[:, 0]).sum()
    onehot = torch.arange(lf.shape[1], device=lf.device)[None] == targets[:, None]
    grad = torch.exp(lf - lse) - onehot.to(lf.dtype)
    return (loss, *rank_hits(lf, targets), grad.to(logits.dtype))


def _chunk_fns(compiled: bool, vocab: int):
    """The chunk functions, compiled (the softmax passes fuse into a few reductions) once per head:
    each head's vocabulary stays a fixed size of its own graphs."""
    if not compiled:
        return _ce_loss, _ce_loss_and_grad
    return runtime.compiled_copy(_ce_loss, vocab), runtime.compiled_copy(_ce_loss_and_grad, vocab)


class _LinearCrossEntropy(torch.autograd.Function):
    """(summed CE, top-1 hits, top-5 hits) of [x | x_extra] @ [weight | w_extra].T against targets."""

    @staticmethod
    def forward(ctx, x, weight, x_extra, w_extra, targets, chunk_rows: int, compiled: bool):
        need = ctx.needs_input_grad[:4]
        grad_mode = any(need)
        loss_fn, grad_fn = _chunk_fns(compiled, weight.shape[0])  # logits columns: the head's vocabulary
        k = x.shape[1]
        w = weight if w_extra is None else torch.cat([weight, w_extra], 1)
        grads = [torch.empty_like(x) if need[0] else None,
                 torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need[1] else None,
                 torch.empty_like(x_extra) if need[2] else None,
                 torch.zeros(w_extra.shape, dtype=torch.float32, device=w_extra.device) if need[3] else None]
        total = torch.zeros((), dtype=torch.float32, device=x.device)
        hits1 = torch.zeros((), dtype=torch.long, device=x.device)
        hits5 = torch.zeros((), dtype=torch.long, device=x.device)
        for start in range(0, x.shape[0], chunk_rows):
            end = min(start + chunk_rows, x.shape[0])
            xc = x[start:end] if x_extra is None else torch.cat([x[start:end], x_extra[start:end]], 1)
            logits = xc @ w.T
            chunk_targets = targets[start:end]
            if compiled:  # the last chunk is shorter: one symbolic graph for all chunk sizes
                runtime.varying(logits, 0)
                runtime.varying(chunk_targets, 0)
            if not grad_mode:
                loss, h1, h5 = loss_fn(logits, chunk_targets)
            else:
                loss, h1, h5, g = grad_fn(logits, chunk_targets)
                del logits
                if need[0] or need[2]:
                    gx = g @ w
                    if need[0]:
                        grads[0][start:end] = gx[:, :k]
                    if need[2]:
                        grads[2][start:end] = gx[:, k:]
                if need[1]:
                    grads[1] += (g.T @ xc[:, :k]).float()
                if need[3]:
                    grads[3] += (g.T @ xc[:, k:]).float()
            total, hits1, hits5 = total + loss, hits1 + h1, hits5 + h5
        ctx.dtypes = [t.dtype if t is not None else None for t in (x, weight, x_extra, w_extra)]
        ctx.save_for_backward(*[g if g is not None else torch.empty(0) for g in grads])
        ctx.present = [g is not None for g in grads]
        ctx.mark_non_differentiable(hits1, hits5)
        return total, hits1, hits5

    @staticmethod
    def backward(ctx, grad_loss, _h1, _h5):
        out = []
        for grad, present, dtype in zip(ctx.saved_tensors, ctx.present, ctx.dtypes):
            out.append((grad * grad_loss).to(dtype) if present else None)
        return (*out, None, None, None)


def linear_cross_entropy(head: torch.nn.Module, x: torch.Tensor, targets: torch.Tensor, rows: int | None = None,
                         chunk_rows: int = 4096, compiled: bool = False, dropout_kernel: bool = True):
    """Summed cross-entropy of head(x)[..., :rows] against targets (no ignored rows), with the
    top-1/top-5 hit counts (tensors). Under autocast the matmuls run in the autocast dtype with fp32
    softmax, like autocast's own linear + cross_entropy. Differentiable w.r.t. x and the head's
    trainable weights (including LoRA A/B)."""
    operands = head_operands(head, x, rows, dropout_kernel)
    if operands is None:  # a head this module cannot split: the straightforward path
        logits = head(x)[..., :rows].float()
        return (F.cross_entropy(logits, targets, reduction="sum"), *_ce_loss(logits, targets)[1:])
    device_type = x.device.type
    dtype = compute_dtype(x)
    x, weight, x_extra, w_extra = (t.to(dtype) if t is not None else None for t in operands)
    with torch.autocast(device_type, enabled=False):
        return _LinearCrossEntropy.apply(x, weight, x_extra, w_extra, targets, chunk_rows, compiled)
