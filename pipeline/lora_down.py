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
also multiplies them, beside x, by the frozen base weight (pipeline.fused_linear). Tests run the
kernels in Triton's interpreter on the CPU and compile them for sm_90; the speed is measured by
`python -m pipeline bench` (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from pipeline import decode_kernels

triton = decode_kernels.triton
ENABLED = triton is not None and os.environ.get("LORA_DROPOUT_KERNEL", "1") != "0"
UNIFORM_BITS = 16  # resolution of the dropout draw: p is rounded to a multiple of 2**-16
MAX_RANK = 64  # higher LoRA ranks use torch's path (the padded rank tiles live in registers)
MAX_ADAPTERS = 8
# tile of x (rows x columns) and launch settings per kernel (measured: docs/PERFORMANCE.md); the
# mask does not depend on them (a function of seed, row and column only)
TILES = {
    "down": {"ROWS": 64, "COLS": 64, "num_warps": 4, "num_stages": 4},
    "grad_input": {"ROWS": 32, "COLS": 128, "num_warps": 4, "num_stages": 1},
    "grad_weight": {"ROWS": 32, "COLS": 128, "num_warps": 8, "num_stages": 4},
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
    def _down_kernel(x_ptr, a_ptr, u_ptr, seed_ptr, scale_ptr, M, K, stride_x, threshold,
                     RANK: tl.constexpr, ROWS: tl.constexpr, COLS: tl.constexpr, RANK_PAD: tl.constexpr):
        """u[:, a*RANK:(a+1)*RANK] = scale[a] * (x * keep_a) @ A[a].T for row block program_id(0),
        adapter program_id(1); A is (adapters, RANK, K)."""
        adapter = tl.program_id(1)
        rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        ranks = tl.arange(0, RANK_PAD)
        seed = tl.load(seed_ptr) + adapter
        acc = tl.zeros([ROWS, RANK_PAD], dtype=tl.float32)
        for k0 in range(0, K, COLS):
            cols = k0 + tl.arange(0, COLS)
            x = tl.load(x_ptr + rows.to(tl.int64)[:, None] * stride_x + cols[None, :],
                        mask=(rows < M)[:, None] & (cols < K)[None, :], other=0.0)
            x = tl.where(_keep(seed, rows, k0, K, threshold, COLS), x, 0.0)
            a = tl.load(a_ptr + adapter * RANK * K + ranks[None, :] * K + cols[:, None],
                        mask=(ranks < RANK)[None, :] & (cols < K)[:, None], other=0.0)
            acc = tl.dot(x, a.to(x.dtype), acc)
        u = acc * tl.load(scale_ptr + adapter)
        tl.store(u_ptr + rows.to(tl.int64)[:, None] * (RANK * tl.num_programs(1)) + adapter * RANK + ranks[None, :],
                 u.to(u_ptr.dtype.element_ty), mask=(rows < M)[:, None] & (ranks < RANK)[None, :])

    @triton.jit
    def _grad_input_kernel(gx_ptr, gu_ptr, a_ptr, out_ptr, seed_ptr, scale_ptr, M, K, stride_gx, stride_gu,
                           threshold, ADAPTERS: tl.constexpr, HAS_BASE: tl.constexpr, RANK: tl.constexpr,
                           ROWS: tl.constexpr, COLS: tl.constexpr, RANK_PAD: tl.constexpr):
        """out = g_x + sum_a scale[a] * keep_a * (g_u_a @ A[a]) for one (rows, cols) tile (g_x = 0
        without HAS_BASE)."""
        rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        cols = tl.program_id(1) * COLS + tl.arange(0, COLS)
        k0 = tl.program_id(1) * COLS
        ranks = tl.arange(0, RANK_PAD)
        inside = (rows < M)[:, None] & (cols < K)[None, :]
        out = tl.zeros([ROWS, COLS], dtype=tl.float32)
        if HAS_BASE:
            out += tl.load(gx_ptr + rows.to(tl.int64)[:, None] * stride_gx + cols[None, :], mask=inside, other=0.0).to(tl.float32)
        for adapter in tl.static_range(ADAPTERS):
            gu = tl.load(gu_ptr + rows.to(tl.int64)[:, None] * stride_gu + adapter * RANK + ranks[None, :],
                         mask=(rows < M)[:, None] & (ranks < RANK)[None, :], other=0.0)
            a = tl.load(a_ptr + adapter * RANK * K + ranks[:, None] * K + cols[None, :],
                        mask=(ranks < RANK)[:, None] & (cols < K)[None, :], other=0.0)
            part = tl.dot(gu, a.to(gu.dtype)) * tl.load(scale_ptr + adapter)
            keep = _keep(tl.load(seed_ptr) + adapter, rows, k0, K, threshold, COLS)
            out += tl.where(keep, part, 0.0)
        tl.store(out_ptr + rows.to(tl.int64)[:, None] * K + cols[None, :], out.to(out_ptr.dtype.element_ty), mask=inside)

    @triton.jit
    def _grad_weight_kernel(x_ptr, gu_ptr, part_ptr, seed_ptr, scale_ptr, M, K, stride_x, stride_gu, threshold,
                            RANK: tl.constexpr, ROWS: tl.constexpr, COLS: tl.constexpr, RANK_PAD: tl.constexpr):
        """partial[split, a] = scale[a] * g_u_a.T @ (x * keep_a) over this split's row blocks, for one
        column block (program_id(0)), split (program_id(1)) and adapter (program_id(2))."""
        adapter, split, splits = tl.program_id(2), tl.program_id(1), tl.num_programs(1)
        cols = tl.program_id(0) * COLS + tl.arange(0, COLS)
        k0 = tl.program_id(0) * COLS
        ranks = tl.arange(0, RANK_PAD)
        seed = tl.load(seed_ptr) + adapter
        acc = tl.zeros([RANK_PAD, COLS], dtype=tl.float32)
        for start in range(split * ROWS, M, splits * ROWS):
            rows = start + tl.arange(0, ROWS)
            x = tl.load(x_ptr + rows.to(tl.int64)[:, None] * stride_x + cols[None, :],
                        mask=(rows < M)[:, None] & (cols < K)[None, :], other=0.0)
            x = tl.where(_keep(seed, rows, k0, K, threshold, COLS), x, 0.0)
            gu = tl.load(gu_ptr + rows.to(tl.int64)[:, None] * stride_gu + adapter * RANK + ranks[None, :],
                         mask=(rows < M)[:, None] & (ranks < RANK)[None, :], other=0.0)
            acc = tl.dot(tl.trans(gu.to(x.dtype)), x, acc)
        acc = acc * tl.load(scale_ptr + adapter)
        base = part_ptr + (split * tl.num_programs(2) + adapter) * RANK * K
        tl.store(base + ranks[:, None] * K + cols[None, :], acc, mask=(ranks < RANK)[:, None] & (cols < K)[None, :])

    def _settings(name, rank):
        tile = TILES[name]
        # ranks padded to a power of two of at least 16 (the tensor cores' smallest dot)
        consts = {"ROWS": tile["ROWS"], "COLS": tile["COLS"], "RANK_PAD": max(16, triton.next_power_of_2(rank))}
        return tile["ROWS"], tile["COLS"], consts, {"num_warps": tile["num_warps"], "num_stages": tile["num_stages"]}

    def _grid_splits(M: int, K: int, adapters: int, rows: int, cols: int, device) -> int:
        """Row splits of the weight-gradient kernel: ~2 programs per SM in all."""
        sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4
        return max(1, min(triton.cdiv(M, rows), 2 * sms // (triton.cdiv(K, cols) * adapters)))

    def launch_down(launch, x, a, seed, scale, threshold):
        M, K = x.shape
        adapters, rank, _ = a.shape
        rows, _, consts, options = _settings("down", rank)
        u = torch.empty(M, adapters * rank, device=x.device, dtype=x.dtype)
        launch(_down_kernel, (triton.cdiv(M, rows), adapters))(
            x, a, u, seed, scale, M, K, x.stride(0), threshold, RANK=rank, **consts, **options)
        return u

    def launch_grad_input(launch, gx, gu, a, seed, scale, threshold, M, K):
        adapters, rank, _ = a.shape
        rows, cols, consts, options = _settings("grad_input", rank)
        out = torch.empty(M, K, device=gu.device, dtype=gu.dtype)
        launch(_grad_input_kernel, (triton.cdiv(M, rows), triton.cdiv(K, cols)))(
            gu if gx is None else gx, gu, a, out, seed, scale, M, K, 0 if gx is None else gx.stride(0), gu.stride(0),
            threshold, ADAPTERS=adapters, HAS_BASE=gx is not None, RANK=rank, **consts, **options)
        return out

    def launch_grad_weight(launch, x, gu, a, seed, scale, threshold):
        M, K = x.shape
        adapters, rank, _ = a.shape
        rows, cols, consts, options = _settings("grad_weight", rank)
        splits = _grid_splits(M, K, adapters, rows, cols, x.device)
        part = torch.empty(splits, adapters, rank, K, device=x.device, dtype=torch.float32)
        launch(_grad_weight_kernel, (triton.cdiv(K, cols), splits, adapters))(
            x, gu, part, seed, scale, M, K, x.stride(0), gu.stride(0), threshold, RANK=rank, **consts, **options)
        return part.sum(0)  # a fixed order: deterministic, unlike atomics

    def _direct(kernel, grid):
        return kernel[grid]

    def _wrapped(kernel, grid):
        return torch.library.wrap_triton(kernel)[grid]

    @torch.library.triton_op("finnish_tts::lora_down", mutates_args=())
    def _down_op(x: torch.Tensor, a: torch.Tensor, seed: torch.Tensor, scale: torch.Tensor,
                 threshold: int) -> torch.Tensor:
        return launch_down(_wrapped, x, a, seed, scale, threshold)

    @torch.library.triton_op("finnish_tts::lora_down_grad_input", mutates_args=())
    def _grad_input_op(gx: torch.Tensor | None, gu: torch.Tensor, a: torch.Tensor, seed: torch.Tensor,
                       scale: torch.Tensor, threshold: int, M: int, K: int) -> torch.Tensor:
        return launch_grad_input(_wrapped, gx, gu, a, seed, scale, threshold, M, K)

    @torch.library.triton_op("finnish_tts::lora_down_grad_weight", mutates_args=())
    def _grad_weight_op(x: torch.Tensor, gu: torch.Tensor, a: torch.Tensor, seed: torch.Tensor,
                        scale: torch.Tensor, threshold: int) -> torch.Tensor:
        return launch_grad_weight(_wrapped, x, gu, a, seed, scale, threshold)

    def keep_mask(seed: torch.Tensor, M: int, K: int, threshold: int) -> torch.Tensor:
        """The (M, K) keep-mask the kernels draw for `seed` (bool), launched directly (tests)."""
        out = torch.empty(M, K, dtype=torch.int8, device=seed.device)
        rows, cols = MASK_TILE
        _mask_kernel[(triton.cdiv(M, rows), triton.cdiv(K, cols))](out, seed, M, K, threshold, ROWS=rows, COLS=cols)
        return out.bool()


def threshold_for(p: float) -> int:
    """The 16-bit draw below which an element is dropped: p rounded to a multiple of 2**-16."""
    return round(p * (1 << UNIFORM_BITS))


def usable(device) -> bool:
    """Whether the kernels run on `device`: a CUDA GPU of Ampere or newer (bf16 tensor-core dots)
    with Triton, and LORA_DROPOUT_KERNEL not set to 0; or Triton's interpreter (tests)."""
    device = torch.device(device)
    if not ENABLED:
        return False
    if device.type != "cuda":
        return os.environ.get("TRITON_INTERPRET") == "1"
    return torch.cuda.get_device_capability(device) >= (8, 0)


def kernel_applies(x: torch.Tensor, branches) -> bool:
    """Whether the kernel computes these branches [(A, dropout, scale, B)] for x: training-mode
    nn.Dropout with one 0 < p < 1 for all, one rank <= MAX_RANK for all, at most MAX_ADAPTERS,
    no bias, a `usable` device, K % 8 == 0."""
    if not branches or len(branches) > MAX_ADAPTERS or x.shape[-1] % 8 or not usable(x.device):
        return False
    if x.numel() // 8 >= 2**31:  # the mask's Philox counter (row * K/8 + column/8) is 32-bit
        return False
    drops = [d for _, d, _, _ in branches]
    if not all(isinstance(d, torch.nn.Dropout) and d.training for d in drops):
        return False
    ps, ranks = {d.p for d in drops}, {a.weight.shape[0] for a, *_ in branches}
    return len(ps) == 1 and len(ranks) == 1 and 0 < threshold_for(ps.pop()) < (1 << UNIFORM_BITS) and \
        ranks.pop() <= MAX_RANK and all(a.bias is None and a.weight.shape[1] == x.shape[-1] for a, *_ in branches)


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
    B matrices w_low facing u's columns) [x | u] @ [w | w_low].T, one matmul. Backward: x's
    gradient of the base and the LoRA paths in one pass, A's gradient without a dropped copy of x."""

    @staticmethod
    def forward(ctx, x2, w, w_low, a, scale, threshold, seed, *a_weights):
        u = down(x2, a, seed, scale, threshold)
        ctx.save_for_backward(x2, u, w, w_low, a, scale, seed)
        ctx.threshold, ctx.a_dtypes = threshold, [t.dtype for t in a_weights]
        return u if w is None else F.linear(torch.cat([x2, u], -1), torch.cat([w, w_low], -1))

    @staticmethod
    def backward(ctx, grad):
        x2, u, w, w_low, a, scale, seed = ctx.saved_tensors
        grad_base, grad_low = None, None
        if w is None:
            grad_u = grad.contiguous()
        else:
            grad_in = grad @ torch.cat([w, w_low], -1)
            grad_base, grad_u = grad_in[:, : w.shape[1]], grad_in[:, w.shape[1]:]
            grad_low = grad.T @ u if ctx.needs_input_grad[2] else None
        grad_x = grad_input(grad_base, grad_u, a, seed, scale, ctx.threshold, *x2.shape) \
            if ctx.needs_input_grad[0] else None
        grad_a = grad_weight(x2, grad_u, a, seed, scale, ctx.threshold)
        return (grad_x, None, grad_low, None, None, None, None,
                *(g.to(d) for g, d in zip(grad_a.unbind(0), ctx.a_dtypes)))


def down(x2, a, seed, scale, threshold):
    if x2.is_cuda:
        return _down_op(x2, a, seed, scale, threshold)
    return launch_down(_direct, x2, a, seed, scale, threshold)


def grad_input(gx, gu, a, seed, scale, threshold, M, K):
    if gu.is_cuda:
        return _grad_input_op(gx, gu, a, seed, scale, threshold, M, K)
    return launch_grad_input(_direct, gx, gu, a, seed, scale, threshold, M, K)


def grad_weight(x2, gu, a, seed, scale, threshold):
    if x2.is_cuda:
        return _grad_weight_op(x2, gu, a, seed, scale, threshold)
    return launch_grad_weight(_direct, x2, gu, a, seed, scale, threshold)


def dropped_linear(x: torch.Tensor, branches, dtype: torch.dtype, w: torch.Tensor | None = None,
                   w_low: torch.Tensor | None = None) -> torch.Tensor:
    """Through the kernels (the caller checked `kernel_applies`): the branches' scaled low-rank
    activations u of x, or with a frozen base weight w: [x | u] @ [w | w_low].T (see _Dropped)."""
    a, scale, threshold, seed = operands(x, branches, dtype)
    x2 = x.reshape(-1, x.shape[-1]).to(dtype).contiguous()
    y = _Dropped.apply(x2, w, w_low, a, scale, threshold, seed, *[a_.weight for a_, *_ in branches])
    return y.view(*x.shape[:-1], y.shape[-1])


def low_rank_inputs(x: torch.Tensor, branches, dtype: torch.dtype | None = None) -> torch.Tensor:
    """torch.cat([scale * A(dropout(x)) for (A, dropout, scale, _) in branches], -1) in `dtype`
    (default x's), through the kernel where `kernel_applies`, else as peft computes it."""
    dtype = dtype or x.dtype
    if not kernel_applies(x, branches):
        return torch.cat([a(dropout(x)) * scale for a, dropout, scale, _ in branches], -1).to(dtype)
    return dropped_linear(x, branches, dtype)
