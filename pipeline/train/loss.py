"""The training loss of a batch, over pipeline.train.forward's outputs.

Loss = CE(token logits over the whole vocabulary, where the labels have a token target)
     + CE(fast logits over the residual vocabulary, codebooks 1..N-1 of every audio frame),
the targets ranked first / in the top 5 counted alongside. Every count and index the step needs
on the host is read from one asynchronous copy of the labels (`_positions`): a sync in the middle
of the step would leave the GPU waiting for the launches after it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from pipeline.train.forward import (
    IGNORE,
    ForwardOptions,
    fast_hidden,
    maybe_compiled,
    slow_forward,
    token_logits,
)
from pipeline.model.adapters import unwrap
from pipeline.kernels.linear_ce import linear_cross_entropy, rank_hits
from pipeline.kernels.runtime import varying
from pipeline.model.tokens import RESIDUAL_VOCAB

# compiled path: frames through the fast transformer, padded to a multiple of this (the graphs are
# compiled with dynamic sizes, so the bucket only bounds the distinct shapes; 1024 padded the
# bench batch's 13,546 frames by 6 %)
FRAME_BUCKET = 256


@dataclass
class LossOutput:
    loss: torch.Tensor  # token_loss + codebook_loss, differentiable
    token_loss: torch.Tensor
    codebook_loss: torch.Tensor
    hits1: torch.Tensor | int  # targets ranked first / in the top 5: semantic/<|im_end|> tokens and residual
    hits5: torch.Tensor | int  # codes (tensors, read only when top1/top5 are: no GPU sync before backward)
    n_targets: int
    n_tokens: int  # positions with a loss (audio frames + <|im_end|>)

    @property
    def top1(self) -> float:
        return int(self.hits1) / max(self.n_targets, 1)

    @property
    def top5(self) -> float:
        return int(self.hits5) / max(self.n_targets, 1)


def _token_chunk(model, hidden, targets):
    logits = token_logits(model, hidden).float()
    loss = F.cross_entropy(logits, targets, reduction="sum")
    return (loss, *rank_hits(logits, targets))


def _token_loss_sum(model, hidden, targets, chunk_rows: int, fused: bool, compiled: bool, dropout_kernel: bool = True):
    """Summed CE and top-1/top-5 hits over the whole vocabulary of hidden (rows, dim), before the
    final norm. Fused: pipeline.kernels.linear_ce. Otherwise in row chunks whose logits are recomputed in
    backward: (rows x 155k) fp32 logits would otherwise stay alive for backward."""
    if fused and not model.config.tie_word_embeddings:
        if compiled:
            varying(hidden, 0)
        features = maybe_compiled(_normed, compiled)(model.norm, hidden)
        return linear_cross_entropy(model.output, features, targets, chunk_rows=chunk_rows, compiled=compiled,
                                    dropout_kernel=dropout_kernel)
    total, hits1, hits5 = hidden.new_zeros((), dtype=torch.float32), 0, 0
    for start in range(0, hidden.shape[0], chunk_rows):
        h, t = hidden[start : start + chunk_rows], targets[start : start + chunk_rows]
        if torch.is_grad_enabled() and hidden.shape[0] > chunk_rows:
            loss, h1, h5 = checkpoint(_token_chunk, model, h, t, use_reentrant=False)
        else:
            loss, h1, h5 = _token_chunk(model, h, t)
        total, hits1, hits5 = total + loss, hits1 + h1, hits5 + h5
    return total, hits1, hits5


def _normed(norm, x: torch.Tensor) -> torch.Tensor:
    """The token head's final norm (the wheel's RMSNorm: fp32 statistics). Compiled it is one
    kernel each way; eagerly it is seven passes over fp32 copies of x."""
    return norm(x)


def _frame_features(norm, out: torch.Tensor) -> torch.Tensor:
    """fast_norm of outputs 1.. (those predicting codebooks 1..N-1) of the frames `out`, as rows
    (122k x 1024 for the bench batch: eagerly, seven fp32 passes each way)."""
    return norm(out[:, 1:]).reshape(-1, out.shape[-1])


@dataclass(frozen=True)
class _Positions:
    """Where the batch has targets, as flat (B*L) indices on the batch's device."""

    tokens: torch.Tensor  # positions with a token target (audio frames and <|im_end|>)
    frames: torch.Tensor  # positions whose next column is an audio frame
    rows: torch.Tensor  # positions through the fast transformer: frames (padded when compiled) or all
    all_rows: bool  # rows is every position (the "allpos" ablation), not the frames
    n_tokens: int
    n_frames: int


def _labels_to_host(labels: torch.Tensor):
    """(a host copy of labels, an event to wait on before reading it or None). On a GPU the copy is
    pinned and asynchronous: queued now, read once the forward is queued behind it, so that the
    GPU never waits for the host (a plain .cpu() would stop the CPU until the queue drained)."""
    if not labels.is_cuda:
        return labels, None
    host = torch.empty(labels.shape, dtype=labels.dtype, pin_memory=True)
    host.copy_(labels, non_blocking=True)
    copied = torch.cuda.Event()
    copied.record(torch.cuda.current_stream(labels.device))  # the copy's stream, whatever the current device
    return host, copied


def _positions(host: torch.Tensor, copied, device: torch.device, n: int, vocab: int, compile_blocks: bool,
               frames_only: bool) -> _Positions:
    """Every count and index compute_loss needs on the host, from ONE copy of the labels
    (_labels_to_host): a count, nonzero() or boolean-mask gradient in the middle of the step
    would stop the CPU until the GPU caught up, and the GPU would then idle between the launches
    that follow. Raises ValueError for residual codes >= vocab (codes of another codec)."""
    if copied is not None:
        copied.synchronize()
    tokens = (host[:, 0] != IGNORE).flatten().nonzero().squeeze(1)
    frames = (host[:, 1] != IGNORE).flatten().nonzero().squeeze(1)
    if n > 1 and frames.numel():
        residual = host[:, 2:].masked_fill((host[:, 1] == IGNORE)[:, None], 0)  # codebooks 1.. of the frames
        if int(residual.max()) >= vocab:
            raise ValueError(f"A residual code is >= {vocab}; these codes do not belong to this model's codec.")

    def to_device(t):  # pinned: the copy is queued without waiting for the GPU
        return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t.to(device)

    frames_on_device, all_rows = to_device(frames), compile_blocks and not frames_only
    rows = frames_on_device
    if all_rows:
        rows = torch.arange(host.shape[0] * host.shape[2], device=device)
    elif compile_blocks:  # padded to FRAME_BUCKET rows so that graphs are reused; extra rows repeat position 0
        padded = min(-(-frames.numel() // FRAME_BUCKET) * FRAME_BUCKET, host.shape[0] * host.shape[2])
        rows = to_device(F.pad(frames, (0, padded - frames.numel())))
    return _Positions(to_device(tokens), frames_on_device, rows, all_rows, tokens.numel(), frames.numel())


def _codebook_loss(base, hidden, labels, where: _Positions, vocab: int, gradient_checkpointing, compile_blocks,
                   options):
    """Summed residual-codebook CE, hits and the number of targets (codebooks 1..N-1 of each frame)."""
    n = base.config.num_codebooks
    codes = labels[:, 1:].transpose(1, 2).reshape(-1, n)  # (B*L, N): the next column's codes
    frame_codes = codes.index_select(0, where.rows)
    out = fast_hidden(base, hidden.flatten(0, 1).index_select(0, where.rows), frame_codes.clamp(min=0),
                      gradient_checkpointing, compile_blocks, options.flex_fast_attention, options.fused_linears,
                      options.lora_dropout_kernel, options.segment_attention_kernel)
    real = where.n_frames
    if where.all_rows:  # every position went through: keep the frames'
        out, frame_codes = out.index_select(0, where.frames), codes.index_select(0, where.frames)
    targets = frame_codes[:real, 1:].reshape(-1)
    out = out[:real]  # the padding rows out (a view): the compiled norm sees the frame count as a size
    if compile_blocks:
        varying(out, 0)
    features = maybe_compiled(_frame_features, compile_blocks)(base.fast_norm, out)
    if options.fused_ce:
        loss, h1, h5 = linear_cross_entropy(base.fast_output, features, targets, rows=vocab, chunk_rows=1 << 15,
                                            compiled=compile_blocks, dropout_kernel=options.lora_dropout_kernel)
    else:
        logits = base.fast_output(features)[:, :vocab].float()
        loss, (h1, h5) = F.cross_entropy(logits, targets, reduction="sum"), rank_hits(logits, targets)
    return loss, h1, h5, targets.numel()


def compute_loss(model, batch: dict, gradient_checkpointing: bool = False, chunk_rows: int = 4096,
                 compile_blocks: bool = False, options: ForwardOptions | None = None) -> LossOutput:
    """Loss of a batch {tokens (B, C+1, L), labels (B, C+1, L) with -100 where no loss}.

    compile_blocks runs every transformer block through torch.compile (GPU training); options
    default to ForwardOptions.for_run(compile_blocks)."""
    base = unwrap(model)
    options = options or ForwardOptions.for_run(compile_blocks)
    tokens, labels = batch["tokens"], batch["labels"]
    n = base.config.num_codebooks
    if tokens.ndim != 3 or tokens.shape[1] != n + 1 or labels.shape != tokens.shape:
        raise ValueError(f"Batch tokens/labels must be (B, {n + 1}, L); got {tuple(tokens.shape)} and {tuple(labels.shape)}.")

    host, copied = _labels_to_host(labels)
    hidden = slow_forward(base, tokens, gradient_checkpointing, compile_blocks, options.fused_linears,
                          options.lora_dropout_kernel, options.cudnn_attention)
    vocab = min(RESIDUAL_VOCAB, base.fast_output.out_features)
    where = _positions(host, copied, labels.device, n, vocab, compile_blocks, options.frames_only)
    n_tokens = where.n_tokens
    # logits only where there is a target: the vocabulary is large (155k for s1-mini)
    token_sum, hits1, hits5 = _token_loss_sum(base, hidden.flatten(0, 1).index_select(0, where.tokens),
                                              labels[:, 0].flatten().index_select(0, where.tokens), chunk_rows,
                                              options.fused_ce, compile_blocks, options.lora_dropout_kernel)
    token_loss = token_sum / n_tokens if n_tokens else hidden.sum() * 0
    total = n_tokens

    if where.n_frames and n > 1:
        loss_sum, h1, h5, count = _codebook_loss(base, hidden, labels, where, vocab, gradient_checkpointing,
                                                 compile_blocks, options)
        codebook_loss = loss_sum / count
        hits1, hits5, total = hits1 + h1, hits5 + h5, total + count
    else:
        codebook_loss = hidden.sum() * 0

    return LossOutput(
        loss=token_loss + codebook_loss,
        token_loss=token_loss,
        codebook_loss=codebook_loss,
        hits1=hits1,
        hits5=hits5,
        n_targets=total,
        n_tokens=n_tokens,
    )
