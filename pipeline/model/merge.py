"""Write stand-alone Fish Speech model directories: base + LoRA merged, or a fully fine-tuned model;
and the downloads (adapter zip, model folder zip), each with a model card (`pipeline.model.model_card`).

The output has the Hub layout (config.json, model.pth with the original key names and dtypes,
tokenizer.tiktoken, special_tokens.json, codec.pth) so fish-speech's own `init_model` and
`pipeline.model.checkpoints.load_lm` load it like the base model.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import zipfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from pipeline.atomic import replacing
from pipeline.model.adapters import ADAPTER_FILES, AdapterError, load_adapters
from pipeline.model.checkpoints import LM_FILES, clean_state_dict, load_lm
from pipeline.model.adapters import unwrap
from pipeline.model.model_card import CARD_NAME, model_card

COPIED_FILES = ("config.json", "tokenizer.tiktoken", "special_tokens.json", "codec_config.yaml", "RANDOM_WEIGHTS")
LINKED_FILES = ("codec.pth",)  # large and unchanged: hard-link when the filesystem allows
ADAPTER_EXTRA = ("studio_adapter.json",)  # a checkpoint's other files (optimizer state) stay out of downloads
STORED_SUFFIXES = (".pth", ".safetensors")  # weights barely compress: store them, zip in seconds not minutes


class MergeError(ValueError):
    """The model cannot be written (base checkpoint incomplete, model still has unmerged adapters)."""


def _minimal_facts(base: str | Path | None = None, adapter_dir: str | Path | None = None) -> dict:
    """Card facts known without the run: the adapter's own record (step) and the base folder."""
    facts: dict = {"base_model_path": str(base) if base else None}
    if adapter_dir:
        try:
            meta = json.loads((Path(adapter_dir) / "studio_adapter.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            meta = {}
        if isinstance(meta, dict) and meta.get("step") is not None:
            facts["phases"] = {str(meta.get("mode") or "lora"): {"steps": meta["step"]}}
        facts["base_model_path"] = facts["base_model_path"] or meta.get("base_checkpoint")
    path = facts["base_model_path"]
    facts["random_weights"] = bool(path and (Path(path) / "RANDOM_WEIGHTS").is_file())
    return facts


def export_adapter(adapter_dir: str | Path, zip_path: str | Path, card: dict | None = None) -> Path:
    """A zip of the adapter for download: peft's files, the studio's record, and a model card
    (README.md) from `card` (facts as `pipeline.model.model_card.run_card_facts` gives them)."""
    adapter_dir, zip_path = Path(adapter_dir), Path(zip_path)
    missing = [n for n in ADAPTER_FILES if not (adapter_dir / n).is_file()]
    if missing:
        raise AdapterError(f"{adapter_dir} is not a peft adapter (missing {', '.join(missing)}).")
    facts = card if card is not None else _minimal_facts(adapter_dir=adapter_dir)
    with replacing(zip_path) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in ADAPTER_FILES + ADAPTER_EXTRA:
            if (adapter_dir / name).is_file():
                zf.write(adapter_dir / name, name)
        zf.writestr(CARD_NAME, model_card(facts, "adapter"))
    return zip_path


# what a training checkpoint holds only to resume training: never part of a downloaded model
RESUME_ONLY_FILES = {"optimizer.pt", "master_weights.safetensors", "trainer_state.json", "integrity.json"}


def export_model_zip(model_dir: str | Path, zip_path: str | Path, card: dict | None = None,
                     kind: str = "merged") -> Path:
    """One zip of a model folder (all its files under one folder named like the zip) with its
    model card: `card` when given, else the folder's own README.md, else a card of what is known."""
    model_dir, zip_path = Path(model_dir), Path(zip_path)
    missing = [n for n in LM_FILES if not (model_dir / n).is_file()]
    if missing:
        raise MergeError(f"{model_dir} is not a complete model folder (missing {', '.join(missing)}).")
    if card is not None or not (model_dir / CARD_NAME).is_file():
        text = model_card(card if card is not None else _minimal_facts(), kind)
    else:
        text = (model_dir / CARD_NAME).read_text(encoding="utf-8")
    folder = zip_path.stem
    with replacing(zip_path) as tmp, \
            zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
        for path in sorted(p for p in model_dir.iterdir()
                           if p.is_file() and p.name != CARD_NAME and p.name not in RESUME_ONLY_FILES):
            stored = path.suffix in STORED_SUFFIXES
            zf.write(path, f"{folder}/{path.name}", compress_type=zipfile.ZIP_STORED if stored else None)
        zf.writestr(f"{folder}/{CARD_NAME}", text)
    return zip_path


def _reference_weights(base_ckpt_dir: Path) -> dict[str, torch.Tensor]:
    """The base model.pth's tensors (memory-mapped): their names, order and dtypes are kept."""
    for name in LM_FILES:
        if not (base_ckpt_dir / name).is_file():
            raise MergeError(f"Base checkpoint {base_ckpt_dir} has no {name}.")
    return clean_state_dict(torch.load(base_ckpt_dir / "model.pth", map_location="cpu", mmap=True, weights_only=True))


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
    state: dict[str, torch.Tensor], base_ckpt_dir: Path, out_dir: Path, safetensors: bool, info: dict,
    card: str | None = None,
) -> Path:
    out_dir = Path(out_dir)
    if out_dir.resolve() == base_ckpt_dir.resolve():
        raise MergeError(f"Refusing to overwrite the base checkpoint {base_ckpt_dir}; choose another output directory.")
    with replacing(out_dir) as tmp:
        tmp.mkdir()
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
        if card is not None:
            (tmp / CARD_NAME).write_text(card, encoding="utf-8")
    return out_dir


def merge_lora(base_ckpt_dir: str | Path, adapter_dir: str | Path, out_dir: str | Path, weight: float = 1.0,
               card: dict | None = None) -> Path:
    """Load the base model, merge the adapter (times `weight`) into its weights, write a model dir
    with a model card (README.md) from `card` (facts as `pipeline.model.model_card.run_card_facts` gives)."""
    base_ckpt_dir = Path(base_ckpt_dir)
    model, _ = load_lm(base_ckpt_dir, device="cpu", dtype=torch.float32)  # merge in fp32, store in base dtype
    peft_model = load_adapters(model, [(adapter_dir, weight)])
    merged = peft_model.merge_and_unload()
    state = _state_dict_like_base(merged, base_ckpt_dir, dtype=None)
    return _write_model_dir(
        state, base_ckpt_dir, Path(out_dir), safetensors=False,
        info={"kind": "lora_merged", "adapter": str(adapter_dir), "weight": weight},
        card=model_card(card if card is not None else _minimal_facts(base_ckpt_dir, adapter_dir), "merged"),
    )


def save_full_model(model, base_ckpt_dir: str | Path, out_dir: str | Path, dtype: torch.dtype | None = None,
                    card: dict | None = None) -> Path:
    """Write a fully fine-tuned model (model.pth + model.safetensors) beside the base's other files,
    with a model card when `card` facts are given.

    Weights are stored in the base file's dtypes unless `dtype` is given (e.g. torch.float32).
    """
    base_ckpt_dir = Path(base_ckpt_dir)
    state = _state_dict_like_base(model, base_ckpt_dir, dtype)
    return _write_model_dir(state, base_ckpt_dir, Path(out_dir), safetensors=True, info={"kind": "full_finetune"},
                            card=model_card(card, "full") if card is not None else None)
