"""Fast generation: a static KV cache, one decode step per frame, captured in a CUDA graph.

fish-speech's `generate` runs ~2,000 small kernels per frame from Python (eager: ~16 frames/s on an
H200) or compiles one huge graph (`torch.compile`, minutes of warm-up). Here a frame is five small
compiled functions (warm-up: a few small compiles, not one big one), replayed as ONE CUDA graph
(no Python and no launch gaps per frame):

1. `embed_frame`: the frame's input embedding (as forward_generate embeds) and its RoPE row.
2. `slow_block` for each of the 28 slow layers (one compiled graph for every layer and length
   bucket): RMSNorm, one wqkv GEMV, q/k norm + RoPE, the new K/V written IN PLACE into the full
   cache tensors (graph inputs; the attended length is the mask's dynamic last dim and the cache
   is narrowed inside the graph, so the compiler neither clones nor copies back any cache),
   attention over the used positions only (buckets 512, 1024, ...; not all 8,192), wo, then the
   FFN as one w1|w3 GEMV + silu*mul + w2: 4 weight GEMVs (+ 2 attention products) per layer.
   A block returns its residual sum unfinished, (h, ffn): the next block adds it inside its own
   norm kernel.
3. `frame_head`: codebook-0 logits over the semantic tokens + <|im_end|> only (4,097 rows of the
   155,776-row head: the rest are text tokens the model never emits at an audio position),
   sampling, and the fast transformer at position 0 (its last layer only writes K/V there: that
   output is never used).
4. `codebook_step` for codebooks 1..N-1 (one graph; the index is a tensor, so every per-codebook
   buffer is read and written by index inside it): the previous code's embedding, the 4 fast
   layers (attention over their 10-entry caches as broadcast-multiply + sum, which fuses), the
   head's first 1,024 rows (as decode_one_token_ar) and sampling.
5. `finish_frame`: the next input column, the output row, the repetition window, the positions.

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

This module holds FastGenerator (buffers, weight preparation, compiling and graph capture, warm-up,
prompt prefill) and `effective_weight`; the loops over its steps (`generate`, `generate_stream`,
`teacher_forced_logits`) live in pipeline.generate.fastgen_loops, the five per-frame functions
and the types they take in pipeline.generate.fastgen_step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch._dynamo
import torch.nn.functional as F
from fish_speech.models.text2semantic.llama import apply_rotary_emb

from pipeline.model.tokens import RESIDUAL_VOCAB  # decode_one_token_ar samples codebooks 1.. from the first 1024 fast logits
from pipeline.generate.fastgen_step import (
    WINDOW,
    Block,
    Consts,
    Dims,
    codebook_step,
    embed_frame,
    embed_tokens,
    ffn,
    finish_frame,
    frame_head,
    pick_code,
    pick_codebook0,
    qkv,
    slow_block,
)
from pipeline.generate.fastgen_loops import DecodingLoops
from pipeline.kernels import decode_layer as decode_kernels
from pipeline.kernels import runtime
from pipeline.model.adapters import unwrap

MIN_BUCKET = 512

__all__ = [  # WINDOW, Block, Consts and Dims are re-exported from pipeline.generate.fastgen_step
    "MIN_BUCKET",
    "RESIDUAL_VOCAB",
    "WINDOW",
    "Block",
    "Consts",
    "Dims",
    "DecodeOptions",
    "FastGenerator",
    "block_weights",
    "effective_weight",
]


@dataclass(frozen=True)
class DecodeOptions:
    """How FastGenerator decodes (never what: every combination samples the same codes)."""

    fused: bool = True  # one stream on an Ampere+ GPU: each layer as pipeline.kernels.decode_layer's kernels
    gemv: bool = True  # compiled layers: one-row products through pipeline.kernels.gemv (off: cuBLAS)
    compile_mode: str | None = None  # torch.compile mode, e.g. max-autotune-no-cudagraphs (longer warm-up)
    pdl: bool = True  # fused decoder on Hopper+: kernels launched as programmatic dependents

    @classmethod
    def from_speed(cls, speed=None) -> "DecodeOptions":
        """From a pipeline.config.SpeedConfig (`config.speed`); None: the defaults with the
        environment's overrides (pipeline.config reads them)."""
        if speed is None:
            from pipeline.config import SpeedConfig

            speed = SpeedConfig()
        return cls(fused=speed.fused_decoder, gemv=speed.gemv, compile_mode=speed.compile_mode,
                   pdl=speed.programmatic_launch)


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


def block_weights(layer) -> Block:
    """A transformer layer's tensors as the decode step takes them (effective weights, w1|w3 stacked)."""
    attn, ff = layer.attention, layer.feed_forward
    qk = attn.attention_qk_norm
    return Block(layer.attention_norm.weight.detach(), effective_weight(attn.wqkv), _bias(attn.wqkv),
                 attn.q_norm.weight.detach() if qk else None, attn.k_norm.weight.detach() if qk else None,
                 effective_weight(attn.wo), _bias(attn.wo), layer.ffn_norm.weight.detach(),
                 torch.cat([effective_weight(ff.w1), effective_weight(ff.w3)]), effective_weight(ff.w2))


class FastGenerator(DecodingLoops):
    """Batched codes generation for one DualARTransformer (bf16 on CUDA for speed; any device)."""

    def __init__(self, model, batch_size: int = 1, max_len: int | None = None,
                 compile: bool | None = None, cuda_graph: bool | None = None, fused: bool | None = None,
                 options: DecodeOptions | None = None):
        """fused: force the fused decoder on or off (None: options.fused decides, on an Ampere+ GPU
        for one stream); options: DecodeOptions.from_speed() when None."""
        self.options = options = options or DecodeOptions.from_speed()
        self.model = unwrap(model)
        m, cfg = self.model, self.model.config
        self.device = next(m.parameters()).device
        self.dtype = next(m.parameters()).dtype
        cuda = self.device.type == "cuda"
        self.use_compile = cuda if compile is None else compile
        self.use_graph = cuda if cuda_graph is None else (cuda_graph and cuda)
        self.B, self.N = batch_size, cfg.num_codebooks
        # one stream on CUDA: every layer as five Triton kernels (pipeline.kernels.decode_layer); several
        # streams: the compiled layers (cuBLAS's batched products beat the kernels' per-stream
        # reductions: 8 streams 2,192 vs 1,530 frames/s on an H100, docs/history/performance-log.md)
        small = batch_size <= decode_kernels.MAX_STREAMS
        ampere = cuda and runtime.triton_kernels_run_on(self.device)  # bf16 Triton kernels
        self.fused = (options.fused and runtime.AVAILABLE and ampere and batch_size == 1) if fused is None \
            else fused
        if self.fused and not (small and runtime.AVAILABLE):
            raise ValueError(f"The fused decoder needs Triton and at most {decode_kernels.MAX_STREAMS} streams.")
        self.pdl = self.fused and options.pdl and decode_kernels.programmatic(self.device)
        self.S = min(int(max_len or cfg.max_seq_len), cfg.max_seq_len)
        tok = m.tokenizer
        self.im_end = tok.get_token_id("<|im_end|>")
        self.sem_begin, self.sem_end = tok.semantic_begin_id, tok.semantic_end_id
        self.n_semantic = self.sem_end - self.sem_begin + 1
        self.residual_vocab = min(RESIDUAL_VOCAB, m.fast_output.out_features)
        self.consts = Consts(self.im_end, self.sem_begin, self.sem_end, cfg.codebook_size, self.N,
                             bool(cfg.scale_codebook_embeddings), m.norm.eps, m.fast_norm.eps)
        self.slow_dims = Dims.of(m.layers[0], False, options.gemv)
        self.fast_dims = Dims.of(m.fast_layers[0], True, options.gemv)
        dev, dt, B = self.device, self.dtype, batch_size

        def cache(n_heads, length, head_dim):  # (B, kv_heads, positions, head_dim) like fish-speech's KVCache
            return torch.zeros((B, n_heads, length, head_dim), device=dev, dtype=dt)

        # one spare position (never attended, see slow_block)
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
            embed_frame, slow_block, frame_head, codebook_step, finish_frame)
        self._pick0, self._pick = pick_codebook0, pick_code
        if self.use_compile:
            runtime.raise_dynamo_limits()  # one entry per shape, not per layer
            # max-autotune-no-cudagraphs lets inductor time Triton matmuls against cuBLAS for the
            # batch-1 products (longer warm-up; docs/PERFORMANCE.md)
            mode = options.compile_mode
            # static shapes (a generator of another batch size compiles its own graphs), except the
            # attended length, marked dynamic in _step: one slow-block graph for every bucket
            self._embed, self._slow, self._head0, self._code, self._finish, self._pick0, self._pick = (
                torch.compile(fn, fullgraph=True, dynamic=False, mode=mode)
                for fn in (embed_frame, slow_block, frame_head, codebook_step, finish_frame,
                           pick_codebook0, pick_code))

    def refresh_weights(self) -> None:
        """Re-read every weight the step uses (call after loading or changing adapters): effective
        (LoRA-merged) per-layer weights with w1|w3 concatenated, embedding tables and head rows."""
        with torch.no_grad():
            m = self.model
            self.slow_blocks = [block_weights(layer) for layer in m.layers]
            self.fast_blocks = [block_weights(layer) for layer in m.fast_layers]
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

    def _fused_step(self) -> None:
        """One frame of every stream: the layers as Triton kernels reading the positions from
        self.pos (one captured graph serves every length), the sampling pieces compiled."""
        m, c = self.model, self.consts
        x = self._embed(c, self.tables, self.cur, m.freqs_cis, self.pos)[0].reshape(self.B, -1)
        x = self._fused_layers(self.slow_blocks, self._kc, self._vc, self.slow_dims, x, m.freqs_cis, self.pos)
        self.noise.exponential_()
        tail = (self.window, self.noise, (self.temperature, self.top_p, self.penalty), self.force_flag, self.force,
                self.frame)
        logits = decode_kernels.product(x, self.head0, self.norm, c.head_eps, pdl=self.pdl)
        y = x if self.proj is None else decode_kernels.product(x, self.proj[0], bias=self.proj[1], pdl=self.pdl)
        fast = (self.fast_blocks, self._fkc, self._fvc, self.fast_dims)
        # position 0: the last layer only writes its K/V
        self._fused_layers(*fast, y, m.fast_freqs_cis, self.codebook_index[0], kv_only_last=True)
        y = self._pick0(c, logits, self.fast_embedding, *tail, self.last_logits0)
        for k in range(1, self.N):
            y = self._fused_layers(*fast, y, m.fast_freqs_cis, self.codebook_index[k])
            logits = decode_kernels.product(y, self.head_fast, self.fast_norm, c.fast_eps, pdl=self.pdl)
            y = self._pick(self.codebook_index[k], logits, self.fast_embedding, *tail, self.last_fast_logits)
        self._finish(c, self.frame, self.cur, self.out, self.window, self.pos, self.t)

    def _fused_layers(self, blocks, k_caches, v_caches, dims, x, freqs, pos, kv_only_last=False):
        """x through `blocks` as decode_kernels.layer launches."""
        for i, (b, kc, vc) in enumerate(zip(blocks, k_caches, v_caches)):
            x = decode_kernels.layer(b, dims, x, freqs, pos, kc, vc, kv_only=kv_only_last and i == len(blocks) - 1,
                                     pdl=self.pdl)
        return x

    def _frame(self, length: int) -> None:
        self._fused_step() if self.fused else self._step(length)

    def _graph_key(self, length: int) -> int:
        return 0 if self.fused else length  # the fused step reads the length from self.pos: one graph

    def _run_step(self, length: int) -> None:
        if not self.use_graph:
            self._frame(length)
            return
        graph = self.graphs.get(self._graph_key(length))
        if graph is None:
            graph = self._capture(length)
        graph.replay()

    def _capture(self, length: int) -> torch.cuda.CUDAGraph:
        """Warm the compiled pieces for this length on a side stream, then capture one step.

        The warm-up steps scribble on the caches and state; the state is restored, and the cache
        position they write is at or after every stream's next position (inside the bucket), so
        no prompt K/V is overwritten: that position is written again before anything reads it.
        The warm-up frames sample too: the random state is put back afterwards, so a seeded call
        that triggers a capture gets the same audio as one that finds the graph made."""
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            return self._capture_step(length)

    def _capture_step(self, length: int) -> torch.cuda.CUDAGraph:
        saved = [t.clone() for t in (self.cur, self.pos, self.t, self.window, self.out[:, :, :1])]
        last = min(max(length - 2, int(self.pos.max())), length - 1)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                self.pos.fill_(last)
                self.t.zero_()
                self._frame(length)
        torch.cuda.current_stream().wait_stream(stream)
        self.pos.fill_(last)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            self._frame(length)
        self._pool = graph.pool()
        for buf, value in zip((self.cur, self.pos, self.t, self.window, self.out[:, :, :1]), saved):
            buf.copy_(value)
        self.graphs[self._graph_key(length)] = graph
        return graph

    @torch.inference_mode()
    def warmup(self, max_position: int | None = None) -> float:
        """Compile and capture every length bucket up to `max_position` (default: the cache); seconds."""
        started = time.perf_counter()
        limit = self.S if max_position is None else min(self.S, max_position)
        length = MIN_BUCKET
        while True:
            length = min(length, self.S)
            if self.use_graph and self._graph_key(length) not in self.graphs:
                self._capture(length)
            elif not self.use_graph and self.use_compile:
                self.pos.fill_(max(length - 2, 0))
                self.t.zero_()
                self._frame(length)
            if self.fused or length >= limit or length >= self.S:  # one fused graph serves every length
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
            x = embed_tokens(self.consts, self.tables, tokens[None, :, :n])
            freqs = self.model.freqs_cis[:n]
            for b, kc, vc in zip(self.slow_blocks, self.kc, self.vc):
                q, k, v = qkv(b, d, x)
                q, k = apply_rotary_emb(q, freqs), apply_rotary_emb(k, freqs)
                q, k, v = (t.transpose(1, 2) for t in (q, k, v))
                kc[row, :, :n] = k[0]
                vc[row, :, :n] = v[0]
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=d.n_head != d.n_local_heads)
                h = x + F.linear(y.transpose(1, 2).reshape(1, n, d.n_head * d.head_dim), b.wo, b.wo_bias)
                x = h + ffn(b, d, h)
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
