"""Fast generation: a static KV cache, one decode step per frame, captured in a CUDA graph.

fish-speech's `generate` runs ~2,000 small kernels per frame from Python (eager: ~16 frames/s on an
H200) or compiles one huge graph (`torch.compile`, minutes of warm-up). Here a frame is five small
compiled functions (warm-up: a few small compiles, not one big one), replayed as ONE CUDA graph
(no Python and no launch gaps per frame):

1. `_embed_frame`: the frame's input embedding (as forward_generate embeds) and its RoPE row.
2. `_slow_block` for each of the 28 slow layers (one compiled graph for every layer and length
   bucket): RMSNorm, one wqkv GEMV, q/k norm + RoPE, the new K/V written IN PLACE into the full
   cache tensors (graph inputs; the attended length is the mask's dynamic last dim and the cache
   is narrowed inside the graph, so the compiler neither clones nor copies back any cache),
   attention over the used positions only (buckets 512, 1024, ...; not all 8,192), wo, then the
   FFN as one w1|w3 GEMV + silu*mul + w2: 4 weight GEMVs (+ 2 attention products) per layer.
   A block returns its residual sum unfinished, (h, ffn): the next block adds it inside its own
   norm kernel.
3. `_frame_head`: codebook-0 logits over the semantic tokens + <|im_end|> only (4,097 rows of the
   155,776-row head: the rest are text tokens the model never emits at an audio position),
   sampling, and the fast transformer at position 0 (its last layer only writes K/V there: that
   output is never used).
4. `_codebook` for codebooks 1..N-1 (one graph; the index is a tensor, so every per-codebook
   buffer is read and written by index inside it): the previous code's embedding, the 4 fast
   layers (attention over their 10-entry caches as broadcast-multiply + sum, which fuses), the
   head's first 1,024 rows (as decode_one_token_ar) and sampling.
5. `_finish`: the next input column, the output row, the repetition window, the positions.

Weights (`refresh_weights`, called after adapters change): per layer the EFFECTIVE weights
(`effective_weight`: base + active LoRA deltas, merged once) and w1|w3 concatenated, so stacked
peft adapters cost nothing per frame (merged in float, rounded once to the model's dtype: in bf16
that rounding is of the size of the base weights' own). Without adapters the base tensors are
shared; only w1|w3 is a copy (~0.4 GB for s1-mini in bf16). A captured graph holds the addresses of
the tensors it was captured with, so refresh_weights drops the captured graphs (recaptured on next
use; nothing is recompiled). Several prompts decode together (batch): weights are read once per
frame for all streams.

Sampling follows fish-speech's `logits_to_probs` (repetition penalty over the last 16 frames,
top-p, temperature, exponential-race multinomial) per stream. One deliberate difference: the
wheel penalises codebook 0 with column 0 of its window (the first frame's tokens) instead of
row 0 (the last 16 semantic tokens); here it is row 0. Without a GPU (or with `compile=False,
cuda_graph=False`) the same functions run eagerly: that is what the CPU tests compare with the wheel.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch._dynamo
import torch.nn.functional as F
from fish_speech.models.text2semantic.llama import apply_rotary_emb

from pipeline.forward import unwrap

RESIDUAL_VOCAB = 1024  # decode_one_token_ar samples codebooks 1.. from the first 1024 fast logits
WINDOW = 16  # repetition-penalty window (frames), as decode_n_tokens
MIN_BUCKET = 512


def effective_weight(module: torch.nn.Module) -> torch.Tensor:
    """The weight a (possibly peft-LoRA-wrapped) Linear or Embedding applies: base + the sum of its
    active adapters' deltas (added in float, rounded once), detached."""
    from peft.tuners.lora import LoraLayer

    if isinstance(module, LoraLayer):
        weight = module.get_base_layer().weight.detach()
        if module.merged or module.disable_adapters:
            return weight
        names = [n for n in module.active_adapters
                 if n in module.lora_A or n in getattr(module, "lora_embedding_A", {})]
        if not names:
            return weight
        delta = sum(module.get_delta_weight(n).detach().float() for n in names)
        return (weight.float() + delta).to(weight.dtype)
    return module.weight.detach()


def _bias(linear: torch.nn.Module) -> torch.Tensor | None:
    base = linear.get_base_layer() if hasattr(linear, "get_base_layer") else linear
    return None if base.bias is None else base.bias.detach()


class Block(NamedTuple):
    """One transformer block's tensors as decoding uses them (effective weights)."""

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

    @classmethod
    def of(cls, layer) -> Block:
        attn, ff = layer.attention, layer.feed_forward
        qk = attn.attention_qk_norm
        return cls(layer.attention_norm.weight.detach(), effective_weight(attn.wqkv), _bias(attn.wqkv),
                   attn.q_norm.weight.detach() if qk else None, attn.k_norm.weight.detach() if qk else None,
                   effective_weight(attn.wo), _bias(attn.wo), layer.ffn_norm.weight.detach(),
                   torch.cat([effective_weight(ff.w1), effective_weight(ff.w3)]), effective_weight(ff.w2))


@dataclass(frozen=True)
class Dims:
    """Static shape facts of one transformer (constants for the compiler)."""

    n_head: int
    n_local_heads: int
    head_dim: int
    eps: float  # the blocks' RMSNorm eps
    qk_eps: float | None  # q/k norm eps (nn.RMSNorm's)
    pointwise: bool  # attention as broadcast-multiply + sum: fuses for short (fast, 10-entry) caches

    @classmethod
    def of(cls, layer, pointwise: bool) -> Dims:
        attn = layer.attention
        qk_eps = attn.q_norm.eps if attn.attention_qk_norm else None
        return cls(attn.n_head, attn.n_local_heads, attn.head_dim, layer.attention_norm.eps, qk_eps, pointwise)


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


def _qkv(b: Block, d: Dims, x):
    """attention_norm, wqkv, heads, q/k norm (before RoPE): (B, T, heads, head_dim) each."""
    bsz, seqlen = x.shape[:2]
    q_size, kv_size = d.n_head * d.head_dim, d.n_local_heads * d.head_dim
    q, k, v = F.linear(_rms(x, b.attention_norm, d.eps), b.wqkv, b.wqkv_bias).split([q_size, kv_size, kv_size], -1)
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
    q, k, v = _qkv(b, d, x)
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


def _ffn(b: Block, d: Dims, h):
    """fish-speech's FeedForward, w2(silu(w1 x) * w3 x), with w1|w3 as one product."""
    gate, up = F.linear(_rms(h, b.ffn_norm, d.eps), b.w13).chunk(2, dim=-1)
    return F.linear(F.silu(gate) * up, b.w2)


def _block(b: Block, d: Dims, x, freqs, k_cache, v_cache, slots, pos, mask):
    """One transformer block for one new column per stream; returns (h, ffn), whose sum is its output."""
    q = _new_kv(b, d, x, freqs, k_cache, v_cache, slots, pos)
    h = x + F.linear(_attention(d, q, k_cache, v_cache, mask), b.wo, b.wo_bias)
    return h, _ffn(b, d, h)


def _slow_block(b: Block, d: Dims, x, delta, freqs, k_cache, v_cache, slots, pos, mask):
    """A slow block on x + delta (the previous block's unfinished residual sum, added here so that
    it fuses with this block's norm). pos (B, 1); mask (B, 1, 1, L). The caches hold one spare
    position, so L < S+1: a view over the whole cache would be contiguous, and the compiler would
    specialise the graph on L == S."""
    torch._check(mask.shape[-1] < k_cache.shape[1])
    return _block(b, d, x + delta, freqs, k_cache, v_cache, slots, pos, mask)


def _embed_tokens(c: Consts, tables, tokens):
    """(B, N+1, L) → (B, L, dim), as pipeline.forward.embed (forward_generate) from weight tensors."""
    token_table, codebook_table = tables
    row0 = tokens[:, 0]
    offsets = torch.arange(c.n_codebooks, device=tokens.device).view(1, -1, 1) * c.codebook_size
    vq = F.embedding(tokens[:, 1:] + offsets, codebook_table).sum(dim=1)
    is_audio = (row0 >= c.sem_begin) & (row0 <= c.sem_end)
    x = F.embedding(row0, token_table) + vq * is_audio.unsqueeze(-1).to(vq.dtype)
    if c.scale_embeddings:
        x = torch.where(is_audio.unsqueeze(-1), x / math.sqrt(c.n_codebooks + 1), x)
    return x


def _embed_frame(c: Consts, tables, cur, freqs_cis, pos):
    """The step's input (B, 1, dim) from the current column cur (B, N+1, 1), and its RoPE rows."""
    return _embed_tokens(c, tables, cur), freqs_cis[pos].view(pos.shape[0], 1, 1, -1, 2)


def _fast_position(k, n, fast_freqs):
    """Write position, mask and RoPE row of fast position k (a (1,) long tensor), for every stream."""
    mask = (torch.arange(n, device=k.device) <= k).view(1, 1, 1, n)
    return k.view(1, 1), mask, fast_freqs[k].view(1, 1, 1, -1, 2)


def _sample(logits, window, noise, temperature, top_p, penalty, force_flag, force_value):
    """fish-speech's logits_to_probs + multinomial_sample_one_no_sync, one row per stream.

    logits (B, V) float; window (B, W) recent indices; noise (B, V) Exp(1) samples.
    Rows with force_flag take force_value instead (teacher forcing, for checks).
    """
    score = torch.gather(logits, 1, window)
    score = torch.where(score < 0, score * penalty, score / penalty)
    logits = logits.scatter(1, window, score)
    sorted_logits, sorted_idx = torch.sort(logits, dim=-1, descending=True)
    cum = torch.cumsum(torch.softmax(sorted_logits, dim=-1), dim=-1)
    remove = cum > top_p
    remove[:, 0] = False  # keep at least one option
    remove = remove.scatter(1, sorted_idx, remove)
    logits = logits.masked_fill(remove, float("-inf")) / torch.clamp(temperature, min=1e-5)
    probs = torch.softmax(logits, dim=-1)
    idx = torch.argmax(probs / noise, dim=-1)
    return torch.where(force_flag, force_value, idx)


def _frame_head(c: Consts, fd: Dims, x, delta, norm, head0, proj, blocks, k_caches, v_caches, slots,
                fast_freqs, window, noise, sampling, force_flag, force, frame, logits_out):
    """Codebook 0 from the last slow block's (x, delta): logits over head0's rows (0 = <|im_end|>,
    1+c = semantic c) into logits_out, the sample into frame columns 0 (token) and 1 (code), then
    the fast transformer's K/V at position 0 (its input: fast_project_in of the hidden state)."""
    x = x + delta
    logits = F.linear(_rms(x[:, 0], norm, c.head_eps), head0).float()
    logits_out.copy_(logits)
    idx0 = _sample(logits, window[:, 0], noise[:, 0], *sampling, force_flag, force[:, 0])
    frame[:, 0] = torch.where(idx0 == 0, c.im_end, idx0 - 1 + c.sem_begin)
    frame[:, 1] = torch.clamp(idx0 - 1, min=0)  # <|im_end|> feeds code 0, as decode_one_token_ar
    y = x if proj is None else F.linear(x, *proj)
    zero = torch.zeros(1, dtype=torch.long, device=x.device)
    pos, mask, freqs = _fast_position(zero, k_caches[0].shape[1], fast_freqs)
    for b, kc, vc in zip(blocks[:-1], k_caches[:-1], v_caches[:-1]):
        h, f = _block(b, fd, y, freqs, kc, vc, slots, pos, mask)
        y = h + f
    _new_kv(blocks[-1], fd, y, freqs, k_caches[-1], v_caches[-1], slots, pos)


def _codebook(c: Consts, fd: Dims, k, embedding, blocks, k_caches, v_caches, slots, fast_freqs,
              norm, head, window, noise, sampling, force_flag, force, frame, logits_out):
    """Codebook k (a (1,) long tensor, 1..N-1): the fast transformer on the embedding of codebook
    k-1's code (frame column k), logits over head's rows into logits_out[:, k-1], the sample into
    frame column k+1."""
    y = F.embedding(frame.index_select(1, k), embedding)  # (B, 1, fast_dim)
    pos, mask, freqs = _fast_position(k, k_caches[0].shape[1], fast_freqs)
    for b, kc, vc in zip(blocks, k_caches, v_caches):
        h, f = _block(b, fd, y, freqs, kc, vc, slots, pos, mask)
        y = h + f
    logits = F.linear(_rms(y[:, 0], norm, c.fast_eps), head).float()
    logits_out.index_copy_(1, k - 1, logits[:, None])
    pick = lambda t: t.index_select(1, k)[:, 0]  # this codebook's row of a (B, N, ...) buffer
    code = _sample(logits, pick(window), pick(noise)[:, : head.shape[0]], *sampling, force_flag, pick(force))
    frame.index_copy_(1, k + 1, code[:, None])


def _finish(c: Consts, frame, cur, out, window, pos, t):
    """Bookkeeping after a frame (B, N+1): next input, output column t, repetition window, positions."""
    cur.copy_(frame[:, :, None])
    out.index_copy_(2, t, frame[:, :, None])
    idx0 = torch.where(frame[:, 0] == c.im_end, 0, frame[:, 1] + 1)  # the sampled head0 row
    window.index_copy_(2, t % WINDOW, torch.cat([idx0[:, None], frame[:, 2:]], dim=1)[:, :, None])
    pos.add_(1)
    t.add_(1)


class FastGenerator:
    """Batched codes generation for one DualARTransformer (bf16 on CUDA for speed; any device)."""

    def __init__(self, model, batch_size: int = 1, max_len: int | None = None,
                 compile: bool | None = None, cuda_graph: bool | None = None, compile_mode: str | None = None):
        self.model = unwrap(model)
        m, cfg = self.model, self.model.config
        self.device = next(m.parameters()).device
        self.dtype = next(m.parameters()).dtype
        cuda = self.device.type == "cuda"
        self.use_compile = cuda if compile is None else compile
        self.use_graph = cuda if cuda_graph is None else (cuda_graph and cuda)
        self.B, self.N = batch_size, cfg.num_codebooks
        self.S = min(int(max_len or cfg.max_seq_len), cfg.max_seq_len)
        tok = m.tokenizer
        self.im_end = tok.get_token_id("<|im_end|>")
        self.sem_begin, self.sem_end = tok.semantic_begin_id, tok.semantic_end_id
        self.n_semantic = self.sem_end - self.sem_begin + 1
        self.residual_vocab = min(RESIDUAL_VOCAB, m.fast_output.out_features)
        self.consts = Consts(self.im_end, self.sem_begin, self.sem_end, cfg.codebook_size, self.N,
                             bool(cfg.scale_codebook_embeddings), m.norm.eps, m.fast_norm.eps)
        self.slow_dims, self.fast_dims = Dims.of(m.layers[0], False), Dims.of(m.fast_layers[0], True)
        dev, dt, B = self.device, self.dtype, batch_size

        def cache(n_heads, length, head_dim):  # (B, kv_heads, positions, head_dim) like fish-speech's KVCache
            return torch.zeros((B, n_heads, length, head_dim), device=dev, dtype=dt)

        # one spare position (never attended, see _slow_block)
        self.kc = [cache(cfg.n_local_heads, self.S + 1, cfg.head_dim) for _ in m.layers]
        self.vc = [cache(cfg.n_local_heads, self.S + 1, cfg.head_dim) for _ in m.layers]
        fkv, fhd = cfg.fast_n_local_heads, cfg.fast_head_dim
        self.fkc = [cache(fkv, self.N, fhd) for _ in m.fast_layers]
        self.fvc = [cache(fkv, self.N, fhd) for _ in m.fast_layers]
        # the step sees each cache as (B * kv_heads, positions, head_dim): views of the same memory
        self._kc, self._vc, self._fkc, self._fvc = ([c.flatten(0, 1) for c in caches]
                                                    for caches in (self.kc, self.vc, self.fkc, self.fvc))
        self.slots = torch.arange(B * cfg.n_local_heads, device=dev).view(B, -1)
        self.fast_slots = torch.arange(B * fkv, device=dev).view(B, -1)
        self.positions = torch.arange(self.S, device=dev)
        self.codebook_index = [torch.tensor([k], device=dev) for k in range(self.N)]
        with torch.inference_mode():  # like the other blocks' deltas (a mismatch would recompile)
            self.zero = torch.zeros((B, 1, cfg.dim), device=dev, dtype=dt)  # the first block's delta
        # state of the decode step (static buffers: a captured graph reads and writes these)
        self.cur = torch.zeros((B, self.N + 1, 1), device=dev, dtype=torch.long)
        self.frame = torch.zeros((B, self.N + 1), device=dev, dtype=torch.long)
        self.pos = torch.zeros((B,), device=dev, dtype=torch.long)
        self.t = torch.zeros((1,), device=dev, dtype=torch.long)
        self.window = torch.zeros((B, self.N, WINDOW), device=dev, dtype=torch.long)
        self.out = torch.zeros((B, self.N + 1, self.S), device=dev, dtype=torch.long)
        self.noise = torch.empty((B, self.N, self.n_semantic + 1), device=dev, dtype=torch.float32)
        self.force_flag = torch.zeros((B,), device=dev, dtype=torch.bool)
        self.force = torch.zeros((B, self.N), device=dev, dtype=torch.long)
        self.temperature, self.top_p, self.penalty = (torch.ones((), device=dev) for _ in range(3))
        self.last_logits0 = torch.zeros((B, self.n_semantic + 1), device=dev)
        self.last_fast_logits = torch.zeros((B, self.N - 1, self.residual_vocab), device=dev)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self._pool = self.warmup_s = None
        self.refresh_weights()
        self._embed, self._slow, self._head0, self._code, self._finish = (
            _embed_frame, _slow_block, _frame_head, _codebook, _finish)
        if self.use_compile:
            for name in ("recompile_limit", "cache_size_limit"):  # one entry per shape, not per layer
                if hasattr(torch._dynamo.config, name):
                    setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), 64))
            # FASTGEN_COMPILE_MODE=max-autotune-no-cudagraphs lets inductor time Triton matmuls
            # against cuBLAS for the batch-1 products (longer warm-up; docs/PERFORMANCE.md)
            mode = compile_mode or os.environ.get("FASTGEN_COMPILE_MODE") or None
            # static shapes (a generator of another batch size compiles its own graphs), except the
            # attended length, marked dynamic in _step: one slow-block graph for every bucket
            self._embed, self._slow, self._head0, self._code, self._finish = (
                torch.compile(fn, fullgraph=True, dynamic=False, mode=mode)
                for fn in (_embed_frame, _slow_block, _frame_head, _codebook, _finish))

    def refresh_weights(self) -> None:
        """Re-read every weight the step uses (call after loading or changing adapters): effective
        (LoRA-merged) per-layer weights with w1|w3 concatenated, embedding tables and head rows."""
        with torch.no_grad():
            m = self.model
            self.slow_blocks = [Block.of(layer) for layer in m.layers]
            self.fast_blocks = [Block.of(layer) for layer in m.fast_layers]
            self.tables = (effective_weight(m.embeddings), effective_weight(m.codebook_embeddings))
            self.fast_embedding = effective_weight(m.fast_embeddings)
            proj = m.fast_project_in
            self.proj = None if isinstance(proj, torch.nn.Identity) else (effective_weight(proj), _bias(proj))
            self.norm, self.fast_norm = m.norm.weight.detach(), m.fast_norm.weight.detach()
            head = effective_weight(m.output) if not m.config.tie_word_embeddings else self.tables[0]
            rows = torch.cat([torch.tensor([self.im_end]), torch.arange(self.sem_begin, self.sem_end + 1)])
            self.head0 = head[rows.to(head.device)].contiguous()  # index 0 = <|im_end|>, 1+c = semantic c
            self.head_fast = effective_weight(m.fast_output)[: self.residual_vocab].contiguous()
        self.graphs.clear()  # a captured graph reads the tensors it was captured with

    # -- the step -------------------------------------------------------------------------------
    def _bucket(self, position: int) -> int:
        length = MIN_BUCKET
        while length <= position:
            length *= 2
        return min(length, self.S)

    def _step(self, length: int) -> None:
        """Decode one frame for every stream, attending to cache positions [0, length)."""
        B, m = self.B, self.model
        x, freqs = self._embed(self.consts, self.tables, self.cur, m.freqs_cis, self.pos)
        mask = (self.positions[:length][None] <= self.pos[:, None]).view(B, 1, 1, length)
        if self.use_compile:  # one graph for every length bucket
            torch._dynamo.mark_dynamic(mask, 3)
        pos, delta = self.pos[:, None], self.zero
        for b, kc, vc in zip(self.slow_blocks, self._kc, self._vc):
            x, delta = self._slow(b, self.slow_dims, x, delta, freqs, kc, vc, self.slots, pos, mask)
        self.noise.exponential_()
        fast = (self.fast_blocks, self._fkc, self._fvc, self.fast_slots, m.fast_freqs_cis)
        tail = (self.window, self.noise, (self.temperature, self.top_p, self.penalty), self.force_flag, self.force,
                self.frame)
        self._head0(self.consts, self.fast_dims, x, delta, self.norm, self.head0, self.proj, *fast, *tail,
                    self.last_logits0)
        for k in range(1, self.N):
            self._code(self.consts, self.fast_dims, self.codebook_index[k], self.fast_embedding, *fast,
                       self.fast_norm, self.head_fast, *tail, self.last_fast_logits)
        self._finish(self.consts, self.frame, self.cur, self.out, self.window, self.pos, self.t)

    def _run_step(self, length: int) -> None:
        if not self.use_graph:
            self._step(length)
            return
        graph = self.graphs.get(length)
        if graph is None:
            graph = self._capture(length)
        graph.replay()

    def _capture(self, length: int) -> torch.cuda.CUDAGraph:
        """Warm the compiled pieces for this length on a side stream, then capture one step.

        The warm-up steps scribble on the caches and state; `start` resets what matters (the
        prompt is prefilled again and every later cache position is masked until written)."""
        saved = [t.clone() for t in (self.cur, self.pos, self.t, self.window, self.out[:, :, :1])]
        last = max(length - 2, 0)  # warm-up positions stay inside the bucket
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                self.pos.fill_(last)
                self.t.zero_()
                self._step(length)
        torch.cuda.current_stream().wait_stream(stream)
        self.pos.fill_(last)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            self._step(length)
        self._pool = graph.pool()
        for buf, value in zip((self.cur, self.pos, self.t, self.window, self.out[:, :, :1]), saved):
            buf.copy_(value)
        self.graphs[length] = graph
        return graph

    @torch.inference_mode()
    def warmup(self, max_position: int | None = None) -> float:
        """Compile and capture every length bucket up to `max_position` (default: the cache); seconds."""
        started = time.perf_counter()
        limit = self.S if max_position is None else min(self.S, max_position)
        length = MIN_BUCKET
        while True:
            length = min(length, self.S)
            if self.use_graph and length not in self.graphs:
                self._capture(length)
            elif not self.use_graph and self.use_compile:
                self.pos.fill_(max(length - 2, 0))
                self.t.zero_()
                self._step(length)
            if length >= limit or length >= self.S:
                break
            length *= 2
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.warmup_s = time.perf_counter() - started
        return self.warmup_s

    # -- prompts --------------------------------------------------------------------------------
    def _prefill(self, row: int, tokens: torch.Tensor) -> None:
        """K/V of prompt columns 0..T-2 into the cache of stream `row` (causal flash attention)."""
        n, d = tokens.shape[1] - 1, self.slow_dims
        if n > 0:
            x = _embed_tokens(self.consts, self.tables, tokens[None, :, :n])
            freqs = self.model.freqs_cis[:n]
            for b, kc, vc in zip(self.slow_blocks, self.kc, self.vc):
                q, k, v = _qkv(b, d, x)
                q, k = apply_rotary_emb(q, freqs), apply_rotary_emb(k, freqs)
                q, k, v = (t.transpose(1, 2) for t in (q, k, v))
                kc[row, :, :n] = k[0]
                vc[row, :, :n] = v[0]
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=d.n_head != d.n_local_heads)
                h = x + F.linear(y.transpose(1, 2).reshape(1, n, d.n_head * d.head_dim), b.wo, b.wo_bias)
                x = h + _ffn(b, d, h)
        self.cur[row] = tokens[:, -1:]
        self.pos[row] = n

    def start(self, prompts: list[torch.Tensor], temperature=0.7, top_p=0.8, repetition_penalty=1.1) -> None:
        """Prefill up to `batch_size` prompts (each (N+1, T)); unused rows repeat the first prompt."""
        if not 0 < len(prompts) <= self.B:
            raise ValueError(f"FastGenerator takes 1..{self.B} prompts at once, got {len(prompts)}.")
        for p in prompts:
            if p.ndim != 2 or p.shape[0] != self.N + 1 or p.shape[1] < 1:
                raise ValueError(f"A prompt must be ({self.N + 1}, T>0) tokens, got {tuple(p.shape)}.")
            if p.shape[1] >= self.S:
                raise ValueError(f"A prompt of {p.shape[1]} tokens does not fit the cache of {self.S}.")
        padded = list(prompts) + [prompts[0]] * (self.B - len(prompts))
        for row, p in enumerate(padded):
            self._prefill(row, p.to(self.device, torch.long))
        self.lengths = [p.shape[1] for p in padded]
        for buf in (self.t, self.window, self.force_flag):
            buf.zero_()
        self.temperature.fill_(temperature)
        self.top_p.fill_(top_p)
        self.penalty.fill_(repetition_penalty)

    @torch.inference_mode()
    def generate(self, prompts: list[torch.Tensor], max_new_tokens: int, temperature: float = 0.7,
                 top_p: float = 0.8, repetition_penalty: float = 1.1, stop_at_end: bool = True,
                 check_every: int = 8) -> list[torch.Tensor]:
        """New frames per prompt: (N+1, n) token rows (row 0 tokens, rows 1.. codes), ending with
        <|im_end|> when one was sampled (nothing after it)."""
        self.start(prompts, temperature, top_p, repetition_penalty)
        steps = max(0, min(max_new_tokens, self.S - max(self.lengths) + 1))
        done = 0
        while done < steps:
            length = self._bucket(max(self.lengths) - 1 + done)
            self._run_step(length)
            done += 1
            checked = stop_at_end and (done % check_every == 0 or done == steps)
            if checked and bool((self.out[: len(prompts), 0, :done] == self.im_end).any(-1).all()):
                break
        out = self.out[: len(prompts), :, :done].cpu()
        results = []
        for row in out:
            ends = (row[0] == self.im_end).nonzero()
            results.append(row[:, : int(ends[0]) + 1] if stop_at_end and len(ends) else row)
        return results

    @torch.inference_mode()
    def teacher_forced_logits(self, prompt: torch.Tensor, frames: torch.Tensor):
        """Logits of each step when the frames are given (checks): prompt (N+1, T), frames
        (N+1, F) → codebook-0 logits (F, 1 + n_semantic) and residual logits (F, N-1, V)."""
        self.start([prompt], 1.0, 1.0, 1.0)
        self.force_flag.fill_(True)
        heads, fast = [], []
        for i in range(frames.shape[1]):
            token = int(frames[0, i])
            idx0 = 0 if token == self.im_end else token - self.sem_begin + 1
            self.force[:, 0] = idx0
            self.force[:, 1:] = frames[2:, i].to(self.device)
            self._run_step(self._bucket(self.lengths[0] - 1 + i))
            heads.append(self.last_logits0[0].clone())
            fast.append(self.last_fast_logits[0].clone())
        self.force_flag.fill_(False)
        return torch.stack(heads), torch.stack(fast)
