"""Random-weight checkpoints and random-code datasets at a given model shape.

The benchmarks and the compile warm-up (pipeline.train.warmup) need the real model's shape, not
its weights: compiled graphs, kernel timings and memory depend on shapes only. These write them in
the layout pipeline.model.checkpoints and pipeline.train.loop read, so the same loading and training
code runs on them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipeline.model.tokens import RESIDUAL_VOCAB


def shaped_tokenizer(folder: Path, n_semantic: int):
    """The tiny checkpoint's byte-level BPE with `n_semantic` semantic tokens (4096 = s1-mini),
    written to `folder` and loaded."""
    from fish_speech.tokenizer import ALL_SPECIAL_TOKENS, SEMANTIC_TOKEN_TEMPLATE

    from pipeline.model.checkpoints import load_tokenizer
    from pipeline.model.tiny_checkpoint import TINY_SPEAKERS, tiny_bpe_lines

    folder.mkdir(parents=True, exist_ok=True)
    bpe = tiny_bpe_lines()
    names = [t for t in ALL_SPECIAL_TOKENS if not t.startswith("<|semantic:")]
    names += [f"<|speaker:{i}|>" for i in range(TINY_SPEAKERS)]
    names += [SEMANTIC_TOKEN_TEMPLATE.format(i=i) for i in range(n_semantic)]
    (folder / "tokenizer.tiktoken").write_text("\n".join(bpe) + "\n")
    (folder / "special_tokens.json").write_text(json.dumps({n: len(bpe) + i for i, n in enumerate(names)}))
    return load_tokenizer(folder)


def write_random_lm(folder: Path, args, device="cpu") -> Path:
    """The language model of shape `args` with random weights (seed 0), as config.json, model.pth
    (bf16) and a tokenizer in `folder`; no codec (training does not need one)."""
    from fish_speech.models.text2semantic.llama import DualARTransformer

    tokenizer = shaped_tokenizer(folder, args.codebook_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        with torch.device(device):
            model = DualARTransformer(args, tokenizer=tokenizer)
    args.save(folder / "config.json")
    torch.save({k: v.to("cpu", torch.bfloat16) for k, v in model.state_dict().items()}, folder / "model.pth")
    return folder


def random_codes_manifest(folder: Path, args, clips: int, max_frames: int, texts: list[str]) -> pd.DataFrame:
    """`clips` clips of 4 speakers with random codes, max_frames // 7 to max_frames frames each
    (2-8 s at 21.5 frames/s for max_frames 172), as the manifest rows training reads."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(clips):
        frames = int(rng.integers(max(4, max_frames // 7), max_frames))
        codes = rng.integers(0, min(RESIDUAL_VOCAB, args.codebook_size), (args.num_codebooks, frames)).astype(np.int16)
        path = folder / f"clip{i:04d}.npy"
        np.save(path, codes)
        text = texts[i % len(texts)]
        rows.append({"id": f"clip{i:04d}", "speaker": f"spk{i % 4}", "text": text, "normalized_text": text,
                     "codes_path": str(path), "status": "ok"})
    return pd.DataFrame(rows)
