"""Randomly initialised Whispers with a byte-level tokenizer, built offline: tiny (tests, demos) or
of the default ASR's shape (the bench's timing on a machine without the Hub).

Its transcripts are noise, but it runs the real path: WhisperFeatureExtractor, a
WhisperTokenizer (256 byte symbols + Whisper's special tokens, no merges), `generate` with
language "fi" and task "transcribe", `batch_decode`.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.quality.asr import Transcriber

TINY_ASR_NAME = "tiny-random-whisper"
# random-weight Whispers: "tiny" for tests; "large-v3-turbo" has the default ASR's layers and widths
# (with the byte vocabulary) so that the bench times the real model's work without the Hub
WHISPER_SHAPES = {
    "tiny": dict(d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                 decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=80,
                 max_target_positions=64),
    "large-v3-turbo": dict(d_model=1280, encoder_layers=32, decoder_layers=4, encoder_attention_heads=20,
                           decoder_attention_heads=20, encoder_ffn_dim=5120, decoder_ffn_dim=5120,
                           num_mel_bins=128, max_target_positions=448),
}
_SPECIALS = ("<|endoftext|>", "<|startoftranscript|>", "<|fi|>", "<|transcribe|>", "<|translate|>",
             "<|startoflm|>", "<|startofprev|>", "<|nospeech|>", "<|notimestamps|>")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in for each byte (the vocabulary of a byte-level BPE)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = printable[:], 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def tiny_transcriber(folder: str | Path, seed: int = 0, max_new_tokens: int = 8) -> Transcriber:
    """Write the tokenizer files to `folder` and return a Transcriber over a random tiny Whisper."""
    return random_transcriber(folder, "tiny", seed, max_new_tokens)


def random_transcriber(folder: str | Path, shape: str = "tiny", seed: int = 0, max_new_tokens: int = 8,
                       device: str | None = None) -> Transcriber:
    """A Transcriber over a random-weight Whisper of `shape` (WHISPER_SHAPES), tokenizer files in `folder`."""
    import torch
    from transformers import (GenerationConfig, WhisperConfig, WhisperFeatureExtractor,
                              WhisperForConditionalGeneration, WhisperProcessor, WhisperTokenizer)

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {char: i for i, char in enumerate(_bytes_to_unicode().values())}
    vocab.update({token: len(vocab) + i for i, token in enumerate(_SPECIALS)})
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    tokenizer = WhisperTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    dims = WHISPER_SHAPES[shape]
    processor = WhisperProcessor(WhisperFeatureExtractor(feature_size=dims["num_mel_bins"]), tokenizer)
    end, start = vocab["<|endoftext|>"], vocab["<|startoftranscript|>"]
    config = WhisperConfig(vocab_size=len(vocab), **dims, pad_token_id=end, bos_token_id=end, eos_token_id=end,
                           decoder_start_token_id=start)
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=start, eos_token_id=end, pad_token_id=end, is_multilingual=True,
        lang_to_id={"<|fi|>": vocab["<|fi|>"]}, no_timestamps_token_id=vocab["<|notimestamps|>"],
        task_to_id={"transcribe": vocab["<|transcribe|>"], "translate": vocab["<|translate|>"]})
    name = TINY_ASR_NAME if shape == "tiny" else f"random-weights whisper-{shape} shape"
    if device is not None:
        model = model.to(device, torch.float16 if str(device).startswith("cuda") else torch.float32)
    return Transcriber(model, processor, name, language="fi", max_new_tokens=max_new_tokens)
