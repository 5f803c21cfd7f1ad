"""The decoder's one-row Triton product: the kernel's arithmetic (Triton's interpreter on the CPU)
and when pipeline.kernels.gemv.linear uses it. The compiled CUDA path is checked by the GPU bench, which
compares the decoder's logits with fish-speech's own generation."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pipeline.kernels import gemv

KERNEL_CHECK = """
import torch
from pipeline.kernels.gemv import gemv_unregistered
torch.manual_seed(0)
for n, k in [(1024, 1024), (4097, 1024), (6144, 1024), (1024, 3072), (2048, 1024), (37, 100)]:
    for dtype, tol in ((torch.float32, 1e-6), (torch.bfloat16, 1e-2)):
        w, x = torch.randn(n, k).to(dtype), torch.randn(k).to(dtype)
        ref = w.double() @ x.double()
        y = gemv_unregistered(x, w)
        assert y.dtype == dtype and y.shape == (n,)
        err = float((y.double() - ref).norm() / ref.norm())
        assert err < tol, (n, k, dtype, err)
print("ok")
"""


@pytest.mark.skipif(gemv.triton is None, reason="no Triton in this torch build")
def test_kernel_matches_a_float64_product_in_the_interpreter():
    root = Path(__file__).resolve().parents[2]
    env = os.environ | {"TRITON_INTERPRET": "1", "PYTHONPATH": str(root)}
    out = subprocess.run([sys.executable, "-c", KERNEL_CHECK], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_linear_uses_f_linear_off_the_gpu_for_several_rows_and_with_a_bias():
    torch.manual_seed(0)
    w, b = torch.randn(12, 8), torch.randn(12)
    for x, bias in ((torch.randn(1, 1, 8), None), (torch.randn(3, 8), None), (torch.randn(1, 8), b)):
        assert torch.equal(gemv.linear(x, w, bias), F.linear(x, w, bias))
