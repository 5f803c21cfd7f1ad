"""One-row matrix products for decoding (Triton), usable inside the compiled decode step.

Decoding one stream multiplies a single row by each weight matrix, ~335 times per frame. cuBLAS
runs these with 64x8 tiles at ~1 TB/s on an H200 (docs/PERFORMANCE.md, run 3): 1.9 ms of the
3.4 ms frame for weights it could stream in 0.4 ms. This kernel gives every program a block of
weight rows, reads them once with wide loads and reduces in fp32. It is registered as a torch
custom op (`torch.library.triton_op`), so inductor keeps it inside the compiled graph and the
CUDA graph captures it. Any other case (several rows, a bias, a CPU tensor) uses F.linear, as
does everything with FASTGEN_GEMV=0 (the bench's baseline).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

try:
    import triton
    import triton.language as tl
except ImportError:  # no Triton (e.g. a CPU-only torch): F.linear everywhere
    triton = None

if triton is not None:

    @triton.jit
    def _gemv_kernel(x_ptr, w_ptr, y_ptr, N, K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < N
        acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
        for start in range(0, K, BLOCK_K):
            cols = start + tl.arange(0, BLOCK_K)
            col_ok = cols < K
            x = tl.load(x_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
            w = tl.load(w_ptr + rows[:, None] * K + cols[None, :], mask=row_ok[:, None] & col_ok[None, :], other=0.0)
            acc += tl.sum(w.to(tl.float32) * x[None, :], axis=1)
        tl.store(y_ptr + rows, acc.to(y_ptr.dtype.element_ty), mask=row_ok)

    def _launch_args(weight: torch.Tensor):
        n, k = weight.shape
        # ~2 programs per SM for the smallest matrices (N = 1,024), wider row blocks for taller ones
        block_n = 4 if n <= 1024 else 8 if n <= 4096 else 16
        block_k = 512 if k % 512 == 0 else 256 if k % 256 == 0 else 128
        return (triton.cdiv(n, block_n),), {"BLOCK_N": block_n, "BLOCK_K": block_k}

    def gemv_unregistered(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The kernel launched directly (tests run it on the CPU with TRITON_INTERPRET=1)."""
        y = torch.empty(weight.shape[0], device=x.device, dtype=x.dtype)
        grid, blocks = _launch_args(weight)
        _gemv_kernel[grid](x, weight, y, weight.shape[0], weight.shape[1], **blocks)
        return y

    @torch.library.triton_op("finnish_tts::gemv", mutates_args=())
    def _gemv(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """weight (N, K) @ x (K,) → (N,), both contiguous, same dtype."""
        y = torch.empty(weight.shape[0], device=x.device, dtype=x.dtype)
        grid, blocks = _launch_args(weight)
        torch.library.wrap_triton(_gemv_kernel)[grid](x, weight, y, weight.shape[0], weight.shape[1], **blocks)
        return y


ENABLED = triton is not None and os.environ.get("FASTGEN_GEMV", "1") != "0"


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear, through the one-row kernel when x holds a single row on a CUDA device."""
    if not ENABLED or bias is not None or not x.is_cuda or x.numel() != weight.shape[1]:
        return F.linear(x, weight, bias)
    y = _gemv(x.reshape(-1).to(weight.dtype).contiguous(), weight.contiguous())
    return y.view(*x.shape[:-1], weight.shape[0])
