"""Linear layers (plain or peft-LoRA-wrapped) of one input computed as ONE matmul.

peft computes a LoRA Linear as base(x) + B(A(dropout(x))) * scale: the low-rank output is a full
(rows x out) tensor written, read back and added, and backward reads the output gradient twice
more for B's input gradient and the sum. Here the low-rank activations u = scale * A(dropout(x))
ride along as extra input columns: y = [x | u] @ [W | B].T, one matmul whose input gradient
also yields u's. Linears that share an input (w1 and w3 of a feed-forward) are stacked into the
same matmul. A custom autograd Function keeps backward to what LoRA needs: the gradient of the
frozen W is never computed (autograd would otherwise compute a full weight gradient for the
concatenated matrix), and only u (rows x rank), not x, is kept for B's gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.kernels import lora_dropout as lora_down


def lora_branches(module: torch.nn.Module):
    """(base nn.Linear, [(A, dropout, scale, B) per active adapter]) or None when the module is
    something this cannot express (a bias, DoRA or another LoRA variant, not a Linear)."""
    from peft.tuners.lora import Linear as LoraLinear

    branches = []
    if isinstance(module, LoraLinear):
        if not (module.merged or module.disable_adapters):
            for name in module.active_adapters:
                if name not in module.lora_A:
                    continue
                if getattr(module, "use_dora", {}).get(name) or getattr(module, "lora_variant", {}).get(name):
                    return None
                branches.append((module.lora_A[name], module.lora_dropout[name], module.scaling[name],
                                 module.lora_B[name]))
        module = module.get_base_layer()
    if type(module) is not torch.nn.Linear or module.bias is not None:
        return None
    return module, branches


class _FrozenBaseLinear(torch.autograd.Function):
    """[x | u] @ [w | w_low].T for a frozen w: gradients for x, u and w_low only."""

    @staticmethod
    def forward(ctx, x, u, w, w_low):
        ctx.save_for_backward(u, w, w_low)
        return F.linear(torch.cat([x, u], -1), torch.cat([w, w_low], -1))

    @staticmethod
    def backward(ctx, grad):
        u, w, w_low = ctx.saved_tensors
        k = w.shape[1]
        grad_in = grad @ torch.cat([w, w_low], -1)
        grad_low = grad.flatten(0, -2).T @ u.flatten(0, -2) if ctx.needs_input_grad[3] else None
        return grad_in[..., :k], grad_in[..., k:], None, grad_low


def _stacked_weights(parts, dtype):
    """(the bases' weights stacked, in dtype; w_low: the B matrices, block-diagonal so that module
    i's rows face only its own adapters' columns of u; every branch in order)."""
    bases = [p[0] for p in parts]
    weight = bases[0].weight if len(bases) == 1 else torch.cat([b.weight for b in bases], 0)
    blocks, col = [], 0
    total_rank = sum(b.weight.shape[1] for _, branches in parts for *_, b in branches)
    for base, branches in parts:
        row = [b.weight for *_, b in branches]
        rank = sum(r.shape[1] for r in row)
        before, after = col, total_rank - col - rank
        row = ([weight.new_zeros(base.out_features, before)] if before else []) + row + \
              ([weight.new_zeros(base.out_features, after)] if after else [])
        blocks.append(torch.cat(row, -1))
        col += rank
    branches = [branch for _, module_branches in parts for branch in module_branches]
    return weight.to(dtype), torch.cat(blocks, 0).to(dtype), branches


def shared_input_linear(modules, x: torch.Tensor, stacked: bool = False,
                        dropout_kernel: bool = True) -> list[torch.Tensor]:
    """[m(x) for m in modules], computed as one matmul (see the module docstring); stacked: the
    outputs side by side as one tensor, [torch.cat(outputs, -1)]. dropout_kernel: LoRA dropout
    drawn inside pipeline.kernels.lora_dropout's kernels where they apply (False: torch's)."""
    parts = [lora_branches(m) for m in modules]
    unfused = any(p is None for p in parts) or \
        (any(p[1] for p in parts) and any(p[0].weight.requires_grad for p in parts))
    if unfused:  # a module this cannot express, or LoRA on a trainable base (not a case the Function covers)
        outs = [m(x) for m in modules]
        return [torch.cat(outs, -1)] if stacked and len(outs) > 1 else outs
    sizes = [p[0].out_features for p in parts]
    if not any(p[1] for p in parts):  # no active adapter (full fine-tuning, or a plain model)
        weight = parts[0][0].weight if len(parts) == 1 else torch.cat([p[0].weight for p in parts], 0)
        y = F.linear(x, weight)
    else:
        dtype = lora_down.compute_dtype(x)
        weight, w_low, branches = _stacked_weights(parts, dtype)
        if lora_down.kernel_applies(x, branches, enabled=dropout_kernel):  # dropout masks drawn inside the kernels
            y = lora_down.dropped_linear(x, branches, dtype, weight, w_low)
        else:
            u = lora_down.low_rank_inputs(x, branches, dtype, enabled=dropout_kernel)
            y = _FrozenBaseLinear.apply(x.to(dtype), u, weight, w_low)
    return [y] if stacked or len(sizes) == 1 else list(y.split(sizes, -1))


def glu_linear(module, gate_up: torch.Tensor, dropout_kernel: bool = True) -> torch.Tensor:
    """module(silu(gate) * up) for gate_up = [gate | up] (a feed-forward's w2). With LoRA and the
    kernels, silu(gate) * up is made inside them, forward and backward: the 3,072-wide product and
    its gradient are never written to memory (two passes fewer each way)."""
    parts = lora_branches(module)
    if parts is not None and parts[1] and not parts[0].weight.requires_grad and \
            lora_down.kernel_applies(gate_up, parts[1], glu=True, enabled=dropout_kernel):
        dtype = lora_down.compute_dtype(gate_up)
        weight, w_low, branches = _stacked_weights([parts], dtype)
        return lora_down.dropped_linear(gate_up, branches, dtype, weight, w_low, glu=True)
    gate, up = gate_up.chunk(2, -1)
    return shared_input_linear([module], F.silu(gate) * up, dropout_kernel=dropout_kernel)[0]
