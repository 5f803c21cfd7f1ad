"""The attention benchmark's correctness column (its timings need a GPU: python -m pipeline.bench.attention_backends)."""

import pytest
import torch

import pipeline.bench.attention_backends as ab


@pytest.fixture
def small(monkeypatch):
    for name, value in (("BATCH", 1), ("LENGTH", 48), ("HEAD_DIM", 16)):
        monkeypatch.setattr(ab, name, value)


def test_every_backend_is_compared_with_fp32_attention_even_after_a_timing_loop(small):
    q, k, v, grad = ab._inputs("cpu")
    reference = ab._fp32_reference(q, k, v, grad)
    ab._attention(ab.SDPBackend.MATH, True)(q, k, v).backward(grad)  # gradients left behind, as do_bench leaves them
    for backend, repeat in ((ab.SDPBackend.FLASH_ATTENTION, False), (ab.SDPBackend.MATH, True)):
        run = ab._attention(backend, repeat)
        results = ab._outputs_and_gradients(run, q, k, v, grad)
        run(q, k, v).backward(grad)  # the timing loop's passes
        differences = [ab._relative(a, b) for a, b in zip(results, reference)]
        assert max(differences) < 2e-2, differences  # bf16 rounding only: no stale gradients added in


def test_grouped_query_attention_means_repeated_key_value_heads(small):
    """The reference repeats each K/V head for its group of query heads; pairing them otherwise differs."""
    q, k, v, grad = ab._inputs("cpu")
    reference = ab._fp32_reference(q, k, v, grad)
    wrong = torch.nn.functional.scaled_dot_product_attention(
        q, k.repeat(1, ab.HEADS // ab.KV_HEADS, 1, 1), v.repeat(1, ab.HEADS // ab.KV_HEADS, 1, 1), is_causal=True)
    assert ab._relative(wrong, reference[0]) > 0.1


def test_without_a_gpu_it_says_so():
    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        ab.main([])
