"""Model cards (README.md) for everything the studio lets a user take away: a LoRA adapter, a
merged model folder, a language-adapted (phase-1) model.

A card states what the weights are (base model, licence, dataset, speaker, recipe, steps,
held-out loss) and how to load them, so a downloaded file still says where it came from and
under which licence it may be used. `run_card_facts` gathers the facts of a run from its record and files;
`write_model_card` writes the card into a folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

CARD_NAME = "README.md"
LICENSE = "cc-by-nc-sa-4.0"
LICENSE_NAME = "CC-BY-NC-SA-4.0"
LICENSE_URL = "https://creativecommons.org/licenses/by-nc-sa/4.0/"
CARD_MARK = "<!-- finnish-tts-studio model card -->"  # tells our card from peft's template
KINDS = {"adapter": "LoRA adapter", "merged": "merged model (base + LoRA)", "full": "language-adapted full model"}
RECIPE_KEYS = ("steps", "epochs", "lr", "schedule", "batch_size", "grad_accumulation", "lora_rank", "lora_alpha",
               "lora_dropout", "lora_train_embeddings", "precision", "seed")


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _phase_facts(phase_dir: Path) -> dict:
    """Steps, held-out loss and the recipe of one training phase (state.json + best checkpoint)."""
    state = _read_json(phase_dir / "state.json")
    best = state.get("best") or state.get("latest")
    trainer = {}
    if best:
        best_dir = Path(best) if Path(best).is_absolute() else phase_dir / best
        trainer = _read_json(best_dir / "trainer_state.json")
    settings = trainer.get("settings") or {}
    return {
        "steps": state.get("step"), "total_steps": state.get("total_steps"), "epoch": state.get("epoch"),
        "best_val_loss": state.get("best_val_loss"), "best_checkpoint": Path(best).name if best else None,
        "best_step": trainer.get("step"), "status": state.get("status"),
        "recipe": {k: settings[k] for k in RECIPE_KEYS if settings.get(k) is not None},
    }


def run_card_facts(run_dir: str | Path, run: dict) -> dict:
    """The facts of a run's model card: `run` is its record (pipeline.train.runs.read_run), the rest
    is read from its config.yaml and each phase's state.json."""
    run_dir = Path(run_dir)
    config = _read_yaml(run_dir / "config.yaml")
    base = config.get("base_model") or {}
    dataset = config.get("dataset") or {}
    phases = run.get("phases") or sorted(p.name for p in (run_dir / "phases").glob("*") if p.is_dir())
    base_path = run.get("base_model")
    return {
        "run_id": run.get("id") or run_dir.name,
        "mode": run.get("mode"),
        "base_model": base.get("repo"),
        "base_revision": base.get("revision"),
        "base_model_path": base_path,
        "random_weights": bool(base_path and (Path(base_path) / "RANDOM_WEIGHTS").is_file()),
        "dataset": run.get("dataset"),
        "dataset_source": _dataset_source(dataset),
        "speaker": run.get("speaker"),
        "speaker_reason": run.get("speaker_reason"),
        "phases": {phase: _phase_facts(run_dir / "phases" / phase) for phase in phases
                   if (run_dir / "phases" / phase).is_dir()},
    }


def _dataset_source(dataset: dict) -> str | None:
    source = dataset.get("source")
    if source == "huggingface":
        repo = dataset.get("hf_repo")
        return f"Hugging Face {repo}" + "".join(f" / {dataset[k]}" for k in ("hf_config", "hf_split") if dataset.get(k))
    if source in ("folder", "zip"):
        return f"{source} {Path(str(dataset.get('path') or '')).name}"
    return source


def _value(value, digits: int = 4) -> str:
    if value is None or value == "":
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _facts_table(facts: dict, kind: str) -> list[str]:
    base = facts.get("base_model") or "unknown"
    if facts.get("random_weights"):
        base += " (tiny test model with random weights: produces noise, not speech)"
    rows = [("Kind", KINDS.get(kind, kind)), ("Base model", base), ("Licence", LICENSE_NAME),
            ("Run", facts.get("run_id")), ("Training mode", facts.get("mode")),
            ("Dataset", " · ".join(str(v) for v in (facts.get("dataset"), facts.get("dataset_source")) if v) or None),
            ("Speaker", facts.get("speaker") or ("all speakers" if facts.get("mode") == "quick_lora" else None))]
    if facts.get("speaker_reason"):
        rows.append(("Why this speaker", facts["speaker_reason"]))
    lines = ["| | |", "| --- | --- |", *(f"| {k} | {_value(v)} |" for k, v in rows)]
    for phase, info in (facts.get("phases") or {}).items():
        steps = _value(info.get("steps")) + (f" of {info['total_steps']}" if info.get("total_steps") else "")
        lines.append(f"| Phase `{phase}`: steps | {steps} |")
        lines.append(f"| Phase `{phase}`: best held-out loss | {_value(info.get('best_val_loss'))}"
                     + (f" ({info['best_checkpoint']})" if info.get("best_checkpoint") else "") + " |")
        if info.get("recipe"):
            recipe = ", ".join(f"{k} {_value(v)}" for k, v in info["recipe"].items())
            lines.append(f"| Phase `{phase}`: recipe | {recipe} |")
    return lines


def _how_to_load(kind: str, base: str, mode: str | None) -> list[str]:
    if kind == "adapter":
        base_dir = "phase1" if mode == "full_finetune" else "checkpoints/" + base.split("/")[-1]
        on = ("the language-adapted model of the same run's `full` phase (its phase-1 model download), not on "
              "the base model itself" if mode == "full_finetune" else "the base model")
        return [
            "## How to load", "",
            f"Unzip, then stack the adapter on {on} (peft format: `adapter_config.json`, "
            "`adapter_model.safetensors`):", "",
            "```python", "import torch",
            "from fish_speech.models.text2semantic.inference import init_model", "from peft import PeftModel", "",
            f"model, _ = init_model(\"{base_dir}\", \"cuda\", torch.bfloat16)",
            "model = PeftModel.from_pretrained(model, \"adapter\")  # this folder",
            "model = model.merge_and_unload()  # optional: a plain fish-speech model again", "```", "",
            "With this project: `python -m pipeline say \"Hyvää huomenta.\" --adapter adapter:1.0"
            + (" --model phase1" if mode == "full_finetune" else "") + "`, or `python -m pipeline merge --base "
            + ("phase1" if mode == "full_finetune" else "<base folder>") + " --adapter adapter --out merged` "
            "for a stand-alone model.",
        ]
    return [
        "## How to load", "",
        "This folder has the Fish Speech layout (`config.json`, `model.pth`, `tokenizer.tiktoken`, "
        "`special_tokens.json`, `codec.pth`): load it wherever the base model loads.", "",
        "```python", "import torch", "from fish_speech.models.text2semantic.inference import init_model", "",
        "model, decode_one_token = init_model(\"merged\", \"cuda\", torch.bfloat16)  # this folder", "```", "",
        "fish-speech's tools take it as `--checkpoint-path merged` "
        "(`python -m fish_speech.models.text2semantic.inference --text \"Hyvää huomenta.\" "
        "--checkpoint-path merged`); "
        "with this project: `python -m pipeline say \"Hyvää huomenta.\" --model merged`.",
    ]


def model_card(facts: dict, kind: str) -> str:
    """The README.md text of a model card; `kind` is adapter, merged or full."""
    if kind not in KINDS:
        raise ValueError(f"Model card kind must be one of {', '.join(KINDS)}, not {kind!r}.")
    base = facts.get("base_model") or "fishaudio/openaudio-s1-mini"
    front = {"license": LICENSE, "language": ["fi"], "base_model": base, "pipeline_tag": "text-to-speech",
             "library_name": "peft" if kind == "adapter" else "fish-speech",
             "tags": ["text-to-speech", "fish-speech", "finnish", *(["lora"] if kind != "full" else [])]}
    title = f"Finnish {KINDS[kind]}" + (f" · speaker {facts['speaker']}" if facts.get("speaker") else "")
    lines = [
        "---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True).strip(), "---", CARD_MARK, "",
        f"# {title}", "",
        f"Fine-tuned from [{base}](https://huggingface.co/{base}) on Finnish speech with the Finnish TTS studio.", "",
        *_facts_table(facts, kind), "",
        "## Licence", "",
        f"{LICENSE_NAME} ({LICENSE_URL}), the licence of the base model {base}: attribution, non-commercial use "
        "only, and derivatives under the same licence. Check the dataset's own licence and the speakers' consent "
        "before publishing speech made with these weights.", "",
        *_how_to_load(kind, base, facts.get("mode")), "",
    ]
    return "\n".join(lines)


def write_model_card(directory: str | Path, facts: dict, kind: str) -> Path:
    """Write the card as `<directory>/README.md` (replacing peft's empty template)."""
    path = Path(directory) / CARD_NAME
    path.write_text(model_card(facts, kind), encoding="utf-8")
    return path


def is_model_card(text: str) -> bool:
    """True for a card written here (not peft's template, not a user's file)."""
    return CARD_MARK in text
