"""LoRA's down-projection with its dropout mask made inside the kernel (Triton, training on a GPU).

peft computes a LoRA branch as B(A(dropout(x))) * scale. Compiled, the dropout is a per-element
Philox draw fused into the kernel before it (10 rounds of 32-bit multiplies for one bit of
information per element), its output x_drop (rows x K) is written, read by the rank-8 matmul, and
kept for A's gradient. With the s1-mini shape that is ~7 billion draws per step (the fast
transformer runs 10 positions per audio frame): a third of the step's element-wise time
(docs/PERFORMANCE.md, `+dropout0`).

Here one kernel reads x, draws the mask and multiplies by A in registers: x_drop never exists.
Each Philox call gives 128 bits, used as eight 16-bit uniforms for eight elements, so p is
rounded to a multiple of 1/65536 (0.01 becomes 0.0099945) and the kept values are scaled by
1/(1-p) with that rounded p (unbiased, as dropout requires). The mask is a pure function of
(seed, row, column), so the backward kernels draw it again instead of storing it. Every adapter
gets its own seed: masks are independent across adapters and across calls, as with peft.

`low_rank_inputs` is the entry point: the scaled low-rank activations of several adapters that
share an input, on any device (torch's dropout where the kernel does not apply); `dropped_linear`
also multiplies them, beside x, by the frozen base weight (pipeline.kernels.fused_linear). Tests run the
kernels in Triton's interpreter on the CPU and compile them for sm_90; the speed is measured by
`python -m pipeline bench` (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.kernels import runtime

triton = runtime.triton
UNIFORM_BITS = 16  # resolution of the dropout draw: p is rounded to a multiple of 2**-16
MAX_RANK = 64  # higher LoRA ranks use torch's path (the padded rank tiles live in registers)
MAX_ADAPTERS = 8
# tile of x (rows x columns) and launch settings per kernel, "<kernel>_glu" for its SiLU variant
# where that differs (measured: docs/PERFORMANCE.md); the mask does not depend on them (a function
# of seed, row and column only)
TILES = {
    "down": {"ROWS": 32, "COLS": 128, "num_warps": 4, "num_stages": 3},
    "grad_input": {"ROWS": 32, "COLS": 128, "num_warps": 4, "num_stages": 1},
    "grad_input_glu": {"ROWS": 16, "COLS": 128, "num_warps": 4, "num_stages": 1},
    "grad_weight": {"ROWS": 32, "COLS": 256, "num_warps": 8, "num_stages": 3},
}
MASK_TILE = (64, 128)

if triton is not None:
    import triton.language as tl

    @triton.jit
    def _keep(seed, rows, k0, K, threshold, COLS: tl.constexpr):
        """Keep-mask (ROWS x COLS) of x[rows, k0:k0+COLS]: one Philox call per 8 consecutive columns,
        its four 32-bit words split into eight 16-bit uniforms; kept where uniform >= threshold."""
        groups = k0 // 8 + tl.arange(0, COLS // 8)
        counter = rows[:, None] * (K // 8) + groups[None, :]
        w0, w1, w2, w3 = tl.randint4x(seed, counter)
        h = tl.join(tl.join(tl.join(w0 & 0xFFFF, w0 >> 16), tl.join(w1 & 0xFFFF, w1 >> 16)),
                    tl.join(tl.join(w2 & 0xFFFF, w2 >> 16), tl.join(w3 & 0xFFFF, w3 >> 16)))
        return tl.reshape(h, [rows.shape[0], COLS]) >= threshold

    @triton.jit
    def _mask_kernel(out_ptr, seed_ptr, M, K, threshold, ROWS: tl.constexpr, COLS: tl.constexpr):
        """The mask itself (tests: the kernels below must use exactly this mask)."""
        rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        cols = tl.program_id(1) * COLS + tl.arange(0, COLS)
        keep = _keep(tl.load(seed_ptr), rows, tl.program_id(1) * COLS, K, threshold, COLS)
        inside = (rows < M)[:, None] & (cols < K)[None, :]
        tl.store(out_ptr + rows.to(tl.int64)[:, None] * K + cols[None, :], keep.to(tl.int8), mask=inside)

    @triton.jit
    def _down_kernel(x_ptr, a_ptr, out_ptr, seed_ptr, scale_ptr, M, K, stride_x, stride_out, u_col, threshold,
                     WRITE_X: tl.constexpr, GLU: tl.constexpr, RANK: tl.constexpr, ROWS: tl.constexpr,
                     COLS: tl.constexpr, RANK_PAD: tl.constexpr):
        """out[:, u_col + a*RANK : u_col + (a+1)*RANK] = scale[a] * (x * keep_a) @ A[a].T for row block
        program_id(0), adapter program_id(1); A is (adapters, RANK, K). WRITE_X: adapter 0's programs
        also copy x into out[:, :K] as they read it (out = [x | u], the fused linear's input).
        GLU: the input holds [gate | up] (2K columns) and x = silu(gate) * up is made here."""
        adapter = tl.program_id(1)
        rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        rows64 = rows.to(tl.int64)[:, None]
        ranks = tl.arange(0, RANK_PAD)
        seed = tl.load(seed_ptr) + adapter
        acc = tl.zeros([ROWS, RANK_PAD], dtype=tl.float32)
        for k0 in range(0, K, COLS):
            cols = k0 + tl.arange(0, COLS)
            inside = (rows < M)[:, None] & (cols < K)[None, :]
            x = tl.load(x_ptr + rows64 * stride_x + cols[None, :], mask=inside, other=0.0)
            if GLU:
                gate = x.to(tl.float32)
                up = tl.load(x_ptr + rows64 * stride_x + K + cols[None, :], mask=inside, other=0.0)
                x = (gate * tl.sigmoid(gate) * up.to(tl.float32)).to(up.dtype)
            if WRITE_X:
                tl.store(out_ptr + rows64 * stride_out + cols[None, :], x, mask=inside & (adapter == 0))
            x = tl.where(_keep(seed, rows, k0, K, threshold, COLS), x, 0.0)
            a = tl.load(a_ptr + adapter * RANK * K + ranks[None, :] * K + cols[:, None],
                        mask=(ranks < RANK)[None, :] & (cols < K)[:, None], other=0.0)
            acc = tl.dot(x, a.to(x.dtype), acc)
        u = acc * tl.load(scale_ptr + adapter)
        tl.store(out_ptr + rows64 * stride_out + u_col + adapter * RANK + ranks[None, :],
                 u.to(out_ptr.dtype.element_ty), mask=(rows < M)[:, None] & (ranks < RANK)[None, :])

    @triton.jit
    def _grad_input_kernel(g_ptr, a_ptr, out_ptr, glu_ptr, seed_ptr, scale_ptr, M, K, stride_g, gu_col, stride_glu,
                           threshold, ADAPTERS: tl.constexpr, HAS_BASE: tl.constexpr, GLU: tl.constexpr,
                           RANK: tl.constexpr, ROWS: tl.constexpr, COLS: tl.constexpr, RANK_PAD: tl.constexpr):
        """g_x = g[:, :K] (0 without HAS_BASE) + sum_a scale[a] * keep_a * (g_u_a @ A[a]) for one
        (rows, cols) tile, with g_u = g[:, gu_col:]: both read from the one gradient buffer of
        [x | u], no sliced copies. out = g_x, or with GLU (x = silu(gate) * up, glu = [gate | up])
        out = [g_gate | g_up] (M x 2K), the SiLU's backward done on the tile in fp32."""
        rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        rows64 = rows.to(tl.int64)[:, None]
        cols = tl.program_id(1) * COLS + tl.arange(0, COLS)
        k0 = tl.program_id(1) * COLS
        ranks = tl.arange(0, RANK_PAD)
        inside = (rows < M)[:, None] & (cols < K)[None, :]
        out = tl.zeros([ROWS, COLS], dtype=tl.float32)
        if HAS_BASE:
            out += tl.load(g_ptr + rows64 * stride_g + cols[None, :], mask=inside, other=0.0).to(tl.float32)
        for adapter in tl.static_range(ADAPTERS):
            gu = tl.load(g_ptr + rows64 * stride_g + gu_col + adapter * RANK + ranks[None, :],
                         mask=(rows < M)[:, None] & (ranks < RANK)[None, :], other=0.0)
            a = tl.load(a_ptr + adapter * RANK * K + ranks[:, None] * K + cols[None, :],
                        mask=(ranks < RANK)[:, None] & (cols < K)[None, :], other=0.0)
            part = tl.dot(gu, a.to(gu.dtype)) * tl.load(scale_ptr + adapter)
            keep = _keep(tl.load(seed_ptr) + adapter, rows, k0, K, threshold, COLS)
            out += tl.where(keep, part, 0.0)
        if GLU:
            gate = tl.load(glu_ptr + rows64 * stride_glu + cols[None, :], mask=inside, other=0.0).to(tl.float32)
            up = tl.load(glu_ptr + rows64 * stride_glu + K + cols[None, :], mask=inside, other=0.0).to(tl.float32)
            sig = tl.sigmoid(gate)
            g_gate = out * up * sig * (1.0 + gate * (1.0 - sig))
            tl.store(out_ptr + rows64 * (2 * K) + cols[None, :], g_gate.to(out_ptr.dtype.element_ty), mask=inside)
            tl.store(out_ptr + rows64 * (2 * K) + K + cols[None, :], (out * gate * sig).to(out_ptr.dtype.element_ty),
                     mask=inside)
        else:
            tl.store(out_ptr + rows64 * K + cols[None, :], out.to(out_ptr.dtype.element_ty), mask=inside)

    @triton.jit
    def _grad_weight_kernel(x_ptr, g_ptr, part_ptr, seed_ptr, scale_ptr, M, K, stride_x, stride_g, gu_col, threshold,
                            RANK: tl.constexpr, ROWS: tl.constexpr, COLS: tl.constexpr, RANK_PAD: tl.constexpr):
        """partial[split, a] = scale[a] * g_u_a.T @ (x * keep_a) over this split's row blocks, for one
        column block (program_id(0)), split (program_id(1)) and adapter (program_id(2)); x = x[:, :K]
        and g_u = g[:, gu_col:] may be column ranges of wider buffers."""
        adapter, split, splits = tl.program_id(2), tl.program_id(1), tl.num_programs(1)
        cols = tl.program_id(0) * COLS + tl.arange(0, COLS)
        k0 = tl.program_id(0) * COLS
        ranks = tl.arange(0, RANK_PAD)
        seed = tl.load(seed_ptr) + adapter
        acc = tl.zeros([RANK_PAD, COLS], dtype=tl.float32)
        for start in range(split * ROWS, M, splits * ROWS):
            rows = start + tl.arange(0, ROWS)
            rows64 = rows.to(tl.int64)[:, None]
            x = tl.load(x_ptr + rows64 * stride_x + cols[None, :],
                        mask=(rows < M)[:, None] & (cols < K)[None, :], other=0.0)
            x = tl.where(_keep(seed, rows, k0, K, threshold, COLS), x, 0.0)
            gu = tl.load(g_ptr + rows64 * stride_g + gu_col + adapter * RANK + ranks[None, :],
                         mask=(rows < M)[:, None] & (ranks < RANK)[None, :], other=0.0)
            acc = tl.dot(tl.trans(gu.to(x.dtype)), x, acc)
        acc = acc * tl.load(scale_ptr + adapter)
        base = part_ptr + (split * tl.num_programs(2) + adapter) * RANK * K
        tl.store(base + ranks[:, None] * K + cols[None, :], acc, mask=(ranks < RANK)[:, None] & (cols < K)[None, :])

    def _settings(name, rank, glu=False):
        tile = TILES.get(f"{name}_glu", TILES[name]) if glu else TILES[name]
        # ranks padded to a power of two of at least 16 (the tensor cores' smallest dot)
        consts = {"ROWS": tile["ROWS"], "COLS": tile["COLS"], "RANK_PAD": max(16, triton.next_power_of_2(rank))}
        return tile["ROWS"], tile["COLS"], consts, {"num_warps": tile["num_warps"], "num_stages": tile["num_stages"]}

    def _grid_splits(M: int, K: int, adapters: int, rows: int, cols: int, device) -> int:
        """Row splits of the weight-gradient kernel: ~2 programs per SM in all."""
        sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4
        return max(1, min(triton.cdiv(M, rows), 2 * sms // (triton.cdiv(K, cols) * adapters)))

    def launch_down(launch, x, a, seed, scale, threshold, with_x, glu=False):
        adapters, rank, K = a.shape
        M = x.shape[0]
        rows, _, consts, options = _settings("down", rank, glu)
        if with_x:  # [x | u], rows padded to 64 elements (the matmul reading it prefers aligned rows)
            width = K + adapters * rank
            out = torch.empty_strided((M, width), (-(-width // 64) * 64, 1), device=x.device, dtype=x.dtype)
        else:
            out = torch.empty(M, adapters * rank, device=x.device, dtype=x.dtype)
        launch(_down_kernel, (triton.cdiv(M, rows), adapters))(
            x, a, out, seed, scale, M, K, x.stride(0), out.stride(0), K if with_x else 0, threshold,
            WRITE_X=with_x, GLU=glu, RANK=rank, **consts, **options)
        return out

    def launch_grad_input(launch, g, gu_col, has_base, a, seed, scale, threshold, glu=None):
        adapters, rank, K = a.shape
        M = g.shape[0]
        rows, cols, consts, options = _settings("grad_input", rank, glu is not None)
        out = torch.empty(M, K if glu is None else 2 * K, device=g.device, dtype=g.dtype)
        launch(_grad_input_kernel, (triton.cdiv(M, rows), triton.cdiv(K, cols)))(
            g, a, out, g if glu is None else glu, seed, scale, M, K, g.stride(0), gu_col,
            0 if glu is None else glu.stride(0), threshold, ADAPTERS=adapters, HAS_BASE=has_base,
            GLU=glu is not None, RANK=rank, **consts, **options)
        return out

    def launch_grad_weight(launch, x, g, gu_col, a, seed, scale, threshold):
        adapters, rank, K = a.shape
        M = x.shape[0]
        rows, cols, consts, options = _settings("grad_weight", rank)
        splits = _grid_splits(M, K, adapters, rows, cols, x.device)
        part = torch.empty(splits, adapters, rank, K, device=x.device, dtype=torch.float32)
        launch(_grad_weight_kernel, (triton.cdiv(K, cols), splits, adapters))(
            x, g, part, seed, scale, M, K, x.stride(0), g.stride(0), gu_col, threshold, RANK=rank, **consts, **options)
        return part.sum(0)  # a fixed order: deterministic, unlike atomics

    @torch.library.triton_op("finnish_tts::lora_down", mutates_args=())
    def _down_op(x: torch.Tensor, a: torch.Tensor, seed: torch.Tensor, scale: torch.Tensor,
                 threshold: int, with_x: bool, glu: bool) -> torch.Tensor:
        return launch_down(runtime.launch_wrapped, x, a, seed, scale, threshold, with_x, glu)

    @torch.library.triton_op("finnish_tts::lora_down_grad_input", mutates_args=())
    def _grad_input_op(g: torch.Tensor, gu_col: int, has_base: bool, a: torch.Tensor, seed: torch.Tensor,
                       scale: torch.Tensor, threshold: int, glu: torch.Tensor | None) -> torch.Tensor:
        return launch_grad_input(runtime.launch_wrapped, g, gu_col, has_base, a, seed, scale, threshold, glu)

    @torch.library.triton_op("finnish_tts::lora_down_grad_weight", mutates_args=())
    def _grad_weight_op(x: torch.Tensor, g: torch.Tensor, gu_col: int, a: torch.Tensor, seed: torch.Tensor,
                        scale: torch.Tensor, threshold: int) -> torch.Tensor:
        return launch_grad_weight(runtime.launch_wrapped, x, g, gu_col, a, seed, scale, threshold)

    def keep_mask(seed: torch.Tensor, M: int, K: int, threshold: int) -> torch.Tensor:
        """The (M, K) keep-mask the kernels draw for `seed` (bool), launched directly (tests)."""
        out = torch.empty(M, K, dtype=torch.int8, device=seed.device)
        rows, cols = MASK_TILE
        _mask_kernel[(triton.cdiv(M, rows), triton.cdiv(K, cols))](out, seed, M, K, threshold, ROWS=rows, COLS=cols)
        return out.bool()


def threshold_for(p: float) -> int:
    """The 16-bit draw below which an element is dropped: p rounded to a multiple of 2**-16."""
    return round(p * (1 << UNIFORM_BITS))


def usable(device, enabled: bool = True) -> bool:
    """Whether the kernels run on `device` (runtime.triton_kernels_run_on); enabled: the
    caller's switch (False: torch's dropout, e.g. to measure what the kernels bring)."""
    return enabled and triton is not None and runtime.triton_kernels_run_on(device)


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype x's matmuls run in: autocast's where it is on, else x's."""
    return torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype


def kernel_applies(x: torch.Tensor, branches, glu: bool = False, enabled: bool = True) -> bool:
    """Whether the kernel computes these branches [(A, dropout, scale, B)] for x (glu: for
    silu(gate) * up of x = [gate | up]): training-mode nn.Dropout with one 0 < p < 1 for all, one
    rank <= MAX_RANK for all, at most MAX_ADAPTERS, no bias, a `usable` device, K % 8 == 0, and on
    a GPU a 16-bit compute dtype (fp32's tensor-core dots would be TF32)."""
    width = x.shape[-1] // 2 if glu else x.shape[-1]
    if not branches or len(branches) > MAX_ADAPTERS or width % 8 or not usable(x.device, enabled):
        return False
    if x.is_cuda and compute_dtype(x) not in (torch.bfloat16, torch.float16):  # fp32 dots would be TF32: torch's path
        return False
    if x.numel() // 8 >= 2**31:  # the mask's Philox counter (row * K/8 + column/8) is 32-bit
        return False
    drops = [d for _, d, _, _ in branches]
    if not all(isinstance(d, torch.nn.Dropout) and d.training for d in drops):
        return False
    ps, ranks = {d.p for d in drops}, {a.weight.shape[0] for a, *_ in branches}
    return len(ps) == 1 and len(ranks) == 1 and 0 < threshold_for(ps.pop()) < (1 << UNIFORM_BITS) and \
        ranks.pop() <= MAX_RANK and all(a.bias is None and a.weight.shape[1] == width for a, *_ in branches)


def operands(x: torch.Tensor, branches, dtype):
    """(A stacked (adapters, rank, K) in dtype, scales / (1 - p), threshold, a fresh seed)."""
    p = branches[0][1].p
    threshold = threshold_for(p)
    keep = 1 - threshold / (1 << UNIFORM_BITS)
    a = torch.stack([a.weight for a, *_ in branches]).to(dtype)
    # filled on the device: torch.tensor(..., device=cuda) would copy from the host and wait for the GPU
    scale = torch.cat([torch.full((1,), s / keep, dtype=torch.float32, device=x.device) for _, _, s, _ in branches])
    # adapter i draws with seed + i: leave room below int32's limit
    seed = torch.randint(0, 2**31 - 1 - MAX_ADAPTERS, (1,), device=x.device, dtype=torch.int32)
    return a, scale, threshold, seed


class _Dropped(torch.autograd.Function):
    """u = [scale_i * A_i(dropout_i(x))]_i through the kernels, or with a frozen base w (and the
    B matrices w_low facing u's columns) [x | u] @ [w | w_low].T, one matmul: the down kernel
    writes [x | u] itself (no concatenated copy of x) and that buffer is what backward keeps.
    glu: the input is [gate | up] and x = silu(gate) * up is made inside the kernels (a feed-forward's
    w2), forward and backward. Backward: x's gradient of the base and the LoRA paths in one pass
    over the gradient of [x | u], A's gradient without a dropped copy of x."""

    @staticmethod
    def forward(ctx, x2, w, w_low, a, scale, threshold, seed, glu, *a_weights):
        out = down(x2, a, seed, scale, threshold, with_x=w is not None, glu=glu)
        ctx.save_for_backward(x2 if w is None else out, x2 if glu else None, w, w_low, a, scale, seed)
        ctx.threshold, ctx.a_dtypes = threshold, [t.dtype for t in a_weights]
        return out if w is None else F.linear(out, torch.cat([w, w_low], -1))

    @staticmethod
    def backward(ctx, grad):
        x_or_xu, glu_input, w, w_low, a, scale, seed = ctx.saved_tensors
        K = a.shape[-1]
        grad_low = None
        if w is None:
            g, gu_col = grad.contiguous(), 0
        else:  # the gradient of [x | u]: x's base part in columns :K, u's in K:
            g, gu_col = grad @ torch.cat([w, w_low], -1), K
            grad_low = grad.T @ x_or_xu[:, K:] if ctx.needs_input_grad[2] else None
        grad_x = grad_input(g, gu_col, w is not None, a, seed, scale, ctx.threshold, glu_input) \
            if ctx.needs_input_grad[0] else None
        grad_a = grad_weight(x_or_xu, g, gu_col, a, seed, scale, ctx.threshold)
        return (grad_x, None, grad_low, None, None, None, None, None,
                *(g_.to(d) for g_, d in zip(grad_a.unbind(0), ctx.a_dtypes)))


def down(x2, a, seed, scale, threshold, with_x=False, glu=False):
    if x2.is_cuda:
        return _down_op(x2, a, seed, scale, threshold, with_x, glu)
    return launch_down(runtime.launch_direct, x2, a, seed, scale, threshold, with_x, glu)


def grad_input(g, gu_col, has_base, a, seed, scale, threshold, glu=None):
    if g.is_cuda:
        return _grad_input_op(g, gu_col, has_base, a, seed, scale, threshold, glu)
    return launch_grad_input(runtime.launch_direct, g, gu_col, has_base, a, seed, scale, threshold, glu)


def grad_weight(x, g, gu_col, a, seed, scale, threshold):
    if x.is_cuda:
        return _grad_weight_op(x, g, gu_col, a, seed, scale, threshold)
    return launch_grad_weight(runtime.launch_direct, x, g, gu_col, a, seed, scale, threshold)


def dropped_linear(x: torch.Tensor, branches, dtype: torch.dtype, w: torch.Tensor | None = None,
                   w_low: torch.Tensor | None = None, glu: bool = False) -> torch.Tensor:
    """Through the kernels (the caller checked `kernel_applies`): the branches' scaled low-rank
    activations u of x, or with a frozen base weight w: [x | u] @ [w | w_low].T (see _Dropped).
    glu: x holds [gate | up] and the layer's input is silu(gate) * up (w must be given)."""
    if glu and w is None:
        raise ValueError("glu needs the layer's base weight: [gate | up] is not the low-rank input itself.")
    a, scale, threshold, seed = operands(x, branches, dtype)
    x2 = x.reshape(-1, x.shape[-1]).to(dtype).contiguous()
    y = _Dropped.apply(x2, w, w_low, a, scale, threshold, seed, glu, *[a_.weight for a_, *_ in branches])
    return y.view(*x.shape[:-1], y.shape[-1])


def low_rank_inputs(x: torch.Tensor, branches, dtype: torch.dtype | None = None, enabled: bool = True) -> torch.Tensor:
    """torch.cat([scale * A(dropout(x)) for (A, dropout, scale, _) in branches], -1) in `dtype`
    (default x's), through the kernel where `kernel_applies` (with `enabled`), else as peft computes it."""
    dtype = dtype or x.dtype
    if not kernel_applies(x, branches, enabled=enabled):
        return torch.cat([a(dropout(x)) * scale for a, dropout, scale, _ in branches], -1).to(dtype)
    return dropped_linear(x, branches, dtype)
