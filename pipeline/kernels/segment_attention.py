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
compiled backward of the rotation ran at a quarter of copy speed.

Tests run the kernels in Triton's interpreter against SDPA per frame; the speed is measured by
`python -m pipeline bench` on a GPU (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import torch

from pipeline.kernels import runtime

triton = runtime.triton
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
    def _rotate(x, cos, sin):
        """Pairs (x[2j], x[2j+1]) of x (T x D) rotated by the angles (cos, sin), in fp32."""
        even, odd = tl.split(tl.reshape(x.to(tl.float32), [x.shape[0], x.shape[1] // 2, 2]))
        return tl.reshape(tl.join(even * cos - odd * sin, odd * cos + even * sin), [x.shape[0], x.shape[1]])

    @triton.jit
    def _segment_attention_fwd(q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, freqs_ptr, N, stride_q, stride_k, stride_v,
                               scale: tl.constexpr, LENGTH: tl.constexpr, GROUP: tl.constexpr, D: tl.constexpr,
                               TILE_: tl.constexpr, ROPE: tl.constexpr):
        """o[rows, h] = softmax(q k^T * scale, causal within each segment) v, lse[h, rows] for one
        tile (program_id(0)) and query head h (program_id(1)); k/v head h // GROUP; ROPE: q and k
        rotated first. scale is a constexpr: inductor passes a runtime Python float as fp64, and
        fp64 tiles ran ~4x slower."""
        h = tl.program_id(1)
        hk = h // GROUP
        heads = tl.num_programs(1)
        rows, valid, allowed = _tile(N, LENGTH, TILE_)
        d = tl.arange(0, D)[None, :]
        q = tl.load(q_ptr + rows[:, None] * stride_q + h * D + d, mask=valid[:, None], other=0.0)
        k = tl.load(k_ptr + rows[:, None] * stride_k + hk * D + d, mask=valid[:, None], other=0.0)
        v = tl.load(v_ptr + rows[:, None] * stride_v + hk * D + d, mask=valid[:, None], other=0.0)
        if ROPE:
            cos, sin = _angles(freqs_ptr, rows, LENGTH, D)
            q = _rotate(q, cos, sin).to(v.dtype)
            k = _rotate(k, cos, sin).to(v.dtype)
        s = tl.where(allowed, tl.dot(q, tl.trans(k)) * scale, float("-inf"))
        m = tl.max(s, 1)
        p = tl.exp(s - m[:, None])
        total = tl.sum(p, 1)
        o = tl.dot((p / total[:, None]).to(v.dtype), v)
        tl.store(o_ptr + rows[:, None] * (heads * D) + h * D + d, o.to(o_ptr.dtype.element_ty), mask=valid[:, None])
        tl.store(lse_ptr + h * N + rows, m + tl.log(total), mask=valid)

    @triton.jit
    def _segment_attention_bwd(q_ptr, k_ptr, v_ptr, o_ptr, do_ptr, lse_ptr, freqs_ptr, dqkv_ptr, N,
                               stride_q, stride_k, stride_v, stride_dqkv, scale: tl.constexpr,
                               LENGTH: tl.constexpr, GROUP: tl.constexpr, D: tl.constexpr, TILE_: tl.constexpr,
                               ROPE: tl.constexpr):
        """dq, dk, dv of one tile (program_id(0)) and key/value head hk (program_id(1)): its GROUP
        query heads one after the other, their dk and dv summed in registers. They are written side
        by side into one (rows, (heads + 2 kv_heads) * D) buffer, dqkv: a user kernel writing into
        several views of one buffer is miscompiled (inductor's functionalization gives each view its
        own copy, and all but one are lost). ROPE: q and k are
        rotated again here, and dq, dk rotated back (by the opposite angles) before they are stored."""
        hk = tl.program_id(1)
        kv_heads = tl.num_programs(1)
        heads = kv_heads * GROUP
        rows, valid, allowed = _tile(N, LENGTH, TILE_)
        d = tl.arange(0, D)[None, :]
        k = tl.load(k_ptr + rows[:, None] * stride_k + hk * D + d, mask=valid[:, None], other=0.0)
        v = tl.load(v_ptr + rows[:, None] * stride_v + hk * D + d, mask=valid[:, None], other=0.0)
        if ROPE:
            cos, sin = _angles(freqs_ptr, rows, LENGTH, D)
            k = _rotate(k, cos, sin).to(v.dtype)
        dk = tl.zeros([TILE_, D], dtype=tl.float32)
        dv = tl.zeros([TILE_, D], dtype=tl.float32)
        for g in tl.static_range(GROUP):
            h = hk * GROUP + g
            q = tl.load(q_ptr + rows[:, None] * stride_q + h * D + d, mask=valid[:, None], other=0.0)
            if ROPE:
                q = _rotate(q, cos, sin).to(v.dtype)
            o = tl.load(o_ptr + rows[:, None] * (heads * D) + h * D + d, mask=valid[:, None], other=0.0)
            do = tl.load(do_ptr + rows[:, None] * (heads * D) + h * D + d, mask=valid[:, None], other=0.0)
            lse = tl.load(lse_ptr + h * N + rows, mask=valid, other=0.0)
            delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)
            s = tl.dot(q, tl.trans(k)) * scale
            p = tl.where(allowed & valid[:, None], tl.exp(s - lse[:, None]), 0.0)
            dv = tl.dot(tl.trans(p.to(do.dtype)), do, dv)
            dp = tl.dot(do, tl.trans(v))
            ds = (p * (dp - delta[:, None])).to(q.dtype)
            dq = tl.dot(ds, k) * scale
            if ROPE:
                dq = _rotate(dq, cos, -sin)
            tl.store(dqkv_ptr + rows[:, None] * stride_dqkv + h * D + d, dq.to(dqkv_ptr.dtype.element_ty),
                     mask=valid[:, None])
            dk = tl.dot(tl.trans(ds), q, dk)
        dk = dk * scale
        if ROPE:
            dk = _rotate(dk, cos, -sin)
        tl.store(dqkv_ptr + rows[:, None] * stride_dqkv + (heads + hk) * D + d, dk.to(dqkv_ptr.dtype.element_ty),
                 mask=valid[:, None])
        tl.store(dqkv_ptr + rows[:, None] * stride_dqkv + (heads + kv_heads + hk) * D + d,
                 dv.to(dqkv_ptr.dtype.element_ty), mask=valid[:, None])

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

    def launch_backward(launch, q, k, v, o, do, lse, freqs, length, scale):
        """dqkv: the gradients of q (rows, heads, D), k and v (rows, kv heads, D) side by side,
        (rows, (heads + 2 kv heads) * D)."""
        N, heads, D = q.shape
        kv_heads = k.shape[1]
        dqkv = torch.empty(N, (heads + 2 * kv_heads) * D, device=q.device, dtype=q.dtype)
        launch(_segment_attention_bwd, _grid(N, length, kv_heads))(
            q, k, v, o, do, lse, q if freqs is None else freqs, dqkv, N, q.stride(0), k.stride(0), v.stride(0),
            dqkv.stride(0), scale=scale, LENGTH=length, GROUP=heads // kv_heads, D=D, TILE_=TILE,
            ROPE=freqs is not None, **SETTINGS["backward"])
        return dqkv

    # the packed ops take qkv whole: views of it into an op are split inside (column ranges of a
    # user kernel's input or output can be copied around it by inductor)
    @torch.library.triton_op("finnish_tts::segment_attention", mutates_args=())
    def _forward_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, length: int,
                    scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        return launch_forward(runtime.launch_wrapped, q, k, v, None, length, scale)

    @torch.library.triton_op("finnish_tts::segment_attention_packed", mutates_args=())
    def _forward_packed_op(qkv: torch.Tensor, freqs: torch.Tensor, heads: int, kv_heads: int, length: int,
                           scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        return launch_forward(runtime.launch_wrapped, *split_heads(qkv, heads, kv_heads), freqs, length, scale)

    @torch.library.triton_op("finnish_tts::segment_attention_backward", mutates_args=())
    def _backward_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor, do: torch.Tensor,
                     lse: torch.Tensor, length: int, scale: float) -> torch.Tensor:
        return launch_backward(runtime.launch_wrapped, q, k, v, o, do, lse, None, length, scale)

    @torch.library.triton_op("finnish_tts::segment_attention_backward_packed", mutates_args=())
    def _backward_packed_op(qkv: torch.Tensor, o: torch.Tensor, do: torch.Tensor, lse: torch.Tensor,
                            freqs: torch.Tensor, heads: int, kv_heads: int, length: int, scale: float) -> torch.Tensor:
        return launch_backward(runtime.launch_wrapped, *split_heads(qkv, heads, kv_heads), o, do, lse, freqs,
                               length, scale)


def split_heads(qkv: torch.Tensor, heads: int, kv_heads: int):
    """Views q (rows, heads, D), k and v (rows, kv heads, D) of (rows, (heads + 2 kv heads) * D)."""
    per_head = qkv.view(qkv.shape[0], heads + 2 * kv_heads, -1)
    return per_head[:, :heads], per_head[:, heads : heads + kv_heads], per_head[:, heads + kv_heads :]


def applies(q: torch.Tensor, k: torch.Tensor, length: int, enabled: bool = True) -> bool:
    """Whether the kernels take this attention: q (..., heads, D), k/v (..., kv heads, D) with a
    head dim the tensor cores take (16..128, a power of two), segments of at most TILE rows, a CUDA
    GPU of Ampere or newer with 16-bit inputs (fp32 would run its products as TF32; flex attention
    keeps them exact), or Triton's interpreter; and `enabled` (the caller's switch: False falls back
    to flex attention or SDPA)."""
    D = q.shape[-1]
    if not enabled or triton is None or D not in (16, 32, 64, 128) or length > TILE or q.shape[-2] % k.shape[-2]:
        return False
    if q.is_cuda and q.dtype not in (torch.bfloat16, torch.float16):
        return False
    return runtime.triton_kernels_run_on(q.device)


def _rows_layout(t: torch.Tensor) -> torch.Tensor:
    """(rows, heads, D) with heads and D packed (any row stride): the kernels' addressing."""
    return t if t.stride(2) == 1 and t.stride(1) == t.shape[2] else t.contiguous()


class _SegmentAttention(torch.autograd.Function):
    """q, k, v separate (rotated by the caller)."""

    @staticmethod
    def forward(ctx, q, k, v, length, scale):
        if q.is_cuda:
            o, lse = _forward_op(q, k, v, length, scale)
        else:
            o, lse = launch_forward(runtime.launch_direct, q, k, v, None, length, scale)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.length, ctx.scale = length, scale
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        args = (q, k, v, o, do.contiguous(), lse)
        if q.is_cuda:
            dqkv = _backward_op(*args, ctx.length, ctx.scale)
        else:
            dqkv = launch_backward(runtime.launch_direct, *args, None, ctx.length, ctx.scale)
        return *split_heads(dqkv, q.shape[1], k.shape[1]), None, None


class _PackedSegmentAttention(torch.autograd.Function):
    """qkv as the projection wrote it, rotated inside the kernels; one gradient buffer for it."""

    @staticmethod
    def forward(ctx, qkv, freqs, heads, kv_heads, length, scale):
        if qkv.is_cuda:
            o, lse = _forward_packed_op(qkv, freqs, heads, kv_heads, length, scale)
        else:
            o, lse = launch_forward(runtime.launch_direct, *split_heads(qkv, heads, kv_heads), freqs, length,
                                    scale)
        ctx.save_for_backward(qkv, freqs, o, lse)
        ctx.args = heads, kv_heads, length, scale
        return o

    @staticmethod
    def backward(ctx, do):
        qkv, freqs, o, lse = ctx.saved_tensors
        heads, kv_heads, length, scale = ctx.args
        if qkv.is_cuda:
            dqkv = _backward_packed_op(qkv, o, do.contiguous(), lse, freqs, heads, kv_heads, length, scale)
        else:
            dqkv = launch_backward(runtime.launch_direct, *split_heads(qkv, heads, kv_heads), o, do.contiguous(),
                                   lse, freqs, length, scale)
        return dqkv, None, None, None, None, None


def segment_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, length: int) -> torch.Tensor:
    """Causal attention within each `length`-row segment of q (rows, heads, D) over k, v
    (rows, kv heads, D) (grouped-query: query head h reads key/value head h // (heads / kv heads)),
    scaled by 1/sqrt(D); (rows, heads, D) out. The caller checked `applies`."""
    q, k, v = (_rows_layout(t) for t in (q, k, v))
    return _SegmentAttention.apply(q, k, v, length, q.shape[-1] ** -0.5)


def packed_segment_attention(qkv: torch.Tensor, freqs_cis: torch.Tensor, heads: int, kv_heads: int,
                             length: int) -> torch.Tensor:
    """segment_attention of the rotated q and k of a qkv projection output (rows, (heads + 2 kv heads) * D):
    apply_rotary_emb(q, freqs_cis) and the same for k done inside the kernels, freqs_cis (length, D/2, 2)
    as the wheel keeps it; (rows, heads, D) out, and one (rows, qkv width) gradient for qkv. The
    caller checked `applies` on split_heads(qkv, ...)."""
    head_dim = qkv.shape[1] // (heads + 2 * kv_heads)
    if freqs_cis.shape[0] < length or tuple(freqs_cis.shape[1:]) != (head_dim // 2, 2):  # the kernels read it unmasked
        raise ValueError(f"freqs_cis must be (>= {length}, {head_dim // 2}, 2), got {tuple(freqs_cis.shape)}.")
    return _PackedSegmentAttention.apply(qkv.contiguous(), freqs_cis.contiguous(), heads, kv_heads, length,
                                         head_dim**-0.5)
