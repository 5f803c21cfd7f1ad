"""Memory planning: keeps the effective batch, prefers no recomputation, fits the card."""

from __future__ import annotations

import pytest

from pipeline.train.memory_plan import estimate_peak_gb, plan_for_device, plan_memory, static_gb


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_estimates_grow_with_tokens_and_shrink_with_checkpointing(mode):
    small = estimate_peak_gb(mode, 1, 4096, False)
    big = estimate_peak_gb(mode, 4, 4096, False)
    assert big > small > static_gb(mode)
    assert estimate_peak_gb(mode, 4, 4096, True) < big
    assert static_gb("full") > 4 * static_gb("lora")  # fp32 master + AdamW vs a frozen bf16 base


def test_large_card_keeps_the_whole_batch_without_checkpointing():
    plan = plan_memory("lora", 4, 1, 4096, total_gb=141)
    assert (plan.micro_batch, plan.grad_accumulation, plan.gradient_checkpointing, plan.fits) == (4, 1, False, True)
    assert plan.estimated_peak_gb <= plan.budget_gb


@pytest.mark.parametrize("mode,total_gb", [("lora", 40), ("lora", 24), ("full", 60), ("full", 48)])
def test_smaller_cards_split_the_batch_and_keep_the_effective_batch(mode, total_gb):
    plan = plan_memory(mode, 4, 2, 4096, total_gb=total_gb)
    assert plan.fits and plan.estimated_peak_gb <= plan.budget_gb < total_gb
    assert plan.micro_batch * plan.grad_accumulation == 8
    assert plan.micro_batch < 4 or plan.gradient_checkpointing
    # it picked the least costly option that fits: no split the estimate would also allow earlier
    if not plan.gradient_checkpointing:
        bigger = [m for m in (4, 2) if m > plan.micro_batch]
        assert all(estimate_peak_gb(mode, m, 4096, False) > plan.budget_gb for m in bigger)


def test_issue_targets_lora_in_40_gb_full_in_80_gb():
    assert plan_memory("lora", 4, 1, 4096, total_gb=40).fits
    assert plan_memory("full", 4, 1, 4096, total_gb=80).fits


def test_checkpointing_only_when_splitting_is_not_enough():
    plan = plan_memory("full", 4, 1, 4096, total_gb=30)
    assert plan.gradient_checkpointing and plan.fits
    assert estimate_peak_gb("full", 1, 4096, False) > plan.budget_gb


def test_forced_checkpointing_and_nothing_fits():
    assert plan_memory("lora", 4, 1, 4096, total_gb=141, checkpointing="on").gradient_checkpointing
    plan = plan_memory("lora", 4, 1, 4096, total_gb=141, checkpointing=False)
    assert not plan.gradient_checkpointing
    hopeless = plan_memory("full", 1, 1, 8192, total_gb=8)
    assert not hopeless.fits and "max_length" in hopeless.reason
    assert "micro-batch" in hopeless.describe()


def test_calibration_overrides_the_defaults():
    tight = plan_memory("lora", 4, 1, 4096, total_gb=60)
    loose = plan_memory("lora", 4, 1, 4096, total_gb=60, calibration={("lora", False): 0.5})
    assert loose.micro_batch >= tight.micro_batch and not loose.gradient_checkpointing
    assert loose.estimated_peak_gb < tight.estimated_peak_gb or tight.micro_batch < 4


def test_bad_input_and_cpu():
    with pytest.raises(ValueError, match="mode"):
        plan_memory("qlora", 4, 1, 4096, total_gb=80)
    with pytest.raises(ValueError, match="positive"):
        plan_memory("lora", 0, 1, 4096, total_gb=80)
    assert plan_for_device("lora", 4, 1, 4096, device="cpu") is None
