"""The fused decoder's Triton kernels (pipeline.kernels.decode_layer): their arithmetic in Triton's
interpreter on the CPU, the whole fused decoder against the compiled path's functions run eagerly,
and a compile of every kernel for the H100/H200 architecture (sm_90, no GPU needed). The kernels'
speed is measured by `python -m pipeline bench --only generate` on a GPU (docs/PERFORMANCE.md)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.kernels import decode_layer as decode_kernels

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not decode_kernels.AVAILABLE, reason="no Triton in this torch build")

PRODUCTS = """
import torch
import torch.nn.functional as F
from pipeline.kernels.decode_layer import product

def rms(x, w, eps):  # fish-speech's RMSNorm
    return (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)) * w

torch.manual_seed(0)
for streams in (1, 3):
    for n, k in [(96, 64), (37, 100), (64, 192)]:
        x, w = torch.randn(streams, k), torch.randn(2 * n, k) / k ** 0.5
        g, res, bias = torch.rand(k) + 0.5, torch.randn(streams, n), torch.randn(n)
        top = w[:n]
        cases = {
            "plain": (product(x, top), x @ top.T),
            "norm": (product(x, top, g, 1e-6), rms(x, g, 1e-6) @ top.T),
            "residual+bias": (product(x, top, residual=res, bias=bias), res + x @ top.T + bias),
            "swiglu": (product(x, w, g, 1e-6, swiglu=True),
                       F.silu(rms(x, g, 1e-6) @ w[:n].T) * (rms(x, g, 1e-6) @ w[n:].T)),
        }
        for name, (got, want) in cases.items():
            assert got.shape == (streams, n), (name, got.shape)
            err = float((got - want).abs().max())
            assert err < 1e-4, (name, streams, n, k, err)
print("ok")
"""

DECODER = """
import torch
import pipeline.kernels.decode_layer as dk
from pipeline.model.checkpoints import load_lm
from pipeline.generate.fastgen import FastGenerator
from pipeline.model.tiny_checkpoint import write_tiny_checkpoint
from pipeline.model.tokens import Utterance, build_sequence
import sys

dk.ATTENTION_BLOCK = 8  # tiny caches still split: 16 splits of 16 positions, two steps each
torch.manual_seed(0)
model, tok = load_lm(write_tiny_checkpoint(__import__("pathlib").Path(sys.argv[1]), seed=0))
with torch.no_grad():
    for p in model.parameters():
        if p.ndim >= 2:
            p.normal_(0, 0.2)
n = model.config.num_codebooks
g = torch.Generator().manual_seed(0)
n_sem = len(tok.semantic_id_to_token_id)
voice = Utterance("Moi vaan!", torch.randint(0, n_sem, (n, 5), generator=g))
prompt = build_sequence(tok, n, [voice, Utterance("Hyvää päivää.", None)], for_generation=True).tokens
codes = torch.randint(0, n_sem, (n, 4), generator=g)
frames = torch.cat([codes[:1] + tok.semantic_begin_id, codes])

def make(streams, fused):
    return FastGenerator(model, streams, max_len=128, compile=False, cuda_graph=False, fused=fused)

want = make(1, False).teacher_forced_logits(prompt, frames)
for streams in (1, 3):  # the same logits whether the prompt decodes alone or beside copies
    got = make(streams, True).teacher_forced_logits(prompt, frames)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
prompts = [prompt, build_sequence(tok, n, [Utterance("Lyhyt.", None)], for_generation=True).tokens]
greedy = {"max_new_tokens": 6, "temperature": 0.5, "top_p": 1e-4, "repetition_penalty": 1.0, "stop_at_end": False}
for a, b in zip(make(2, True).generate(prompts, **greedy), make(2, False).generate(prompts, **greedy)):
    assert torch.equal(a, b), (a, b)
torch.manual_seed(3)
sampled = make(1, True).generate([prompt], 8, temperature=0.8, top_p=0.9)[0]
torch.manual_seed(3)
assert torch.equal(sampled, make(1, False).generate([prompt], 8, temperature=0.8, top_p=0.9)[0])
print("ok")
"""


def _interpret(code: str, *args: str) -> None:
    env = os.environ | {"TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


def test_products_match_torch_for_every_prologue_and_epilogue():
    _interpret(PRODUCTS)


def test_fused_decoder_matches_the_compiled_paths_functions(tmp_path):
    """Teacher-forced logits for one stream and beside other streams, batched greedy decoding, and
    seeded sampling: the same as FastGenerator's step functions run eagerly (fp32, interpreter)."""
    _interpret(DECODER, str(tmp_path / "tiny"))


def test_kernels_compile_for_sm90():
    """The GPU build of each kernel variant the decoder launches (the interpreter skips Triton's
    type and shape rules, e.g. power-of-two ranges)."""
    triton = decode_kernels.triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    target = GPUTarget("cuda", 90, 32)
    ptr = {"x_ptr", "w_ptr", "y_ptr", "norm_ptr", "res_ptr", "bias_ptr"}
    product_sig = {**{p: "*bf16" for p in ptr}, "eps": "fp32", "N": "i32"}
    for k, norm, epilogue, streams in [(1024, True, 0, 1), (3072, False, 1, 1), (1024, True, 2, 1),
                                       (1024, True, 2, 8), (3072, False, 1, 8), (1024, True, 0, 6)]:
        consts = decode_kernels.product_launch(1024, k, streams, norm, epilogue)[1]
        sig = product_sig | {c: "constexpr" for c in consts}
        triton.compile(ASTSource(decode_kernels.product_kernel, sig, consts), target=target,
                       options={"num_warps": decode_kernels.PRODUCT_WARPS})
    attention_sig = {"qkv_ptr": "*bf16", "q_norm_ptr": "*bf16", "k_norm_ptr": "*bf16", "eps": "fp32",
                     "freqs_ptr": "*bf16", "pos_ptr": "*i64", "k_cache_ptr": "*bf16", "v_cache_ptr": "*bf16",
                     "cache_stride": "i32", "out_ptr": "*bf16", "scale": "fp32", "part_ptr": "*fp32",
                     "stat_ptr": "*fp32", "count_ptr": "*i32", "chunk": "i32", "pos_stride": "i32"}
    for d, qk_norm, block, splits in [(128, True, 128, 9), (64, False, 16, 1)]:  # slow (s1-mini), fast
        consts = {"N_HEAD": 16, "N_KV": 8, "D": d, "QK_NORM": qk_norm, "BLOCK_L": block, "SPLITS": splits,
                  "SPLITS_POW2": triton.next_power_of_2(splits)}
        triton.compile(ASTSource(decode_kernels._attention_kernel, attention_sig | {c: "constexpr" for c in consts},
                                 consts), target=target, options={"num_warps": 8 if block * d >= 16384 else 4})


def test_programmatic_launch_waits_before_reading_what_the_previous_kernel_wrote():
    """Launched as programmatic dependents, a product loads its weight rows before it waits for the
    kernel before it (the point of starting early) and x after; attention waits before any load.
    Checked in the sm_90 PTX: a load of x moved above the wait would read a stale activation."""
    triton = decode_kernels.triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    target = GPUTarget("cuda", 90, 32)
    ptr = {"x_ptr", "w_ptr", "y_ptr", "norm_ptr", "res_ptr", "bias_ptr"}
    product_sig = {**{p: "*bf16" for p in ptr}, "eps": "fp32", "N": "i32"}
    consts = decode_kernels.product_launch(1024, 1024, 1, True, decode_kernels.RESIDUAL)[1] | {"PDL": True}
    compiled = triton.compile(ASTSource(decode_kernels.product_kernel, product_sig | {c: "constexpr" for c in consts},
                                        consts), target=target, options={"num_warps": 4, "launch_pdl": True})
    # which values load on which side of the wait, by their names in Triton's IR
    ir = compiled.asm["ttir"].split("griddepcontrol.wait")
    assert len(ir) == 2
    early, late = ({re.sub(r"_\d+$", "", name) for name in re.findall(r"%(\w+) = tt\.load", part)} for part in ir)
    assert early == {"w", "g"} and late == {"xv", "res"}, (early, late)  # weights and norm weight; x, residual
    ptx = compiled.asm["ptx"]
    body = ptx[ptx.index(".entry"):]
    assert body.count("griddepcontrol.wait") == 1 and "griddepcontrol.launch_dependents" in body
    before, after = body.split("griddepcontrol.wait")
    assert "ld.global" in before  # the weight rows are in flight while the wait lasts
    assert "ld.global" in after  # x, the norm's input, and the residual only after it

    attention_sig = {"qkv_ptr": "*bf16", "q_norm_ptr": "*bf16", "k_norm_ptr": "*bf16", "eps": "fp32",
                     "freqs_ptr": "*bf16", "pos_ptr": "*i64", "k_cache_ptr": "*bf16", "v_cache_ptr": "*bf16",
                     "cache_stride": "i32", "out_ptr": "*bf16", "scale": "fp32", "part_ptr": "*fp32",
                     "stat_ptr": "*fp32", "count_ptr": "*i32", "chunk": "i32", "pos_stride": "i32"}
    consts = {"N_HEAD": 16, "N_KV": 8, "D": 128, "QK_NORM": True, "BLOCK_L": 128, "SPLITS": 9, "SPLITS_POW2": 16,
              "PDL": True}
    ptx = triton.compile(ASTSource(decode_kernels._attention_kernel, attention_sig | {c: "constexpr" for c in consts},
                                   consts), target=target, options={"num_warps": 8, "launch_pdl": True}).asm["ptx"]
    body = ptx[ptx.index(".entry"):]
    before = body.split("griddepcontrol.wait")[0]
    assert "ld.global" not in before and "st.global" not in before
