"""The training forward pass, written from the model's own submodules.

fish-speech 0.1.0's `DualARTransformer.forward` is broken (docs/FISH_SPEECH_NOTES.md, wheel bug 1) and its
`BaseTransformer.embed` does not scale audio-frame embeddings the way inference does (bug 3).
This module computes, for a batch of packed sequences, exactly the logits that generation
(`forward_generate` + `forward_generate_fast` with KV caches) computes step by step:

- slow transformer: embed like `forward_generate` (semantic token embedding + sum of all codebook
  embeddings at audio frames, divided by sqrt(num_codebooks + 1) when the config says so), causal
  attention with no mask (a fused causal kernel: cuDNN's on Hopper+, else flash; sequences are padded
  only at the end), token logits.
- fast transformer, at every position whose next column is an audio frame: input
  [slow hidden state (pre-norm, through fast_project_in), emb(c0), ..., emb(c_{N-2})] of that next
  frame; its outputs at positions 1..N-1 predict codebooks 1..N-1.

The loss over these outputs is pipeline.train.loss.compute_loss.

`ForwardOptions` holds the speed switches; every combination computes the same loss (tests on
the CPU, `python -m pipeline bench` on the GPU): fused linear cross-entropy (pipeline.kernels.linear_ce),
the fast transformer's 10-position attention as one packed sequence with a block-diagonal
causal mask (segment_attention's kernels, or compiled flex attention), and only audio frames
through the compiled fast transformer (padded to loss.FRAME_BUCKET frames so that shapes, and
compiled graphs, repeat).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from fish_speech.models.text2semantic.llama import DualARTransformer, apply_rotary_emb
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.checkpoint import checkpoint

from pipeline.kernels import runtime, segment_attention
from pipeline.model.adapters import unwrap
from pipeline.kernels.fused_linear import glu_linear, shared_input_linear

# inference samples codebooks 1.. from fast_output's first 1024 logits (decode_one_token_ar)
IGNORE = -100
FLEX_BLOCK = 128


@dataclass(frozen=True)
class ForwardOptions:
    """How compute_loss computes (never what): every combination gives the same loss."""

    fused_ce: bool = True  # logits chunk by chunk with their gradients computed at once (linear_ce)
    flex_fast_attention: bool = False  # all frames as one packed sequence, block-diagonal causal mask
    frames_only: bool = True  # compiled path: only audio frames (bucketed) through the fast transformer
    fused_linears: bool = True  # LoRA branches as extra matmul columns, w1|w3 as one matmul (fused_linear)
    lora_dropout_kernel: bool = True  # LoRA dropout drawn inside pipeline.kernels.lora_dropout's kernels
    segment_attention_kernel: bool = True  # packed frames through pipeline.kernels.segment_attention
    cudnn_attention: bool = True  # slow stack's causal attention through cuDNN where it is faster (Hopper+)

    @classmethod
    def for_run(cls, compile_blocks: bool, lora_dropout_kernel: bool = True,
                segment_attention_kernel: bool = True, cudnn_attention: bool = True) -> "ForwardOptions":
        # flex attention is only fast compiled; eagerly it materialises the whole score matrix
        return cls(flex_fast_attention=compile_blocks, lora_dropout_kernel=lora_dropout_kernel,
                   segment_attention_kernel=segment_attention_kernel, cudnn_attention=cudnn_attention)


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


def _linear(module, x: torch.Tensor, fused: bool, dropout_kernel: bool = True) -> torch.Tensor:
    return shared_input_linear([module], x, dropout_kernel=dropout_kernel)[0] if fused else module(x)


def _attention(attn, x: torch.Tensor, freqs_cis: torch.Tensor, block_mask=None, fused: bool = False,
               dropout_kernel: bool = True, segment_kernel: bool = True, cudnn: bool = False) -> torch.Tensor:
    """The wheel's Attention.forward with is_causal=True and native grouped-query attention.

    With a block_mask (fast transformer: x is (frames, 10, dim)) every frame is its own causal
    segment of one packed sequence: through pipeline.kernels.segment_attention's kernels where they apply
    (given the qkv projection output itself, rotation inside, when there is no qk-norm), else
    through flex attention with the mask, instead of a tiny SDPA call per frame. dropout_kernel and
    segment_kernel: ForwardOptions.lora_dropout_kernel and .segment_attention_kernel."""
    bsz, seqlen, _ = x.shape
    q_size = attn.n_head * attn.head_dim
    kv_size = attn.n_local_heads * attn.head_dim
    qkv = _linear(attn.wqkv, x, fused, dropout_kernel)
    if block_mask is not None and not attn.attention_qk_norm:  # rotary embedding inside the kernels
        rows = qkv.view(bsz * seqlen, -1)
        if segment_attention.applies(*segment_attention.split_heads(rows, attn.n_head, attn.n_local_heads)[:2], seqlen,
                                     enabled=segment_kernel):
            y = segment_attention.packed_segment_attention(rows, freqs_cis, attn.n_head, attn.n_local_heads, seqlen)
            return _linear(attn.wo, y.view(bsz, seqlen, q_size), fused, dropout_kernel)
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
    if block_mask is not None and segment_attention.applies(q, k, seqlen, enabled=segment_kernel):  # one tile of whole frames per program
        y = segment_attention.segment_attention(*(t.reshape(bsz * seqlen, *t.shape[2:]) for t in (q, k, v)), seqlen)
        return _linear(attn.wo, y.view(bsz, seqlen, q_size), fused, dropout_kernel)
    if block_mask is not None:
        from torch.nn.attention.flex_attention import flex_attention

        q, k, v = (t.reshape(1, bsz * seqlen, *t.shape[2:]).transpose(1, 2) for t in (q, k, v))
        y = flex_attention(q, k, v, block_mask=block_mask, enable_gqa=gqa)
        return _linear(attn.wo, y.transpose(1, 2).reshape(bsz, seqlen, q_size), fused, dropout_kernel)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    dropout = attn.dropout if attn.training else 0.0
    # whether cuDNN takes this shape is asked outside the compiled block (_cudnn_attention_takes)
    if cudnn and dropout == 0.0 and q.dtype in (torch.float16, torch.bfloat16):
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    else:
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True, enable_gqa=gqa)
    return _linear(attn.wo, y.transpose(1, 2).reshape(bsz, seqlen, q_size), fused, dropout_kernel)


def _feed_forward(ff, x: torch.Tensor, fused: bool, dropout_kernel: bool = True) -> torch.Tensor:
    """The wheel's FeedForward: w2(silu(w1 x) * w3 x), w1 and w3 as one matmul when fused."""
    if not fused:
        return ff(x)
    (gate_up,) = shared_input_linear([ff.w1, ff.w3], x, stacked=True, dropout_kernel=dropout_kernel)
    return glu_linear(ff.w2, gate_up, dropout_kernel=dropout_kernel)


def _block(layer, x: torch.Tensor, freqs_cis: torch.Tensor, block_mask=None, fused: bool = False,
           dropout_kernel: bool = True, segment_kernel: bool = True, cudnn: bool = False) -> torch.Tensor:
    h = x + _attention(layer.attention, layer.attention_norm(x), freqs_cis, block_mask, fused, dropout_kernel,
                       segment_kernel, cudnn)
    return h + _feed_forward(layer.feed_forward, layer.ffn_norm(h), fused, dropout_kernel)


def _slow_block(layer, x, freqs_cis, block_mask=None, fused: bool = False, dropout_kernel: bool = True,
                segment_kernel: bool = True, cudnn: bool = False):
    return _block(layer, x, freqs_cis, block_mask, fused, dropout_kernel, segment_kernel, cudnn)


def _fast_block(layer, x, freqs_cis, block_mask=None, fused: bool = False, dropout_kernel: bool = True,
                segment_kernel: bool = True, cudnn: bool = False):
    return _block(layer, x, freqs_cis, block_mask, fused, dropout_kernel, segment_kernel, cudnn)


def maybe_compiled(fn, compiled: bool):
    """fn, or its kept torch.compile wrapper (pipeline.kernels.runtime.compiled)."""
    return runtime.compiled(fn) if compiled else fn


def compiled_block(stack: str = "slow"):
    """`_block` through torch.compile, one compiled function per layer stack ("slow" or "fast"),
    shared by every layer of it (dynamo inlines the modules). Two wrappers because dynamo keys its
    cache and its automatic-dynamic decisions by code object: the fast stack's frame counts must
    not turn the slow stack's graph dynamic. Measured on an H200 at the s1-mini shape, batch
    4 x 4096: LoRA 0.74 → 0.44 s/step, full 0.64 → 0.41 s/step, after ~30 s of compilation."""
    runtime.raise_dynamo_limits()
    return maybe_compiled(_slow_block if stack == "slow" else _fast_block, True)


def _cudnn_attention_takes(attn, x: torch.Tensor) -> bool:
    """cuDNN's attention for these layers on x's device, in the dtype the blocks compute in."""
    device_type = x.device.type
    dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else x.dtype
    return runtime.cudnn_attention_takes(x.device, attn.n_head, attn.n_local_heads, attn.head_dim, dtype)


def _run_layers(layers, x, freqs_cis, gradient_checkpointing: bool, compile_blocks: bool = False,
                block_mask=None, fused: bool = False, stack: str = "slow", dropout_kernel: bool = True,
                segment_kernel: bool = True, cudnn_attention: bool = False) -> torch.Tensor:
    block = compiled_block(stack) if compile_blocks else _block
    cudnn = cudnn_attention and block_mask is None and _cudnn_attention_takes(layers[0].attention, x)
    args = (block_mask, fused, dropout_kernel, segment_kernel, cudnn)
    if compile_blocks:  # the slow stack's width and the fast stack's frame count change per batch
        if stack == "slow":
            runtime.varying(x, 1)
            runtime.varying(freqs_cis, 0)
        else:
            runtime.varying(x, 0)
    for layer in layers:
        if gradient_checkpointing and torch.is_grad_enabled():
            x = checkpoint(block, layer, x, freqs_cis, *args, use_reentrant=False)
        else:
            x = block(layer, x, freqs_cis, *args)
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
                 compile_blocks: bool = False, fused_linears: bool = False, dropout_kernel: bool = True,
                 cudnn_attention: bool = False) -> torch.Tensor:
    """Slow transformer hidden states (B, L, dim), before the final norm (as forward_generate returns)."""
    model = unwrap(model)
    seq_len = tokens.shape[-1]
    if seq_len > model.config.max_seq_len:
        raise ValueError(f"Sequence length {seq_len} exceeds the model's max_seq_len {model.config.max_seq_len}.")
    x = residual_dtype(embed(model, tokens))
    return _run_layers(model.layers, x, model.freqs_cis[:seq_len], gradient_checkpointing, compile_blocks,
                       fused=fused_linears, dropout_kernel=dropout_kernel, cudnn_attention=cudnn_attention)


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
                compile_blocks: bool = False, flex_attention: bool = False, fused_linears: bool = False,
                dropout_kernel: bool = True, segment_kernel: bool = True) -> torch.Tensor:
    """Fast transformer outputs (M, N, fast_dim), before fast_norm, for M frames.

    hidden: (M, dim) slow hidden states (pre-norm) of the positions BEFORE the frames;
    codes: (M, N) the frames' codes. Output n (n >= 1) predicts codebook n; output 0 is unused.
    """
    model = unwrap(model)
    n = model.config.num_codebooks
    if compile_blocks:
        runtime.varying(hidden, 0)
        runtime.varying(codes, 0)
    x = maybe_compiled(_fast_inputs, compile_blocks)(model, hidden, codes)
    dropout = any(layer.attention.dropout for layer in model.fast_layers) and model.training
    mask = segment_block_mask(x.shape[0], n, x.device) if flex_attention and not dropout else None
    return _run_layers(model.fast_layers, x, model.fast_freqs_cis[:n], gradient_checkpointing, compile_blocks, mask,
                       fused_linears, stack="fast", dropout_kernel=dropout_kernel, segment_kernel=segment_kernel)


def fast_logits(model, hidden: torch.Tensor, codes: torch.Tensor, gradient_checkpointing: bool = False,
                compile_blocks: bool = False) -> torch.Tensor:
    """Fast transformer logits (M, N, codebook_size) for M frames (see fast_hidden)."""
    model = unwrap(model)
    return model.fast_output(model.fast_norm(fast_hidden(model, hidden, codes, gradient_checkpointing, compile_blocks)))
