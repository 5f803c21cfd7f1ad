"""Causal attention inside short segments packed back to back (the fast transformer, training).

The fast transformer attends over 10 positions per audio frame: every frame is its own causal
sequence. As one packed sequence with a block-diagonal mask (flex attention), 128-row query
blocks meet 128-column key blocks that straddle frames (two key blocks for most query blocks), and
flex wants (heads, rows, dim) tensors: the rows x (heads * dim) activations around it are
transposed in both directions.

Here one program takes a tile of whole frames (12 frames = 120 rows for 10 positions, padded to
128) and one head: its scores are a single 128 x 128 product with the frames' causal blocks on
its diagonal, so forward and backward are one tile each, with no cross-program reduction (the two
query heads of a grouped key/value head are summed inside the backward program). Inputs and
outputs stay rows x heads x dim in the layout the projections use. Softmax statistics in fp32;
the products in the inputs' dtype with fp32 accumulation, as flash attention does.

`packed_segment_attention` takes the qkv projection's output itself and applies the rotary
embedding inside the kernels (the wheel's apply_rotary_emb: pairs rotated in fp32, rounded to the
input dtype), and its backward writes the gradient of qkv as one buffer. Outside, the rotation and
its backward were two passes over q and k each way plus a concatenated copy of dq|dk|dv, and the
compiled backward of the rotation ran at a quarter of copy speed (run 7).

Tests run the kernels in Triton's interpreter against SDPA per frame; the speed is measured by
`python -m pipeline bench` on a GPU (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import os

import torch

from pipeline import decode_kernels

triton = decode_kernels.triton
ENABLED = triton is not None and os.environ.get("SEGMENT_ATTENTION_KERNEL", "1") != "0"
TILE = 128  # rows of a tile: the whole frames that fit, the rest masked
SETTINGS = {"forward": {"num_warps": 8, "num_stages": 1}, "backward": {"num_warps": 8, "num_stages": 1}}

if triton is not None:
    import triton.language as tl

    @triton.jit
    def _tile(N, LENGTH: tl.constexpr, TILE_: tl.constexpr):
        """Row indices of this program's tile, which of them are real rows, and the causal
        same-segment mask between them (a row always sees itself: no empty softmax rows)."""
        span = (TILE_ // LENGTH) * LENGTH
        idx = tl.arange(0, TILE_)
        rows = tl.program_id(0) * span + idx
        valid = (idx < span) & (rows < N)
        seg = idx // LENGTH
        allowed = (seg[:, None] == seg[None, :]) & (idx[None, :] <= idx[:, None]) & valid[None, :]
        allowed = allowed | (idx[None, :] == idx[:, None])
        return rows.to(tl.int64), valid, allowed

    @triton.jit
    def _angles(freqs_ptr, rows, LENGTH: tl.constexpr, D: tl.constexpr):
        """cos, sin (TILE x D/2, fp32) of each row's position in its segment; freqs (LENGTH, D/2, 2)."""
        at = (rows % LENGTH)[:, None] * D + 2 * tl.arange(0, D // 2)[None, :]
        return tl.load(freqs_ptr + at).to(tl.float32), tl.load(freqs_ptr + at + 1).to(tl.float32)

    @triton.jit
    def _rotate(a, b, cos, sin):
        """Pairs (a, b) rotated by the angles (cos, sin), in fp32 (apply_rotary_emb's arithmetic)."""
        a, b = a.to(tl.float32), b.to(tl.float32)
        return a * cos - b * sin, b * cos + a * sin

    @triton.jit
    def _halves(D: tl.constexpr, ROPE: tl.constexpr):
        """Columns of a head's two halves: with ROPE the rotated pairs' even and odd columns (so the
        rotation is element-wise between the halves, no register shuffles), else the first and second
        half. q.k is the sum of the halves' products either way."""
        half = tl.arange(0, D // 2)[None, :]
        if ROPE:
            return 2 * half, 2 * half + 1
        return half, half + D // 2

    @triton.jit
    def _load_halves(ptr, rows, stride, col, valid, D: tl.constexpr, ROPE: tl.constexpr):
        a, b = _halves(D, ROPE)
        base = ptr + rows[:, None] * stride + col
        return tl.load(base + a, mask=valid[:, None], other=0.0), tl.load(base + b, mask=valid[:, None], other=0.0)

    @triton.jit
    def _store_halves(ptr, rows, stride, col, valid, a_val, b_val, D: tl.constexpr, ROPE: tl.constexpr):
        a, b = _halves(D, ROPE)
        base = ptr + rows[:, None] * stride + col
        tl.store(base + a, a_val.to(ptr.dtype.element_ty), mask=valid[:, None])
        tl.store(base + b, b_val.to(ptr.dtype.element_ty), mask=valid[:, None])

    @triton.jit
    def _segment_attention_fwd(q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, freqs_ptr, N, stride_q, stride_k, stride_v,
                               scale: tl.constexpr, LENGTH: tl.constexpr, GROUP: tl.constexpr, D: tl.constexpr,
                               TILE_: tl.constexpr, ROPE: tl.constexpr):
        """o[rows, h] = softmax(q k^T * scale, causal within each segment) v, lse[h, rows] for one
        tile (program_id(0)) and query head h (program_id(1)); k/v head h // GROUP; ROPE: q and k
        rotated first, rounded to the inputs' dtype as the wheel does. scale is a constexpr:
        inductor passes a runtime Python float as fp64, and fp64 tiles ran ~4x slower."""
        h = tl.program_id(1)
        hk = h // GROUP
        heads = tl.num_programs(1)
        rows, valid, allowed = _tile(N, LENGTH, TILE_)
        d = tl.arange(0, D)[None, :]
        qa, qb = _load_halves(q_ptr, rows, stride_q, h * D, valid, D, ROPE)
        ka, kb = _load_halves(k_ptr, rows, stride_k, hk * D, valid, D, ROPE)
        v = tl.load(v_ptr + rows[:, None] * stride_v + hk * D + d, mask=valid[:, None], other=0.0)
        if ROPE:
            cos, sin = _angles(freqs_ptr, rows, LENGTH, D)
            qa, qb = _rotate(qa, qb, cos, sin)
            ka, kb = _rotate(ka, kb, cos, sin)
            qa, qb, ka, kb = qa.to(v.dtype), qb.to(v.dtype), ka.to(v.dtype), kb.to(v.dtype)
        s = tl.dot(qb, tl.trans(kb), tl.dot(qa, tl.trans(ka)))
        s = tl.where(allowed, s * scale, float("-inf"))
        m = tl.max(s, 1)
        p = tl.exp(s - m[:, None])
        total = tl.sum(p, 1)
        o = tl.dot((p / total[:, None]).to(v.dtype), v)
        tl.store(o_ptr + rows[:, None] * (heads * D) + h * D + d, o.to(o_ptr.dtype.element_ty), mask=valid[:, None])
        tl.store(lse_ptr + h * N + rows, m + tl.log(total), mask=valid)

    @triton.jit
    def _segment_attention_bwd(q_ptr, k_ptr, v_ptr, o_ptr, do_ptr, lse_ptr, freqs_ptr, dq_ptr, dk_ptr, dv_ptr, N,
                               stride_q, stride_k, stride_v, stride_dq, stride_dk, stride_dv, scale: tl.constexpr,
                               LENGTH: tl.constexpr, GROUP: tl.constexpr, D: tl.constexpr, TILE_: tl.constexpr,
                               ROPE: tl.constexpr):
        """dq, dk, dv of one tile (program_id(0)) and key/value head hk (program_id(1)): its GROUP
        query heads one after the other, their dk and dv summed in registers. ROPE: q and k are
        rotated again here, and dq, dk rotated back (by the opposite angles) before they are stored."""
        hk = tl.program_id(1)
        kv_heads = tl.num_programs(1)
        heads = kv_heads * GROUP
        rows, valid, allowed = _tile(N, LENGTH, TILE_)
        d = tl.arange(0, D)[None, :]
        ka, kb = _load_halves(k_ptr, rows, stride_k, hk * D, valid, D, ROPE)
        v = tl.load(v_ptr + rows[:, None] * stride_v + hk * D + d, mask=valid[:, None], other=0.0)
        if ROPE:
            cos, sin = _angles(freqs_ptr, rows, LENGTH, D)
            ka, kb = _rotate(ka, kb, cos, sin)
            ka, kb = ka.to(v.dtype), kb.to(v.dtype)
        dka = tl.zeros([TILE_, D // 2], dtype=tl.float32)
        dkb = tl.zeros([TILE_, D // 2], dtype=tl.float32)
        dv = tl.zeros([TILE_, D], dtype=tl.float32)
        for g in tl.static_range(GROUP):
            h = hk * GROUP + g
            qa, qb = _load_halves(q_ptr, rows, stride_q, h * D, valid, D, ROPE)
            if ROPE:
                qa, qb = _rotate(qa, qb, cos, sin)
                qa, qb = qa.to(v.dtype), qb.to(v.dtype)
            o = tl.load(o_ptr + rows[:, None] * (heads * D) + h * D + d, mask=valid[:, None], other=0.0)
            do = tl.load(do_ptr + rows[:, None] * (heads * D) + h * D + d, mask=valid[:, None], other=0.0)
            lse = tl.load(lse_ptr + h * N + rows, mask=valid, other=0.0)
            delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)
            s = tl.dot(qb, tl.trans(kb), tl.dot(qa, tl.trans(ka))) * scale
            p = tl.where(allowed & valid[:, None], tl.exp(s - lse[:, None]), 0.0)
            dv = tl.dot(tl.trans(p.to(do.dtype)), do, dv)
            dp = tl.dot(do, tl.trans(v))
            ds = (p * (dp - delta[:, None])).to(qa.dtype)
            dqa, dqb = tl.dot(ds, ka) * scale, tl.dot(ds, kb) * scale
            if ROPE:
                dqa, dqb = _rotate(dqa, dqb, cos, -sin)
            _store_halves(dq_ptr, rows, stride_dq, h * D, valid, dqa, dqb, D, ROPE)
            dka = tl.dot(tl.trans(ds), qa, dka)
            dkb = tl.dot(tl.trans(ds), qb, dkb)
        dka, dkb = dka * scale, dkb * scale
        if ROPE:
            dka, dkb = _rotate(dka, dkb, cos, -sin)
        _store_halves(dk_ptr, rows, stride_dk, hk * D, valid, dka, dkb, D, ROPE)
        tl.store(dv_ptr + rows[:, None] * stride_dv + hk * D + d, dv.to(dv_ptr.dtype.element_ty), mask=valid[:, None])

    def _grid(N, length, heads):
        return (triton.cdiv(N, (TILE // length) * length), heads)

    def launch_forward(launch, q, k, v, freqs, length, scale):
        N, heads, D = q.shape
        o = torch.empty(N, heads, D, device=q.device, dtype=q.dtype)
        lse = torch.empty(heads, N, device=q.device, dtype=torch.float32)
        launch(_segment_attention_fwd, _grid(N, length, heads))(
            q, k, v, o, lse, q if freqs is None else freqs, N, q.stride(0), k.stride(0), v.stride(0), scale=scale,
            LENGTH=length, GROUP=heads // k.shape[1], D=D, TILE_=TILE, ROPE=freqs is not None, **SETTINGS["forward"])
        return o, lse

    def launch_backward(launch, q, k, v, o, do, lse, freqs, length, scale, out=None):
        """(dq, dk, dv), or with out = (dq, dk, dv) views of one buffer: written there."""
        N, heads, D = q.shape
        kv_heads = k.shape[1]
        dq, dk, dv = out or (torch.empty(N, h, D, device=q.device, dtype=q.dtype) for h in (heads, kv_heads, kv_heads))
        launch(_segment_attention_bwd, _grid(N, length, kv_heads))(
            q, k, v, o, do, lse, q if freqs is None else freqs, dq, dk, dv, N, q.stride(0), k.stride(0), v.stride(0),
            dq.stride(0), dk.stride(0), dv.stride(0), scale=scale, LENGTH=length, GROUP=heads // kv_heads, D=D,
            TILE_=TILE, ROPE=freqs is not None, **SETTINGS["backward"])
        return dq, dk, dv

    def launch_backward_packed(launch, qkv, o, do, lse, freqs, heads, kv_heads, length, scale):
        """The gradient of qkv (rows, (heads + 2 kv_heads) * D) as one buffer."""
        dqkv = torch.empty_like(qkv)
        launch_backward(launch, *split_heads(qkv, heads, kv_heads), o, do, lse, freqs, length, scale,
                        out=split_heads(dqkv, heads, kv_heads))
        return dqkv

    # the ops take whole tensors: inductor copies a sliced input of a user kernel (q, k, v as column
    # ranges of qkv were three copies of the projection output per layer, run 7)
    @torch.library.triton_op("finnish_tts::segment_attention", mutates_args=())
    def _forward_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, length: int,
                    scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        return launch_forward(decode_kernels.launch_wrapped, q, k, v, None, length, scale)

    @torch.library.triton_op("finnish_tts::segment_attention_packed", mutates_args=())
    def _forward_packed_op(qkv: torch.Tensor, freqs: torch.Tensor, heads: int, kv_heads: int, length: int,
                           scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        return launch_forward(decode_kernels.launch_wrapped, *split_heads(qkv, heads, kv_heads), freqs, length, scale)

    @torch.library.triton_op("finnish_tts::segment_attention_backward", mutates_args=())
    def _backward_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor, do: torch.Tensor,
                     lse: torch.Tensor, length: int, scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return launch_backward(decode_kernels.launch_wrapped, q, k, v, o, do, lse, None, length, scale)

    @torch.library.triton_op("finnish_tts::segment_attention_backward_packed", mutates_args=())
    def _backward_packed_op(qkv: torch.Tensor, o: torch.Tensor, do: torch.Tensor, lse: torch.Tensor,
                            freqs: torch.Tensor, heads: int, kv_heads: int, length: int, scale: float) -> torch.Tensor:
        return launch_backward_packed(decode_kernels.launch_wrapped, qkv, o, do, lse, freqs, heads, kv_heads, length,
                                      scale)


def split_heads(qkv: torch.Tensor, heads: int, kv_heads: int):
    """Views q (rows, heads, D), k and v (rows, kv_heads, D) of a qkv projection output (rows, (heads + 2 kv_heads) * D)."""
    rows = qkv.shape[0]
    per_head = qkv.view(rows, heads + 2 * kv_heads, -1)
    return per_head[:, :heads], per_head[:, heads : heads + kv_heads], per_head[:, heads + kv_heads :]


def applies(q: torch.Tensor, k: torch.Tensor, length: int) -> bool:
    """Whether the kernels take this attention: q (..., heads, D), k/v (..., kv heads, D) with a
    head dim the tensor cores take (16..128, a power of two), segments of at most TILE rows, a CUDA
    GPU of Ampere or newer with 16-bit inputs (fp32 would run its products as TF32; flex attention
    keeps them exact), or Triton's interpreter; SEGMENT_ATTENTION_KERNEL not 0."""
    D = q.shape[-1]
    if not ENABLED or D not in (16, 32, 64, 128) or length > TILE or q.shape[-2] % k.shape[-2]:
        return False
    if q.is_cuda and q.dtype not in (torch.bfloat16, torch.float16):
        return False
    return decode_kernels.triton_kernels_run_on(q.device)


def _rows_layout(t: torch.Tensor) -> torch.Tensor:
    """(rows, heads, D) with heads and D packed (any row stride): the kernels' addressing."""
    return t if t.stride(2) == 1 and t.stride(1) == t.shape[2] else t.contiguous()


class _SegmentAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, length, scale):
        if q.is_cuda:
            o, lse = _forward_op(q, k, v, length, scale)
        else:
            o, lse = launch_forward(decode_kernels.launch_direct, q, k, v, None, length, scale)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.length, ctx.scale = length, scale
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        args = (q, k, v, o, do.contiguous(), lse)
        if q.is_cuda:
            dq, dk, dv = _backward_op(*args, ctx.length, ctx.scale)
        else:
            dq, dk, dv = launch_backward(decode_kernels.launch_direct, *args, None, ctx.length, ctx.scale)
        return dq, dk, dv, None, None


class _PackedSegmentAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qkv, freqs, heads, kv_heads, length, scale):
        if qkv.is_cuda:
            o, lse = _forward_packed_op(qkv, freqs, heads, kv_heads, length, scale)
        else:
            o, lse = launch_forward(decode_kernels.launch_direct, *split_heads(qkv, heads, kv_heads), freqs, length,
                                    scale)
        ctx.save_for_backward(qkv, freqs, o, lse)
        ctx.shape = heads, kv_heads, length, scale
        return o

    @staticmethod
    def backward(ctx, do):
        qkv, freqs, o, lse = ctx.saved_tensors
        args = (qkv, o, do.contiguous(), lse, freqs, *ctx.shape)
        dqkv = _backward_packed_op(*args) if qkv.is_cuda else launch_backward_packed(decode_kernels.launch_direct, *args)
        return dqkv, None, None, None, None, None


def segment_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, length: int) -> torch.Tensor:
    """Causal attention within each `length`-row segment of q (rows, heads, D) over k, v
    (rows, kv heads, D) (grouped-query: query head h reads key/value head h // (heads / kv heads)),
    scaled by 1/sqrt(D); (rows, heads, D) out. The caller checked `applies`."""
    q, k, v = (_rows_layout(t) for t in (q, k, v))
    return _SegmentAttention.apply(q, k, v, length, q.shape[-1] ** -0.5)


def packed_segment_attention(qkv: torch.Tensor, freqs_cis: torch.Tensor, heads: int, kv_heads: int,
                             length: int) -> torch.Tensor:
    """segment_attention of the rotated q and k of a qkv projection output (rows, (heads + 2 kv_heads) * D):
    apply_rotary_emb(q, freqs_cis) and the same for k done inside the kernels, freqs_cis (length, D/2, 2)
    as the wheel keeps it; (rows, heads, D) out, and one (rows, qkv width) gradient for qkv. The
    caller checked `applies` on split_heads(qkv, ...)."""
    q, k, _ = split_heads(qkv, heads, kv_heads)
    return _PackedSegmentAttention.apply(qkv.contiguous(), freqs_cis.contiguous(), heads, kv_heads, length,
                                         q.shape[-1] ** -0.5)
