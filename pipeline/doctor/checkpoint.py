"""Checkpoint rows, from the files alone (nothing is put on a device): every file present with a
plausible size, config.json against the real shape the code and the bench assume, model.pth
readable with every weight of that shape, the tokenizer's semantic ids, the codec's config."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import torch

from pipeline.doctor.row import FAIL, PASS, WARN, Row, guarded

GROUP = "checkpoint"
# Sizes of the openaudio-s1-mini files on the Hub (bf16 model.pth; codec.pth)
REAL_FILE_GB = {"model.pth": 1.74, "codec.pth": 1.87}
SIZE_TOLERANCE = 0.05
# config.json fields that decide the computation (not training switches such as dropout)
SHAPE_FIELDS = (
    "model_type", "vocab_size", "n_layer", "n_head", "n_local_heads", "dim", "head_dim", "intermediate_size",
    "rope_base", "norm_eps", "max_seq_len", "tie_word_embeddings", "attention_qkv_bias", "attention_o_bias",
    "attention_qk_norm", "codebook_size", "num_codebooks", "scale_codebook_embeddings", "n_fast_layer",
    "fast_dim", "fast_n_head", "fast_n_local_heads", "fast_head_dim", "fast_intermediate_size",
    "fast_attention_qkv_bias", "fast_attention_qk_norm", "fast_attention_o_bias",
)
TINY_LABEL = "tiny test model (random weights)"
REDOWNLOAD = "Delete it and run python -m pipeline download (or copy the whole folder again)."


def _random(model_dir: Path) -> bool:
    from pipeline.model.checkpoints import is_random_weights

    return is_random_weights(model_dir)


def files_row(model_dir: Path) -> Row:
    from pipeline.model.checkpoints import HUB_FILES

    if not model_dir.is_dir():
        return Row(GROUP, "files", FAIL, f"{model_dir} does not exist",
                   "Run python -m pipeline download (needs HF_TOKEN), or pass --model with a checkpoint folder.")
    missing = [n for n in HUB_FILES if not (model_dir / n).is_file() or (model_dir / n).stat().st_size == 0]
    if missing:
        return Row(GROUP, "files", FAIL, f"missing or empty: {', '.join(missing)}",
                   f"Run python -m pipeline download to fetch {', '.join(missing)} (or copy the whole folder).")
    sizes = {n: (model_dir / n).stat().st_size / 1e9 for n in HUB_FILES}
    detail = ", ".join(f"{n} {sizes[n]:.2f} GB" if sizes[n] >= 0.01 else f"{n} {sizes[n] * 1e3:.1f} MB"
                       for n in HUB_FILES)
    if _random(model_dir):
        return Row(GROUP, "files", PASS, f"all 5 present ({TINY_LABEL}): {detail}")
    for name, expected in REAL_FILE_GB.items():
        if sizes[name] < expected * (1 - SIZE_TOLERANCE):
            return Row(GROUP, "files", FAIL,
                       f"{name} is {sizes[name]:.2f} GB; the openaudio-s1-mini file is {expected:.2f} GB (cut short?)",
                       f"{name}: {REDOWNLOAD}")
    odd = [n for n, expected in REAL_FILE_GB.items() if sizes[n] > expected * (1 + SIZE_TOLERANCE)]
    if odd:
        return Row(GROUP, "files", WARN, f"all 5 present; {', '.join(odd)} larger than the s1-mini files: {detail}",
                   "Fine for a fine-tuned model saved in fp32; for the base model, re-download it.")
    return Row(GROUP, "files", PASS, f"all 5 present, sizes as on the Hub: {detail}")


def read_config(model_dir: Path):
    """DualARModelArgs of config.json (fish-speech's own parser), or a CheckpointError."""
    from fish_speech.models.text2semantic.llama import BaseModelArgs, DualARModelArgs

    from pipeline.model.checkpoints import CheckpointError

    path = model_dir / "config.json"
    try:
        config = BaseModelArgs.from_pretrained(str(path))
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(f"config.json cannot be read as a fish-speech config: {exc}") from None
    if not isinstance(config, DualARModelArgs):
        raise CheckpointError(f"config.json: model_type must be 'dual_ar', got {config.model_type!r}")
    return config


def shape_differences(config) -> list[tuple[str, object, object]]:
    """(field, config.json's value, the real shape's value) for every differing shape field."""
    from pipeline.model.checkpoints import real_shape_args

    real = real_shape_args()
    return [(f, getattr(config, f), getattr(real, f)) for f in SHAPE_FIELDS if getattr(config, f) != getattr(real, f)]


def _shape_summary(cfg) -> str:
    return (f"dim {cfg.dim}, {cfg.n_layer} layers, {cfg.n_head}/{cfg.n_local_heads} heads of {cfg.head_dim}, "
            f"FFN {cfg.intermediate_size}, vocab {cfg.vocab_size}, {cfg.num_codebooks} codebooks of "
            f"{cfg.codebook_size}, fast {cfg.n_fast_layer} layers (head_dim {cfg.fast_head_dim})")


def shape_row(model_dir: Path) -> Row:
    from pipeline.model.checkpoints import CheckpointError, real_shape_args

    try:
        config = read_config(model_dir)
    except CheckpointError as exc:
        return Row(GROUP, "shape", FAIL, str(exc), f"config.json: {REDOWNLOAD}")
    differences = shape_differences(config)
    if _random(model_dir):
        return Row(GROUP, "shape", WARN, f"{TINY_LABEL}: {_shape_summary(config)}",
                   f"Not the real shape ({_shape_summary(real_shape_args())}); use the real model for real speech.")
    if differences:
        listed = "; ".join(f"config.json says {f} {mine}; the bench shape assumes {real}" for f, mine, real in differences)
        return Row(GROUP, "shape", FAIL, listed,
                   "Use the real openaudio-s1-mini config.json, or, if this model is meant to differ, update "
                   "pipeline's real shape (pipeline.model.checkpoints.real_shape_args, used by the bench).")
    return Row(GROUP, "shape", PASS, f"config.json = the real s1-mini shape: {_shape_summary(config)}")


def _meta_model(config):
    from fish_speech.models.text2semantic.llama import DualARTransformer

    # The tokenizer only decides which ids are semantic; the weights' shapes do not depend on it.
    with torch.device("meta"):
        return DualARTransformer(config, tokenizer=SimpleNamespace(semantic_id_to_token_id={0: 0}))


def weights_row(model_dir: Path) -> Row:
    from pipeline.model.checkpoints import CheckpointError, clean_state_dict

    path = model_dir / "model.pth"
    if not path.is_file():
        return Row(GROUP, "weights", FAIL, "model.pth is missing", f"model.pth: {REDOWNLOAD}")
    try:
        config = read_config(model_dir)
    except CheckpointError as exc:
        return Row(GROUP, "weights", FAIL, f"not checked: {exc}", f"config.json: {REDOWNLOAD}")
    try:
        weights = clean_state_dict(torch.load(path, map_location="cpu", mmap=True, weights_only=True))
    except Exception as exc:  # truncated download, another format: torch raises many types
        return Row(GROUP, "weights", FAIL, f"model.pth cannot be read ({type(exc).__name__}: "
                   f"{str(exc).splitlines()[0][:120]}): the download is cut short or damaged", f"model.pth: {REDOWNLOAD}")
    params = dict(_meta_model(config).named_parameters())
    missing = [k for k in params if k not in weights]
    wrong = [f"{k} {tuple(weights[k].shape)} ≠ {tuple(p.shape)}" for k, p in params.items()
             if k in weights and weights[k].shape != p.shape]
    if missing or wrong:
        problems = ([f"{len(missing)} weights missing (e.g. {', '.join(missing[:2])})"] if missing else []) + \
                   ([f"{len(wrong)} of another shape (e.g. {wrong[0]})"] if wrong else [])
        return Row(GROUP, "weights", FAIL, f"model.pth does not fit config.json: {'; '.join(problems)}",
                   "model.pth and config.json come from different models: download both from the same repository.")
    count = sum(p.numel() for p in params.values())
    dtype = Counter(weights[k].dtype for k in params).most_common(1)[0][0]
    detail = f"{count / 1e6:,.1f} M parameters, every weight present with its shape, stored as {str(dtype).removeprefix('torch.')}"
    if not _random(model_dir) and not shape_differences(config) and dtype != torch.bfloat16:
        return Row(GROUP, "weights", WARN, detail, "The Hub's s1-mini is bf16; this copy was re-saved in another dtype.")
    return Row(GROUP, "weights", PASS, detail)


def tokenizer_row(model_dir: Path) -> Row:
    from fish_speech.tokenizer import IM_END_TOKEN, MODALITY_INTERLEAVE_TOKEN

    from pipeline.model.checkpoints import CheckpointError, load_tokenizer
    from pipeline.model.tokens import SPEAKER_TOKEN

    try:
        tokenizer = load_tokenizer(model_dir)
        config = read_config(model_dir)
    except CheckpointError as exc:
        return Row(GROUP, "tokenizer", FAIL, str(exc),
                   "Download tokenizer.tiktoken, special_tokens.json and config.json together from the model's repository.")
    semantic = tokenizer.semantic_id_to_token_id
    n = len(semantic)
    codes, ids = sorted(semantic), sorted(semantic.values())
    if codes != list(range(n)) or ids != list(range(ids[0], ids[0] + n)):
        return Row(GROUP, "tokenizer", FAIL, "the <|semantic:i|> ids are not contiguous (codes → ids have gaps)",
                   f"special_tokens.json: {REDOWNLOAD}")
    if n != config.codebook_size:
        hint = " (fish-speech's built-in default of 1,024)" if n == 1024 else ""
        return Row(GROUP, "tokenizer", FAIL,
                   f"special_tokens.json has {n:,} semantic tokens{hint}; config.json has codebook_size "
                   f"{config.codebook_size:,}: the files do not belong together",
                   "Download special_tokens.json and config.json from the same repository and revision.")
    if tokenizer.semantic_end_id >= config.vocab_size:
        return Row(GROUP, "tokenizer", FAIL, f"the last semantic id {tokenizer.semantic_end_id} is beyond "
                   f"config.json's vocab_size {config.vocab_size}", "Download the tokenizer and config.json together.")
    special = tokenizer.all_special_tokens_with_ids
    absent = [t for t in (MODALITY_INTERLEAVE_TOKEN, SPEAKER_TOKEN, IM_END_TOKEN) if t not in special]
    if absent:
        return Row(GROUP, "tokenizer", FAIL, f"special_tokens.json lacks the layout's {', '.join(absent)}",
                   f"special_tokens.json: {REDOWNLOAD}")
    return Row(GROUP, "tokenizer", PASS,
               f"{n:,} contiguous semantic ids ({ids[0]}…{ids[-1]}) = codebook_size; layout tokens present")


def read_codec_config(model_dir: Path) -> dict:
    """Sample rate, hop and codebooks from the codec's hydra config (no weights loaded)."""
    from omegaconf import OmegaConf

    from pipeline.model.checkpoints import codec_config_path

    path = codec_config_path(model_dir)
    cfg = OmegaConf.to_container(OmegaConf.load(str(path)))
    quantizer = cfg["quantizer"]
    hop = math.prod(cfg["encoder_rates"]) * math.prod(quantizer.get("downsample_factor") or [1])
    return {"path": path, "sample_rate": int(cfg["sample_rate"]), "hop": int(hop),
            "semantic": int(quantizer["semantic_codebook_size"]), "residual_books": int(quantizer["n_codebooks"]),
            "residual_size": int(quantizer["codebook_size"])}


def codec_config_row(model_dir: Path) -> Row:
    from pipeline.data.audio import TARGET_SR
    from pipeline.model.checkpoints import CheckpointError
    from pipeline.estimate.cost import FRAMES_PER_SECOND

    group = "codec"
    try:
        codec = read_codec_config(model_dir)
    except Exception as exc:  # a yaml or key error of a hand-edited config
        return Row(group, "codec config", FAIL, f"the codec config cannot be read: {type(exc).__name__}: {exc}",
                   "Remove codec_config.yaml from the model folder to use the codec config of the fish-speech wheel.")
    rate, hop = codec["sample_rate"], codec["hop"]
    fps = rate / hop
    detail = (f"{codec['path'].name}: {rate / 1000:g} kHz, {hop} samples a frame ({fps:.2f} frames/s), "
              f"1 semantic codebook of {codec['semantic']:,} + {codec['residual_books']} residual of {codec['residual_size']:,}")
    if rate != TARGET_SR or abs(fps - FRAMES_PER_SECOND) > 1e-6:
        return Row(group, "codec config", FAIL,
                   f"{detail}; the pipeline assumes {TARGET_SR / 1000:g} kHz and {FRAMES_PER_SECOND:.2f} frames/s",
                   "Use the codec that comes with openaudio-s1-mini (delete codec_config.yaml if you added one): "
                   "audio is converted to 44.1 kHz and durations are counted at 21.5 frames/s.")
    try:
        config = read_config(model_dir)
    except CheckpointError:
        return Row(group, "codec config", WARN, f"{detail}; not compared with config.json (unreadable)")
    if codec["semantic"] != config.codebook_size or codec["residual_books"] + 1 != config.num_codebooks:
        return Row(group, "codec config", FAIL,
                   f"{detail}; config.json has {config.num_codebooks} codebooks of {config.codebook_size:,}",
                   "The codec and the language model do not belong together: use the codec of the same model.")
    return Row(group, "codec config", PASS, detail)


def checkpoint_rows(model_dir: Path) -> list[Row]:
    model_dir = Path(model_dir)
    rows = [guarded(GROUP, "files", lambda: files_row(model_dir))]
    if not model_dir.is_dir():
        return rows
    checks = [(GROUP, "shape", shape_row), (GROUP, "weights", weights_row), (GROUP, "tokenizer", tokenizer_row),
              ("codec", "codec config", codec_config_row)]
    return rows + [guarded(group, name, lambda check=check: check(model_dir)) for group, name, check in checks]
