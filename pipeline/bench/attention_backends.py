"""`python -m pipeline.bench.attention_backends`: torch's attention kernels at the slow transformer's
training shape (GPU). s1-mini's 16 query heads over 8 K/V heads of 128, 4 sequences of 4,096
positions, causal, bf16; q, k and v laid out as the model hands them over ((B, L, H, D) transposed).
Each backend is asked for by name (`torch.nn.attention.sdpa_kernel`), with grouped-query attention
native or with K/V repeated, and timed forward and forward + backward (median of
`triton.testing.do_bench`); outputs and gradients are compared with fp32 attention computed the
plain way (torch's math backend, K/V repeated: what grouped-query attention means). Why the
training forward asks for cuDNN's kernel on Hopper: docs/PERFORMANCE.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from pipeline.bench.common import sweep_command

BATCH, HEADS, KV_HEADS, LENGTH, HEAD_DIM, LAYERS = 4, 16, 8, 4096, 128, 28
BACKENDS = [  # (name, backend, K/V repeated to every query head)
    ("flash", SDPBackend.FLASH_ATTENTION, False),
    ("flash, K/V repeated", SDPBackend.FLASH_ATTENTION, True),
    ("cudnn", SDPBackend.CUDNN_ATTENTION, False),
    ("cudnn, K/V repeated", SDPBackend.CUDNN_ATTENTION, True),
    ("efficient, K/V repeated", SDPBackend.EFFICIENT_ATTENTION, True),
]


def _inputs(device):
    def tensor(heads):
        return torch.randn(BATCH, LENGTH, heads, HEAD_DIM, device=device, dtype=torch.bfloat16).transpose(1, 2)

    q, k, v = (tensor(h).requires_grad_() for h in (HEADS, KV_HEADS, KV_HEADS))
    return q, k, v, tensor(HEADS)


def _attention(backend, repeat):
    def run(q, k, v):
        if repeat:
            k, v = (t.repeat_interleave(HEADS // KV_HEADS, 1) for t in (k, v))
        with sdpa_kernel([backend]):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=not repeat)

    return run


def _relative(a, b) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def _outputs_and_gradients(run, q, k, v, grad) -> list[torch.Tensor]:
    for t in (q, k, v):
        t.grad = None  # a timing loop leaves its last gradients behind: they would add up
    out = run(q, k, v)
    out.backward(grad)
    results = [out.detach()] + [t.grad for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None  # and the timing loop's backward passes must not add into these
    return results


def _fp32_reference(q, k, v, grad) -> list[torch.Tensor]:
    leaves = [t.detach().float().requires_grad_() for t in (q, k, v)]
    return [r.to(torch.bfloat16) for r in
            _outputs_and_gradients(_attention(SDPBackend.MATH, True), *leaves, grad.float())]


def measure(device) -> dict:
    from triton.testing import do_bench

    q, k, v, grad = _inputs(device)
    forward_flops = 4 * BATCH * HEADS * HEAD_DIM * LENGTH * LENGTH / 2  # causal: half the scores
    reference = _fp32_reference(q, k, v, grad)
    rows = []
    for name, backend, repeat in BACKENDS:
        run = _attention(backend, repeat)
        try:
            results = _outputs_and_gradients(run, q, k, v, grad)
        except RuntimeError as error:  # a backend this build or card does not have
            rows.append({"backend": name, "error": str(error).splitlines()[0][:200]})
            continue
        forward_ms = do_bench(lambda: run(q, k, v), return_mode="median")
        both_ms = do_bench(lambda: run(q, k, v).backward(grad), grad_to_none=[q, k, v], return_mode="median")
        rows.append({
            "backend": name, "forward_ms": round(forward_ms, 3), "forward_backward_ms": round(both_ms, 3),
            "forward_tflops": round(forward_flops / forward_ms / 1e9, 1),
            "forward_backward_tflops": round(3.5 * forward_flops / both_ms / 1e9, 1),  # backward ≈ 2.5 forwards
            "per_step_ms": round(LAYERS * both_ms, 1),
            # output, dq, dk, dv against fp32: bf16 rounding is ~1e-2
            "relative_difference_vs_fp32": [round(_relative(a, b), 5) for a, b in zip(results, reference)],
        })
    return {"card": torch.cuda.get_device_name(device), "torch": torch.__version__,
            "cudnn": torch.backends.cudnn.version(), "shape": [BATCH, HEADS, KV_HEADS, LENGTH, HEAD_DIM],
            "results": rows}


def main(argv=None) -> None:
    report = sweep_command(__doc__, "a CUDA GPU", lambda device: True, measure, argv)
    print(f"card: {report['card']}  torch {report['torch']}  cuDNN {report['cudnn']}")
    for row in report["results"]:
        if "error" in row:
            print(f"{row['backend']:24s} not available: {row['error']}")
        else:
            print(f"{row['backend']:24s} forward {row['forward_ms']:.3f} ms  forward+backward "
                  f"{row['forward_backward_ms']:.3f} ms ({row['forward_backward_tflops']} TFLOP/s)  "
                  f"x{LAYERS} layers {row['per_step_ms']} ms  vs fp32 (out, dq, dk, dv) {row['relative_difference_vs_fp32']}")


if __name__ == "__main__":
    main()
