"""One-row matrix products for decoding (Triton), usable inside the compiled decode step.

Decoding one stream multiplies a single row by each weight matrix, ~335 times per frame. cuBLAS
runs these with 64x8 tiles at ~1 TB/s on an H200 (docs/history/performance-log.md): 1.9 ms of the
3.4 ms frame for weights it could stream in 0.4 ms. Here the product kernel of the fused decoder
(pipeline.kernels.decode_layer, without prologue or epilogue: 2 weight rows per program over the whole
K in one load, fp32 reduction) is registered as a torch custom op (`torch.library.triton_op`), so
inductor keeps it inside the compiled graph and the CUDA graph captures it. The compiled layers
use it for one stream when the fused decoder is off. Any other case (several rows, a bias, a CPU
tensor) uses F.linear, as does every call with enabled=False (the caller's switch: the bench's
baseline).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.kernels import decode_layer as decode_kernels
from pipeline.kernels import runtime

triton = runtime.triton  # None in a torch build without Triton: F.linear everywhere

if triton is not None:

    def _launch(launcher, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        n, k = weight.shape
        y = torch.empty(n, device=x.device, dtype=x.dtype)
        grid, consts = decode_kernels.product_launch(n, k)  # (4 warps: the kernels' default)
        launcher[grid](x, weight, y, x, x, x, 0.0, n, **consts)
        return y

    def gemv_unregistered(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The kernel launched directly (tests run it on the CPU with TRITON_INTERPRET=1)."""
        return _launch(decode_kernels.product_kernel, x, weight)

    @torch.library.triton_op("finnish_tts::gemv", mutates_args=())
    def _gemv(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """weight (N, K) @ x (K,) → (N,), both contiguous, same dtype."""
        return _launch(torch.library.wrap_triton(decode_kernels.product_kernel), x, weight)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           enabled: bool = True) -> torch.Tensor:
    """F.linear, through the one-row kernel when `enabled` and x holds a single row on a CUDA device."""
    if not enabled or triton is None or bias is not None or not x.is_cuda or x.numel() != weight.shape[1]:
        return F.linear(x, weight, bias)
    y = _gemv(x.reshape(-1).to(weight.dtype).contiguous(), weight.contiguous())
    return y.view(*x.shape[:-1], weight.shape[0])
