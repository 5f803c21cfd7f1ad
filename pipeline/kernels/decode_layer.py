"""Triton kernels for decoding: a transformer layer in five launches, for 1..MAX_STREAMS streams.

Decoding a few streams is bound by reading the weights (~31 MB per slow s1-mini layer, read once
for all streams) and by the number of kernels: the compiled layer (pipeline.generate.fastgen_step) is ~15
kernels, most of them tiny element-wise passes that each cost a launch slot in the CUDA graph.
Here a layer is

1. wqkv @ rmsnorm(x)                             (the norm in the product's prologue)
2. attention: q/k norm, RoPE, the new K/V written into the cache, attention over positions
   0..pos (online softmax, a long cache split over several programs per head)
3. x + wo @ attn                                  (the residual in the product's epilogue)
4. silu(w1 @ rmsnorm(h)) * (w3 @ rmsnorm(h))      (w1|w3 stacked, both rows in one program)
5. h + w2 @ u

Every kernel reads the positions from device memory, so the launches are captured once in a CUDA
graph and replayed for every frame. The arithmetic follows fish-speech (RMSNorm rounded to the
model dtype before its weight, RoPE on interleaved pairs, softmax in fp32); products accumulate in
fp32 and round once. Tests run these kernels in Triton's interpreter on the CPU
(TRITON_INTERPRET=1) against the compiled/eager decode step, and compile them for sm_90.
"""

from __future__ import annotations

import math

import torch

from pipeline.kernels.runtime import AVAILABLE, tl, triton

if AVAILABLE:
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

# epilogues of the weight product
PLAIN, RESIDUAL, SWIGLU = 0, 1, 2

if AVAILABLE:

    @triton.jit
    def product_kernel(x_ptr, w_ptr, y_ptr, norm_ptr, res_ptr, bias_ptr, eps, N,
                        K: tl.constexpr, PRE_NORM: tl.constexpr, EPILOGUE: tl.constexpr,
                        HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                        STREAMS: tl.constexpr, PDL: tl.constexpr = False):
        """y[s, rows] = epilogue(W[rows] @ prologue(x[s])) for each of STREAMS rows of x; SWIGLU: W
        holds w1 rows then w3 rows (2N).

        One memory round trip: the weight rows over the whole K (BLOCK_K columns, a power of two)
        are loaded first, once for all streams, then x, the norm weight and the residual (L2 hits),
        all before the first reduction waits on them. PDL (launched as a programmatic dependent):
        the next kernel may start once every program got here, and this one loads its weights
        (never written while decoding) before it waits for the kernel before it to finish."""
        if PDL:
            gdc_launch_dependents()
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < N
        cols = tl.arange(0, BLOCK_K)
        col_ok = cols < K
        tile = rows[:, None] * K + cols[None, :]
        ok = row_ok[:, None] & col_ok[None, :]
        w = tl.load(w_ptr + tile, mask=ok, other=0.0).to(tl.float32)
        if EPILOGUE == 2:
            w_up = tl.load(w_ptr + N * K + tile, mask=ok, other=0.0).to(tl.float32)
        if HAS_BIAS:
            bias = tl.load(bias_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
        if PRE_NORM:
            g = tl.load(norm_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        if PDL:  # x and the residual are the previous kernel's output
            gdc_wait()
        for stream in tl.static_range(STREAMS):
            xv = tl.load(x_ptr + stream * K + cols, mask=col_ok, other=0.0).to(tl.float32)
            if EPILOGUE == 1:
                res = tl.load(res_ptr + stream * N + rows, mask=row_ok, other=0.0).to(tl.float32)
            if PRE_NORM:  # fish-speech's RMSNorm: x * rsqrt(mean(x²) + eps), rounded, then * weight
                dtype = x_ptr.dtype.element_ty
                inv = 1.0 / tl.sqrt(tl.sum(xv * xv, axis=0) / K + eps)
                xv = ((xv * inv).to(dtype).to(tl.float32) * g).to(dtype).to(tl.float32)
            acc = tl.sum(w * xv[None, :], axis=1)
            if HAS_BIAS:
                acc += bias
            if EPILOGUE == 1:
                acc += res
            if EPILOGUE == 2:
                up = tl.sum(w_up * xv[None, :], axis=1)
                acc = acc * tl.sigmoid(acc) * up
            tl.store(y_ptr + stream * N + rows, acc.to(y_ptr.dtype.element_ty), mask=row_ok)

    @triton.jit
    def _rotate(x_ptr, freqs_ptr, half, NORM: tl.constexpr, norm_ptr, eps, D: tl.constexpr):
        """One head (D values) as RoPE'd even/odd halves in fp32 (optionally RMS-normed first)."""
        dtype = x_ptr.dtype.element_ty
        even = tl.load(x_ptr + 2 * half).to(tl.float32)
        odd = tl.load(x_ptr + 2 * half + 1).to(tl.float32)
        if NORM:  # nn.RMSNorm over the head: fp32, rounded once
            inv = 1.0 / tl.sqrt((tl.sum(even * even, axis=0) + tl.sum(odd * odd, axis=0)) / D + eps)
            even = (even * inv * tl.load(norm_ptr + 2 * half).to(tl.float32)).to(dtype).to(tl.float32)
            odd = (odd * inv * tl.load(norm_ptr + 2 * half + 1).to(tl.float32)).to(dtype).to(tl.float32)
        cos = tl.load(freqs_ptr + 2 * half).to(tl.float32)
        sin = tl.load(freqs_ptr + 2 * half + 1).to(tl.float32)
        return ((even * cos - odd * sin).to(dtype).to(tl.float32),
                (odd * cos + even * sin).to(dtype).to(tl.float32))

    @triton.jit
    def _cache_block(keys, values, at, seen, D: tl.constexpr):
        """Keys and values of cache positions `at` (zeros where not `seen`), fp32."""
        dims = tl.arange(0, D)
        k = tl.load(keys + at[:, None] * D + dims[None, :], mask=seen[:, None], other=0.0).to(tl.float32)
        v = tl.load(values + at[:, None] * D + dims[None, :], mask=seen[:, None], other=0.0).to(tl.float32)
        return k, v

    @triton.jit
    def _attend(q, k, v, seen, best, total, acc):
        """Online-softmax update with one block of keys/values (at least one position seen)."""
        s = tl.where(seen, tl.sum(k * q[None, :], axis=1), float("-inf"))
        new_best = tl.maximum(best, tl.max(s, axis=0))
        shrink = tl.exp(best - new_best)
        p = tl.exp(s - new_best)
        return new_best, total * shrink + tl.sum(p, axis=0), acc * shrink + tl.sum(p[:, None] * v, axis=0)

    @triton.jit
    def _attention_kernel(qkv_ptr, q_norm_ptr, k_norm_ptr, eps, freqs_ptr, pos_ptr, k_cache_ptr, v_cache_ptr,
                          cache_stride, out_ptr, scale, part_ptr, stat_ptr, count_ptr, chunk, pos_stride,
                          N_HEAD: tl.constexpr, N_KV: tl.constexpr, D: tl.constexpr, QK_NORM: tl.constexpr,
                          BLOCK_L: tl.constexpr, SPLITS: tl.constexpr, SPLITS_POW2: tl.constexpr,
                          PDL: tl.constexpr = False):
        """Query head h (axis 0) of stream b (axis 2) over cache positions [split * chunk, (split + 1)
        * chunk) ∩ [0, pos) (axis 1: split), online softmax in fp32; pos = pos_ptr[b * pos_stride],
        the stream's cache rows b * N_KV + kv. Split 0 also takes the new key at pos, and the first
        head of each group writes that key/value into the cache (the other programs never read
        position pos from the cache: no program reads what another writes). With several splits,
        each writes its partial (max, sum, weighted values); the last split of a head to finish
        (an atomic count) combines them and resets the count for the next launch. PDL: started
        early, it waits for the previous kernel before its first load (everything it reads may
        be written just before)."""
        if PDL:
            gdc_launch_dependents()
            gdc_wait()
        h = tl.program_id(0)
        split = tl.program_id(1)
        b = tl.program_id(2)
        kv = h // (N_HEAD // N_KV)
        dtype = qkv_ptr.dtype.element_ty
        pos = tl.load(pos_ptr + b * pos_stride)
        qkv_ptr += b * (N_HEAD + 2 * N_KV) * D
        out_ptr += b * N_HEAD * D
        head = b * N_HEAD + h  # this program's row of the split scratch
        keys = k_cache_ptr + (b * N_KV + kv) * cache_stride
        values = v_cache_ptr + (b * N_KV + kv) * cache_stride
        start = split * chunk
        stop = tl.minimum(start + chunk, pos)
        # the first block's loads go out before the RoPE arithmetic: one memory round trip less
        at = start + tl.arange(0, BLOCK_L)
        k_first, v_first = _cache_block(keys, values, at, at < stop, D)
        half = tl.arange(0, D // 2)
        dims = tl.arange(0, D)
        rope = freqs_ptr + pos * D
        q_even, q_odd = _rotate(qkv_ptr + h * D, rope, half, QK_NORM, q_norm_ptr, eps, D)
        best = tl.full((), float("-inf"), tl.float32)
        total = tl.full((), 0.0, tl.float32)
        acc = tl.zeros((D,), dtype=tl.float32)
        if split == 0:
            k_even, k_odd = _rotate(qkv_ptr + (N_HEAD + kv) * D, rope, half, QK_NORM, k_norm_ptr, eps, D)
            v_new = tl.load(qkv_ptr + (N_HEAD + N_KV + kv) * D + dims).to(tl.float32)
            if h % (N_HEAD // N_KV) == 0:
                tl.store(keys + pos * D + 2 * half, k_even.to(dtype))
                tl.store(keys + pos * D + 2 * half + 1, k_odd.to(dtype))
                tl.store(values + pos * D + dims, v_new.to(dtype))
            best = (tl.sum(q_even * k_even, axis=0) + tl.sum(q_odd * k_odd, axis=0)) * scale
            total = tl.full((), 1.0, tl.float32)
            acc = v_new
        q = tl.reshape(tl.join(q_even, q_odd), (D,)) * scale  # interleaved back: q0, q1, q2, ...
        if start < stop:
            best, total, acc = _attend(q, k_first, v_first, at < stop, best, total, acc)
        start += BLOCK_L
        while start < stop:  # (a while loop: Triton's interpreter cannot take a loaded bound in range())
            at = start + tl.arange(0, BLOCK_L)
            k, v = _cache_block(keys, values, at, at < stop, D)
            best, total, acc = _attend(q, k, v, at < stop, best, total, acc)
            start += BLOCK_L
        if SPLITS == 1:
            tl.store(out_ptr + h * D + dims, (acc / total).to(out_ptr.dtype.element_ty))
        else:
            slot = head * SPLITS + split
            tl.store(part_ptr + slot * D + dims, acc)
            tl.store(stat_ptr + 2 * slot, best)
            tl.store(stat_ptr + 2 * slot + 1, total)
            tl.debug_barrier()  # every thread's partial stores before the one atomic that releases them
            if tl.atomic_add(count_ptr + head, 1, sem="acq_rel") == SPLITS - 1:  # the last split of this head
                splits = tl.arange(0, SPLITS_POW2)
                real = splits < SPLITS
                slots = head * SPLITS + splits
                bests = tl.load(stat_ptr + 2 * slots, mask=real, other=float("-inf"), cache_modifier=".cg")
                weights = tl.exp(bests - tl.max(bests, axis=0))  # split 0 is never empty: max finite
                totals = tl.load(stat_ptr + 2 * slots + 1, mask=real, other=0.0, cache_modifier=".cg")
                parts = tl.load(part_ptr + slots[:, None] * D + dims[None, :], mask=real[:, None], other=0.0,
                                cache_modifier=".cg")
                y = tl.sum(weights[:, None] * parts, axis=0) / tl.sum(weights * totals, axis=0)
                tl.store(out_ptr + h * D + dims, y.to(out_ptr.dtype.element_ty))
                tl.atomic_xchg(count_ptr + head, 0)


# -- launch configuration -----------------------------------------------------------------------
# Two weight rows per program, 4 warps: the fastest or within 3 % of it for every s1-mini product
# shape on an H100, timed one launch at a time inside a CUDA graph with the weights cycled past the
# L2 cache (8 configurations from 1 to 16 rows; docs/history/performance-log.md). Fewer, larger
# programs lose up to 2x on the 1,024-row products (too few loads in flight per SM).
ROWS_PER_PROGRAM, PRODUCT_WARPS = 2, 4
# attention: cache positions per loop step, warps, and the most programs one head is split over
ATTENTION_BLOCK, ATTENTION_WARPS, MAX_SPLITS = 128, 8, 16


def product(x, weight, norm=None, eps=0.0, residual=None, bias=None, swiglu=False, pdl=False):
    """epilogue(weight @ prologue(x)) for each row of x (B, K): prologue = fish-speech RMSNorm with
    `norm` (if given); epilogue = + bias, + residual (B, N), or silu(first half) * second half of
    the rows (swiglu). Returns (B, N). pdl: launched as a programmatic dependent (`programmatic`)."""
    if not all(t is None or t.is_contiguous() for t in (weight, norm, residual, bias)):
        raise ValueError("decode_kernels.product takes contiguous tensors (row-major weights).")
    k = weight.shape[1]
    n = weight.shape[0] // 2 if swiglu else weight.shape[0]
    x = x.reshape(-1, k)
    out = torch.empty((x.shape[0], n), device=x.device, dtype=x.dtype)
    grid, consts = product_launch(n, k, x.shape[0], norm is not None,
                                  SWIGLU if swiglu else RESIDUAL if residual is not None else PLAIN, bias is not None)
    product_kernel[grid](x, weight, out, norm if norm is not None else x, residual if residual is not None else x,
                          bias if bias is not None else x, eps, n, **consts, num_warps=PRODUCT_WARPS,
                          PDL=pdl, launch_pdl=pdl)
    return out


def product_launch(n: int, k: int, streams: int = 1, pre_norm: bool = False, epilogue: int = PLAIN,
                   bias: bool = False) -> tuple[tuple[int], dict]:
    """The grid and compile-time arguments of `product_kernel` for an (n, k) weight (also what
    pipeline.kernels.gemv launches inside the compiled layers)."""
    return (triton.cdiv(n, ROWS_PER_PROGRAM),), {
        "K": k, "PRE_NORM": pre_norm, "EPILOGUE": epilogue, "HAS_BIAS": bias, "BLOCK_N": ROWS_PER_PROGRAM,
        "BLOCK_K": triton.next_power_of_2(k), "STREAMS": streams}


_scratch: dict[tuple, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}


def _split_scratch(device, heads: int, splits: int, head_dim: int):
    """Partial results and per-head counts of split attention, one set per shape and device (reused
    by every launch: decoding runs its launches one after another on one stream)."""
    key = (str(device), heads, splits, head_dim)
    if key not in _scratch:
        _scratch[key] = (torch.empty(heads * splits * head_dim, device=device, dtype=torch.float32),
                         torch.empty(heads * splits * 2, device=device, dtype=torch.float32),
                         torch.zeros(heads, device=device, dtype=torch.int32))  # each launch leaves it 0
    return _scratch[key]


def attention(qkv, dims, freqs, pos, k_cache, v_cache, q_norm=None, k_norm=None, pdl=False):
    """Attention of one new position per stream: qkv (B, wqkv rows), freqs (positions, D/2, 2), pos
    (B,) or (1,) long (one position for every stream), caches (B * kv_heads, positions, D)
    contiguous, written at pos in place. A long cache is split over up to MAX_SPLITS programs per
    head (one per ATTENTION_BLOCK positions). Returns (B, heads * D)."""
    if not all(t.is_contiguous() for t in (qkv, freqs, k_cache, v_cache)):
        raise ValueError("decode_kernels.attention takes contiguous qkv, freqs and caches.")
    streams, length, head_dim = qkv.shape[0], k_cache.shape[1], dims.head_dim
    block = min(ATTENTION_BLOCK, triton.next_power_of_2(length))
    splits = min(MAX_SPLITS, triton.cdiv(length, block))
    chunk = triton.cdiv(triton.cdiv(length, splits), block) * block
    out = torch.empty((streams, dims.n_head * head_dim), device=qkv.device, dtype=qkv.dtype)
    part, stat, count = _split_scratch(qkv.device, streams * dims.n_head, splits, head_dim)
    qk = q_norm is not None
    _attention_kernel[(dims.n_head, splits, streams)](
        qkv, q_norm if qk else qkv, k_norm if qk else qkv, dims.qk_eps or 0.0, freqs, pos, k_cache, v_cache,
        k_cache.stride(0), out, 1.0 / math.sqrt(head_dim), part, stat, count, chunk, int(pos.numel() > 1),
        N_HEAD=dims.n_head, N_KV=dims.n_local_heads, D=head_dim, QK_NORM=qk, BLOCK_L=block, SPLITS=splits,
        SPLITS_POW2=triton.next_power_of_2(splits), num_warps=ATTENTION_WARPS if block * head_dim >= 16384 else 4,
        PDL=pdl, launch_pdl=pdl)
    return out


def layer(b, dims, x, freqs, pos, k_cache, v_cache, kv_only: bool = False, pdl: bool = False):
    """One decode layer, x (B, dim) → (B, dim) (b: pipeline.generate.fastgen_step.Block).
    kv_only: write this position's K/V and stop (the last fast layer at position 0); pdl: each
    kernel launched as a programmatic dependent of the one before (`programmatic`)."""
    qkv = product(x, b.wqkv, b.attention_norm, dims.eps, bias=b.wqkv_bias, pdl=pdl)
    attn = attention(qkv, dims, freqs, pos, k_cache, v_cache, b.q_norm, b.k_norm, pdl=pdl)
    if kv_only:
        return x
    h = product(attn, b.wo, residual=x, bias=b.wo_bias, pdl=pdl)
    return product(product(h, b.w13, b.ffn_norm, dims.eps, swiglu=True, pdl=pdl), b.w2, residual=h, pdl=pdl)


def programmatic(device) -> bool:
    """Whether the kernels can be launched as programmatic dependents on `device`: Hopper or newer
    (compute capability 9.0), compiled (not Triton's interpreter). Decoding one stream is bound by
    the gaps between ~350 small kernels per frame; a programmatic dependent is started while the
    kernel before it still runs, and a product loads its weight rows before it waits."""
    device = torch.device(device)
    return AVAILABLE and device.type == "cuda" and torch.cuda.get_device_capability(device) >= (9, 0)


MAX_STREAMS = 16  # the weight tile stays in registers while each stream's row is multiplied
