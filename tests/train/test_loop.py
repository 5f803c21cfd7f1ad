"""Packed samples (pipeline.train.samples) and the training loop (pipeline.train.loop) on the tiny model."""

import json
import os
import signal
import threading

import numpy as np
import pandas as pd
import pytest
import torch

import pipeline.train.loop as train_module
import pipeline.train.plan as plan_module
from pipeline.model.checkpoints import load_lm
from pipeline.config import Config
from pipeline.train.samples import SamplesError, make_training_data, prepare_clips, split_clips
from pipeline.train.loop import TrainSettings, train

WORDS = ["talo", "kissa", "koira", "järvi", "metsä", "aurinko", "kuu", "tähti", "sauna", "lumi"]


def _manifest(directory, speakers=(8, 8, 8), seed=0, num_codebooks=4, vocab=64):
    """Clips whose codes repeat a per-speaker pattern: learnable, so the loss can really drop."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    rows = []
    for s, n_clips in enumerate(speakers):
        pattern = rng.integers(0, vocab, size=(num_codebooks, 5))
        for c in range(n_clips):
            frames, phase = int(rng.integers(15, 30)), int(rng.integers(5))
            path = directory / f"s{s}_{c}.npy"
            np.save(path, pattern[:, (np.arange(frames) + phase) % 5].astype(np.int16))
            rows.append(dict(id=f"s{s}_{c}", speaker=f"spk{s}", text=" ".join(rng.choice(WORDS, 3)),
                             normalized_text="", codes_path=str(path), status="ok"))
    return pd.DataFrame(rows)


def _settings(**changes):
    base = dict(mode="lora", steps=16, lr=3e-3, warmup_steps=3, batch_size=2, max_length=160, val_every=4,
                save_every=4, keep_last=2, val_fraction=0.15, seed=3, lora_rank=4, lora_alpha=8, lora_dropout=0.1,
                device="cpu", precision="fp32")  # exact comparisons need CPU fp32 even where a GPU exists
    return TrainSettings(**(base | changes))


def _rows(run_dir, kind="train"):
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


@pytest.fixture
def tokenizer(tiny_checkpoint):
    return load_lm(tiny_checkpoint)[1]


# -- samples ---------------------------------------------------------------------------------------
def test_bad_clips_are_rejected_with_reasons(tmp_path, tokenizer):
    manifest = _manifest(tmp_path / "codes", speakers=(4,))
    np.save(tmp_path / "bad.npy", np.zeros((2, 7), dtype=np.int16))
    np.save(tmp_path / "long.npy", np.zeros((4, 500), dtype=np.int16))
    extra = [dict(id="shape", speaker="spk0", text="moi", codes_path=str(tmp_path / "bad.npy"), status="ok"),
             dict(id="long", speaker="spk0", text="moi", codes_path=str(tmp_path / "long.npy"), status="ok"),
             dict(id="nocodes", speaker="spk0", text="moi", codes_path=None, status="ok"),
             dict(id="missing", speaker="spk0", text="moi", codes_path=str(tmp_path / "nope.npy"), status="ok"),
             dict(id="notext", speaker="spk0", text="  ", codes_path=manifest.codes_path[0], status="ok"),
             dict(id="upstream", speaker="spk0", text="moi", codes_path=manifest.codes_path[0], status="rejected")]
    manifest = pd.concat([manifest, pd.DataFrame(extra)], ignore_index=True)
    clips, rejected = prepare_clips(manifest, tokenizer, num_codebooks=4, max_length=160)
    assert [c.id for c in clips] == [f"s0_{i}" for i in range(4)]
    assert set(rejected) == {"shape", "long", "nocodes", "missing", "notext"}
    assert "too long" in rejected["long"] and "shape" in rejected["shape"]
    with pytest.raises(SamplesError, match="codes_path"):
        prepare_clips(manifest.drop(columns=["codes_path"]), tokenizer, 4, 160)


def test_held_out_split_is_per_speaker_and_deterministic(tmp_path, tokenizer):
    manifest = _manifest(tmp_path / "codes", speakers=(10, 3, 2, 40))
    clips, _ = prepare_clips(manifest, tokenizer, 4, 160)
    train_a, val_a = split_clips(clips, val_fraction=0.1, seed=5)
    train_b, val_b = split_clips(clips, val_fraction=0.1, seed=5)
    assert val_a == val_b and train_a == train_b
    per_speaker = pd.Series([c.speaker for c in val_a]).value_counts().to_dict()
    assert per_speaker == {"spk0": 1, "spk1": 1, "spk3": 4}  # spk2 (2 clips) keeps all for training
    assert {c.id for c in val_a} != {c.id for c in split_clips(clips, 0.1, seed=6)[1]}
    assert not {c.id for c in train_a} & {c.id for c in val_a}


def test_packed_batches_are_reproducible_and_well_formed(tmp_path, tokenizer):
    manifest = _manifest(tmp_path / "codes", speakers=(9, 7, 6))
    data = make_training_data(manifest, tokenizer, 4, max_length=160, batch_size=2, val_fraction=0.15, seed=1)
    again = make_training_data(manifest, tokenizer, 4, max_length=160, batch_size=2, val_fraction=0.15, seed=1)
    train_ids = sorted(c.id for c in data.train.clips)
    for epoch in range(3):
        groups = data.train.groups_for_epoch(epoch)
        assert sorted(c.id for g in groups for c in g) == train_ids  # every clip once per epoch
        assert all(len({c.speaker for c in g}) == 1 for g in groups)  # one speaker per sequence
        assert all(len(data.train.sequence(g)) <= 160 for g in groups)
    assert data.train.groups_for_epoch(0) != data.train.groups_for_epoch(1)  # reshuffled per epoch
    assert max(len(g) for g in data.train.groups_for_epoch(0)) > 1  # clips really are packed
    for position in (0, 5, 17):  # any position, in any order, from a fresh object: the same batch
        a, b = data.train.batch(position), again.train.batch(position)
        assert all(torch.equal(a[k], b[k]) for k in a)
    # the stream runs through epoch boundaries: every batch is full, epochs follow each other
    per_epoch = len(data.train.groups_for_epoch(0))
    assert per_epoch % 2 == 1  # so batch (per_epoch // 2) straddles epochs 0 and 1
    straddling = data.train.batch(per_epoch // 2)
    last_of_0, first_of_1 = data.train.groups_for_epoch(0)[-1], data.train.groups_for_epoch(1)[0]
    expected = data.train.collate([last_of_0, first_of_1])
    assert all(torch.equal(straddling[k], expected[k]) for k in expected)
    assert data.train.epoch_progress(per_epoch // 2 + 1) == pytest.approx(1 + 1 / len(data.train.groups_for_epoch(1)))
    batch = data.train.batch(2)
    tokens, labels, lengths = batch["tokens"], batch["labels"], batch["lengths"]
    assert tokens.shape[:2] == (2, 5) and labels.shape == tokens.shape
    for i, n in enumerate(lengths.tolist()):
        assert (labels[i, :, n - 1:] == -100).all()  # padding (and the last column) carry no loss
        assert (labels[i, 0, :n] != -100).sum() > 0
    val_batches = list(data.val)
    assert len(val_batches) == data.val.batches_per_epoch and all(b["tokens"].shape[0] == 2 for b in val_batches)
    assert sum(int((b["lengths"] > 0).sum()) for b in val_batches) == len(data.val.groups_for_epoch(0))


def test_batch_widths_round_up_to_the_multiple(tmp_path, tokenizer):
    manifest = _manifest(tmp_path / "codes", speakers=(9, 7))
    data = make_training_data(manifest, tokenizer, 4, max_length=300, batch_size=2, val_fraction=0.15, seed=1,
                              width_multiple=128)
    widths = {data.train.batch(p)["tokens"].shape[-1] for p in range(12)}
    assert widths <= {128, 256, 300}  # rounded up, never beyond max_length


# -- training ---------------------------------------------------------------------------------------
def test_lora_training_lowers_held_out_loss(tmp_path, tiny_checkpoint):
    manifest = _manifest(tmp_path / "codes")
    settings = _settings(steps=70, val_every=10, save_every=30, keep_last=1)
    result = train(tmp_path / "run", tiny_checkpoint, manifest, settings)
    assert result.status == "finished" and result.step == 70
    val = _rows(tmp_path / "run", "val")
    assert val[0]["step"] == 0 and val[-1]["step"] == 70
    assert val[-1]["val_loss"] < 0.5 * val[0]["val_loss"], [v["val_loss"] for v in val]
    rows = _rows(tmp_path / "run")
    assert [r["step"] for r in rows] == list(range(1, 71))
    assert {"epoch", "loss", "token_loss", "codebook_loss", "top1", "top5", "lr", "grad_norm", "tokens_per_s",
            "elapsed_s", "gpu_mem_gb"} <= rows[0].keys()
    assert rows[0]["lr"] == pytest.approx(3e-3 / 3) and rows[-1]["lr"] == pytest.approx(3e-3)
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["status"] == "finished" and state["step"] == 70
    # where the wait before the first step went, and it comes before the first row
    assert set(state["setup_s"]) == {"load_model", "pack_data", "prepare"}
    assert 0 <= sum(state["setup_s"].values()) <= rows[0]["elapsed_s"]
    best = tmp_path / "run" / state["best"]
    assert (best / "adapter_model.safetensors").is_file() and str(best) == result.best
    kept = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert "step_000070" in kept and len(kept) <= 2  # keep_last=1 plus the best
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_resume_continues_the_same_loss_curve(tmp_path, tiny_checkpoint, mode):
    manifest = _manifest(tmp_path / "codes")
    lr = 3e-3 if mode == "lora" else 1e-3
    settings = _settings(mode=mode, steps=12, lr=lr, schedule="cosine", grad_accumulation=2, save_every=100)
    straight = train(tmp_path / "straight", tiny_checkpoint, manifest, settings)
    assert straight.status == "finished"

    stop = threading.Event()
    calls = []

    def stop_halfway(fraction, message):
        calls.append(fraction)
        if len(calls) == 6:
            stop.set()

    first = train(tmp_path / "resumed", tiny_checkpoint, manifest, settings, stop_event=stop, progress=stop_halfway)
    assert first.status == "cancelled" and first.step == 6
    assert json.loads((tmp_path / "resumed" / "state.json").read_text())["status"] == "cancelled"
    second = train(tmp_path / "resumed", tiny_checkpoint, manifest, settings)
    assert second.status == "finished" and second.step == 12

    a, b = _rows(tmp_path / "straight"), _rows(tmp_path / "resumed")
    assert [r["step"] for r in b] == list(range(1, 13))
    for ra, rb in zip(a, b):
        for key in ("loss", "token_loss", "codebook_loss", "lr", "grad_norm", "epoch"):
            assert rb[key] == pytest.approx(ra[key], abs=1e-5), (ra["step"], key)
    va, vb = _rows(tmp_path / "straight", "val"), _rows(tmp_path / "resumed", "val")
    assert [v["step"] for v in va] == [v["step"] for v in vb]
    assert all(x["val_loss"] == pytest.approx(y["val_loss"], abs=1e-5) for x, y in zip(va, vb))


def test_a_stop_before_the_first_step_keeps_nothing_and_a_resume_starts_afresh(tmp_path, tiny_checkpoint):
    """Nothing trained, nothing to save (a full phase's checkpoint is the whole model)."""
    manifest = _manifest(tmp_path / "codes", speakers=(5,))
    stop = threading.Event()
    stop.set()
    first = train(tmp_path / "run", tiny_checkpoint, manifest, _settings(steps=4), stop_event=stop)
    assert first.status == "cancelled" and first.step == 0
    assert not list((tmp_path / "run" / "checkpoints").glob("step_*"))
    again = train(tmp_path / "run", tiny_checkpoint, manifest, _settings(steps=4))
    assert again.status == "finished" and [r["step"] for r in _rows(tmp_path / "run")] == [1, 2, 3, 4]


def test_full_checkpoint_is_a_loadable_model(tmp_path, tiny_checkpoint):
    from fish_speech.models.text2semantic.inference import init_model

    manifest = _manifest(tmp_path / "codes", speakers=(6, 4))
    result = train(tmp_path / "run", tiny_checkpoint, manifest, _settings(mode="full", steps=4, lr=1e-3))
    best = result.best
    model, _ = load_lm(best)
    base, _ = load_lm(tiny_checkpoint)
    assert not torch.equal(model.layers[0].attention.wqkv.weight, base.layers[0].attention.wqkv.weight)
    wheel_model, _ = init_model(best, "cpu", torch.float32)
    assert torch.equal(wheel_model.output.weight, model.output.weight)
    # a LoRA phase on top of the fully fine-tuned model (ckpt_dir = that checkpoint)
    on_top = train(tmp_path / "speaker", best, manifest[manifest.speaker == "spk0"], _settings(steps=2))
    assert on_top.status == "finished"


def test_early_stopping_keeps_the_best(tmp_path, tiny_checkpoint):
    manifest = _manifest(tmp_path / "codes")
    # lr 0: the held-out loss never improves after the first evaluation
    result = train(tmp_path / "run", tiny_checkpoint, manifest,
                   _settings(steps=50, lr=0.0, warmup_steps=0, val_every=2, save_every=100, patience=3))
    assert result.status == "finished" and result.step == 8
    assert "stopped early" in result.message
    assert result.best.endswith("step_000002") and os.path.isdir(result.best)


def test_sigterm_saves_and_cancels(tmp_path, tiny_checkpoint):
    manifest = _manifest(tmp_path / "codes", speakers=(5,))

    def terminate_at_three(fraction, message):
        if message.startswith("step 3/"):
            os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    result = train(tmp_path / "run", tiny_checkpoint, manifest, _settings(steps=10), progress=terminate_at_three)
    assert result.status == "cancelled" and result.step == 3
    assert (tmp_path / "run" / "checkpoints" / "step_000003" / "optimizer.pt").is_file()
    assert signal.getsignal(signal.SIGTERM) == before


def test_out_of_memory_fails_with_advice(tmp_path, tiny_checkpoint, monkeypatch):
    def oom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(train_module, "compute_loss", oom)  # validation
    monkeypatch.setattr(plan_module, "compute_loss", oom)  # the training step
    result = train(tmp_path / "run", tiny_checkpoint, _manifest(tmp_path / "codes", speakers=(4,)), _settings())
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert result.status == "failed" and state["status"] == "failed"
    for advice in ("batch_size", "max_length", "gradient_checkpointing"):
        assert advice in state["message"]


def test_other_errors_mark_the_run_failed_and_raise(tmp_path, tiny_checkpoint):
    manifest = _manifest(tmp_path / "codes", speakers=(4,)).assign(codes_path=None)
    with pytest.raises(SamplesError):
        train(tmp_path / "run", tiny_checkpoint, manifest, _settings())
    assert json.loads((tmp_path / "run" / "state.json").read_text())["status"] == "failed"


def test_settings_from_config():
    config = Config().with_overrides({"training.batch_size": 2, "training.full_finetune.speaker_patience": 5,
                                      "training.compile": "off", "training.eval_sentences": 1})
    lora = TrainSettings.from_config(config, "lora")
    assert lora.compile == "off" and len(lora.eval_texts) == 1 and lora.eval_texts[0].startswith("Tervetuloa")
    assert (lora.mode, lora.steps, lora.lr, lora.batch_size, lora.betas, lora.eps) == ("lora", 2800, 1e-4, 2, (0.9, 0.95), 1e-5)
    full = TrainSettings.from_config(config, "full")
    assert (full.mode, full.steps, full.epochs, full.lr) == ("full", None, 3, 1e-5)
    speaker = TrainSettings.from_config(config, "speaker_lora", seed=9)
    assert (speaker.mode, speaker.steps, speaker.patience, speaker.lr, speaker.seed) == ("lora", 2000, 5, 1e-4, 9)
    with pytest.raises(ValueError, match="Unknown training mode"):
        TrainSettings.from_config(config, "nope")
    with pytest.raises(ValueError, match="schedule, batch_size"):
        TrainSettings(steps=1, schedule="linear", batch_size=0)
    with pytest.raises(ValueError, match="steps/epochs"):
        TrainSettings()


def test_gpu_memory_plan_is_applied_and_recorded(tmp_path, tiny_checkpoint, monkeypatch):
    """On a GPU the memory planner's split replaces the configured one; here its answer is injected."""
    from pipeline.train.memory_plan import MemoryPlan

    asked = {}

    def fake_plan(mode, batch_size, grad_accumulation, max_length, device, checkpointing, **_):
        asked.update(mode=mode, effective=batch_size * grad_accumulation, checkpointing=checkpointing)
        return MemoryPlan(1, 4, True, 30.0, 36.0, 40.0, True, "injected for the test")

    monkeypatch.setattr(plan_module, "plan_for_device", fake_plan)
    manifest = _manifest(tmp_path / "codes")
    result = train(tmp_path / "run", tiny_checkpoint, manifest, _settings(steps=3, batch_size=2, grad_accumulation=2))
    assert result.status == "finished"
    assert asked == {"mode": "lora", "effective": 4, "checkpointing": "auto"}
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert "micro-batch 1 x 4 accumulation, gradient checkpointing on" in state["memory_plan"]


def test_examples_are_spoken_at_each_validation_without_changing_the_curve(tmp_path, tiny_checkpoint):
    import soundfile as sf

    manifest = _manifest(tmp_path / "codes")
    plain = train(tmp_path / "plain", tiny_checkpoint, manifest, _settings(steps=4, val_every=2))
    heard = train(tmp_path / "heard", tiny_checkpoint, manifest,
                  _settings(steps=4, val_every=2, eval_texts=("Hyvää huomenta.", "Kiitos paljon."), eval_max_frames=12))
    assert plain.status == heard.status == "finished"
    for step in (2, 4):
        for i in (1, 2):
            audio, rate = sf.read(tmp_path / "heard" / "audio" / f"step_{step:06d}" / f"sentence_{i}.wav")
            assert rate == 44100 and len(audio) > 0 and np.isfinite(audio).all()
    assert not (tmp_path / "plain" / "audio").exists()
    # generating with the model mid-training must not disturb training (weights, caches, RNG)
    assert [r["loss"] for r in _rows(tmp_path / "plain")] == [r["loss"] for r in _rows(tmp_path / "heard")]
