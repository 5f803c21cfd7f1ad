"""Is a recipe sensible for this dataset? Epochs each phase means, the risk of over-fitting, and
a recipe scaled to the data (steps from a target number of epochs) beside the reference recipe.

The reference project trains quick LoRA for a fixed 2800 steps whatever the data; on a small
dataset that is hundreds of passes over the same clips, which memorizes them. Scaling the steps
to a target number of epochs keeps the passes over the data the same for any dataset size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from pipeline.config import Config
from pipeline.estimate.cost import epochs_for_steps, steps_for_epochs, workload

# The reference project's recipe (quick LoRA steps, full fine-tune epochs) and this project's
# speaker-phase cap, as shipped in launchable.yaml.
REFERENCE_RECIPE = {"training.quick_lora.steps": 2800, "training.full_finetune.epochs": 3,
                    "training.full_finetune.speaker_max_steps": 2000}
# More passes than this over the same clips and a model starts reciting them (train loss keeps
# falling while held-out loss rises); a LoRA usually has what it can learn well before.
OVERFIT_EPOCHS = 30
TARGET_EPOCHS = {"lora": 20, "speaker_lora": 20}
# Below this much accepted speech any recipe mostly memorizes the clips.
LOW_DATA_MINUTES = 10.0
PHASE_NAMES = {"lora": "Quick LoRA", "full": "Full fine-tune (phase 1)", "speaker_lora": "Speaker LoRA"}


@dataclass(frozen=True)
class PhaseCheck:
    phase: str
    steps: int               # the configured steps (speaker LoRA: its maximum)
    epochs: float
    risk: str                # "ok" | "high"
    advice: str

    @property
    def name(self) -> str:
        return PHASE_NAMES[self.phase]


@dataclass(frozen=True)
class RecipeReport:
    minutes: float
    speaker_minutes: float
    checks: list[PhaseCheck]                 # the configured recipe, per training phase
    scaled: dict[str, int | float]           # dotted config key → value of the recipe scaled to the data
    scaled_epochs: dict[str, float]          # phase → epochs of the scaled recipe
    reference_epochs: dict[str, float]       # phase → epochs of the reference recipe on this dataset
    warnings: list[str]

    @property
    def risky(self) -> bool:
        return bool(self.warnings)


def _risk(phase: str, epochs: float) -> tuple[str, str]:
    if epochs > OVERFIT_EPOCHS:
        return "high", (f"{epochs:,.0f} passes over the same clips (over {OVERFIT_EPOCHS}): the model is likely "
                        "to memorize them; use the recipe scaled to your data or add data")
    return "ok", f"{epochs:,.1f} passes over the data"


def check_recipe(config: Config, manifest: pd.DataFrame, speaker: str | None = None) -> RecipeReport:
    """Epochs and over-fitting risk of the configured recipe, and a recipe scaled to this dataset."""
    t = config.training
    work = workload(config, manifest, speaker)
    if not work.all_clips.train_sequences:
        raise ValueError("The dataset has no accepted clip short enough for training.max_length; "
                         "load more data or raise training.max_length.")
    checks = []
    phases = ("lora",) if config.training_mode.selected == "quick_lora" else ("full", "speaker_lora")
    for phase in phases:
        epochs = work.epochs(phase)[1]
        risk, advice = _risk(phase, epochs)
        checks.append(PhaseCheck(phase, work.steps[phase][1], epochs, risk, advice))
    # at least one step past the warm-up, so the learning rate reaches its value
    floor = t.warmup_steps + 1
    scaled_lora = max(floor, steps_for_epochs(TARGET_EPOCHS["lora"], work.all_clips.train_sequences, work.per_step))
    speaker_sequences = work.speaker.train_sequences or work.all_clips.train_sequences
    scaled_speaker = max(floor, steps_for_epochs(TARGET_EPOCHS["speaker_lora"], speaker_sequences, work.per_step))
    scaled = {"training.quick_lora.steps": scaled_lora,
              "training.full_finetune.epochs": REFERENCE_RECIPE["training.full_finetune.epochs"],
              "training.full_finetune.speaker_max_steps": scaled_speaker}
    per = work.per_step
    scaled_epochs = {"lora": epochs_for_steps(scaled_lora, work.all_clips.train_sequences, per),
                     "full": float(scaled["training.full_finetune.epochs"]),
                     "speaker_lora": epochs_for_steps(scaled_speaker, speaker_sequences, per)}
    reference_epochs = {
        "lora": epochs_for_steps(REFERENCE_RECIPE["training.quick_lora.steps"], work.all_clips.train_sequences, per),
        "full": float(REFERENCE_RECIPE["training.full_finetune.epochs"]),
        "speaker_lora": epochs_for_steps(REFERENCE_RECIPE["training.full_finetune.speaker_max_steps"],
                                         speaker_sequences, per)}
    warnings = [f"{c.name}: {c.advice}." for c in checks if c.risk != "ok"]
    minutes = work.all_clips.minutes
    if minutes < LOW_DATA_MINUTES:
        warnings.append(f"Only {minutes:.1f} usable minutes (under {LOW_DATA_MINUTES:g}): any recipe mostly "
                        "memorizes these clips; more data helps more than more steps.")
    return RecipeReport(minutes=minutes, speaker_minutes=work.speaker.minutes, checks=checks, scaled=scaled,
                        scaled_epochs=scaled_epochs, reference_epochs=reference_epochs, warnings=warnings)


def format_epochs(epochs: float) -> str:
    if not math.isfinite(epochs):
        return "—"
    return f"{epochs:,.0f}" if epochs >= 10 else f"{epochs:.1f}"
