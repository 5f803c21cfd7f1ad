"""Write stand-alone Fish Speech model directories: base + LoRA merged, or a fully fine-tuned model.

The output has the Hub layout (config.json, model.pth with the original key names and dtypes,
tokenizer.tiktoken, special_tokens.json, codec.pth) so fish-speech's own `init_model` and
`pipeline.checkpoints.load_lm` load it like the base model.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from pipeline.adapters import export_adapter_zip, load_adapters
from pipeline.checkpoints import LM_FILES, load_lm
from pipeline.forward import unwrap

COPIED_FILES = ("config.json", "tokenizer.tiktoken", "special_tokens.json", "codec_config.yaml", "RANDOM_WEIGHTS")
LINKED_FILES = ("codec.pth",)  # large and unchanged: hard-link when the filesystem allows


# the adapter zip for download (pipeline.workflow imports it from here)
export_adapter = export_adapter_zip


class MergeError(ValueError):
    """The model cannot be written (base checkpoint incomplete, model still has unmerged adapters)."""


def _reference_weights(base_ckpt_dir: Path) -> dict[str, torch.Tensor]:
    """The base model.pth's tensors (memory-mapped): their names, order and dtypes are kept."""
    for name in LM_FILES:
        if not (base_ckpt_dir / name).is_file():
            raise MergeError(f"Base checkpoint {base_ckpt_dir} has no {name}.")
    weights = torch.load(base_ckpt_dir / "model.pth", map_location="cpu", mmap=True, weights_only=True)
    if "state_dict" in weights:
        weights = weights["state_dict"]
    if weights and next(iter(weights)).startswith("model."):
        weights = {k.removeprefix("model."): v for k, v in weights.items()}
    return {k: v for k, v in weights.items() if "audio_" not in k}


def _state_dict_like_base(model, base_ckpt_dir: Path, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    model = unwrap(model)
    if any(hasattr(m, "base_layer") for m in model.modules()):
        raise MergeError("The model still has LoRA modules; merge them (merge_and_unload) before saving.")
    state = {k: v for k, v in model.state_dict().items() if "kv_cache" not in k}
    reference = _reference_weights(base_ckpt_dir)
    missing = [k for k in reference if k not in state]
    if missing:
        raise MergeError(f"The model lacks {len(missing)} weights of {base_ckpt_dir / 'model.pth'} (e.g. {missing[:3]}).")
    return {k: state[k].detach().to("cpu", dtype or ref.dtype).contiguous() for k, ref in reference.items()}


def _write_model_dir(
    state: dict[str, torch.Tensor], base_ckpt_dir: Path, out_dir: Path, safetensors: bool, info: dict
) -> Path:
    out_dir = Path(out_dir)
    if out_dir.resolve() == base_ckpt_dir.resolve():
        raise MergeError(f"Refusing to overwrite the base checkpoint {base_ckpt_dir}; choose another output directory.")
    tmp = out_dir.with_name(out_dir.name + ".writing")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save(state, tmp / "model.pth")
    if safetensors:
        save_file(state, tmp / "model.safetensors", metadata={"format": "pt"})
    for name in COPIED_FILES:
        if (base_ckpt_dir / name).is_file():
            shutil.copy2(base_ckpt_dir / name, tmp / name)
    for name in LINKED_FILES:
        src = base_ckpt_dir / name
        if src.is_file():
            try:
                os.link(src.resolve(), tmp / name)
            except OSError:  # other filesystem, no hard-link support
                shutil.copy2(src, tmp / name)
    info = {"base_checkpoint": str(base_ckpt_dir), "created": time.strftime("%Y-%m-%dT%H:%M:%S"), **info}
    (tmp / "merge_info.json").write_text(json.dumps(info, indent=2, ensure_ascii=False))
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return out_dir


def merge_lora(base_ckpt_dir: str | Path, adapter_dir: str | Path, out_dir: str | Path, weight: float = 1.0) -> Path:
    """Load the base model, merge the adapter (times `weight`) into its weights, write a model dir."""
    base_ckpt_dir = Path(base_ckpt_dir)
    model, _ = load_lm(base_ckpt_dir, device="cpu", dtype=torch.float32)  # merge in fp32, store in base dtype
    peft_model = load_adapters(model, [(adapter_dir, weight)])
    merged = peft_model.merge_and_unload()
    state = _state_dict_like_base(merged, base_ckpt_dir, dtype=None)
    return _write_model_dir(
        state, base_ckpt_dir, Path(out_dir), safetensors=False,
        info={"kind": "lora_merged", "adapter": str(adapter_dir), "weight": weight},
    )


def save_full_model(model, base_ckpt_dir: str | Path, out_dir: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write a fully fine-tuned model (model.pth + model.safetensors) beside the base's other files.

    Weights are stored in the base file's dtypes unless `dtype` is given (e.g. torch.float32).
    """
    base_ckpt_dir = Path(base_ckpt_dir)
    state = _state_dict_like_base(model, base_ckpt_dir, dtype)
    return _write_model_dir(state, base_ckpt_dir, Path(out_dir), safetensors=True, info={"kind": "full_finetune"})
