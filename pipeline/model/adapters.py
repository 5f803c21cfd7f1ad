"""LoRA adapters with peft (not the wheel's loralib `setup_lora`, docs/FISH_SPEECH_NOTES.md, wheel bug 5).

peft swaps the targeted `nn.Linear`/`nn.Embedding` modules of the DualARTransformer IN PLACE, so
the model object the caller holds keeps working: `forward_generate`, `setup_caches` and
`pipeline.train.loss.compute_loss` all run through the adapted modules. A fresh adapter has
lora_B = 0 and leaves every output exactly unchanged.

Adapters are saved in peft's format (adapter_config.json + adapter_model.safetensors).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import zipfile
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from fish_speech.models.text2semantic.llama import DualARTransformer
from peft.tuners.tuners_utils import BaseTunerLayer

from pipeline.atomic import replacing


def unwrap(model) -> DualARTransformer:
    """The DualARTransformer inside a peft wrapper (peft swaps Linear modules in place)."""
    while not isinstance(model, DualARTransformer):
        if hasattr(model, "get_base_model"):
            model = model.get_base_model()
        elif hasattr(model, "model"):
            model = model.model
        else:
            raise TypeError(f"Expected a DualARTransformer (or a peft wrapper of one), got {type(model).__name__}.")
    return model


LINEAR_TARGETS = ("wqkv", "wo", "w1", "w2", "w3")
HEAD_TARGETS = ("output", "fast_output")
EMBEDDING_TARGETS = ("embeddings", "codebook_embeddings", "fast_embeddings")
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
EXTRA_FILES = ("studio_adapter.json", "README.md")


class AdapterError(ValueError):
    """An adapter directory that cannot be loaded (missing files, made for another model)."""


def target_modules(model, train_embeddings: bool = False) -> list[str]:
    base = unwrap(model)
    targets = list(LINEAR_TARGETS) + [t for t in HEAD_TARGETS if isinstance(getattr(base, t, None), torch.nn.Linear)]
    if train_embeddings:
        targets += list(EMBEDDING_TARGETS)
    return targets


def attach_lora(
    model,
    rank: int = 8,
    alpha: float = 16,
    dropout: float = 0.01,
    train_embeddings: bool = False,
    adapter_name: str = "default",
) -> PeftModel:
    """Wrap the slow and fast attention/FFN projections and the output heads (and optionally the
    embeddings) with a new trainable LoRA adapter. Every other parameter is frozen."""
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules(model, train_embeddings),
        bias="none",
        init_lora_weights=True,  # lora_B = 0: the adapted model starts exactly at the base model
    )
    if isinstance(model, PeftModel):
        model.add_adapter(adapter_name, config)
        model.base_model.set_adapter(adapter_name)
        return model
    return get_peft_model(unwrap(model), config, adapter_name=adapter_name)


def load_trainable_adapter(model, adapter_dir: str | Path, adapter_name: str = "default") -> PeftModel:
    """Continue training an existing adapter (the `init_adapter` setting)."""
    adapter_dir = _check_adapter_dir(adapter_dir)
    base = remove_adapters(model)
    return PeftModel.from_pretrained(base, str(adapter_dir), adapter_name=adapter_name, is_trainable=True)


def save_adapter(model, out_dir: str | Path, adapter_name: str | None = None, metadata: dict | None = None) -> Path:
    """Write one adapter in peft format (safetensors) into `out_dir` (flat, whatever its name)."""
    if not isinstance(model, PeftModel):
        raise AdapterError("save_adapter needs the PeftModel returned by attach_lora or load_adapters.")
    name = adapter_name or (model.active_adapter if isinstance(model.active_adapter, str) else model.active_adapters[0])
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent) as tmp:
        model.save_pretrained(tmp, selected_adapters=[name], safe_serialization=True, save_embedding_layers=False)
        src = Path(tmp) if name == "default" else Path(tmp) / name  # peft nests non-default names
        if metadata:
            (src / "studio_adapter.json").write_text(json.dumps(metadata, indent=2, ensure_ascii=False))
        shutil.rmtree(out_dir, ignore_errors=True)
        shutil.move(str(src), str(out_dir))
    return out_dir


def remove_adapters(model):
    """The bare DualARTransformer with every LoRA module replaced by its original layer (unmerged)."""
    base = model.unload() if isinstance(model, PeftModel) else unwrap(model)
    for parent in list(base.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, BaseTunerLayer):
                setattr(parent, name, child.get_base_layer())
    base.__dict__.pop("peft_config", None)  # peft leaves its config on the model; a stale one confuses re-wrapping
    return base


def _check_adapter_dir(path: str | Path) -> Path:
    path = Path(path)
    missing = [n for n in ADAPTER_FILES if not (path / n).is_file()]
    if missing:
        raise AdapterError(f"{path} is not a LoRA adapter directory: missing {', '.join(missing)}.")
    return path


def load_adapters(model, adapters: list[tuple[str | Path, float]]) -> PeftModel:
    """Stack adapters on `model` without merging: output = base + sum(weight_i * adapter_i).

    Replaces any adapters already attached. The DualARTransformer object itself is modified in
    place (returned PeftModel wraps it), so callers may keep using their reference to it.
    """
    base = remove_adapters(model)
    if not adapters:
        raise AdapterError("load_adapters needs at least one (adapter_dir, weight) pair.")
    peft_model, names = None, []
    for i, (path, weight) in enumerate(adapters):
        path, name = _check_adapter_dir(path), f"adapter_{i}"
        try:
            if peft_model is None:
                peft_model = PeftModel.from_pretrained(base, str(path), adapter_name=name, is_trainable=False)
            else:
                peft_model.load_adapter(str(path), adapter_name=name, is_trainable=False)
        except (RuntimeError, ValueError, KeyError) as exc:
            remove_adapters(peft_model if peft_model is not None else base)
            raise AdapterError(f"Adapter {path} does not fit this model: {str(exc).splitlines()[0][:300]}") from None
        names.append(name)
    peft_model.base_model.set_adapter(names, inference_mode=True)
    for module in base.modules():
        if isinstance(module, LoraLayer):
            for name, (_, weight) in zip(names, adapters):
                module.set_scale(name, float(weight))
    return peft_model


def adapter_scales(model) -> dict[str, float]:
    """Effective scaling (weight * alpha / r) of each active adapter, from the first LoRA layer."""
    for module in unwrap(model).modules():
        if isinstance(module, LoraLayer):
            return {name: float(module.scaling[name]) for name in module.active_adapters if name in module.scaling}
    return {}


def export_adapter_zip(adapter_dir: str | Path, zip_path: str | Path) -> Path:
    """A zip of the adapter's files (for download from the studio): peft format, loadable with
    load_adapters or peft's PeftModel.from_pretrained after unzipping."""
    adapter_dir = _check_adapter_dir(adapter_dir)
    zip_path = Path(zip_path)
    with replacing(zip_path) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in ADAPTER_FILES + EXTRA_FILES:  # not a training checkpoint's optimizer state
            if (adapter_dir / name).is_file():
                zf.write(adapter_dir / name, name)
    return zip_path
