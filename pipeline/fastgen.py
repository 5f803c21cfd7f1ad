"""Fast generation: a static KV cache, one decode step per frame, captured in a CUDA graph.

fish-speech's `generate` runs ~2,000 small kernels per frame from Python (eager: ~16 frames/s on an
H200) or compiles one huge graph (`torch.compile`, minutes of warm-up). Here:

- The slow and fast transformer layers are compiled a block at a time (`torch.compile` of a
  per-layer function: the 28 slow layers share one compiled graph; the 4 fast layers form another,
  with attention over their 10-entry cache written as broadcast-multiply + sum so that it fuses),
  so warm-up is a few small compiles (~16-28 s on an H200) instead of one big one.
- A whole frame (slow layers, codebook-0 sampling, 10 fast-transformer passes, residual sampling,
  bookkeeping) is one CUDA graph replay: no Python and no launch gaps per frame.
- Codebook 0 is sampled over the semantic tokens + <|im_end|> only: the head multiplies 4,097
  rows of the 155,776-row output matrix (the rest are text tokens the model never emits at an
  audio position), so the 320 MB head is not read every frame. Residual codebooks use the first
  1,024 rows of `fast_output`, as `decode_one_token_ar` does.
- Attention reads only the used part of the cache (length buckets of 512, 1024, 2048, ...; one
  graph per bucket), not all 8,192 positions.
- Several prompts decode together (batch): weights are read once per frame for all streams.

Sampling follows fish-speech's `logits_to_probs` (repetition penalty over the last 16 frames,
top-p, temperature, exponential-race multinomial) per stream. One deliberate difference: the
wheel penalises codebook 0 with column 0 of its window (the first frame's tokens) instead of
row 0 (the last 16 semantic tokens); here it is row 0. Without a GPU (or with `compile=False,
cuda_graph=False`) the same step runs eagerly: that is what the CPU tests compare with the wheel.
"""

from __future__ import annotations

import math
import os
import time

import torch
import torch._dynamo
import torch.nn.functional as F
from fish_speech.models.text2semantic.llama import apply_rotary_emb

from pipeline.forward import embed, unwrap

RESIDUAL_VOCAB = 1024  # decode_one_token_ar samples codebooks 1.. from the first 1024 fast logits
WINDOW = 16  # repetition-penalty window (frames), as decode_n_tokens
MIN_BUCKET = 512


def effective_weight(linear: torch.nn.Module) -> torch.Tensor:
    """The weight a (possibly peft-LoRA-wrapped) Linear applies: base + sum of active deltas."""
    from peft.tuners.lora import LoraLayer

    if isinstance(linear, LoraLayer):
        weight = linear.get_base_layer().weight
        if linear.merged or linear.disable_adapters:
            return weight
        deltas = [linear.get_delta_weight(n) for n in linear.active_adapters if n in linear.lora_A]
        return weight + sum(d.to(weight.dtype) for d in deltas) if deltas else weight
    return linear.weight


def _rope(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """apply_rotary_emb with one position per batch row: x (B, 1, H, D), freqs (B, 1, 1, D/2, 2)."""
    xs = x.float().reshape(*x.shape[:-1], -1, 2)
    out = torch.stack([xs[..., 0] * freqs[..., 0] - xs[..., 1] * freqs[..., 1],
                       xs[..., 1] * freqs[..., 0] + xs[..., 0] * freqs[..., 1]], -1)
    return out.flatten(3).type_as(x)


def _layer_step(layer, x, freqs, k_cache, v_cache, rows, heads, pos, mask, pointwise=False):
    """One transformer block for one new column per stream, writing its K/V into the cache.

    x (B, 1, dim); k/v_cache (B, kv_heads, S, head_dim); pos (B, 1) write position;
    mask (B, 1, 1, S) True where a key is visible. Grouped-query attention without repeating K/V.
    """
    attn = layer.attention
    bsz = x.shape[0]
    h = layer.attention_norm(x)
    q_size, kv_size = attn.n_head * attn.head_dim, attn.n_local_heads * attn.head_dim
    q, k, v = attn.wqkv(h).split([q_size, kv_size, kv_size], dim=-1)
    q = q.view(bsz, 1, attn.n_head, attn.head_dim)
    k = k.view(bsz, 1, attn.n_local_heads, attn.head_dim)
    v = v.view(bsz, 1, attn.n_local_heads, attn.head_dim)
    if attn.attention_qk_norm:
        q, k = attn.q_norm(q), attn.k_norm(k)
    q, k = _rope(q, freqs), _rope(k, freqs)
    k_cache.index_put_((rows, heads, pos), k[:, 0])
    v_cache.index_put_((rows, heads, pos), v[:, 0])
    group = attn.n_head // attn.n_local_heads
    qg = q.view(bsz, attn.n_local_heads, group, attn.head_dim)
    if pointwise:  # broadcast-multiply + sum: the compiler fuses scores, softmax and P@V (short caches)
        scores = (qg[:, :, :, None, :].float() * k_cache[:, :, None].float()).sum(-1)
    else:
        scores = torch.matmul(qg, k_cache.transpose(-1, -2)).float()
    scores = scores * (1.0 / math.sqrt(attn.head_dim))
    probs = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
    if pointwise:
        y = (probs[..., None] * v_cache[:, :, None].float()).sum(-2).to(v_cache.dtype).reshape(bsz, 1, q_size)
    else:
        y = torch.matmul(probs.to(v_cache.dtype), v_cache).reshape(bsz, 1, q_size)
    h = x + attn.wo(y)
    return h + layer.feed_forward(layer.ffn_norm(h))


def _fast_pass(layers, y, freqs, k_caches, v_caches, rows, heads, pos, mask, pointwise=True):
    """All fast-transformer layers for one codebook position (one compiled graph: over the
    10-entry caches, broadcast-multiply + sum attention fuses into a few element-wise kernels)."""
    for layer, kc, vc in zip(layers, k_caches, v_caches):
        y = _layer_step(layer, y, freqs, kc, vc, rows, heads, pos, mask, pointwise)
    return y


def _head(norm, x, weight):
    """Final RMSNorm + the head rows we sample from, as float logits: x (B, dim) → (B, rows)."""
    return F.linear(norm(x), weight).float()


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
        dev, dt, B = self.device, self.dtype, batch_size

        def cache(n_heads, length, head_dim):  # (B, kv_heads, positions, head_dim) like fish-speech's KVCache
            return torch.zeros((B, n_heads, length, head_dim), device=dev, dtype=dt)

        self.kc = [cache(cfg.n_local_heads, self.S, cfg.head_dim) for _ in m.layers]
        self.vc = [cache(cfg.n_local_heads, self.S, cfg.head_dim) for _ in m.layers]
        fkv, fhd = cfg.fast_n_local_heads, cfg.fast_head_dim
        self.fkc = [cache(fkv, self.N, fhd) for _ in m.fast_layers]
        self.fvc = [cache(fkv, self.N, fhd) for _ in m.fast_layers]
        self.rows = torch.arange(B, device=dev)[:, None]
        self.heads = torch.arange(cfg.n_local_heads, device=dev)[None]
        self.fheads = torch.arange(fkv, device=dev)[None]
        self.positions = torch.arange(self.S, device=dev)
        self.fast_pos = [torch.full((B, 1), k, device=dev, dtype=torch.long) for k in range(self.N)]
        self.fast_mask = [(torch.arange(self.N, device=dev) <= k).view(1, 1, 1, -1).expand(B, 1, 1, -1).contiguous()
                          for k in range(self.N)]
        self.fast_freqs = [m.fast_freqs_cis[k].view(1, 1, 1, -1, 2).expand(B, 1, 1, -1, 2).contiguous()
                           for k in range(self.N)]
        # state of the decode step (static buffers: a captured graph reads and writes these)
        self.cur = torch.zeros((B, self.N + 1, 1), device=dev, dtype=torch.long)
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
        self.refresh_weights()
        self._slow, self._fast, self._sampler, self._head = _layer_step, _fast_pass, _sample, _head
        if self.use_compile:
            for name in ("recompile_limit", "cache_size_limit"):  # one entry per length/shape, not per layer
                if hasattr(torch._dynamo.config, name):
                    setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), 64))
            # FASTGEN_COMPILE_MODE=max-autotune-no-cudagraphs lets inductor time Triton matmuls
            # against cuBLAS for the batch-1 products (longer warm-up; docs/PERFORMANCE.md)
            mode = compile_mode or os.environ.get("FASTGEN_COMPILE_MODE") or None
            self._slow = torch.compile(_layer_step, fullgraph=True, dynamic=None, mode=mode)
            self._fast = torch.compile(_fast_pass, fullgraph=True, dynamic=False, mode=mode)
            self._sampler = torch.compile(_sample, fullgraph=True, dynamic=False)
            self._head = torch.compile(_head, fullgraph=True, dynamic=False)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self._pool = self.warmup_s = None

    def refresh_weights(self) -> None:
        """Re-read the heads' weights (call after loading or changing adapters)."""
        with torch.no_grad():
            m = self.model
            head = effective_weight(m.output) if not m.config.tie_word_embeddings else m.embeddings.weight
            rows = torch.cat([torch.tensor([self.im_end]), torch.arange(self.sem_begin, self.sem_end + 1)])
            self.head0 = head[rows.to(head.device)].contiguous()  # index 0 = <|im_end|>, 1+c = semantic c
            self.head_fast = effective_weight(m.fast_output)[: self.residual_vocab].contiguous()

    # -- the step -------------------------------------------------------------------------------
    def _bucket(self, position: int) -> int:
        length = MIN_BUCKET
        while length <= position:
            length *= 2
        return min(length, self.S)

    def _step(self, length: int) -> None:
        """Decode one frame for every stream, attending to cache positions [0, length)."""
        m, B = self.model, self.B
        x = embed(m, self.cur)  # (B, 1, dim), as forward_generate embeds
        freqs = m.freqs_cis[self.pos].view(B, 1, 1, -1, 2)
        mask = (self.positions[:length][None] <= self.pos[:, None]).view(B, 1, 1, length)
        pos = self.pos[:, None]
        for layer, kc, vc in zip(m.layers, self.kc, self.vc):
            kcl, vcl = kc[:, :, :length], vc[:, :, :length]
            if self.use_compile:  # one graph for every length bucket
                for t, dim in ((kcl, 2), (vcl, 2), (mask, 3)):
                    torch._dynamo.mark_dynamic(t, dim)
            x = self._slow(layer, x, freqs, kcl, vcl, self.rows, self.heads, pos, mask)
        self.noise.exponential_()
        logits0 = self._head(m.norm, x[:, 0], self.head0)
        self.last_logits0.copy_(logits0)
        args = (self.temperature, self.top_p, self.penalty)
        idx0 = self._sampler(logits0, self.window[:, 0], self.noise[:, 0], *args, self.force_flag, self.force[:, 0])
        token0 = torch.where(idx0 == 0, self.im_end, idx0 - 1 + self.sem_begin)
        codes = [torch.clamp(idx0 - 1, min=0)]  # <|im_end|> feeds code 0, as decode_one_token_ar
        y = m.fast_project_in(x)
        for k in range(self.N):
            if k:
                y = m.fast_embeddings(codes[-1])[:, None]
            y = self._fast(list(m.fast_layers), y, self.fast_freqs[k], self.fkc, self.fvc, self.rows, self.fheads,
                           self.fast_pos[k], self.fast_mask[k])
            if k:
                logits = self._head(m.fast_norm, y[:, 0], self.head_fast)
                self.last_fast_logits[:, k - 1].copy_(logits)
                noise = self.noise[:, k, : self.residual_vocab]
                codes.append(self._sampler(logits, self.window[:, k], noise, *args, self.force_flag, self.force[:, k]))
        frame = torch.stack([token0] + codes, dim=1)  # (B, N+1)
        self.cur.copy_(frame[:, :, None])
        self.out.index_copy_(2, self.t, frame[:, :, None])
        recent = torch.stack([idx0] + codes[1:], dim=1)
        self.window.index_copy_(2, self.t % WINDOW, recent[:, :, None])
        self.pos.add_(1)
        self.t.add_(1)

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
        m, cfg = self.model, self.model.config
        n = tokens.shape[1] - 1
        if n > 0:
            x = embed(m, tokens[None, :, :n])
            freqs = m.freqs_cis[:n]
            for layer, kc, vc in zip(m.layers, self.kc, self.vc):
                attn = layer.attention
                h = layer.attention_norm(x)
                q_size, kv_size = attn.n_head * attn.head_dim, attn.n_local_heads * attn.head_dim
                q, k, v = attn.wqkv(h).split([q_size, kv_size, kv_size], dim=-1)
                q = q.view(1, n, attn.n_head, attn.head_dim)
                k = k.view(1, n, attn.n_local_heads, attn.head_dim)
                v = v.view(1, n, attn.n_local_heads, attn.head_dim)
                if attn.attention_qk_norm:
                    q, k = attn.q_norm(q), attn.k_norm(k)
                q, k = apply_rotary_emb(q, freqs), apply_rotary_emb(k, freqs)
                q, k, v = (t.transpose(1, 2) for t in (q, k, v))
                kc[row, :, :n] = k[0]
                vc[row, :, :n] = v[0]
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                   enable_gqa=cfg.n_head != cfg.n_local_heads)
                h = x + attn.wo(y.transpose(1, 2).reshape(1, n, q_size))
                x = h + layer.feed_forward(layer.ffn_norm(h))
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
            if stop_at_end and (done % check_every == 0 or done == steps):
                if bool((self.out[: len(prompts), 0, :done] == self.im_end).any(-1).all()):
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

