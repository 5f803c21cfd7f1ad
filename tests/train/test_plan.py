"""One training plan: the loop and the bench resolve a phase through pipeline.train.plan alike."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

import pipeline.train.loop as loop_module
import pipeline.train.plan as plan_module
from pipeline.bench.sections import TOGGLE_OPTIONS, variant_plan
from pipeline.config import Config
from pipeline.train.memory_plan import MemoryPlan
from pipeline.train.plan import TrainPlan, plan_phase
from pipeline.train.settings import TrainSettings

BATCH, LENGTH = 2, 160
SHAPES = (None, None, None, BATCH, LENGTH)  # (args, tokenizer, codec config, batch size, max length)
CPU = torch.device("cpu")


def _config(**overrides) -> Config:
    return Config().with_overrides({"training.batch_size": BATCH, "training.grad_accumulation": 1,
                                    "training.max_length": LENGTH, "training.eval_sentences": 0,
                                    "training.lora.rank": 4, **overrides})


def _manifest(directory, clips: int = 8):
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(clips):
        path = directory / f"clip{i}.npy"
        np.save(path, rng.integers(0, 64, size=(4, 20)).astype(np.int16))
        rows.append(dict(id=f"clip{i}", speaker="spk", text="hei maailma", normalized_text="", codes_path=str(path),
                         status="ok"))
    return pd.DataFrame(rows)


def _loop_plan(tmp_path, tiny_checkpoint, monkeypatch, config) -> TrainPlan:
    """The plan pipeline.train.loop.train resolves for `config`'s lora phase (one step on the CPU)."""
    plans = []

    def recording(*args, **kwargs):
        plans.append(plan_phase(*args, **kwargs))
        return plans[-1]

    monkeypatch.setattr(loop_module, "plan_phase", recording)
    settings = TrainSettings.from_config(config, "lora", steps=1, device="cpu", val_fraction=0.15)
    result = loop_module.train(tmp_path / "run", tiny_checkpoint, _manifest(tmp_path / "codes"), settings)
    assert result.status == "finished", result.message
    return plans[0]


def test_the_bench_and_the_loop_build_the_same_plan(tmp_path, tiny_checkpoint, monkeypatch):
    config = _config()
    _, bench = variant_plan("project-lora", config, SHAPES, CPU)
    assert isinstance(bench, TrainPlan) and bench.device == CPU
    assert _loop_plan(tmp_path, tiny_checkpoint, monkeypatch, config) == bench


def test_the_memory_plan_is_asked_the_same_question_by_both(tmp_path, tiny_checkpoint, monkeypatch):
    """As on a GPU: the memory planner's split is part of the plan, asked with the same facts."""
    asked = []

    def fake_plan(mode, batch_size, grad_accumulation, max_length, device, checkpointing, **kwargs):
        asked.append((mode, batch_size, grad_accumulation, max_length, checkpointing, kwargs))
        return MemoryPlan(1, batch_size * grad_accumulation, False, 3.0, 36.0, 40.0, True, "injected")

    monkeypatch.setattr(plan_module, "plan_for_device", fake_plan)
    config = _config(**{"speed.lora_dropout_kernel": False})
    _, bench = variant_plan("project-lora", config, SHAPES, CPU)
    loop = _loop_plan(tmp_path, tiny_checkpoint, monkeypatch, config)
    assert loop == bench and (loop.micro_batch, loop.grad_accumulation) == (1, BATCH)
    assert asked[0] == asked[1] and asked[0][5]["dropout_kernel"] is False


@pytest.mark.parametrize("toggle", sorted(TOGGLE_OPTIONS))
def test_a_toggle_changes_only_its_option_in_the_plan(toggle):
    config = _config()
    _, base = variant_plan("project-lora", config, SHAPES, CPU)
    _, toggled = variant_plan(f"project-lora+{toggle}", config, SHAPES, CPU)
    field = TOGGLE_OPTIONS[toggle]
    assert getattr(base.options, field) is True or field == "flex_fast_attention"  # flex: only when compiled
    assert toggled == dataclasses.replace(base, options=dataclasses.replace(base.options, **{field: False}))


def test_speed_config_sets_the_kernel_options_the_toggles_switch():
    """speed.* in launchable.yaml reaches the forward's options; the bench's toggle gives the same plan."""
    _, off = variant_plan("project-lora", _config(**{"speed.lora_dropout_kernel": False,
                                                      "speed.segment_attention_kernel": False}), SHAPES, CPU)
    assert not off.options.lora_dropout_kernel and not off.options.segment_attention_kernel
    _, toggled = variant_plan("project-lora+torchdropout+flex", _config(), SHAPES, CPU)
    assert toggled == off


def test_recipe_changes_go_through_the_settings_not_the_plan():
    settings, plan = variant_plan("project-lora+dropout0", _config(), SHAPES, CPU)
    assert settings.lora_dropout == 0.0 and plan == variant_plan("project-lora", _config(), SHAPES, CPU)[1]
    settings, forced = variant_plan("project-full:ckpt", _config(), SHAPES, CPU)
    assert settings.gradient_checkpointing == "on" and forced.gradient_checkpointing


def test_the_kernels_hold_no_switch_of_their_own():
    """Kernels are switched by the callers' options, not by module state the bench would flip."""
    from pipeline.kernels import gemv, lora_dropout, segment_attention

    for module in (gemv, lora_dropout, segment_attention):
        assert not hasattr(module, "ENABLED"), module.__name__


def test_train_step_refuses_a_wrong_number_of_micro_batches():
    model = torch.nn.Linear(2, 2)
    plan = plan_phase(TrainSettings(steps=1, device="cpu", grad_accumulation=2))
    with pytest.raises(ValueError, match="accumulates 2"):
        plan_module.train_step(model, plan_module.build_optimizer(model.parameters(), TrainSettings(steps=1), CPU),
                               [], plan, list(model.parameters()), 1.0)
