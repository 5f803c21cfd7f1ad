"""The compile warm-up that runs beside extraction (pipeline.train.warmup): its gate, and the
process itself on the tiny checkpoint (on a CPU it trains uncompiled: the same code path, the
compilation it fills caches for needs a GPU and is measured by `python -m pipeline bench --only workflow`)."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from pipeline.train.memory_plan import MemoryPlan
from pipeline.train.plan import plan_phase
from pipeline.train.settings import TrainSettings
from pipeline.train.warmup import (WARMUP_MAX_LENGTH, WARMUP_STEPS, CompileWarmup, fits_beside_extraction, spawn, synthetic_clips,
                                   warm_up, warmup_plan, warmup_settings)
from run_fixtures import run_config


def _gpu_plan(peak_gb: float):
    plan = plan_phase(TrainSettings(mode="lora", steps=10, device="cpu"))
    memory = MemoryPlan(4, 1, False, peak_gb, 130.0, 141.0, True, "fits")
    return dataclasses.replace(plan, device=torch.device("cuda", 0), compile=True, memory=memory)


def test_the_warmup_runs_only_where_its_step_fits_beside_extraction():
    assert fits_beside_extraction(_gpu_plan(48.0), free_gb=139.0)[0]  # an H200: 65 GB left beside the codecs
    fits, why = fits_beside_extraction(_gpu_plan(48.0), free_gb=79.0)  # an 80 GB card: extraction takes half
    assert not fits and "do not fit" in why
    cpu = plan_phase(TrainSettings(mode="lora", steps=10, device="cpu"))
    assert fits_beside_extraction(cpu, free_gb=1000.0) == (False, "the phase is not compiled (a CPU, or training.compile off)")


def test_warmup_settings_keep_the_phase_recipe_but_run_two_steps_and_one_validation():
    settings = TrainSettings(mode="lora", steps=2800, batch_size=4, max_length=4096, lora_rank=16, val_every=100,
                             eval_texts=("Hei.",), init_adapter="/somewhere", device="cpu")
    phase_plan = dataclasses.replace(plan_phase(settings), micro_batch=4, gradient_checkpointing=True)
    warm = warmup_settings(settings, phase_plan)
    assert (warm.steps, warm.val_every, warm.eval_texts, warm.init_adapter) == (WARMUP_STEPS, WARMUP_STEPS, (), None)
    assert (warm.lora_rank, warm.mode) == (16, "lora")  # what shapes the graphs
    assert warm.max_length == WARMUP_MAX_LENGTH  # short sequences: the width is a symbolic size
    # micro-batch 2 (a symbolic size in the graphs) with the phase's own recomputation choice
    assert (warm.batch_size, warm.grad_accumulation, warm.gradient_checkpointing) == (2, 1, "on")
    assert warmup_plan(settings).micro_batch == 2
    # a phase at micro-batch 1 warms at 1: dynamo specializes a size of 1
    assert warmup_settings(settings, dataclasses.replace(phase_plan, micro_batch=1)).batch_size == 1


def test_synthetic_clips_are_training_input_with_real_code_shapes(tmp_path):
    manifest = synthetic_clips(tmp_path, num_codebooks=10, codebook_size=4096, texts=["Yksi.", "Kaksi."], clips=6,
                               max_frames=70)
    assert len(manifest) == 6 and set(manifest["speaker"]) == {"spk0", "spk1", "spk2", "spk3"}
    codes = np.load(manifest["codes_path"][0])
    assert codes.shape[0] == 10 and 10 <= codes.shape[1] < 70 and codes.max() < 1024  # residual codebooks' range


def test_the_warmup_trains_the_phase_on_synthetic_clips(tiny_checkpoint, tmp_path):
    path = run_config(tiny_checkpoint).save(tmp_path / "config.yaml")
    outcome = warm_up(path, "lora", tiny_checkpoint)
    assert outcome["status"] == "finished" and outcome["seconds"] > 0


def test_the_warmup_process_runs_and_is_waited_for(tiny_checkpoint, tmp_path):
    """The child process the workflow starts (on a GPU only; forced here): it ends, its log says
    how, and finish() reports it."""
    path = run_config(tiny_checkpoint, **{"training.max_length": 256}).save(tmp_path / "config.yaml")
    log = tmp_path / "warmup.log"
    warmup = CompileWarmup(spawn(path, "lora", tiny_checkpoint, log), log, "forced by the test")
    note = warmup.finish(limit_s=600)
    assert note.startswith("finished"), (note, log.read_text()[-2000:])
    assert "compile warm-up: {'status': 'finished'" in log.read_text()


def test_a_warmup_that_did_not_start_says_why():
    assert CompileWarmup(None, None, "no GPU").finish() == "not started: no GPU"
