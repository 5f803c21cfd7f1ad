"""What every Triton kernel of the project shares: the one import guard (a torch build without
Triton runs the PyTorch paths), where the kernels can run, and the two ways of launching them.
Whether a kernel is used at all is an option of the caller (`launchable.yaml`'s `speed:`)."""

from __future__ import annotations

import functools
import os
import types

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


def cudnn_attention_runs_on(device) -> bool:
    """cuDNN's fused attention is available and measured faster than torch's flash kernel here:
    CUDA on a Hopper or newer GPU with cuDNN 9. On an H200, at the slow stack's training shape,
    it runs forward and backward in 2.09 ms against flash's 3.52 (docs/PERFORMANCE.md). torch 2.11
    with cuDNN 9.19 picks it there by itself; whether another torch or cuDNN does depends on their
    versions, so training asks for it by name."""
    device = torch.device(device)
    return (device.type == "cuda" and torch.backends.cudnn.is_available()
            and (torch.backends.cudnn.version() or 0) >= 90000 and torch.cuda.get_device_capability(device) >= (9, 0))


@functools.lru_cache(maxsize=None)
def cudnn_attention_takes(device, heads: int, kv_heads: int, head_dim: int, dtype) -> bool:
    """Whether cuDNN's attention runs here (`cudnn_attention_runs_on`) and takes causal attention of
    `heads` query heads over `kv_heads` K/V heads of `head_dim` values in `dtype`, forward and
    backward. What it accepts differs between torch and cuDNN releases, so one tiny call per shape
    asks it instead of a list of rules."""
    if dtype not in (torch.float16, torch.bfloat16) or not cudnn_attention_runs_on(device):
        return False
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def tensor(count):  # not random: the probe must not move the random state training draws from
        return torch.ones(1, count, 64, head_dim, device=device, dtype=dtype, requires_grad=True)

    try:  # asked with gradients even from inside an evaluation: the answer is kept for training
        with torch.inference_mode(False), torch.enable_grad(), sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            torch.nn.functional.scaled_dot_product_attention(
                tensor(heads), tensor(kv_heads), tensor(kv_heads), is_causal=True,
                enable_gqa=heads != kv_heads).sum().backward()
    except RuntimeError:  # "No available kernel", or cuDNN refusing the shape
        return False
    return True


def launch_direct(kernel, grid):
    """kernel[grid], launched by Triton itself (the CPU and the interpreter)."""
    return kernel[grid]


def launch_wrapped(kernel, grid):
    """kernel[grid] through torch.library.wrap_triton: inside a triton_op, traceable by torch.compile."""
    return torch.library.wrap_triton(kernel)[grid]


_compiled: dict[object, object] = {}


def compiled(fn):
    """fn through torch.compile, one wrapper per function, kept for the process. dynamic=None: sizes
    marked `varying` are symbolic from the first call; any other size that changes recompiles once
    with it symbolic, and later shapes reuse that graph (no compile per batch width or frame count)."""
    if fn not in _compiled:
        _compiled[fn] = torch.compile(fn, dynamic=None)
    return _compiled[fn]


def compiled_copy(fn, key):
    """`compiled` for a copy of fn with its own code object, one per key. Dynamo keeps its graphs
    and its automatic-dynamic decisions per code object: a function called with two fixed sizes
    (two heads' vocabularies) gets one static graph per size instead of a third, symbolic one."""
    if (fn, key) not in _compiled:
        code = fn.__code__.replace(co_name=f"{fn.__code__.co_name}_{key}")
        copy = types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)
        copy.__kwdefaults__ = fn.__kwdefaults__
        _compiled[(fn, key)] = torch.compile(functools.update_wrapper(copy, fn), dynamic=None)
    return _compiled[(fn, key)]


def varying(tensor: torch.Tensor, *dims: int) -> torch.Tensor:
    """tensor, with `dims` marked as sizes that change from call to call (a batch's width, its
    frame count), so that a compiled function's first call already compiles the symbolic graph
    its later calls reuse. Without the mark the first call compiles for the exact shape and the
    first call of another shape compiles the whole function again, symbolic."""
    import torch._dynamo

    for dim in dims:
        torch._dynamo.maybe_mark_dynamic(tensor, dim)
    return tensor


def raise_dynamo_limits(limit: int = 64) -> None:
    """Let dynamo keep one graph per shape (not per layer: layers share compiled functions)."""
    import torch._dynamo

    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), limit))
