"""The upstream-style training step the benchmark compares against.

Built the way fish-speech trains (its Lightning recipe `text2semantic_finetune.yaml`, which the
0.1.0 wheel no longer ships the code of): weights in bf16 ("bf16-true"), fish-speech's own loralib
`setup_lora` (r 8, alpha 16, dropout 0.01; the embeddings and both heads get LoRA too), the wheel's
`BaseTransformer.forward` with an explicit boolean attention mask (causal AND key padding, so the
fused flash kernel cannot be used and K/V are repeated for grouped-query attention), the wheel's
gradient checkpointing (`use_gradient_checkpointing`, re-entrant), full-vocabulary token logits,
the fast transformer over every audio frame with its explicit mask, and torch's default (foreach,
not fused) AdamW with upstream's settings.

It is a speed reference only: upstream's embedding differs from inference's (docs/FISH_SPEECH_NOTES.md, wheel bug 3) and
loralib re-initialises the wrapped weights, neither of which changes the work per step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from pipeline.train.forward import IGNORE


def build_reference_model(args, tokenizer, device, mode: str, lora_rank=8, lora_alpha=16, lora_dropout=0.01):
    """A DualARTransformer of `args` in bf16 with upstream's LoRA (mode "lora") or all weights
    trainable (mode "full"), gradient checkpointing on, in training mode."""
    import dataclasses

    from fish_speech.models.text2semantic.llama import DualARTransformer

    args = dataclasses.replace(args, use_gradient_checkpointing=True, dropout=0.0)
    with torch.device(device):
        model = DualARTransformer(args, tokenizer=tokenizer)
        if mode == "lora":
            from fish_speech.models.text2semantic.lora import LoraConfig, setup_lora

            setup_lora(model, LoraConfig(r=lora_rank, lora_alpha=lora_alpha, lora_dropout=lora_dropout))
        else:
            model.requires_grad_(True)
    return model.to(device=device, dtype=torch.bfloat16).train()


def reference_optimizer(model, lr=1e-4, betas=(0.9, 0.95), eps=1e-5, weight_decay=0.0):
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


def reference_loss(model, batch: dict) -> torch.Tensor:
    """Token CE over the full vocabulary + codebook CE over every fast-transformer position."""
    from fish_speech.models.text2semantic.llama import BaseTransformer

    tokens, labels, lengths = batch["tokens"], batch["labels"], batch["lengths"]
    seq_len = tokens.shape[-1]
    key_padding_mask = torch.arange(seq_len, device=tokens.device)[None] >= lengths[:, None]  # True = pad
    result = BaseTransformer.forward(model, tokens, key_padding_mask=key_padding_mask)
    vocab = result.logits.shape[-1]
    token_loss = F.cross_entropy(result.logits.reshape(-1, vocab), labels[:, 0].reshape(-1), ignore_index=IGNORE)

    n = model.config.num_codebooks
    frame_pos = labels[:, 1] != IGNORE
    codes = labels[:, 1:].transpose(1, 2)[frame_pos]  # (M, N) the next frame's codes
    x = model.fast_project_in(result.hidden_states[frame_pos])
    x = torch.cat([x[:, None], model.fast_embeddings(codes[:, : n - 1])], dim=1)
    fast_mask = model.causal_mask[None, None, :n, :n]
    freqs = model.fast_freqs_cis[:n]
    for layer in model.fast_layers:
        x = checkpoint(layer, x, freqs, fast_mask, use_reentrant=True) if model.training else layer(x, freqs, fast_mask)
    logits = model.fast_output(model.fast_norm(x))
    codebook_loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), codes.reshape(-1))
    return token_loss + codebook_loss


def reference_step(model, optimizer, batch: dict, grad_clip: float = 1.0) -> float:
    """One optimizer step; returns the loss (synchronises)."""
    optimizer.zero_grad(set_to_none=True)
    loss = reference_loss(model, batch)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], grad_clip)
    optimizer.step()
    return float(loss.detach())


@torch.no_grad()
def reference_logits(model, prompt: torch.Tensor, frames: torch.Tensor):
    """Generation's reference: what fish-speech's decode_one_token_ar computes for given frames (checks): full-vocabulary
    token logits (F, vocab) and fast logits (F, N-1, codebook_size), KV caches, one column at a time."""
    from pipeline.model.adapters import unwrap

    model = unwrap(model)
    n = model.config.num_codebooks
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    prompt, frames = prompt.to(device), frames.to(device)
    with torch.device(device):
        model.setup_caches(max_batch_size=1, max_seq_len=model.config.max_seq_len, dtype=dtype)
    try:
        seq = torch.cat([prompt, frames], dim=1)
        length = prompt.shape[1]
        out = model.forward_generate(seq[None, :, :length], torch.arange(length, device=device))
        heads, fast = [], []
        for i in range(frames.shape[1]):
            heads.append(out.logits[0, -1].float())
            for layer in model.fast_layers:
                layer.attention.kv_cache.k_cache.fill_(0)
                layer.attention.kv_cache.v_cache.fill_(0)
            model.forward_generate_fast(out.hidden_states[0, -1][None], torch.tensor([0], device=device))
            rows = []
            for k in range(1, n):
                x = model.fast_embeddings(frames[k, i].view(1))  # codebook k-1 of this frame
                rows.append(model.forward_generate_fast(x, torch.tensor([k], device=device))[0, 0].float())
            fast.append(torch.stack(rows))
            t = length + i
            out = model.forward_generate(seq[None, :, t : t + 1], torch.tensor([t], device=device))
    finally:
        for layer in list(model.layers) + list(model.fast_layers):
            layer.attention.kv_cache = None
        model.max_seq_len = model.max_batch_size = -1
    return torch.stack(heads), torch.stack(fast)
