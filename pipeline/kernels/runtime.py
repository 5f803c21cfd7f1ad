"""What every Triton kernel of the project shares: the one import guard (a torch build without
Triton runs the PyTorch paths), where the kernels can run, and the two ways of launching them.
Whether a kernel is used at all is an option of the caller (`launchable.yaml`'s `speed:`)."""

from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # a torch build without Triton: every caller takes its PyTorch path
    triton = tl = None

AVAILABLE = triton is not None


def triton_kernels_run_on(device) -> bool:
    """Whether the project's Triton kernels (decode_layer, lora_dropout, segment_attention, gemv) can run on
    `device`: a CUDA GPU of Ampere or newer (bf16 kernels) with Triton, or Triton's interpreter on
    the CPU (tests)."""
    device = torch.device(device)
    if not AVAILABLE:
        return False
    if device.type != "cuda":
        return os.environ.get("TRITON_INTERPRET") == "1"
    return torch.cuda.get_device_capability(device) >= (8, 0)


def launch_direct(kernel, grid):
    """kernel[grid], launched by Triton itself (the CPU and the interpreter)."""
    return kernel[grid]


def launch_wrapped(kernel, grid):
    """kernel[grid] through torch.library.wrap_triton: inside a triton_op, traceable by torch.compile."""
    return torch.library.wrap_triton(kernel)[grid]
