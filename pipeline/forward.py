"""The training forward pass, written from the model's own submodules.

fish-speech 0.1.0's `DualARTransformer.forward` is broken (DESIGN.md bug 1) and its
`BaseTransformer.embed` does not scale audio-frame embeddings the way inference does (bug 3).
This module computes, for a batch of packed sequences, exactly the logits that generation
(`forward_generate` + `forward_generate_fast` with KV caches) computes step by step:

- slow transformer: embed like `forward_generate` (semantic token embedding + sum of all codebook
  embeddings at audio frames, divided by sqrt(num_codebooks + 1) when the config says so), causal
  attention with no mask (flash path; sequences are padded only at the end), token logits.
- fast transformer, at every position whose next column is an audio frame: input
  [slow hidden state (pre-norm, through fast_project_in), emb(c0), ..., emb(c_{N-2})] of that next
  frame; its outputs at positions 1..N-1 predict codebooks 1..N-1.

Loss = CE(token logits over the whole vocabulary) + CE(fast logits over the residual vocabulary).

`ForwardOptions` holds the speed switches; every combination computes the same loss (tests on
the CPU, `python -m pipeline bench` on the GPU): fused linear cross-entropy (pipeline.linear_ce),
the fast transformer's 10-position attention as one packed sequence with a block-diagonal
causal mask (compiled flex attention), and only audio frames through the compiled fast
transformer (padded to FRAME_BUCKET frames so that shapes, and compiled graphs, repeat).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from fish_speech.models.text2semantic.llama import DualARTransformer, apply_rotary_emb
from torch.utils.checkpoint import checkpoint

from pipeline import segment_attention
from pipeline.fused_linear import glu_linear, shared_input_linear
from pipeline.linear_ce import linear_cross_entropy

# inference samples codebooks 1.. from fast_output's first 1024 logits (decode_one_token_ar)
RESIDUAL_VOCAB = 1024
IGNORE = -100
# compiled path: frames through the fast transformer, padded to a multiple of this (the graphs are
# compiled with dynamic sizes, so the bucket only bounds the distinct shapes; 1024 padded the
# bench batch's 13,546 frames by 6 %)
FRAME_BUCKET = 256
FLEX_BLOCK = 128


@dataclass(frozen=True)
class ForwardOptions:
    """How compute_loss computes (never what): every combination gives the same loss."""

    fused_ce: bool = True  # logits chunk by chunk with their gradients computed at once (linear_ce)
    flex_fast_attention: bool = False  # all frames as one packed sequence, block-diagonal causal mask
    frames_only: bool = True  # compiled path: only audio frames (bucketed) through the fast transformer
    fused_linears: bool = True  # LoRA branches as extra matmul columns, w1|w3 as one matmul (fused_linear)

    @classmethod
    def for_run(cls, compile_blocks: bool) -> "ForwardOptions":
        # flex attention is only fast compiled; eagerly it materialises the whole score matrix
        return cls(flex_fast_attention=compile_blocks)


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


def unwrap(model) -> DualARTransformer:
    """The DualARTransformer inside a peft wrapper (peft swaps Linear modules in place)."""
    while not isinstance(model, DualARTransformer):
        if hasattr(model, "get_base_model"):
            model = model.get_base_model()
        elif hasattr(model, "model"):
            model = model.model
        else:
            raise TypeError(f"Expected a DualARTransformer (or a peft wrapper of one), got {type(model).__name__}.")
    return model


def embed(model: DualARTransformer, tokens: torch.Tensor) -> torch.Tensor:
    """(B, C+1, L) → (B, L, dim), identical to `BaseTransformer.forward_generate`'s embedding."""
    cfg = model.config
    row0 = tokens[:, 0]
    offsets = torch.arange(cfg.num_codebooks, device=tokens.device).view(1, -1, 1) * cfg.codebook_size
    vq = model.codebook_embeddings(tokens[:, 1:] + offsets).sum(dim=1)  # (B, L, dim)
    is_audio = (row0 >= model.tokenizer.semantic_begin_id) & (row0 <= model.tokenizer.semantic_end_id)
    x = model.embeddings(row0) + vq * is_audio.unsqueeze(-1).to(vq.dtype)
    if cfg.scale_codebook_embeddings:
        x = torch.where(is_audio.unsqueeze(-1), x / math.sqrt(cfg.num_codebooks + 1), x)
    return x


def residual_dtype(x: torch.Tensor) -> torch.Tensor:
    """x in bf16 under bf16 autocast: the residual stream in bf16, as upstream trains (bf16-true)
    and as generation runs. fp32 LoRA embeddings would otherwise promote it to fp32 and every block
    would read and write it at twice the bytes. (fp16 autocast keeps fp32: fp16 sums can overflow.)"""
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type) and torch.get_autocast_dtype(device_type) == torch.bfloat16:
        return x.to(torch.bfloat16)
    return x


def _rms_norm(norm: torch.nn.RMSNorm, x: torch.Tensor) -> torch.Tensor:
    """nn.RMSNorm with its weight in x's dtype: under autocast an fp32 weight with bf16 input
    falls off the fused kernel."""
    return F.rms_norm(x, norm.normalized_shape, norm.weight.to(x.dtype), norm.eps)


def _linear(module, x: torch.Tensor, fused: bool) -> torch.Tensor:
    return shared_input_linear([module], x)[0] if fused else module(x)


def _attention(attn, x: torch.Tensor, freqs_cis: torch.Tensor, block_mask=None, fused: bool = False) -> torch.Tensor:
    """The wheel's Attention.forward with is_causal=True and native grouped-query attention.

    With a block_mask (fast transformer: x is (frames, 10, dim)) every frame is its own causal
    segment of one packed sequence: through pipeline.segment_attention's kernels where they apply
    (given the qkv projection output itself, rotation inside, when there is no qk-norm), else
    through flex attention with the mask, instead of a tiny SDPA call per frame."""
    bsz, seqlen, _ = x.shape
    q_size = attn.n_head * attn.head_dim
    kv_size = attn.n_local_heads * attn.head_dim
    qkv = _linear(attn.wqkv, x, fused)
    if block_mask is not None and not attn.attention_qk_norm:  # rotary embedding inside the kernels
        rows = qkv.view(bsz * seqlen, -1)
        if segment_attention.applies(*segment_attention.split_heads(rows, attn.n_head, attn.n_local_heads)[:2], seqlen):
            y = segment_attention.packed_segment_attention(rows, freqs_cis, attn.n_head, attn.n_local_heads, seqlen)
            return _linear(attn.wo, y.view(bsz, seqlen, q_size), fused)
    q, k, v = qkv.split([q_size, kv_size, kv_size], dim=-1)
    q = q.view(bsz, seqlen, attn.n_head, attn.head_dim)
    k = k.view(bsz, seqlen, attn.n_local_heads, attn.head_dim)
    v = v.view(bsz, seqlen, attn.n_local_heads, attn.head_dim)
    if attn.attention_qk_norm:
        q, k = _rms_norm(attn.q_norm, q), _rms_norm(attn.k_norm, k)
    q = apply_rotary_emb(q, freqs_cis)
    k = apply_rotary_emb(k, freqs_cis)
    gqa = attn.n_head != attn.n_local_heads
    # a block mask here is always segment_block_mask(frames, seqlen): each frame its own causal sequence
    if block_mask is not None and segment_attention.applies(q, k, seqlen):  # one tile of whole frames per program
        y = segment_attention.segment_attention(*(t.reshape(bsz * seqlen, *t.shape[2:]) for t in (q, k, v)), seqlen)
        return _linear(attn.wo, y.view(bsz, seqlen, q_size), fused)
    if block_mask is not None:
        from torch.nn.attention.flex_attention import flex_attention

        q, k, v = (t.reshape(1, bsz * seqlen, *t.shape[2:]).transpose(1, 2) for t in (q, k, v))
        y = flex_attention(q, k, v, block_mask=block_mask, enable_gqa=gqa)
        return _linear(attn.wo, y.transpose(1, 2).reshape(bsz, seqlen, q_size), fused)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    dropout = attn.dropout if attn.training else 0.0
    y = F.scaled_dot_product_attention(
        q, k, v, dropout_p=dropout, is_causal=True, enable_gqa=gqa
    )
    return _linear(attn.wo, y.transpose(1, 2).reshape(bsz, seqlen, q_size), fused)


def _feed_forward(ff, x: torch.Tensor, fused: bool) -> torch.Tensor:
    """The wheel's FeedForward: w2(silu(w1 x) * w3 x), w1 and w3 as one matmul when fused."""
    if not fused:
        return ff(x)
    (gate_up,) = shared_input_linear([ff.w1, ff.w3], x, stacked=True)
    return glu_linear(ff.w2, gate_up)


def _block(layer, x: torch.Tensor, freqs_cis: torch.Tensor, block_mask=None, fused: bool = False) -> torch.Tensor:
    h = x + _attention(layer.attention, layer.attention_norm(x), freqs_cis, block_mask, fused)
    return h + _feed_forward(layer.feed_forward, layer.ffn_norm(h), fused)


def _slow_block(layer, x, freqs_cis, block_mask=None, fused: bool = False):
    return _block(layer, x, freqs_cis, block_mask, fused)


def _fast_block(layer, x, freqs_cis, block_mask=None, fused: bool = False):
    return _block(layer, x, freqs_cis, block_mask, fused)


_compiled_blocks: dict[str, object] = {}


def compiled_block(stack: str = "slow"):
    """`_block` through torch.compile, one compiled function per layer stack ("slow" or "fast"),
    shared by every layer of it (dynamo inlines the modules). Two wrappers because dynamo keys its
    cache and its automatic-dynamic decisions by code object: the fast stack's frame counts must
    not turn the slow stack's graph dynamic. Measured on an H200 at the s1-mini shape, batch
    4 x 4096: LoRA 0.74 → 0.44 s/step, full 0.64 → 0.41 s/step (run 2), after ~30 s of compilation."""
    if stack not in _compiled_blocks:
        import torch._dynamo

        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        # dynamic=None: the first shape compiles static, a second one recompiles with the varying sizes
        # symbolic, and every later batch width / frame count reuses that graph (no compile per shape)
        _compiled_blocks[stack] = torch.compile(_slow_block if stack == "slow" else _fast_block, dynamic=None)
    return _compiled_blocks[stack]


def _run_layers(layers, x, freqs_cis, gradient_checkpointing: bool, compile_blocks: bool = False,
                block_mask=None, fused: bool = False, stack: str = "slow") -> torch.Tensor:
    block = compiled_block(stack) if compile_blocks else _block
    for layer in layers:
        if gradient_checkpointing and torch.is_grad_enabled():
            x = checkpoint(block, layer, x, freqs_cis, block_mask, fused, use_reentrant=False)
        else:
            x = block(layer, x, freqs_cis, block_mask, fused)
    return x


@functools.lru_cache(maxsize=None)
def _segment_causal_mask(length: int):
    """mask_mod of a packed sequence of `length`-position segments (one object per length:
    compiled graphs guard on its identity)."""

    def mask_mod(b, h, q, kv):
        return (q // length == kv // length) & (q >= kv)

    return mask_mod


@functools.lru_cache(maxsize=8)
def segment_block_mask(segments: int, length: int, device: torch.device):
    """Flex-attention BlockMask for `segments` causal sequences of `length` packed back to back.

    A query block of FLEX_BLOCK rows sees its own key block and, when its first segment started
    earlier, the block before: at most 2 of the S/128 key blocks (the rest is skipped)."""
    from torch.nn.attention.flex_attention import BlockMask

    if length > FLEX_BLOCK:
        raise ValueError(f"Segments of {length} positions are longer than a flex block ({FLEX_BLOCK}).")
    total = segments * length
    blocks = -(-total // FLEX_BLOCK)
    q = torch.arange(blocks, device=device)
    first = (q * FLEX_BLOCK // length * length) // FLEX_BLOCK  # key block of the first segment's start
    indices = torch.zeros((1, 1, blocks, blocks), dtype=torch.int32, device=device)
    indices[0, 0, :, 0] = first.int()
    if blocks > 1:
        indices[0, 0, :, 1] = q.int()  # ignored where the count is 1
    counts = (q - first + 1).int().view(1, 1, blocks)
    return BlockMask.from_kv_blocks(counts, indices, BLOCK_SIZE=FLEX_BLOCK, mask_mod=_segment_causal_mask(length),
                                    seq_lengths=(total, total))


def slow_forward(model, tokens: torch.Tensor, gradient_checkpointing: bool = False,
                 compile_blocks: bool = False, fused_linears: bool = False) -> torch.Tensor:
    """Slow transformer hidden states (B, L, dim), before the final norm (as forward_generate returns)."""
    model = unwrap(model)
    seq_len = tokens.shape[-1]
    if seq_len > model.config.max_seq_len:
        raise ValueError(f"Sequence length {seq_len} exceeds the model's max_seq_len {model.config.max_seq_len}.")
    x = residual_dtype(embed(model, tokens))
    return _run_layers(model.layers, x, model.freqs_cis[:seq_len], gradient_checkpointing, compile_blocks,
                       fused=fused_linears)


def token_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    model = unwrap(model)
    out = model.norm(hidden)
    if model.config.tie_word_embeddings:
        return F.linear(out, model.embeddings.weight)
    return model.output(out)


def _fast_inputs(model, hidden: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """(M, N, fast_dim): [project_in(hidden), emb(c0), ..., emb(c_{N-2})] per frame."""
    x = model.fast_project_in(hidden)
    n = model.config.num_codebooks
    return residual_dtype(torch.cat([x[:, None], model.fast_embeddings(codes[:, : n - 1])], dim=1))


def fast_hidden(model, hidden: torch.Tensor, codes: torch.Tensor, gradient_checkpointing: bool = False,
                compile_blocks: bool = False, flex_attention: bool = False, fused_linears: bool = False) -> torch.Tensor:
    """Fast transformer outputs (M, N, fast_dim), before fast_norm, for M frames.

    hidden: (M, dim) slow hidden states (pre-norm) of the positions BEFORE the frames;
    codes: (M, N) the frames' codes. Output n (n >= 1) predicts codebook n; output 0 is unused.
    """
    model = unwrap(model)
    n = model.config.num_codebooks
    x = _maybe_compiled(_fast_inputs, compile_blocks)(model, hidden, codes)
    dropout = any(layer.attention.dropout for layer in model.fast_layers) and model.training
    mask = segment_block_mask(x.shape[0], n, x.device) if flex_attention and not dropout else None
    return _run_layers(model.fast_layers, x, model.fast_freqs_cis[:n], gradient_checkpointing, compile_blocks, mask,
                       fused_linears, stack="fast")


def fast_logits(model, hidden: torch.Tensor, codes: torch.Tensor, gradient_checkpointing: bool = False,
                compile_blocks: bool = False) -> torch.Tensor:
    """Fast transformer logits (M, N, codebook_size) for M frames (see fast_hidden)."""
    model = unwrap(model)
    return model.fast_output(model.fast_norm(fast_hidden(model, hidden, codes, gradient_checkpointing, compile_blocks)))


@torch.no_grad()
def _rank_hits(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-1 and top-5 hits from the target's rank (logits strictly above it): one pass over the
    logits instead of a top-k over a 155k vocabulary (6 % of a step on an H200)."""
    target_logit = logits.gather(-1, target.unsqueeze(-1))
    rank = (logits > target_logit).sum(-1)
    return (rank < 1).sum(), (rank < 5).sum()


def _token_chunk(model, hidden, targets):
    logits = token_logits(model, hidden).float()
    loss = F.cross_entropy(logits, targets, reduction="sum")
    return (loss, *_rank_hits(logits, targets))


def _token_loss_sum(model, hidden, targets, chunk_rows: int, fused: bool, compiled: bool):
    """Summed CE and top-1/top-5 hits over the whole vocabulary of hidden (rows, dim), before the
    final norm. Fused: pipeline.linear_ce. Otherwise in row chunks whose logits are recomputed in
    backward: (rows x 155k) fp32 logits would otherwise stay alive for backward."""
    if fused and not model.config.tie_word_embeddings:
        features = _maybe_compiled(_normed, compiled)(model.norm, hidden)
        return linear_cross_entropy(model.output, features, targets, chunk_rows=chunk_rows, compiled=compiled)
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


def _frame_features(norm, out: torch.Tensor, frames: int) -> torch.Tensor:
    """fast_norm of outputs 1.. (those predicting codebooks 1..N-1) of the first `frames` frames, as
    rows (122k x 1024 for the bench batch: eagerly, seven fp32 passes each way)."""
    return norm(out[:frames, 1:]).reshape(-1, out.shape[-1])


_compiled_fns: dict[object, object] = {}


def _maybe_compiled(fn, compiled: bool):
    """fn, or fn through torch.compile (one compiled wrapper per function, dynamic=None as the blocks)."""
    if not compiled:
        return fn
    if fn not in _compiled_fns:
        _compiled_fns[fn] = torch.compile(fn, dynamic=None)
    return _compiled_fns[fn]


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
                      gradient_checkpointing, compile_blocks, options.flex_fast_attention, options.fused_linears)
    real = where.n_frames
    if where.all_rows:  # every position went through: keep the frames'
        out, frame_codes = out.index_select(0, where.frames), codes.index_select(0, where.frames)
    targets = frame_codes[:real, 1:].reshape(-1)
    features = _maybe_compiled(_frame_features, compile_blocks)(base.fast_norm, out, real)
    if options.fused_ce:
        loss, h1, h5 = linear_cross_entropy(base.fast_output, features, targets, rows=vocab, chunk_rows=1 << 15,
                                            compiled=compile_blocks)
    else:
        logits = base.fast_output(features)[:, :vocab].float()
        loss, (h1, h5) = F.cross_entropy(logits, targets, reduction="sum"), _rank_hits(logits, targets)
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
    hidden = slow_forward(base, tokens, gradient_checkpointing, compile_blocks, options.fused_linears)
    vocab = min(RESIDUAL_VOCAB, base.fast_output.out_features)
    where = _positions(host, copied, labels.device, n, vocab, compile_blocks, options.frames_only)
    n_tokens = where.n_tokens
    # logits only where there is a target: the vocabulary is large (155k for s1-mini)
    token_sum, hits1, hits5 = _token_loss_sum(base, hidden.flatten(0, 1).index_select(0, where.tokens),
                                              labels[:, 0].flatten().index_select(0, where.tokens), chunk_rows,
                                              options.fused_ce, compile_blocks)
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
