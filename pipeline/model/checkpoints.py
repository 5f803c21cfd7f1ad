"""Base-model checkpoints: download from the Hub, load the LM and the codec.

A checkpoint directory has the Hub layout of `fishaudio/openaudio-s1-mini`:
`config.json`, `model.pth`, `tokenizer.tiktoken`, `special_tokens.json`, `codec.pth`, plus two
project conventions: `codec_config.yaml` (when present it replaces the wheel's codec config; the
tiny codec needs it) and `RANDOM_WEIGHTS` (marks a checkpoint that produces noise). The same
loaders read every checkpoint of this layout; callers never special-case the tiny one
(written by `pipeline.model.tiny_checkpoint`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from importlib import resources
from pathlib import Path
from typing import Callable

import torch

from pipeline.data.hub import HubUnreachable, require_hub

log = logging.getLogger(__name__)

HUB_FILES = ("config.json", "model.pth", "tokenizer.tiktoken", "special_tokens.json", "codec.pth")
LM_FILES = ("config.json", "model.pth", "tokenizer.tiktoken", "special_tokens.json")
CODEC_CONFIG_NAME = "codec_config.yaml"
RANDOM_WEIGHTS_MARKER = "RANDOM_WEIGHTS"
RANDOM_WEIGHTS_TEXT = "random weights: produces noise\n"

Progress = Callable[[float, str], None] | None


class CheckpointError(ValueError):
    """A checkpoint that cannot be downloaded or loaded; the message says which file and what to do."""


# -- download ---------------------------------------------------------------------------------


def _present(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 0


def has_all_files(local_dir: Path) -> bool:
    """Every file of the Hub layout is in `local_dir` (a finished download)."""
    return all(_present(local_dir / name) for name in HUB_FILES)


def download_base_model(
    repo: str,
    local_dir: str | Path,
    revision: str = "main",
    token: str | None = None,
    progress: Progress = None,
) -> Path:
    """Download the base model's five files into `local_dir`; no network when they are all there."""
    local_dir = Path(local_dir)
    if has_all_files(local_dir):
        if progress:
            progress(1.0, f"{repo} already in {local_dir}")
        return local_dir

    from huggingface_hub import hf_hub_download
    from huggingface_hub import errors as hf_errors

    token = token or os.environ.get("HF_TOKEN") or None
    try:
        require_hub()
    except HubUnreachable as exc:
        raise CheckpointError(_unreachable(repo, exc)) from None
    local_dir.mkdir(parents=True, exist_ok=True)
    missing = [n for n in HUB_FILES if not _present(local_dir / n)]
    for i, name in enumerate(missing):
        if progress:
            progress(i / len(missing), f"downloading {name} from {repo}")
        try:
            hf_hub_download(repo_id=repo, filename=name, revision=revision, local_dir=local_dir, token=token)
        except hf_errors.GatedRepoError as exc:
            raise CheckpointError(
                f"{repo} is gated: accept the licence at https://huggingface.co/{repo} "
                f"and set HF_TOKEN to a token of that account ({_short(exc)})."
            ) from exc
        except hf_errors.LocalEntryNotFoundError as exc:
            # huggingface_hub's answer to offline / DNS failure / connection refused (no cached copy).
            raise CheckpointError(_unreachable(repo, exc)) from exc
        except hf_errors.EntryNotFoundError as exc:
            raise CheckpointError(f"{repo}@{revision} has no file {name}; is it the right repository?") from exc
        except hf_errors.RevisionNotFoundError as exc:
            raise CheckpointError(f"Revision '{revision}' of {repo} does not exist ({_short(exc)}).") from exc
        except hf_errors.RepositoryNotFoundError as exc:
            # The Hub answers 401 (like "not found") for a gated or private repo without a token.
            if token is None or _status(exc) == 401:
                raise CheckpointError(
                    f"{repo} was not found or needs a login: set HF_TOKEN (a token whose account "
                    f"accepted the licence at https://huggingface.co/{repo}), and check the repo name "
                    f"({_short(exc)})."
                ) from exc
            raise CheckpointError(f"Repository {repo} not found on the Hugging Face Hub; check its name.") from exc
        except hf_errors.HfHubHTTPError as exc:
            if _status(exc) == 401:
                raise CheckpointError(
                    f"The Hub refused the token (401) for {repo}: set HF_TOKEN to a valid token "
                    f"whose account accepted the licence at https://huggingface.co/{repo}."
                ) from exc
            raise CheckpointError(f"Downloading {name} from {repo} failed: {_short(exc)}") from exc
        except Exception as exc:  # raw connection errors of the HTTP client, timeouts, disk full
            raise CheckpointError(_unreachable(repo, exc)) from exc
    if progress:
        progress(1.0, f"{repo} downloaded to {local_dir}")
    return local_dir


def _unreachable(repo: str, exc: Exception) -> str:
    return (
        f"Cannot download {repo} from the Hugging Face Hub ({type(exc).__name__}: {_short(exc)}). "
        "If the Hub is unreachable from here, the bundled sample data and the tiny test model still "
        "work offline; download the base model where the Hub is reachable (setup.sh)."
    )


def _status(exc: Exception) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def _mismatch_summary(exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln]
    return f"{len(lines)} shape mismatches, e.g. {lines[0]}" if lines else _short(exc)


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def ensure_base_model(config) -> Path:
    """The base model directory of a `pipeline.config.Config`, downloaded when missing."""
    return download_base_model(
        config.base_model.repo, config.base_model_dir, revision=config.base_model.revision
    )


# -- loading ----------------------------------------------------------------------------------


def _require(ckpt_dir: Path, names) -> None:
    if not ckpt_dir.is_dir():
        raise CheckpointError(f"Checkpoint directory {ckpt_dir} does not exist; download or write it first.")
    for name in names:
        if not (ckpt_dir / name).is_file():
            raise CheckpointError(
                f"Checkpoint {ckpt_dir} has no {name}; re-download the base model "
                "(python -m pipeline download) or point to a complete checkpoint directory."
            )


def load_tokenizer(ckpt_dir: str | Path):
    """The checkpoint's FishTokenizer, always from its special_tokens.json (docs/FISH_SPEECH_NOTES.md, wheel bug 2)."""
    from fish_speech.tokenizer import FishTokenizer

    ckpt_dir = Path(ckpt_dir)
    _require(ckpt_dir, ("tokenizer.tiktoken", "special_tokens.json"))
    try:
        special = json.loads((ckpt_dir / "special_tokens.json").read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{ckpt_dir / 'special_tokens.json'} is not valid JSON: {exc}") from None
    if not isinstance(special, dict) or not any(k.startswith("<|semantic:") for k in special):
        raise CheckpointError(f"{ckpt_dir / 'special_tokens.json'} has no <|semantic:i|> tokens.")
    # FishTokenizer numbers the tokens in file order from len(ranks); insist that matches the file.
    tokenizer = FishTokenizer(str(ckpt_dir / "tokenizer.tiktoken"), special)
    if tokenizer.all_special_tokens_with_ids != special:
        raise CheckpointError(
            f"{ckpt_dir / 'special_tokens.json'}: ids are not consecutive after the BPE ranks of "
            "tokenizer.tiktoken; the two files do not belong together."
        )
    return tokenizer


def clean_state_dict(weights: dict) -> dict:
    """Same key clean-up as fish-speech's from_pretrained (Lightning prefix, audio projector)."""
    if "state_dict" in weights:
        weights = weights["state_dict"]
    if weights and next(iter(weights)).startswith("model."):
        weights = {k.removeprefix("model."): v for k, v in weights.items()}
    return {k: v for k, v in weights.items() if "audio_" not in k}


def load_lm(ckpt_dir: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """(DualARTransformer in eval mode, FishTokenizer) from a checkpoint directory."""
    from fish_speech.models.text2semantic.llama import BaseModelArgs, DualARModelArgs, DualARTransformer

    ckpt_dir = Path(ckpt_dir)
    _require(ckpt_dir, LM_FILES)
    try:
        config = BaseModelArgs.from_pretrained(str(ckpt_dir / "config.json"))
    except (ValueError, TypeError, KeyError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{ckpt_dir / 'config.json'} is not a fish-speech model config: {exc}") from None
    if not isinstance(config, DualARModelArgs):
        raise CheckpointError(f"{ckpt_dir / 'config.json'}: model_type must be 'dual_ar', got {config.model_type!r}.")
    tokenizer = load_tokenizer(ckpt_dir)
    n_semantic = len(tokenizer.semantic_id_to_token_id)
    if n_semantic > config.codebook_size or tokenizer.semantic_end_id >= config.vocab_size:
        raise CheckpointError(
            f"{ckpt_dir}: special_tokens.json has {n_semantic} semantic tokens (last id "
            f"{tokenizer.semantic_end_id}) but config.json has codebook_size {config.codebook_size}, "
            f"vocab_size {config.vocab_size}; the files do not belong together."
        )

    with torch.device(device):
        model = DualARTransformer(config, tokenizer=tokenizer)
    try:
        weights = torch.load(ckpt_dir / "model.pth", map_location="cpu", mmap=True, weights_only=True)
    except Exception as exc:  # truncated download, wrong format
        raise CheckpointError(f"{ckpt_dir / 'model.pth'} cannot be read ({_short(exc)}); re-download it.") from None
    weights = clean_state_dict(weights)
    try:
        result = model.load_state_dict(weights, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise CheckpointError(
            f"{ckpt_dir / 'model.pth'} does not match {ckpt_dir / 'config.json'}: {_mismatch_summary(exc)}"
        ) from None
    missing = [k for k in result.missing_keys if k in dict(model.named_parameters())]
    if missing:
        raise CheckpointError(
            f"{ckpt_dir / 'model.pth'} lacks {len(missing)} weights of the model in config.json "
            f"(e.g. {missing[:3]}); the files do not belong together."
        )
    if result.unexpected_keys:
        log.warning("%s: ignoring %d unexpected keys, e.g. %s", ckpt_dir / "model.pth",
                    len(result.unexpected_keys), result.unexpected_keys[:3])
    model = model.to(device=device, dtype=dtype).eval()
    return model, tokenizer


def codec_config_path(ckpt_dir: str | Path) -> Path:
    """`codec_config.yaml` beside codec.pth when present, else the wheel's modded_dac_vq.yaml."""
    local = Path(ckpt_dir) / CODEC_CONFIG_NAME
    if local.is_file():
        return local
    return Path(str(resources.files("fish_speech") / "configs" / "modded_dac_vq.yaml"))


def build_codec(config_path: str | Path):
    """An un-trained DAC from a hydra config file (`_target_` keys)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from pipeline.model.codec_masks import keep_window_masks

    cfg = OmegaConf.load(str(config_path))
    codec = instantiate(cfg)
    keep_window_masks(codec)  # the wheel rebuilds its attention masks on the CPU at every call
    return codec


def load_codec(ckpt_dir: str | Path, device: str | torch.device = "cpu"):
    """The checkpoint's codec (fish_speech DAC) in eval mode."""
    ckpt_dir = Path(ckpt_dir)
    _require(ckpt_dir, ("codec.pth",))
    config_path = codec_config_path(ckpt_dir)
    try:
        model = build_codec(config_path)
    except Exception as exc:
        raise CheckpointError(f"Codec config {config_path} cannot be instantiated: {_short(exc)}") from None
    try:
        state = torch.load(ckpt_dir / "codec.pth", map_location="cpu", mmap=True, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{ckpt_dir / 'codec.pth'} cannot be read ({_short(exc)}); re-download it.") from None
    # Same unwrapping as fish_speech.models.dac.inference.load_model.
    if "state_dict" in state:
        state = state["state_dict"]
    if any("generator" in k for k in state):
        state = {k.replace("generator.", ""): v for k, v in state.items() if "generator." in k}
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise CheckpointError(
            f"{ckpt_dir / 'codec.pth'} does not match the codec config {config_path.name}: "
            f"{_mismatch_summary(exc)}"
        ) from None
    params = dict(model.named_parameters())
    missing = [k for k in result.missing_keys if k in params]
    if missing:
        raise CheckpointError(
            f"{ckpt_dir / 'codec.pth'} lacks {len(missing)} of {len(params)} codec weights of "
            f"{config_path.name} (e.g. {missing[:3]}); codec.pth and its config do not match."
        )
    return model.to(device).eval()


def codec_copy(codec, config_path: str | Path):
    """Another codec with `codec`'s weights on its device, without reading the checkpoint again
    (extraction runs two per GPU)."""
    twin = build_codec(config_path)
    twin.load_state_dict(codec.state_dict())
    return twin.to(next(codec.parameters()).device).eval()


_IDENTITY_CACHE: dict[tuple, str] = {}


def codec_identity(ckpt_dir: str | Path) -> str:
    """sha256 of codec.pth and its config: codes made by different codecs never share a cache key."""
    ckpt_dir = Path(ckpt_dir)
    _require(ckpt_dir, ("codec.pth",))
    weights, config = ckpt_dir / "codec.pth", codec_config_path(ckpt_dir)
    key = tuple((str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in (weights, config))
    if key not in _IDENTITY_CACHE:
        digest = hashlib.sha256()
        with open(weights, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
        digest.update(b"\0config\0")
        digest.update(config.read_bytes())
        _IDENTITY_CACHE[key] = digest.hexdigest()
    return _IDENTITY_CACHE[key]


def is_random_weights(ckpt_dir: str | Path) -> bool:
    return (Path(ckpt_dir) / RANDOM_WEIGHTS_MARKER).is_file()


def describe_checkpoint(ckpt_dir: str | Path) -> str:
    """A one-line human description for the UI and logs."""
    ckpt_dir = Path(ckpt_dir)
    if is_random_weights(ckpt_dir):
        return "tiny test model — random weights: produces noise"
    try:
        cfg = json.loads((ckpt_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return f"{ckpt_dir.name} (incomplete checkpoint)"
    if ckpt_dir.name == "openaudio-s1-mini" or (cfg.get("dim") == 1024 and cfg.get("n_layer") == 28):
        return f"{ckpt_dir.name} (Fish Speech)"
    return f"{ckpt_dir.name} (Fish Speech, dim {cfg.get('dim')}, {cfg.get('n_layer')} layers)"


# -- shapes -----------------------------------------------------------------------------------


def real_shape_args():
    """DualARModelArgs with the s1-mini shape (docs/FISH_SPEECH_NOTES.md), for GPU benchmarks with random weights."""
    from fish_speech.models.text2semantic.llama import DualARModelArgs

    return DualARModelArgs(
        model_type="dual_ar", vocab_size=155776, n_layer=28, n_head=16, n_local_heads=8, dim=1024,
        head_dim=128, intermediate_size=3072, rope_base=1_000_000.0, norm_eps=1e-6, max_seq_len=8192,
        tie_word_embeddings=False, attention_qk_norm=True, codebook_size=4096, num_codebooks=10,
        n_fast_layer=4, fast_dim=1024, fast_n_head=16, fast_n_local_heads=8, fast_head_dim=64,
        fast_intermediate_size=3072, fast_attention_qk_norm=False, scale_codebook_embeddings=True,
    )
