"""The three sections of `python -m pipeline bench`: training steps, VQ extraction, generation."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.bench.common import (
    SENTENCES,
    free_memory,
    peak_gb,
    sync,
    peak_tflops,
    random_model,
    rel_diff,
    synthetic_batch,
    time_calls,
    train_flops,
)
from pipeline.bench.profile import profiled
from pipeline.train.settings import TrainSettings
from pipeline.model.tokens import RESIDUAL_VOCAB

# project: pipeline.train.plan's plan_phase, trainable_model, build_optimizer and train_step, as the
# training loop runs them, with the memory plan it makes for this card ("fast" is the same with the
# blocks compiled whatever the configuration says); reference: upstream-style (pipeline.bench.reference).
# ":ckpt" / ":nockpt" force checkpointing; "@40" plans memory (micro-batch, accumulation,
# checkpointing) as for a 40 GB card instead of this one;
# "+toggle" switches one speed-up off (TOGGLES) to measure what it brings.
DEFAULT_VARIANTS = ["reference-lora", "reference-full", "project-lora", "project-full", "fast-lora@40", "fast-full@80"]
TOGGLES = {
    "sdpa": "fast-transformer attention: one SDPA call per frame instead of all frames packed (segment_attention)",
    "flex": "fast-transformer attention: the packed frames through compiled flex attention instead of "
            "pipeline.kernels.segment_attention's kernels",
    "torchsdpa": "slow-transformer attention: whichever kernel torch picks instead of asking for cuDNN's "
                 "(Hopper+; torch 2.11 with cuDNN 9.19 picks cuDNN's itself)",
    "chunked": "cross-entropy: fp32 logits in checkpointed chunks instead of the fused linear cross-entropy",
    "allpos": "every position through the compiled fast transformer instead of audio frames only",
    "peft": "each (LoRA) linear through its own module instead of fused matmuls (LoRA columns, w1|w3)",
    "dropout0": "LoRA dropout 0 instead of the configured value (a recipe change, not a speed-up)",
    "torchdropout": "LoRA dropout drawn by torch (inductor's Philox per element, a dropped copy of x) instead of "
                    "inside pipeline.kernels.lora_dropout's kernels",
}


# -- training -----------------------------------------------------------------------------------
# the ForwardOptions field each toggle switches off in the plan
TOGGLE_OPTIONS = {
    "sdpa": "flex_fast_attention",
    "flex": "segment_attention_kernel",
    "chunked": "fused_ce",
    "allpos": "frames_only",
    "peft": "fused_linears",
    "torchdropout": "lora_dropout_kernel",
    "torchsdpa": "cudnn_attention",
}


def _toggled(plan, toggles: set[str]):
    """The plan with the toggles' speed-ups switched off in its forward options (nothing else changes)."""
    off = {TOGGLE_OPTIONS[t]: False for t in toggles if t in TOGGLE_OPTIONS}
    return dataclasses.replace(plan, options=dataclasses.replace(plan.options, **off)) if off else plan


def variant_plan(name, config, shapes, device):
    """(settings, plan) of a project or fast variant: the loop's settings and plan_phase for this
    card (or the `@GB` one), the variant's forcings applied to the settings, its toggles to the plan."""
    from pipeline.train.plan import plan_phase

    impl, mode, forced, card_gb, toggles = _parse_variant(name)
    _, _, _, batch_size, max_length = shapes
    overrides = dict(batch_size=batch_size, grad_accumulation=1, max_length=max_length, device=str(device))
    if "dropout0" in toggles:
        overrides["lora_dropout"] = 0.0
    if forced is not None:
        overrides["gradient_checkpointing"] = "on" if forced else "off"
    if impl == "fast" and device.type == "cuda":  # compiled whatever the configuration says
        overrides["compile"] = "on"
    settings = TrainSettings.from_config(config, mode, **overrides)
    return settings, _toggled(plan_phase(settings, device, total_gb=card_gb), toggles)


def _parse_variant(name: str):
    """impl-mode[@GB][:ckpt|:nockpt][+toggle...]; @GB plans memory as if the card had GB (e.g.
    fast-lora@40); toggles (TOGGLES) switch one speed-up off (e.g. project-lora+sdpa)."""
    name, *toggles = name.split("+")
    if any(t not in TOGGLES for t in toggles):
        raise ValueError(f"Unknown training variant toggle in {toggles}: use {', '.join(TOGGLES)}.")
    base, _, force = name.partition(":")
    base, _, card_gb = base.partition("@")
    impl, _, mode = base.partition("-")
    ok = impl in ("reference", "project", "fast") and mode in ("lora", "full") and force in ("", "ckpt", "nockpt")
    if not ok or (card_gb and not card_gb.isdigit()):
        raise ValueError(f"Unknown training variant {name!r}: use (reference|project|fast)-(lora|full)[@GB][:ckpt|:nockpt].")
    return (impl, mode, {"": None, "ckpt": True, "nockpt": False}[force], float(card_gb) if card_gb else None,
            set(toggles))


def run_variant(name, config, shapes, batch, device, warmup, repeat, profile_dir=None) -> dict:
    from pipeline.train.memory_plan import CONTEXT_GB, static_gb, workspace_gb

    impl, mode, _, _, toggles = _parse_variant(name)
    args, tokenizer, _, batch_size, max_length = shapes
    cuda = device.type == "cuda"
    free_memory(device)
    losses = []
    row = {"name": name, "impl": impl, "mode": mode}
    if impl == "reference":
        settings = TrainSettings.from_config(config, mode, batch_size=batch_size, max_length=max_length,
                                             device=str(device),
                                             **({"lora_dropout": 0.0} if "dropout0" in toggles else {}))
        from pipeline.bench.reference import (
            build_reference_model,
            reference_optimizer,
            reference_step,
        )

        torch.manual_seed(0)
        model = build_reference_model(args, tokenizer, device, mode, settings.lora_rank, settings.lora_alpha,
                                      settings.lora_dropout)
        optimizer = reference_optimizer(model, settings.lr, tuple(settings.betas), settings.eps, settings.weight_decay)

        def step():
            losses.append(reference_step(model, optimizer, batch, settings.grad_clip))

        row.update(gradient_checkpointing=True, micro_batch=batch_size, grad_accumulation=1, weights="bf16")
    else:
        from pipeline.train.plan import train_step

        settings, plan = variant_plan(name, config, shapes, device)
        model, optimizer, params = random_model(args, tokenizer, settings, plan)
        if plan.memory:
            row["plan"] = plan.memory.as_dict()
        micro = plan.micro_batch
        micro_batches = [{k: v[i : i + micro] for k, v in batch.items()} for i in range(0, batch_size, micro)]

        def step():
            losses.append(train_step(model, optimizer, micro_batches, plan, params, settings.grad_clip)["loss"])

        row["options"] = dataclasses.asdict(plan.options)
        row.update(gradient_checkpointing=plan.gradient_checkpointing, compile_blocks=plan.compile, micro_batch=micro,
                   grad_accumulation=plan.grad_accumulation,
                   weights="bf16 frozen + fp32 LoRA" if mode == "lora" else "fp32 master, bf16 autocast")
    lora_params = sum(p.numel() for p in model.parameters() if p.requires_grad) if mode == "lora" else 0
    timing = time_calls(step, warmup, repeat, device)
    last_loss = float(losses[-1])  # before the profiled steps: loss_last must not depend on --profile
    if profile_dir and cuda:
        _, summary = profiled(step, Path(profile_dir) / f"{name.replace('@', '_at').replace(':', '_').replace('+', '_')}.txt")
        row.update(summary)
    flops = train_flops(args, batch, mode, lora_params)
    peak = peak_gb(device)
    step_s = timing["median_s"]
    tflops, (peak_tf, _) = flops["step"] / step_s / 1e12, peak_tflops(device)
    row.update(step_s=step_s, first_step_s=timing["first_s"], tokens_per_s=round(flops["tokens"] / step_s, 1),
               peak_gb=round(peak, 2), achieved_tflops=round(tflops, 1), mfu=round(tflops / peak_tf, 4) if cuda else None,
               loss_first=round(float(losses[0]), 6), loss_last=round(last_loss, 6), lora_params=lora_params,
               timing=timing)
    if cuda and impl != "reference":
        params_total = sum(p.numel() for p in model.parameters())
        rest = peak - static_gb(mode, params_total, lora_params) - workspace_gb(args.vocab_size) - CONTEXT_GB
        row["act_mb_per_token"] = round(max(rest, 0) * 1e3 / (row["micro_batch"] * max_length), 3)
    model = optimizer = step = None  # free the GPU memory before the next variant
    free_memory(device)
    return row


def bench_train(config, shapes, device, tiny, steps=None, variants=None, profile_dir=None) -> dict:
    args, tokenizer, _, batch_size, max_length = shapes
    batch = synthetic_batch(tokenizer, args, batch_size, max_length, device=device)
    warmup, repeat = (1, 1) if tiny else (3, steps or 5)
    rows = []
    for name in variants or DEFAULT_VARIANTS:
        print(f"-- {name}", flush=True)
        started = time.perf_counter()
        try:
            row = run_variant(name, config, shapes, batch, device, warmup, repeat, profile_dir)
        except torch.cuda.OutOfMemoryError as exc:
            row = {"name": name, "error": f"out of memory: {str(exc)[:200]}"}
            free_memory(device)
        except Exception as exc:
            if isinstance(exc, ValueError) and "variant" in str(exc):
                raise
            import traceback

            traceback.print_exc()
            row = {"name": name, "error": f"{type(exc).__name__}: {str(exc)[:400]}"}
            free_memory(device)
        row["wall_s"] = round(time.perf_counter() - started, 1)
        print({k: v for k, v in row.items() if k not in ("timing", "plan")}, flush=True)
        rows.append(row)
    ok = {r["name"]: r for r in rows if "error" not in r}
    result = {"batch_size": batch_size, "max_length": max_length, "tokens": int(batch["lengths"].sum()),
              "variants": rows, "flops": train_flops(args, batch, "full"),
              "flop_accounting": train_flops.__doc__.strip()}
    result["reference"] = {m: ok[f"reference-{m}"] for m in ("lora", "full") if f"reference-{m}" in ok}
    for mode in ("lora", "full"):
        # the speed-up is the configured path's: ablations ("+toggle") and recipe changes are not candidates
        candidates = [ok[n] for n in ok if ok[n]["mode"] == mode and ok[n]["impl"] != "reference" and "+" not in n]
        if candidates:
            best = min(candidates, key=lambda r: r["step_s"])
            result[mode] = best
            ref = result["reference"].get(mode)
            if ref:
                result.setdefault("speedup", {})[mode] = round(ref["step_s"] / best["step_s"], 2)
        project = ok.get(f"project-{mode}")
        for row in ok.values():  # same weights and batch: every variant's first-step loss must agree, and
            # its last (after warm-up and timed steps) too, up to dropout masks drawn differently: a wrong
            # gradient shows there (a kernel that lost dq of the fast attention: 7e-3 after 8 steps)
            if project and row is not project and row["mode"] == mode and row["impl"] != "reference":
                for key in ("loss_first", "loss_last"):
                    diff = abs(row[key] - project[key]) / abs(project[key])
                    result.setdefault("check", {})[f"{row['name']}_{key.replace('loss_', '')}_loss_rel_diff"] = diff
        for row in ok.values():  # memory-planned variants: did the plan hold on the real card?
            if row["mode"] == mode and "@" in row["name"]:
                budget = float(row["name"].split("@")[1].split(":")[0])
                result.setdefault("memory_targets", {})[row["name"]] = {
                    "card_gb": budget, "peak_gb": row["peak_gb"], "fits": row["peak_gb"] <= budget,
                    "step_s": row["step_s"], "micro_batch": row["micro_batch"],
                    "grad_accumulation": row["grad_accumulation"], "gradient_checkpointing": row["gradient_checkpointing"]}
    return result


# -- extraction ---------------------------------------------------------------------------------
def bench_extract(shapes, device, tiny) -> dict:
    from pipeline.model.checkpoints import build_codec
    from pipeline.model.codes import encode_batch

    codec_config = shapes[2]
    torch.manual_seed(0)
    codec = build_codec(codec_config).to(device).eval()
    sr = int(codec.sample_rate)
    clip_s, clips = (1.0, 2) if tiny else (10.0, 12)
    audios = [(np.random.default_rng(i).standard_normal(int(clip_s * sr)) * 0.1).astype(np.float32) for i in range(clips)]
    codes = []
    timing = time_calls(lambda: codes.append(encode_batch(codec, audios)), 1, 1 if tiny else 3, device)
    audio_s = clip_s * clips
    result = {"clips": clips, "clip_s": clip_s, "batch_audio_s": audio_s, "wall_s": timing["median_s"],
              "first_s": timing["first_s"], "realtime_factor": round(audio_s / timing["median_s"], 1),
              "peak_gb": round(peak_gb(device), 2), "frames": int(sum(c.shape[1] for c in codes[-1]))}
    if device.type == "cuda":  # bf16 autocast: faster, but do the codes stay the same?
        bf16 = []

        def encode_bf16():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                bf16.append(encode_batch(codec, audios))

        t = time_calls(encode_bf16, 1, 3, device)
        same = np.mean([float((a == b).float().mean()) for a, b in zip(codes[-1], bf16[-1])])
        result["bf16_autocast"] = {"realtime_factor": round(audio_s / t["median_s"], 1), "codes_equal_share": round(same, 4)}
    from pipeline.bench.extraction import bench_extract_dataset

    result["dataset"] = bench_extract_dataset(codec, codec_config, device, tiny)
    codec = None
    return result


# -- generation ---------------------------------------------------------------------------------
def _profile_generation(gen, prompt, path, frames: int = 20) -> dict:
    """Kernels of `frames` decode steps (CUDA-graph replays) by GPU time, as a table; kernels per frame."""
    prof, _ = profiled(lambda: gen.generate([prompt], frames, stop_at_end=False), path, rows=40)
    kernels = [e for e in prof.events() if e.device_type.name == "CUDA"]
    return {"kernels_per_frame": round(len(kernels) / frames, 1),
            "kernel_ms_per_frame": round(sum(e.device_time for e in kernels) / 1e3 / frames, 3)}


def bench_generate(shapes, device, tiny, profile_dir=None, speed=None) -> dict:
    """Generation speed with the decode options of `speed` (config.speed; None: the defaults)."""
    from fish_speech.models.text2semantic.llama import DualARTransformer

    from pipeline.bench.reference import reference_logits
    from pipeline.model.checkpoints import build_codec
    from pipeline.generate.fastgen import DecodeOptions, FastGenerator
    from pipeline.data.text import example_sentences
    from pipeline.model.tokens import Utterance, build_sequence

    args, tokenizer, codec_config = shapes[:3]
    n = args.num_codebooks
    torch.manual_seed(0)
    with torch.device(device):
        model = DualARTransformer(args, tokenizer=tokenizer)
    model = model.to(torch.bfloat16 if device.type == "cuda" else torch.float32).eval()

    def prompt(text):
        return build_sequence(tokenizer, n, [Utterance(text, None)], for_generation=True).tokens

    # batched: the project's evaluation sentences (assets/examples_fi.txt, spoken during training),
    # all of them as one batch, for the batched-throughput figure
    sentences = example_sentences() or SENTENCES
    frames, max_len, streams = (12, 128, 3) if tiny else (500, 1024, len(sentences))
    result = {"frames_per_stream": frames, "max_len": max_len, "batch_streams": streams}
    started = time.perf_counter()
    options = DecodeOptions.from_speed(speed)
    result["options"] = dataclasses.asdict(options)
    gen = FastGenerator(model, 1, max_len=max_len, options=options)
    gen.warmup()
    result["warmup_s"] = round(time.perf_counter() - started, 2)
    result["decoder"] = "fused Triton layers" if gen.fused else "compiled layers"
    one = prompt(SENTENCES[0])
    t = time_calls(lambda: gen.generate([one], frames, stop_at_end=False), 1, 1 if tiny else 3, device)
    result["single"] = {"frames_per_s": round(frames / t["median_s"], 1), **t}
    result["frames_per_s"] = result["single"]["frames_per_s"]
    if gen.pdl:  # the same stream with every kernel launched plainly: what programmatic launches bring
        plain = FastGenerator(model, 1, max_len=max_len, options=dataclasses.replace(options, pdl=False))
        plain.warmup()
        t = time_calls(lambda: plain.generate([one], frames, stop_at_end=False), 1, 3, device)
        result["single_plain_launch"] = {"frames_per_s": round(frames / t["median_s"], 1), **t}
        plain = None
    if profile_dir and device.type == "cuda":
        result["profile"] = _profile_generation(gen, one, Path(profile_dir) / "generate-one-stream.txt")

    codec = build_codec(codec_config).to(device).eval()
    short = prompt("Hei maailma, tämä on lyhyt lause.")
    short_frames = 8 if tiny else 54  # 2.5 s of audio

    @torch.inference_mode()
    def speak_short():
        codes = gen.generate([short], short_frames, stop_at_end=False)[0][1:]
        codec.decode(codes[None].to(device), torch.tensor([codes.shape[1]], device=device))

    t = time_calls(speak_short, 1, 1 if tiny else 3, device)
    result["time_to_first_audio_s"] = t["median_s"]
    result["time_to_first_audio"] = {"audio_s": round(short_frames * 2048 / 44100, 2), **t}

    started = time.perf_counter()
    batched = FastGenerator(model, streams, max_len=max_len, options=options)
    batched.warmup()
    result["batch_warmup_s"] = round(time.perf_counter() - started, 2)
    prompts = [prompt(sentences[i % len(sentences)]) for i in range(streams)]
    t = time_calls(lambda: batched.generate(prompts, frames, stop_at_end=False), 1, 1 if tiny else 2, device)
    result["batched"] = {"streams": streams, "frames_per_s": round(streams * frames / t["median_s"], 1), **t}
    result["batched_frames_per_s"] = result["batched"]["frames_per_s"]
    result["batched_speedup"] = round(result["batched_frames_per_s"] / result["frames_per_s"], 2)
    batched = None

    # the fast path against fish-speech's own step-by-step computation (same weights, same frames)
    g = torch.Generator().manual_seed(1)
    check = 4 if tiny else 8
    codes = torch.randint(0, min(RESIDUAL_VOCAB, args.codebook_size), (n, check), generator=g)
    forced = torch.cat([codes[:1] + tokenizer.semantic_begin_id, codes])
    head0, fast = gen.teacher_forced_logits(one, forced)
    ref_head, ref_fast = reference_logits(model, one, forced)
    rows = [gen.im_end] + list(range(gen.sem_begin, gen.sem_end + 1))
    result["check"] = {"head_rel_diff": round(rel_diff(head0.cpu(), ref_head[:, rows].cpu()), 5),
                       "fast_rel_diff": round(rel_diff(fast.cpu(), ref_fast[..., : gen.residual_vocab].cpu()), 5),
                       "frames": check}
    result["peak_gb"] = round(peak_gb(device), 2)
    gen = model = codec = None
    sync(device)
    return result
