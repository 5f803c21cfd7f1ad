"""The Modes & cost tab's settings, without gradio: control values from the effective configuration,
each checked against the config schema and saved as dotted keys in `workspace/selection.json`
(pipeline.data.selection), which the Training tab applies when it starts a run."""

from __future__ import annotations

from pipeline.config import Config, ConfigError
from pipeline.data.dataset import list_datasets, open_dataset
from pipeline.data.selection import apply_selection, load_selection, save_selection
from pipeline.estimate.cost import load_price_table
from pipeline.estimate.recipe import check_recipe
from studio.logic.modes_view import esc, note

# control name → dotted config key it is saved under
SETTING_KEYS = {
    "mode": "training_mode.selected", "gpu": "gpu.type", "price": "gpu.price_per_hour",
    "quick_steps": "training.quick_lora.steps", "quick_lr": "training.quick_lora.learning_rate",
    "full_epochs": "training.full_finetune.epochs", "full_lr": "training.full_finetune.learning_rate",
    "speaker_steps": "training.full_finetune.speaker_max_steps", "rank": "training.lora.rank",
    "batch_size": "training.batch_size", "val_every": "training.val_every", "save_every": "training.save_every",
}


def effective_config(config: Config) -> Config:
    """The studio config with the saved selection (dataset, speaker, settings) applied."""
    return apply_selection(config, load_selection(config))


def current_settings(config: Config) -> dict:
    """Control values (keys of SETTING_KEYS) from the effective configuration."""
    cfg = effective_config(config)
    t = cfg.training
    return {"mode": cfg.training_mode.selected, "gpu": cfg.gpu.type, "price": cfg.gpu.price_per_hour,
            "quick_steps": t.quick_lora.steps, "quick_lr": t.quick_lora.learning_rate,
            "full_epochs": t.full_finetune.epochs, "full_lr": t.full_finetune.learning_rate,
            "speaker_steps": t.full_finetune.speaker_max_steps, "rank": t.lora.rank,
            "batch_size": t.batch_size, "val_every": t.val_every, "save_every": t.save_every}


FIELD_LABELS = {
    "mode": "Training mode", "gpu": "GPU", "price": "Price per hour (USD)", "quick_steps": "Quick LoRA: steps",
    "quick_lr": "Learning rate", "full_epochs": "Phase 1: epochs", "full_lr": "Phase 1: learning rate",
    "speaker_steps": "Speaker LoRA: max steps", "rank": "LoRA rank", "batch_size": "Batch size",
    "val_every": "Evaluate every (steps)", "save_every": "Save a checkpoint every (steps)",
}
FIELD_INFO = {
    "mode": None, "gpu": "from assets/gpu_prices.yaml", "price": "list price; edit for yours",
    "quick_steps": "reference recipe: 2800", "quick_lr": "upstream: 1e-4", "full_epochs": "reference: 3",
    "full_lr": "full fine-tune: 1e-5", "speaker_steps": "stops early on held-out loss",
    "rank": "alpha follows: 2 × rank", "batch_size": "sequences per step (both modes)",
    "val_every": "held-out loss, example audio, best checkpoint", "save_every": "resume point; the best is always kept",
}
WHOLE = ("quick_steps", "speaker_steps", "rank", "batch_size", "val_every", "save_every")
REAL = ("price", "quick_lr", "full_lr", "full_epochs")


def _coerce(name: str, value):
    """The control's value as the config wants it; ConfigError naming the field when it cannot be."""
    key = SETTING_KEYS[name]
    if value is None or value == "":
        raise ConfigError(f"'{key}' is empty; enter a value.")
    try:
        if name in WHOLE:
            if float(value) != int(float(value)):
                raise ConfigError(f"'{key}' must be a whole number (got {value}).")
            return int(float(value))
        if name in REAL:
            return float(value)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"'{key}' must be a number (got {value!r}).") from None
    return value


def _overrides(values: dict) -> dict:
    overrides = {}
    for name, value in values.items():
        if name not in SETTING_KEYS:
            raise ValueError(f"Unknown setting '{name}'; known: {', '.join(SETTING_KEYS)}.")
        overrides[SETTING_KEYS[name]] = _coerce(name, value)
    if "training.lora.rank" in overrides:
        overrides["training.lora.alpha"] = 2 * overrides["training.lora.rank"]
    return overrides


def save_settings(config: Config, **values) -> dict:
    """Validate the settings against the config schema, then save them into the selection.

    Raises ConfigError (a ValueError) naming the setting when a value is not allowed; nothing
    is saved then. The LoRA alpha follows the rank (2 × rank) to keep the update scale.
    """
    overrides = _overrides(values)
    effective_config(config).with_overrides(overrides)  # raises ConfigError naming the key
    return save_selection(config, **overrides)


def save_valid_settings(config: Config, **values) -> tuple[dict, dict[str, str]]:
    """Each setting checked on its own: the valid ones are saved, the invalid ones are left as they
    were. Returns (the selection, {control name: why it was not saved}) so one bad field never
    blocks a change of another."""
    errors, good = {}, {}
    base = effective_config(config)
    for name, value in values.items():
        try:
            overrides = _overrides({name: value})
            base.with_overrides(overrides)
        except ValueError as exc:
            errors[name] = str(exc)
            continue
        good |= overrides
    selection = save_selection(config, **good) if good else load_selection(config)
    return selection, errors


def settings_message(errors: dict[str, str]) -> str:
    """The settings' status: saved, or which fields were not saved and why."""
    if not errors:
        return note("Saved: the Training tab starts runs with these settings.", "ok")
    items = "".join(f"<li><b>{esc(FIELD_LABELS[name])}</b>: {esc(text)}</li>" for name, text in errors.items())
    return (f"<div class='note error'>Not saved — fix {'this field' if len(errors) == 1 else 'these fields'} "
            f"(the other settings were saved and the estimate uses them):<ul>{items}</ul></div>")


def field_infos(errors: dict[str, str]) -> dict[str, str | None]:
    """Each control's help line: its error when it has one (shown under the field), else its usual hint."""
    return {name: (f"⚠ not saved: {errors[name]}" if name in errors else FIELD_INFO[name]) for name in SETTING_KEYS}


def apply_scaled_recipe(config: Config) -> tuple[dict, dict]:
    """Save the recipe scaled to the selected dataset; returns (the selection, the new control values)."""
    selection = load_selection(config)
    dataset_id = selection.get("dataset_id")
    if not dataset_id or dataset_id not in list_datasets(config):
        raise ValueError("No dataset loaded: load one in the Dataset tab first; the recipe is scaled to it.")
    cfg = apply_selection(config, selection)
    dataset = open_dataset(cfg, dataset_id)
    speaker = selection.get("speaker") or dataset.recommendation.speaker
    report = check_recipe(cfg, dataset.manifest, speaker)
    names = {key: name for name, key in SETTING_KEYS.items()}
    values = {names[key]: value for key, value in report.scaled.items()}
    return save_settings(config, **values), values


def gpu_choices() -> list[tuple[str, str]]:
    table = load_price_table()
    return [(f"{name} · ${row['price_per_hour']:.2f}/h · {row['memory_gb']} GB", name)
            for name, row in table["gpus"].items()]


def list_price(gpu: str) -> float | None:
    row = load_price_table()["gpus"].get(gpu)
    return row["price_per_hour"] if row else None
