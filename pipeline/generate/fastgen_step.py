"""The compiled per-frame decode functions of pipeline.generate.fastgen, and the types they take.

Each public function here is one piece of a decode frame (pipeline.generate.fastgen's docstring explains the
design): `embed_frame`, `slow_block` (every slow layer), `frame_head` (codebook 0 + the fast
transformer at position 0), `codebook_step` (codebooks 1..N-1) and `finish_frame` (bookkeeping).
FastGenerator compiles them (or runs them eagerly) and replays them as one CUDA graph; they only
read and write the tensors passed in, so the same code runs compiled, captured or eager. The rest
(`embed_tokens`, `qkv`, `ffn`) is shared with the prompt prefill.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from pipeline.kernels.gemv import linear

WINDOW = 16  # repetition-penalty window (frames), as decode_n_tokens


class Block(NamedTuple):
    """One transformer block's tensors as decoding uses them (effective weights: built by
    pipeline.generate.fastgen.block_weights)."""

    attention_norm: torch.Tensor
    wqkv: torch.Tensor
    wqkv_bias: torch.Tensor | None
    q_norm: torch.Tensor | None  # per-head RMSNorm weights (attention_qk_norm), else None
    k_norm: torch.Tensor | None
    wo: torch.Tensor
    wo_bias: torch.Tensor | None
    ffn_norm: torch.Tensor
    w13: torch.Tensor  # w1 and w3 stacked: one GEMV for both
    w2: torch.Tensor


@dataclass(frozen=True)
class Dims:
    """Static shape facts of one transformer (constants for the compiler)."""

    n_head: int
    n_local_heads: int
    head_dim: int
    eps: float  # the blocks' RMSNorm eps
    qk_eps: float | None  # q/k norm eps (nn.RMSNorm's)
    pointwise: bool  # attention as broadcast-multiply + sum: fuses for short (fast, 10-entry) caches
    gemv: bool = True  # one-row products through pipeline.kernels.gemv (DecodeOptions.gemv)

    @classmethod
    def of(cls, layer, pointwise: bool, gemv: bool = True) -> Dims:
        attn = layer.attention
        qk_eps = attn.q_norm.eps if attn.attention_qk_norm else None
        return cls(attn.n_head, attn.n_local_heads, attn.head_dim, layer.attention_norm.eps, qk_eps, pointwise, gemv)


@dataclass(frozen=True)
class Consts:
    """Token ids and model constants the frame functions need."""

    im_end: int
    sem_begin: int
    sem_end: int
    codebook_size: int
    n_codebooks: int
    scale_embeddings: bool
    head_eps: float  # the slow transformer's final norm
    fast_eps: float  # the fast transformer's final norm


# -- the pieces of one frame (the same Python functions run eagerly or compiled) -----------------
def _rms(x, weight, eps):
    """fish-speech's RMSNorm: normalise in float, cast back to x's dtype, then scale."""
    xf = x.float()
    return (xf * torch.rsqrt(torch.mean(xf * xf, dim=-1, keepdim=True) + eps)).type_as(x) * weight


def _rope(x, freqs):
    """apply_rotary_emb with one position per batch row: x (B, 1, H, D), freqs (B|1, 1, 1, D/2, 2)."""
    xs = x.float().reshape(*x.shape[:-1], -1, 2)
    out = torch.stack([xs[..., 0] * freqs[..., 0] - xs[..., 1] * freqs[..., 1],
                       xs[..., 1] * freqs[..., 0] + xs[..., 0] * freqs[..., 1]], -1)
    return out.flatten(3).type_as(x)


def qkv(b: Block, d: Dims, x):
    """attention_norm, wqkv, heads, q/k norm (before RoPE): (B, T, heads, head_dim) each."""
    bsz, seqlen = x.shape[:2]
    q_size, kv_size = d.n_head * d.head_dim, d.n_local_heads * d.head_dim
    q, k, v = linear(_rms(x, b.attention_norm, d.eps), b.wqkv, b.wqkv_bias, d.gemv).split([q_size, kv_size, kv_size], -1)
    q = q.view(bsz, seqlen, d.n_head, d.head_dim)
    k = k.view(bsz, seqlen, d.n_local_heads, d.head_dim)
    v = v.view(bsz, seqlen, d.n_local_heads, d.head_dim)
    if b.q_norm is not None:
        q = F.rms_norm(q, (d.head_dim,), b.q_norm, d.qk_eps)
        k = F.rms_norm(k, (d.head_dim,), b.k_norm, d.qk_eps)
    return q, k, v


def _new_kv(b: Block, d: Dims, x, freqs, k_cache, v_cache, slots, pos):
    """q of one new column per stream; its K/V written in place at `pos` (B|1, 1) of the FULL caches,
    seen as (B * kv_heads, S, head_dim): slots (B, kv_heads) = stream * kv_heads + head. An in-place
    write to a graph input: the compiler neither clones nor copies back the cache."""
    q, k, v = qkv(b, d, x)
    q, k = _rope(q, freqs), _rope(k, freqs)
    k_cache.index_put_((slots, pos), k[:, 0])
    v_cache.index_put_((slots, pos), v[:, 0])
    return q


def _attention(d: Dims, q, k_cache, v_cache, mask):
    """Grouped-query attention of q (B, 1, H, D) over cache positions [0, L), L = mask.shape[-1] (a
    dynamic dim: one graph for every length bucket); mask (B|1, 1, 1, L) True where a key is visible.
    Batched products straight on the narrowed (B * kv_heads, L, D) cache views: no reshape (a
    reshape of a non-contiguous view is a copy)."""
    length = mask.shape[-1]
    keys, values = k_cache.narrow(1, 0, length), v_cache.narrow(1, 0, length)
    bsz, group = q.shape[0], d.n_head // d.n_local_heads
    qg = q.view(bsz * d.n_local_heads, group, d.head_dim)
    if d.pointwise:  # broadcast-multiply + sum: scores, softmax and P@V fuse (short caches)
        scores = (qg[:, :, None, :].float() * keys[:, None].float()).sum(-1)
    else:
        scores = torch.bmm(qg, keys.transpose(1, 2)).float()
    scores = (scores * (1.0 / math.sqrt(d.head_dim))).view(bsz, d.n_local_heads, group, length)
    probs = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1).view(bsz * d.n_local_heads, group, length)
    if d.pointwise:
        y = (probs[..., None] * values[:, None].float()).sum(-2).to(values.dtype)
    else:
        y = torch.bmm(probs.to(values.dtype), values)
    return y.reshape(bsz, 1, d.n_head * d.head_dim)


def ffn(b: Block, d: Dims, h):
    """fish-speech's FeedForward, w2(silu(w1 x) * w3 x), with w1|w3 as one product."""
    gate, up = linear(_rms(h, b.ffn_norm, d.eps), b.w13, enabled=d.gemv).chunk(2, dim=-1)
    return linear(F.silu(gate) * up, b.w2, enabled=d.gemv)


def _block(b: Block, d: Dims, x, freqs, k_cache, v_cache, slots, pos, mask):
    """One transformer block for one new column per stream; returns (h, ffn), whose sum is its output."""
    q = _new_kv(b, d, x, freqs, k_cache, v_cache, slots, pos)
    h = x + linear(_attention(d, q, k_cache, v_cache, mask), b.wo, b.wo_bias, d.gemv)
    return h, ffn(b, d, h)


def slow_block(b: Block, d: Dims, x, delta, freqs, k_cache, v_cache, slots, pos, mask):
    """A slow block on x + delta (the previous block's unfinished residual sum, added here so that
    it fuses with this block's norm). pos (B, 1); mask (B, 1, 1, L). The caches hold one spare
    position, so L < S+1: a view over the whole cache would be contiguous, and the compiler would
    specialise the graph on L == S."""
    torch._check(mask.shape[-1] < k_cache.shape[1])
    return _block(b, d, x + delta, freqs, k_cache, v_cache, slots, pos, mask)


def embed_tokens(c: Consts, tables, tokens):
    """(B, N+1, L) → (B, L, dim), as pipeline.train.forward.embed (forward_generate) from weight tensors."""
    token_table, codebook_table = tables
    row0 = tokens[:, 0]
    offsets = torch.arange(c.n_codebooks, device=tokens.device).view(1, -1, 1) * c.codebook_size
    vq = F.embedding(tokens[:, 1:] + offsets, codebook_table).sum(dim=1)
    is_audio = (row0 >= c.sem_begin) & (row0 <= c.sem_end)
    x = F.embedding(row0, token_table) + vq * is_audio.unsqueeze(-1).to(vq.dtype)
    if c.scale_embeddings:
        x = torch.where(is_audio.unsqueeze(-1), x / math.sqrt(c.n_codebooks + 1), x)
    return x


def embed_frame(c: Consts, tables, cur, freqs_cis, pos):
    """The step's input (B, 1, dim) from the current column cur (B, N+1, 1), and its RoPE rows."""
    return embed_tokens(c, tables, cur), freqs_cis[pos].view(pos.shape[0], 1, 1, -1, 2)


def _fast_position(k, n, fast_freqs):
    """Write position, mask and RoPE row of fast position k (a (1,) long tensor), for every stream."""
    mask = (torch.arange(n, device=k.device) <= k).view(1, 1, 1, n)
    return k.view(1, 1), mask, fast_freqs[k].view(1, 1, 1, -1, 2)


PAIRWISE_TOP_P = 1024  # the most tokens whose top-p cut is computed by pairwise ranks, not a sort


def _beyond_top_p(logits, top_p):
    """fish-speech's top-p cut: sort descending, cumulative softmax > top_p, the first always kept.

    Up to PAIRWISE_TOP_P tokens (the residual codebooks) without a sort: a token's cumulative mass
    is the sum over the tokens ranked at or before it (higher probability, ties by index), one
    fused reduction over (V, V) pairs when compiled. torch.sort of 1,024 values took 22 us per
    codebook on an H100, the pairwise reduction ~2.6 us; for codebook 0's 4,097 values the sort is
    the faster one (docs/history/performance-log.md)."""
    if logits.shape[-1] > PAIRWISE_TOP_P:
        sorted_logits, sorted_idx = torch.sort(logits, dim=-1, descending=True, stable=True)  # ties by index
        cum = torch.cumsum(torch.softmax(sorted_logits, dim=-1), dim=-1)
        remove = cum > top_p
        remove[:, 0] = False  # keep at least one option
        return remove.scatter(1, sorted_idx, remove)
    probs = torch.softmax(logits, dim=-1)
    index = torch.arange(logits.shape[-1], device=logits.device)
    p_i, p_j = probs[:, :, None], probs[:, None, :]
    ahead = (p_j > p_i) | ((p_j == p_i) & (index[None, None, :] <= index[None, :, None]))
    cum = torch.where(ahead, p_j, 0.0).sum(-1)
    return (cum > top_p) & (index[None, :] != torch.argmax(probs, dim=-1, keepdim=True))


def _sample(logits, window, noise, temperature, top_p, penalty, force_flag, force_value):
    """fish-speech's logits_to_probs + multinomial_sample_one_no_sync, one row per stream.

    logits (B, V) float; window (B, W) recent indices; noise (B, V) Exp(1) samples.
    Rows with force_flag take force_value instead (teacher forcing, for checks).
    """
    score = torch.gather(logits, 1, window)
    score = torch.where(score < 0, score * penalty, score / penalty)
    logits = logits.scatter(1, window, score)
    logits = logits.masked_fill(_beyond_top_p(logits, top_p), float("-inf")) / torch.clamp(temperature, min=1e-5)
    probs = torch.softmax(logits, dim=-1)
    idx = torch.argmax(probs / noise, dim=-1)
    return torch.where(force_flag, force_value, idx)


def _pick_codebook0(c: Consts, logits, window, noise, sampling, force_flag, force, frame, logits_out):
    """Codebook 0 from its logits (B, 1 + n_semantic) float: into logits_out, the sample into frame
    columns 0 (token) and 1 (code)."""
    logits_out.copy_(logits)
    idx0 = _sample(logits, window[:, 0], noise[:, 0], *sampling, force_flag, force[:, 0])
    frame[:, 0] = torch.where(idx0 == 0, c.im_end, idx0 - 1 + c.sem_begin)
    frame[:, 1] = torch.clamp(idx0 - 1, min=0)  # <|im_end|> feeds code 0, as decode_one_token_ar


def _pick_code(k, logits, window, noise, sampling, force_flag, force, frame, logits_out):
    """Codebook k's (a (1,) long tensor) sample from its logits (B, V) float into frame column k+1."""
    logits_out.index_copy_(1, k - 1, logits[:, None])
    pick = lambda t: t.index_select(1, k)[:, 0]  # this codebook's row of a (B, N, ...) buffer
    code = _sample(logits, pick(window), pick(noise)[:, : logits.shape[1]], *sampling, force_flag, pick(force))
    frame.index_copy_(1, k + 1, code[:, None])


def frame_head(c: Consts, fd: Dims, x, delta, norm, head0, proj, blocks, k_caches, v_caches, slots,
                fast_freqs, window, noise, sampling, force_flag, force, frame, logits_out):
    """Codebook 0 from the last slow block's (x, delta): logits over head0's rows (0 = <|im_end|>,
    1+c = semantic c) into logits_out, the sample into frame columns 0 (token) and 1 (code), then
    the fast transformer's K/V at position 0 (its input: fast_project_in of the hidden state)."""
    x = x + delta
    logits = linear(_rms(x[:, 0], norm, c.head_eps), head0, enabled=fd.gemv).float()
    _pick_codebook0(c, logits, window, noise, sampling, force_flag, force, frame, logits_out)
    y = x if proj is None else linear(x, *proj, enabled=fd.gemv)
    zero = torch.zeros(1, dtype=torch.long, device=x.device)
    pos, mask, freqs = _fast_position(zero, k_caches[0].shape[1], fast_freqs)
    for b, kc, vc in zip(blocks[:-1], k_caches[:-1], v_caches[:-1]):
        h, f = _block(b, fd, y, freqs, kc, vc, slots, pos, mask)
        y = h + f
    _new_kv(blocks[-1], fd, y, freqs, k_caches[-1], v_caches[-1], slots, pos)


def codebook_step(c: Consts, fd: Dims, k, embedding, blocks, k_caches, v_caches, slots, fast_freqs,
              norm, head, window, noise, sampling, force_flag, force, frame, logits_out):
    """Codebook k (a (1,) long tensor, 1..N-1): the fast transformer on the embedding of codebook
    k-1's code (frame column k), logits over head's rows into logits_out[:, k-1], the sample into
    frame column k+1."""
    y = F.embedding(frame.index_select(1, k), embedding)  # (B, 1, fast_dim)
    pos, mask, freqs = _fast_position(k, k_caches[0].shape[1], fast_freqs)
    for b, kc, vc in zip(blocks, k_caches, v_caches):
        h, f = _block(b, fd, y, freqs, kc, vc, slots, pos, mask)
        y = h + f
    logits = linear(_rms(y[:, 0], norm, c.fast_eps), head, enabled=fd.gemv).float()
    _pick_code(k, logits, window, noise, sampling, force_flag, force, frame, logits_out)


# -- the sampling pieces of the fused decoder (pipeline.kernels.decode_layer runs the layers) -------------
def pick_codebook0(c: Consts, logits, embedding, window, noise, sampling, force_flag, force, frame, logits_out):
    """Codebook 0 from the head's logits (B, 1 + n_semantic); returns the fast transformer's input
    for codebook 1: the embedding of each stream's sampled code (B, fast_dim)."""
    _pick_codebook0(c, logits.float(), window, noise, sampling, force_flag, force, frame, logits_out)
    return F.embedding(frame[:, 1], embedding)


def pick_code(k, logits, embedding, window, noise, sampling, force_flag, force, frame, logits_out):
    """Codebook k from the fast head's logits (B, V); returns the embedding of each stream's sampled
    code (B, fast_dim): the input for codebook k+1 (unused after the last)."""
    _pick_code(k, logits.float(), window, noise, sampling, force_flag, force, frame, logits_out)
    return F.embedding(frame.index_select(1, k + 1)[:, 0], embedding)


def finish_frame(c: Consts, frame, cur, out, window, pos, t):
    """Bookkeeping after a frame (B, N+1): next input, output column t, repetition window, positions."""
    cur.copy_(frame[:, :, None])
    out.index_copy_(2, t, frame[:, :, None])
    idx0 = torch.where(frame[:, 0] == c.im_end, 0, frame[:, 1] + 1)  # the sampled head0 row
    window.index_copy_(2, t % WINDOW, torch.cat([idx0[:, None], frame[:, 2:]], dim=1)[:, :, None])
    pos.add_(1)
    t.add_(1)
