"""Merged models equal base + stacked adapter and load with fish-speech's own init_model."""

import os

import pytest
import torch
from fish_speech.models.text2semantic.inference import init_model
from safetensors.torch import load_file

from pipeline.model.adapters import attach_lora, load_adapters, save_adapter
from pipeline.model.checkpoints import load_lm
from pipeline.train.forward import slow_forward, token_logits
from pipeline.model.merge import MergeError, merge_lora, save_full_model
from pipeline.model.tokens import Utterance, build_sequence


def _tokens(model, seed=0):
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, cfg.codebook_size, (cfg.num_codebooks, 10), generator=g)
    return build_sequence(model.tokenizer, cfg.num_codebooks, [Utterance("Kiitos paljon.", codes)]).tokens[None]


@torch.no_grad()
def _logits(model, tokens):
    model.eval()
    return token_logits(model, slow_forward(model, tokens))


def _trained_adapter(ckpt, out, train_embeddings):
    model = load_lm(ckpt)[0]
    peft_model = attach_lora(model, rank=4, alpha=8, train_embeddings=train_embeddings)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name or "lora_embedding_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return save_adapter(peft_model, out)


@pytest.mark.parametrize("train_embeddings", [False, True])
def test_merged_equals_stacked_and_loads_with_init_model(tiny_checkpoint, tmp_path, train_embeddings):
    adapter = _trained_adapter(tiny_checkpoint, tmp_path / "adapter", train_embeddings)
    merged_dir = merge_lora(tiny_checkpoint, adapter, tmp_path / "merged")

    stacked = load_lm(tiny_checkpoint)[0]
    load_adapters(stacked, [(adapter, 1.0)])
    tokens = _tokens(stacked)
    want = _logits(stacked, tokens)
    base_logits = _logits(load_lm(tiny_checkpoint)[0], tokens)
    assert (want - base_logits).abs().max() > 1e-2  # the adapter matters

    merged, _ = load_lm(merged_dir)
    torch.testing.assert_close(_logits(merged, tokens), want, atol=1e-4, rtol=1e-4)

    # fish-speech's own loader (what its inference tools use) reads the merged directory
    wheel_model, _ = init_model(merged_dir, "cpu", torch.float32)
    torch.testing.assert_close(_logits(wheel_model, tokens), want, atol=1e-4, rtol=1e-4)

    original = torch.load(tiny_checkpoint / "model.pth", weights_only=True)
    written = torch.load(merged_dir / "model.pth", weights_only=True)
    assert list(written) == list(original)
    assert all(written[k].dtype == original[k].dtype for k in original)
    for name in ("config.json", "tokenizer.tiktoken", "special_tokens.json", "codec.pth"):
        assert (merged_dir / name).read_bytes() == (tiny_checkpoint / name).read_bytes()
    assert os.stat(merged_dir / "codec.pth").st_ino == os.stat(tiny_checkpoint / "codec.pth").st_ino


def test_save_full_model_round_trips(tiny_checkpoint, tmp_path):
    model = load_lm(tiny_checkpoint)[0]
    with torch.no_grad():
        model.layers[0].attention.wqkv.weight.add_(0.5)
        model.fast_output.weight.mul_(1.5)
    model.setup_caches(1, 64, dtype=torch.float32)  # KV caches must not leak into the file
    out = save_full_model(model, tiny_checkpoint, tmp_path / "full")
    reloaded, _ = load_lm(out)
    tokens = _tokens(model, seed=1)
    torch.testing.assert_close(_logits(reloaded, tokens), _logits(model, tokens))
    pth = torch.load(out / "model.pth", weights_only=True)
    st = load_file(out / "model.safetensors")
    assert list(pth) == list(torch.load(tiny_checkpoint / "model.pth", weights_only=True))
    assert pth.keys() == st.keys() and all(torch.equal(pth[k], st[k]) for k in pth)
    assert not any("kv_cache" in k for k in pth)


def test_unmerged_model_and_bad_targets_are_refused(tiny_checkpoint, tmp_path):
    model = load_lm(tiny_checkpoint)[0]
    attach_lora(model, rank=2, alpha=4)
    with pytest.raises(MergeError, match="LoRA modules"):
        save_full_model(model, tiny_checkpoint, tmp_path / "x")
    with pytest.raises(MergeError, match="overwrite"):
        save_full_model(load_lm(tiny_checkpoint)[0], tiny_checkpoint, tiny_checkpoint)


def _fake_run(run_dir, adapter):
    """run.json, config.yaml and a phase's state.json as a finished quick_lora run leaves them."""
    import json

    import yaml

    (run_dir / "phases" / "lora").mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps({
        "id": run_dir.name, "mode": "quick_lora", "phases": ["lora"], "dataset": "voices-1234",
        "speaker": "anna", "speaker_reason": "most usable minutes (12.5 min)", "base_model": "/ckpt/s1-mini"}))
    (run_dir / "config.yaml").write_text(yaml.safe_dump({
        "base_model": {"repo": "fishaudio/openaudio-s1-mini", "revision": "main"},
        "dataset": {"source": "huggingface", "hf_repo": "facebook/voxpopuli", "hf_config": "fi"}}))
    (run_dir / "phases" / "lora" / "state.json").write_text(json.dumps({
        "status": "finished", "step": 120, "total_steps": 120, "best_val_loss": 3.21875, "best": str(adapter)}))
    (adapter / "trainer_state.json").write_text(json.dumps({"step": 100, "settings": {
        "steps": 120, "lr": 0.0001, "lora_rank": 8, "lora_alpha": 16, "batch_size": 4}}))


def test_downloads_carry_a_model_card(tiny_checkpoint, tmp_path):
    import zipfile

    from pipeline.model.merge import export_adapter, export_model_zip
    from pipeline.model.model_card import is_model_card, run_card_facts
    from pipeline.train.runs import read_run

    adapter = _trained_adapter(tiny_checkpoint, tmp_path / "run" / "adapter", train_embeddings=False)
    assert not is_model_card((adapter / "README.md").read_text())  # peft's empty template
    _fake_run(tmp_path / "run", adapter)
    card = run_card_facts(tmp_path / "run", read_run(tmp_path / "run"))

    zip_path = export_adapter(adapter, tmp_path / "adapter.zip", card=card)
    with zipfile.ZipFile(zip_path) as zf:
        readme = zf.read("README.md").decode()
        assert set(zf.namelist()) == {"adapter_config.json", "adapter_model.safetensors", "README.md"}
    for fact in ("license: cc-by-nc-sa-4.0", "CC-BY-NC-SA-4.0", "fishaudio/openaudio-s1-mini", "voices-1234",
                 "facebook/voxpopuli", "| Speaker | anna |", "120 of 120", "3.219", "lora_rank 8",
                 "PeftModel.from_pretrained", "init_model"):
        assert fact in readme, fact
    assert "More Information Needed" not in readme and is_model_card(readme)

    merged = merge_lora(tiny_checkpoint, adapter, tmp_path / "merged", card=card)
    card_text = (merged / "README.md").read_text()
    assert "merged model" in card_text and "--checkpoint-path merged" in card_text and "CC-BY-NC-SA-4.0" in card_text

    whole = export_model_zip(merged, tmp_path / "run-merged.zip")  # the folder's own card goes along
    with zipfile.ZipFile(whole) as zf:
        names = set(zf.namelist())
        assert {"run-merged/model.pth", "run-merged/codec.pth", "run-merged/config.json",
                "run-merged/README.md"} <= names
        assert zf.read("run-merged/README.md").decode() == card_text
        assert zf.getinfo("run-merged/model.pth").compress_type == zipfile.ZIP_STORED
        assert zf.read("run-merged/model.pth") == (merged / "model.pth").read_bytes()


def test_downloads_without_run_facts_still_have_a_card(tiny_checkpoint, tmp_path):
    import zipfile

    from pipeline.model.merge import export_adapter

    adapter = _trained_adapter(tiny_checkpoint, tmp_path / "adapter", train_embeddings=False)
    (adapter / "studio_adapter.json").write_text('{"step": 40, "mode": "lora"}')
    with zipfile.ZipFile(export_adapter(adapter, tmp_path / "a.zip")) as zf:
        readme = zf.read("README.md").decode()
    assert "CC-BY-NC-SA-4.0" in readme and "| Phase `lora`: steps | 40 |" in readme
    merged = merge_lora(tiny_checkpoint, adapter, tmp_path / "merged")
    assert "random weights" in (merged / "README.md").read_text()  # the tiny base is said to be noise
