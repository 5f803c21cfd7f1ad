"""Tiny random-weight checkpoints in the exact Hub layout, for tests and offline demos.

Real Fish Speech classes, a real (small) codec, a byte-level tiktoken BPE that encodes Finnish,
and the `RANDOM_WEIGHTS` marker so that every UI and CLI labels the model "random weights:
produces noise". `pipeline.model.checkpoints` loads it like the real model.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import torch

from pipeline.atomic import replacing
from pipeline.model.checkpoints import (CODEC_CONFIG_NAME, RANDOM_WEIGHTS_MARKER, RANDOM_WEIGHTS_TEXT, build_codec,
                                  load_tokenizer)

_DERIVED_BUFFERS = ("causal_mask", "freqs_cis")
TINY_SEMANTIC = 64  # semantic codebook (LM semantic tokens) == fast codebook_size == residual size
TINY_CODEBOOKS = 4
TINY_SPEAKERS = 8
# Frequent Finnish/English letter pairs, merged on top of the 256 byte tokens.
_TINY_MERGES = [
    "ä", "ö", "å", "Ä", "Ö", "en", "in", "an", "ta", "is", "ll", "aa", "ää", "ss", "ka", "tt", "st",
    "on", "si", "ai", "ja", " k", " s", " t", " p", " m", " v", " o", " j", " h", "ne", "al",
]


def tiny_bpe_lines() -> list[str]:
    ranks = [bytes([i]) for i in range(256)]
    for merge in _TINY_MERGES:
        token = merge.encode("utf-8")
        if token not in ranks:
            ranks.append(token)
    return [f"{base64.b64encode(tok).decode()} {rank}" for rank, tok in enumerate(ranks)]


def _tiny_special_tokens(n_ranks: int) -> dict[str, int]:
    from fish_speech.tokenizer import ALL_SPECIAL_TOKENS, SEMANTIC_TOKEN_TEMPLATE

    names = [t for t in ALL_SPECIAL_TOKENS if not t.startswith("<|semantic:")]
    names += [f"<|speaker:{i}|>" for i in range(TINY_SPEAKERS)]
    # Semantic tokens last, so every id the LM can sample maps to a valid codebook index.
    names += [SEMANTIC_TOKEN_TEMPLATE.format(i=i) for i in range(TINY_SEMANTIC)]
    return {name: n_ranks + i for i, name in enumerate(names)}


def tiny_codec_config() -> str:
    """Hydra config of a tiny codec with the real structure (hop 2048 = 21.5 frames/s at 44.1 kHz)."""
    transformer = """
    _target_: fish_speech.models.dac.modded_dac.WindowLimitedTransformer
    causal: true
    window_size: 128
    input_dim: 64
    config:
      _target_: fish_speech.models.dac.modded_dac.ModelArgs
      block_size: 4096
      n_layer: 1
      n_head: 2
      dim: 64
      intermediate_size: 128
      n_local_heads: -1
      head_dim: 32
      rope_base: 10000
      norm_eps: 1e-5
      dropout_rate: 0.0
      attn_dropout_rate: 0.0
      channels_first: true"""
    return f"""# Tiny random codec for tests (project convention: overrides the wheel's modded_dac_vq.yaml).
_target_: fish_speech.models.dac.modded_dac.DAC
sample_rate: 44100
encoder_dim: 4
encoder_rates: [2, 4, 8, 8]
decoder_dim: 32
decoder_rates: [8, 8, 4, 2]
encoder_transformer_layers: [0, 0, 0, 1]
decoder_transformer_layers: [0, 0, 0, 0]
transformer_general_config:
  _target_: fish_speech.models.dac.modded_dac.ModelArgs
  _partial_: true
  block_size: 4096
  n_local_heads: -1
  head_dim: 64
  rope_base: 10000
  norm_eps: 1e-5
  dropout_rate: 0.0
  attn_dropout_rate: 0.0
  channels_first: true
quantizer:
  _target_: fish_speech.models.dac.rvq.DownsampleResidualVectorQuantize
  input_dim: 64
  n_codebooks: {TINY_CODEBOOKS - 1}
  codebook_size: {TINY_SEMANTIC}
  codebook_dim: 8
  quantizer_dropout: 0.0
  downsample_factor: [2, 2]
  semantic_codebook_size: {TINY_SEMANTIC}
  post_module:{transformer}
  pre_module:{transformer}
"""


def tiny_model_args(vocab_size: int):
    from fish_speech.models.text2semantic.llama import DualARModelArgs

    return DualARModelArgs(
        model_type="dual_ar", vocab_size=vocab_size, n_layer=2, n_head=4, n_local_heads=2, dim=64,
        head_dim=16, intermediate_size=128, rope_base=1_000_000.0, norm_eps=1e-6, max_seq_len=2048,
        tie_word_embeddings=False, attention_qk_norm=True, codebook_size=TINY_SEMANTIC,
        num_codebooks=TINY_CODEBOOKS, n_fast_layer=1, fast_dim=64, fast_n_head=4, fast_n_local_heads=2,
        fast_head_dim=16, fast_intermediate_size=128, scale_codebook_embeddings=True,
        use_gradient_checkpointing=False,
    )


def write_tiny_checkpoint(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a random-weight checkpoint of the real layout (a few MB) and return its directory."""
    from fish_speech.models.text2semantic.llama import DualARTransformer

    out_dir = Path(out_dir)
    with replacing(out_dir) as tmp:
        tmp.mkdir()
        bpe = tiny_bpe_lines()
        (tmp / "tokenizer.tiktoken").write_text("\n".join(bpe) + "\n")
        special = _tiny_special_tokens(len(bpe))
        (tmp / "special_tokens.json").write_text(json.dumps(special, indent=2, ensure_ascii=False))
        tokenizer = load_tokenizer(tmp)

        args = tiny_model_args(vocab_size=len(bpe) + len(special))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = DualARTransformer(args, tokenizer=tokenizer)
            args.save(tmp / "config.json")
            torch.save(model.state_dict(), tmp / "model.pth")

            (tmp / CODEC_CONFIG_NAME).write_text(tiny_codec_config())
            codec = build_codec(tmp / CODEC_CONFIG_NAME)
            # Masks and RoPE tables are rebuilt from the config at load time; storing them is 48 MB.
            state = {k: v for k, v in codec.state_dict().items() if not k.endswith(_DERIVED_BUFFERS)}
            torch.save(state, tmp / "codec.pth")

        (tmp / RANDOM_WEIGHTS_MARKER).write_text(RANDOM_WEIGHTS_TEXT)
    return out_dir
