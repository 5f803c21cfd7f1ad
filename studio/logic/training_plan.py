"""What the Training tab's Start button will train: the plan table, and the finished full
fine-tunes whose language-adapted model a new speaker's LoRA can start from.

Read from the config, the saved selection (Dataset and Modes & cost tabs) and the runs folder.
No gradio import.
"""

from __future__ import annotations

from datetime import datetime

from pipeline.config import Config
from pipeline.data.dataset import list_datasets
from pipeline.data.selection import apply_selection, load_selection
from pipeline.estimate.cost import CPU_CHARGE
from pipeline.model.checkpoints import describe_checkpoint
from pipeline.train.workflow import language_models
from studio.logic import training_gpus
from studio.logic.runs_view import MODE_LABELS
from studio.logic.training_html import esc, note


# -- what Start will run --------------------------------------------------------------------------
def training_config(config: Config) -> Config:
    """The studio config + the saved selection (dataset, speaker, Modes & cost settings)."""
    return apply_selection(config, load_selection(config))


def plan_html(config: Config, base_run: str | None = None, gpus=None) -> str:
    """A compact table of what the Start button will train, with the base model's state; with
    `base_run` (a finished full fine-tune) a new speaker's LoRA on that run's language-adapted model;
    on `gpus` GPUs (None: training.gpus)."""
    selection = load_selection(config)
    try:
        cfg = training_config(config)
    except ValueError as exc:
        return note(f"The saved settings are invalid: {exc}", "error")
    t, mode = cfg.training, cfg.training_mode.selected
    dataset = selection.get("dataset_id")
    if not dataset or dataset not in list_datasets(config):
        dataset_text = "<span class='warn'>none loaded: load one in the Dataset tab first</span>"
    else:
        dataset_text = esc(dataset)
    picked_voice = selection.get("speaker") or "the recommended speaker"
    if base_run:
        rows = _speaker_run_rows(config, cfg, base_run, picked_voice)
    else:
        rows = _mode_rows(cfg, mode, picked_voice)
    rows.insert(1, ("Dataset", dataset_text))
    rows += [("Batch", esc(f"{t.batch_size} × {t.max_length} tokens, LoRA rank {t.lora.rank}")),
             ("Billed at", _billing_text(cfg)), *training_gpus.plan_rows(cfg, gpus)]
    body = "".join(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in rows)
    return f"<div class='plan'><table>{body}</table></div>"


def _mode_rows(cfg: Config, mode: str, picked_voice: str) -> list[tuple[str, str]]:
    """Mode, voice, recipe and base model of the mode chosen in Modes & cost."""
    t = cfg.training
    if mode == "quick_lora":  # one LoRA over every clip: no speaker is picked
        voice = "all speakers (every accepted clip)"
        recipe = f"{t.quick_lora.steps} steps at learning rate {t.quick_lora.learning_rate:g}"
    else:
        voice = picked_voice + (" (speaker LoRA after the full fine-tune)" if mode == "full_finetune" else "")
        ff = t.full_finetune
        recipe = (f"{ff.epochs:g} epochs at {ff.learning_rate:g}, then up to {ff.speaker_max_steps} speaker "
                  f"steps at {ff.speaker_learning_rate:g}")
    base = cfg.base_model_dir
    if (base / "model.pth").is_file():
        model_text = esc(describe_checkpoint(base))
        if "random weights" in model_text:
            model_text = f"<span class='warn'>{model_text}</span>"
    else:
        model_text = (f"<span class='warn'>not downloaded yet: {esc(cfg.base_model.repo)} is fetched at start "
                      "(needs HF_TOKEN of an account that accepted the licence)</span>")
    return [("Mode", esc(MODE_LABELS.get(mode, mode))), ("Voice", esc(voice)), ("Recipe", esc(recipe)),
            ("Base model", model_text)]


def _speaker_run_rows(config: Config, cfg: Config, base_run: str, picked_voice: str) -> list[tuple[str, str]]:
    """What a new speaker run on `base_run`'s language-adapted model trains."""
    ff = cfg.training.full_finetune
    model = language_model(config, base_run)
    if model is None:
        trains = (f"<span class='warn'>{esc(base_run)} is not a finished full fine-tune with a language-adapted "
                  "model (any more): pick another, or ↻ Refresh</span>")
        base_text = "—"
    else:
        trains = esc(f"a speaker LoRA on {base_run}'s language-adapted model (phase 1 of that full fine-tune), "
                      "then merge and evaluation audio")
        base_text = esc(f"{model['path']} (its own voice was {model.get('speaker') or '?'})")
    recipe = (f"up to {ff.speaker_max_steps} steps at learning rate {ff.speaker_learning_rate:g}, stopping early "
              "when held-out loss stalls")
    return [("Mode", esc(MODE_LABELS["speaker_lora"] + " on a language-adapted model")), ("Trains", trains),
            ("Voice", esc(f"{picked_voice} (new speaker)")), ("Recipe", esc(recipe)),
            ("Base model", base_text)]


def _billing_text(cfg: Config) -> str:
    text = esc(f"{cfg.gpu.type}, ${cfg.gpu.price_per_hour:.2f}/h")
    if not _has_gpu():
        text += esc(f" — {CPU_CHARGE}: this machine has no GPU, a run here trains on the CPU")
    return text


def _has_gpu() -> bool:
    import torch

    return bool(torch.cuda.is_available())


# -- new speakers on a finished full fine-tune's language-adapted model ----------------------------
NO_LANGUAGE_MODELS = ("None yet: a finished “Full fine-tune + speaker LoRA” run provides one (its phase-1, "
                      "language-adapted model); ↻ Refresh lists it once that run has finished.")
FROM_BASE = ("— no: train the mode chosen in Modes & cost —", "")


def language_model(config: Config, run_id: str | None) -> dict | None:
    """The language-adapted model of finished full fine-tune `run_id`, if it has one."""
    return next((m for m in language_models(config) if m["run_id"] == run_id), None) if run_id else None


def language_model_choices(config: Config) -> list[tuple[str, str]]:
    """The dropdown's choices: train from the base model, or (run id · its voice · date) of each
    finished full fine-tune's language-adapted model, newest first."""
    return [FROM_BASE] + [(f"{m['run_id']} · voice {m.get('speaker') or '?'} · {_date(m.get('created'))}",
                           m["run_id"]) for m in language_models(config)]


def language_model_info(config: Config) -> str:
    """The dropdown's help line: what picking one does, or where one comes from when there is none."""
    if not language_models(config):
        return NO_LANGUAGE_MODELS
    return ("Trains only a speaker LoRA for the voice picked in the Dataset tab on that run's language-adapted "
            "model: no second full fine-tune.")


def _date(value) -> str:
    try:
        return datetime.fromisoformat(str(value)).strftime("%Y-%m-%d %H:%M")
    except (TypeError, ValueError):
        return "date unknown"
