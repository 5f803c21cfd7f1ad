"""What every bench section shares: the shapes (the real s1-mini shape or tiny), a tokenizer and
synthetic batches, the FLOP accounting, the card's peak, and timing with the GPU synchronised."""

from __future__ import annotations

import gc
import json
import statistics
import time
from pathlib import Path

import torch
from pipeline.model.tokens import RESIDUAL_VOCAB

SENTENCES = [
    "Hyvää huomenta, tänään on aurinkoinen ja lämmin päivä.",
    "Juna Tampereelle lähtee raiteelta kolme kymmenen minuutin kuluttua.",
    "Voisitko ystävällisesti sulkea ikkunan, täällä alkaa olla kylmä?",
    "Kaupunginvaltuusto hyväksyi eilen illalla ensi vuoden talousarvion.",
    "Lämpötila laskee yöllä pakkasen puolelle koko maassa.",
    "Kiitos avusta, en olisi selvinnyt ilman sinua.",
    "Tervetuloa Suomeen, toivottavasti viihdyt täällä.",
    "Kirjasto on auki arkisin kahdeksasta kahdeksaan.",
]


PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "GH200": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0,
               "A10G": 125.0, "A10": 125.0, "RTX 4090": 165.0}  # dense bf16, vendor datasheets (SXM)


# -- shapes -------------------------------------------------------------------------------------
def bench_shapes(folder: Path, tiny: bool):
    """(model args, tokenizer, codec config path, batch_size, max_length)."""
    from pipeline.model.checkpoints import CODEC_CONFIG_NAME, codec_config_path, real_shape_args
    from pipeline.model.synthetic import shaped_tokenizer
    from pipeline.model.tiny_checkpoint import TINY_SEMANTIC, tiny_codec_config, tiny_model_args

    if tiny:
        tokenizer = shaped_tokenizer(folder, TINY_SEMANTIC)
        args = tiny_model_args(vocab_size=len(tokenizer.all_special_tokens_with_ids) + 300)
        (folder / CODEC_CONFIG_NAME).write_text(tiny_codec_config())
        return args, tokenizer, folder / CODEC_CONFIG_NAME, 2, 128
    args = real_shape_args()
    tokenizer = shaped_tokenizer(folder, args.codebook_size)
    return args, tokenizer, codec_config_path(folder), 4, 4096


def synthetic_batch(tokenizer, args, batch_size: int, max_length: int, seed: int = 0, device="cpu") -> dict:
    """Packed same-speaker sequences in the training layout (pipeline.model.tokens), random codes,
    padded to exactly max_length like pipeline.train.samples.collate pads to the longest."""
    from pipeline.train.forward import IGNORE
    from pipeline.model.tokens import Utterance, build_sequence, to_labels

    g = torch.Generator().manual_seed(seed)
    n, residual = args.num_codebooks, min(RESIDUAL_VOCAB, args.codebook_size)
    n_semantic = len(tokenizer.semantic_id_to_token_id)
    pad = tokenizer.get_token_id("<|pad|>") if "<|pad|>" in tokenizer.all_special_tokens_with_ids else 0
    tokens = torch.zeros((batch_size, n + 1, max_length), dtype=torch.long)
    labels = torch.full_like(tokens, IGNORE)
    tokens[:, 0] = pad
    lengths = []
    for b in range(batch_size):
        utts, used = [], 2
        while True:
            frames = int(torch.randint(max(4, max_length // 40), max(8, max_length // 12), (1,), generator=g))
            text = SENTENCES[len(utts) % len(SENTENCES)]
            if used + frames + len(text) // 2 + 6 > max_length:
                break
            codes = torch.randint(0, residual, (n, frames), generator=g)
            codes[0] = torch.randint(0, n_semantic, (frames,), generator=g)
            utts.append(Utterance(text, codes))
            used += frames + len(text) // 2 + 6
        seq = build_sequence(tokenizer, n, utts)
        length = min(len(seq), max_length)
        tokens[b, :, :length] = seq.tokens[:, :length]
        labels[b, :, :length] = to_labels(seq)[:, :length]
        lengths.append(length)
    batch = {"tokens": tokens, "labels": labels, "lengths": torch.tensor(lengths)}
    return {k: v.to(device) for k, v in batch.items()}


# -- accounting ---------------------------------------------------------------------------------
def _linear_params(dim, n_head, n_kv, head_dim, ffn) -> int:
    return dim * (n_head + 2 * n_kv) * head_dim + n_head * head_dim * dim + 3 * dim * ffn


def train_flops(args, batch: dict, mode: str, lora_params: int = 0) -> dict:
    """Model FLOPs of one training step (no recomputation counted), per component.

    forward = 2 x params x rows for every matmul (slow layers over real tokens, token head over
    loss positions only, fast layers + fast head over num_codebooks positions per audio frame)
    + causal attention 4 x (L^2 / 2) x heads x head_dim per layer and sequence.
    full step = 3 x forward (backward computes input and weight gradients);
    LoRA step = 2 x forward (frozen weights need input gradients only) + 6 x lora_params x tokens.
    """
    from pipeline.train.forward import IGNORE

    labels, lengths = batch["labels"], batch["lengths"].tolist()
    tokens, loss_rows = sum(lengths), int((labels[:, 0] != IGNORE).sum())
    frames, n = int((labels[:, 1] != IGNORE).sum()), args.num_codebooks
    slow = args.n_layer * _linear_params(args.dim, args.n_head, args.n_local_heads, args.head_dim,
                                         args.intermediate_size)
    fast = args.n_fast_layer * _linear_params(args.fast_dim, args.fast_n_head, args.fast_n_local_heads,
                                              args.fast_head_dim, args.fast_intermediate_size)
    parts = {
        "slow_layers": 2 * slow * tokens,
        "token_head": 2 * args.dim * args.vocab_size * loss_rows,
        "fast_layers": 2 * fast * frames * n,
        "fast_head": 2 * args.fast_dim * args.codebook_size * frames * n,
        "attention": sum(4 * (L * L / 2) * args.n_head * args.head_dim * args.n_layer for L in lengths)
        + 4 * (n * n / 2) * args.fast_n_head * args.fast_head_dim * args.n_fast_layer * frames,
    }
    forward = sum(parts.values())
    total = 3 * forward if mode == "full" else 2 * forward + 6 * lora_params * tokens
    return {"forward": forward, "step": total, "tokens": tokens, "loss_rows": loss_rows, "frames": frames,
            "parts": parts}


def peak_tflops(device) -> tuple[float, str]:
    name = torch.cuda.get_device_name(device) if torch.cuda.is_available() else "cpu"
    for key in sorted(PEAK_TFLOPS, key=len, reverse=True):
        if key in name.upper().replace("NVIDIA ", ""):
            return PEAK_TFLOPS[key], f"datasheet dense bf16 for {key}"
    return float("nan"), "unknown card"


def measured_matmul_tflops(device, size: int = 8192) -> float:
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(device)
    t = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize(device)
    return 2 * size**3 * 10 / (time.perf_counter() - t) / 1e12


# -- helpers ------------------------------------------------------------------------------------
def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device) -> None:
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gb(device) -> float:
    return torch.cuda.max_memory_allocated(device) / 1e9 if torch.device(device).type == "cuda" else 0.0


def time_calls(fn, warmup: int, repeat: int, device) -> dict:
    """Median seconds of `fn()` after `warmup` calls (first call's time reported separately)."""
    times = []
    for i in range(warmup + repeat):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    timed = times[warmup:] or times
    return {"first_s": round(times[0], 3), "median_s": round(statistics.median(timed), 4),
            "min_s": round(min(timed), 4), "max_s": round(max(timed), 4)}


def sweep_command(doc: str, needs: str, usable, measure, argv=None) -> dict:
    """The command line of a one-kernel sweep (`python -m pipeline.bench.<sweep>`): `--out FILE`,
    a clear exit where no usable GPU is (`needs` says what it takes), the report written as JSON."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--out", help="write the whole report to this JSON file")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available() or not usable(torch.device("cuda")):
        raise SystemExit(f"This benchmark needs {needs}.")
    report = measure(torch.device("cuda"))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))
    return report


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def random_model(args, tokenizer, settings, plan):
    """The bench shape with random weights (seed 0: the same on every rank), made trainable and
    given its optimizer by pipeline.train.plan's functions: what pipeline.train.loop runs on a
    loaded checkpoint."""
    from fish_speech.models.text2semantic.llama import DualARTransformer

    from pipeline.train.plan import build_optimizer, trainable_model

    torch.manual_seed(0)
    with torch.device(plan.device):
        model = DualARTransformer(args, tokenizer=tokenizer)
    model = trainable_model(model.to(plan.weights_dtype), settings)
    params = [p for p in model.parameters() if p.requires_grad]
    return model.train(), build_optimizer(params, settings, plan.device), params
