"""`python -m pipeline.bench.decode_tiles`: the one-stream decoder's launch settings swept at the
real s1-mini shape (GPU, random weights). For each setting of `pipeline.kernels.decode_layer`'s
product kernel (weight rows per program, warps) and attention kernel (cache positions per step,
warps), a fresh generator is warmed up and one stream's frames per second measured (median of
three runs), with the programmatic launches the configuration asks for; the teacher-forced logits
of 8 frames are compared with those of the settings in use. The JSON (`--out`) keeps every row.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from pipeline.bench.common import bench_shapes, rel_diff, sweep_command, time_calls
from pipeline.kernels import decode_layer, runtime

FRAMES, MAX_LEN = 200, 1024
SETTINGS = [  # (ROWS_PER_PROGRAM, PRODUCT_WARPS, ATTENTION_BLOCK, ATTENTION_WARPS); the first is the one in use
    (decode_layer.ROWS_PER_PROGRAM, decode_layer.PRODUCT_WARPS, decode_layer.ATTENTION_BLOCK,
     decode_layer.ATTENTION_WARPS),
    (1, 4, 128, 8), (4, 4, 128, 8), (2, 2, 128, 8), (2, 8, 128, 8), (1, 2, 128, 8), (4, 8, 128, 8),
    (2, 4, 64, 4), (2, 4, 64, 8), (2, 4, 128, 4),
]


def _model(device):
    from fish_speech.models.text2semantic.llama import DualARTransformer

    from pipeline.model.tokens import RESIDUAL_VOCAB, Utterance, build_sequence

    with tempfile.TemporaryDirectory() as folder:
        args, tokenizer = bench_shapes(Path(folder), tiny=False)[:2]
    torch.manual_seed(0)
    with torch.device(device):
        model = DualARTransformer(args, tokenizer=tokenizer).to(torch.bfloat16).eval()
    prompt = build_sequence(tokenizer, args.num_codebooks, [Utterance("Hyvää huomenta.", None)],
                            for_generation=True).tokens
    g = torch.Generator().manual_seed(1)
    codes = torch.randint(0, min(RESIDUAL_VOCAB, args.codebook_size), (args.num_codebooks, 8), generator=g)
    forced = torch.cat([codes[:1] + tokenizer.semantic_begin_id, codes])
    return model, prompt, forced


def _apply(setting) -> None:
    (decode_layer.ROWS_PER_PROGRAM, decode_layer.PRODUCT_WARPS, decode_layer.ATTENTION_BLOCK,
     decode_layer.ATTENTION_WARPS) = setting


def measure(device) -> dict:
    from pipeline.generate.fastgen import DecodeOptions, FastGenerator

    model, prompt, forced = _model(device)
    in_use, rows, reference = SETTINGS[0], [], None
    try:
        for setting in SETTINGS:
            _apply(setting)
            started = time.perf_counter()
            gen = FastGenerator(model, 1, max_len=MAX_LEN, options=DecodeOptions())
            gen.warmup()
            warmup_s = time.perf_counter() - started
            t = time_calls(lambda: gen.generate([prompt], FRAMES, stop_at_end=False), 1, 3, device)
            logits = [x.float().cpu() for x in gen.teacher_forced_logits(prompt, forced)]
            reference = reference or logits
            row = {"rows_per_program": setting[0], "product_warps": setting[1], "attention_block": setting[2],
                   "attention_warps": setting[3], "frames_per_s": round(FRAMES / t["median_s"], 1),
                   "warmup_s": round(warmup_s, 1), "programmatic_launch": gen.pdl,
                   "logits_rel_diff_vs_in_use": max(rel_diff(a, b) for a, b in zip(logits, reference))}
            rows.append(row)
            print(row, flush=True)
            gen = None
    finally:
        _apply(in_use)
    return {"card": torch.cuda.get_device_name(device), "torch": torch.__version__, "frames": FRAMES,
            "max_len": MAX_LEN, "results": rows}


def main(argv=None) -> None:
    report = sweep_command(__doc__, "a CUDA GPU of Ampere or newer with Triton", runtime.triton_kernels_run_on,
                           measure, argv)
    best = max(report["results"], key=lambda row: row["frames_per_s"])
    print(f"card: {report['card']}\nin use: {report['results'][0]}\nbest:   {best}")


if __name__ == "__main__":
    main()
