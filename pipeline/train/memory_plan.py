"""Choose micro-batch, gradient accumulation and gradient checkpointing for the GPU at hand.

The effective batch (batch_size x grad_accumulation sequences of max_length tokens) is kept; only
how it is split into micro-batches, and whether layer activations are recomputed, changes.
Peak memory is modelled as

    static (weights, gradients, optimizer state) + logits workspace + tokens x activations/token

with the per-token activation bytes measured by `python -m pipeline bench` (docs/PERFORMANCE.md;
the bench JSON's `train.<mode>.act_mb_per_token` can be passed as `calibration`). Preference:
no checkpointing with the largest micro-batch that fits (recomputing layers costs ~30 % more
compute, smaller micro-batches of >= 4k tokens cost little), then checkpointing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

GB = 1e9
S1_MINI_PARAMS = 862_000_000  # pipeline.estimate.cost.ModelShape().parameters(), rounded
S1_MINI_VOCAB = 155_776

# MB of activations kept per training token (s1-mini shape, bf16 autocast, compiled blocks).
# No checkpointing, measured on an H200, torch 2.11 (docs/history/performance-log.md): LoRA peaks at
# 20.8 GB with micro-batch 1 x 4096 and 68.5 GB with 4 x 4096, a slope of 3.89 MB per token over
# ~4.9 GB; full peaks at 62.5 GB with 4 x 4096. Rounded up so that a plan made from them fits.
# With the fused cross-entropy, flex attention and fused linears: LoRA 19.1 GB at 1 x 4096 and
# 63.0 GB at 4 x 4096 (3.57 MB/token), full 58.4 GB at 4 x 4096: the constants stay upper bounds.
# With checkpointing, measured on an H200: LoRA 16.0 GB and full 22.7 GB at 4 x 4096 (0.68 and
# 0.25 MB/token by the bench's accounting), full 17.8 GB at 1 x 4096; rounded up.
# On an H100 with the LoRA dropout inside pipeline/kernels/lora_dropout.py's kernels: no dropped copies of x kept):
# LoRA 15.5 GB at 1 x 4096 and 52.0 GB at 4 x 4096, a slope of 2.97 MB/token; 3.2 keeps ~8 % of
# margin. Where the kernels do not run, plan_for_device plans with TORCH_DROPOUT_LORA_MB instead.
ACTIVATION_MB_PER_TOKEN = {
    ("lora", False): 3.2,  # TORCH_DROPOUT_LORA_MB where the kernels do not run (lora_down.usable)
    ("lora", True): 0.75,
    ("full", False): 2.7,
    ("full", True): 0.3,
}
TORCH_DROPOUT_LORA_MB = 3.9  # LoRA without checkpointing when torch draws the dropout (3.57 measured on an H200, rounded up)
CONTEXT_GB = 1.2  # CUDA context, cuBLAS workspaces, allocator fragmentation


@dataclass
class MemoryPlan:
    micro_batch: int
    grad_accumulation: int
    gradient_checkpointing: bool
    estimated_peak_gb: float
    budget_gb: float
    total_gb: float
    fits: bool
    reason: str

    def as_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        ckpt = "on" if self.gradient_checkpointing else "off"
        return (f"micro-batch {self.micro_batch} x {self.grad_accumulation} accumulation, gradient checkpointing "
                f"{ckpt}: ~{self.estimated_peak_gb:.1f} GB of {self.total_gb:.0f} GB ({self.reason})")


def static_gb(mode: str, params: int = S1_MINI_PARAMS, lora_params: int = 0) -> float:
    """Weights + gradients + AdamW state. LoRA: a frozen bf16 base + fp32 adapters with grads and
    two moments. Full: fp32 master weights, fp32 grads, two fp32 moments, bf16 autocast copies."""
    if mode == "lora":
        return (2 * params + 16 * lora_params) / GB
    return 18 * params / GB


def workspace_gb(vocab: int = S1_MINI_VOCAB, chunk_rows: int = 4096) -> float:
    """The chunked cross-entropy's transient beyond the per-token activations (fitted: the
    measured intercept of ~4.9 GB minus weights and context leaves ~3 bytes per logit)."""
    return chunk_rows * vocab * 3 / GB


def estimate_peak_gb(mode: str, micro_batch: int, max_length: int, checkpointing: bool,
                     params: int = S1_MINI_PARAMS, vocab: int = S1_MINI_VOCAB, lora_params: int = 0,
                     calibration: dict | None = None) -> float:
    per_token = dict(ACTIVATION_MB_PER_TOKEN)
    for key, value in (calibration or {}).items():
        per_token[key] = float(value)
    tokens = micro_batch * max_length
    chunk = min(4096, tokens)
    return (static_gb(mode, params, lora_params) + workspace_gb(vocab, chunk) + CONTEXT_GB
            + tokens * per_token[(mode, bool(checkpointing))] / 1e3)


def plan_memory(mode: str, batch_size: int, grad_accumulation: int, max_length: int, total_gb: float,
                checkpointing: str | bool = "auto", headroom: float = 0.9, **model) -> MemoryPlan:
    """The split of `batch_size x grad_accumulation` sequences that fits `total_gb` of GPU memory.

    checkpointing: "auto" chooses; "on"/True or "off"/False forces it. `model` passes params,
    vocab, lora_params, calibration on to `estimate_peak_gb`.
    """
    if mode not in ("lora", "full"):
        raise ValueError(f"mode must be 'lora' or 'full', got {mode!r}.")
    if batch_size < 1 or grad_accumulation < 1 or max_length < 1:
        raise ValueError("batch_size, grad_accumulation and max_length must be positive.")
    effective = batch_size * grad_accumulation
    budget = total_gb * headroom
    micro_sizes = [m for m in range(min(batch_size, effective), 0, -1) if effective % m == 0]
    if checkpointing in ("on", True):
        options = [True]
    elif checkpointing in ("off", False):
        options = [False]
    else:
        options = [False, True]
    tried = []
    for ckpt in options:
        for micro in micro_sizes:
            peak = estimate_peak_gb(mode, micro, max_length, ckpt, **model)
            tried.append((micro, ckpt, peak))
            if peak <= budget:
                if micro == batch_size and not ckpt:
                    reason = "the whole batch fits without recomputation"
                elif not ckpt:
                    reason = f"a batch of {batch_size} would need ~{tried[0][2]:.0f} GB; smaller micro-batches fit"
                else:
                    reason = "fits only with layer activations recomputed in backward"
                return MemoryPlan(micro, effective // micro, ckpt, round(peak, 1), round(budget, 1),
                                  round(total_gb, 1), True, reason)
    micro, ckpt, peak = min(tried, key=lambda t: t[2])
    return MemoryPlan(micro, effective // micro, ckpt, round(peak, 1), round(budget, 1), round(total_gb, 1), False,
                      f"nothing fits {budget:.0f} GB: lower training.max_length (now {max_length})")


def plan_for_device(mode: str, batch_size: int, grad_accumulation: int, max_length: int, device=None,
                    checkpointing: str | bool = "auto", dropout_kernel: bool = True, total_gb: float | None = None,
                    **model) -> MemoryPlan | None:
    """plan_memory for a CUDA device's total memory (or `total_gb`, to plan as for another card);
    None on CPU (no plan needed there). dropout_kernel: whether LoRA dropout may run in the kernels."""
    import torch

    if device is None:
        device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(device)
    if device.type != "cuda":
        return None
    total = total_gb or torch.cuda.get_device_properties(device).total_memory / GB
    from pipeline.kernels import lora_dropout as lora_down

    if mode == "lora" and not lora_down.usable(device, dropout_kernel):  # dropped copies of x are kept for backward
        model["calibration"] = {("lora", False): TORCH_DROPOUT_LORA_MB} | (model.get("calibration") or {})
    return plan_memory(mode, batch_size, grad_accumulation, max_length, total, checkpointing, **model)
