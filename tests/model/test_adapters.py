"""peft LoRA on the DualARTransformer: an untrained adapter changes nothing; stacking is exact."""

import zipfile

import pytest
import torch
from safetensors.torch import load_file

from pipeline.model.adapters import (
    AdapterError,
    adapter_scales,
    attach_lora,
    export_adapter_zip,
    load_adapters,
    remove_adapters,
    save_adapter,
)
from pipeline.model.checkpoints import load_lm
from pipeline.train.forward import fast_logits, slow_forward, token_logits
from pipeline.train.loss import compute_loss
from pipeline.model.tokens import Utterance, build_sequence, to_labels


@pytest.fixture
def ckpt(tiny_checkpoint):
    return tiny_checkpoint


@pytest.fixture
def model(ckpt):
    return load_lm(ckpt)[0]


def _batch(model, seed=0):
    cfg, tok = model.config, model.tokenizer
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, cfg.codebook_size, (cfg.num_codebooks, 12), generator=g)
    seq = build_sequence(tok, cfg.num_codebooks, [Utterance("Hyvää yötä.", codes), Utterance("Moi!", codes[:, :5])])
    return {"tokens": seq.tokens[None], "labels": to_labels(seq)[None]}


@torch.no_grad()
def _outputs(model, batch):
    """Token logits and fast logits of the training path, plus forward_generate's last logits."""
    model.eval()
    hidden = slow_forward(model, batch["tokens"])
    frames = batch["labels"][0, 1] != -100
    fast = fast_logits(model, hidden[0][frames], batch["labels"][0, 1:, frames].T)
    generated = model.forward_generate(batch["tokens"]).logits
    return token_logits(model, hidden), fast, generated


def _perturb(peft_model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name or "lora_embedding_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)


@pytest.mark.parametrize("train_embeddings", [False, True])
def test_fresh_adapter_leaves_outputs_exactly_unchanged(model, train_embeddings):
    batch = _batch(model)
    before = _outputs(model, batch)
    peft_model = attach_lora(model, rank=4, alpha=8, dropout=0.1, train_embeddings=train_embeddings)
    after = _outputs(model, batch)  # the caller's own object, modified in place
    for a, b in zip(before, after):
        assert torch.equal(a, b)
    assert torch.equal(before[0], _outputs(peft_model, batch)[0])


def test_attaching_does_not_touch_pretrained_weights(model):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    peft_model = attach_lora(model, rank=4, alpha=8, train_embeddings=True)
    after = {k.replace(".base_layer", ""): v for k, v in model.state_dict().items() if "lora_" not in k}
    assert after.keys() == before.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    wrapped = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if hasattr(m, "base_layer")}
    assert wrapped == {"wqkv", "wo", "w1", "w2", "w3", "output", "fast_output", "embeddings",
                       "codebook_embeddings", "fast_embeddings"}


def test_trained_adapter_is_on_every_path(model):
    batch = _batch(model)
    before = _outputs(model, batch)
    peft_model = attach_lora(model, rank=4, alpha=8, train_embeddings=True)
    _perturb(peft_model, seed=1)
    after = _outputs(model, batch)
    for a, b in zip(before, after):
        assert (a - b).abs().max() > 1e-3
    # gradients reach the adapter through compute_loss
    model.train()
    compute_loss(peft_model, batch).loss.backward()
    grads = [p.grad for n, p in peft_model.named_parameters() if "lora_A" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def _saved_adapter(ckpt, tmp_path, seed, rank, alpha, name="default"):
    model = load_lm(ckpt)[0]
    peft_model = attach_lora(model, rank=rank, alpha=alpha, adapter_name=name)
    _perturb(peft_model, seed)
    return save_adapter(peft_model, tmp_path / f"adapter_{seed}", metadata={"seed": seed})


def test_save_writes_peft_safetensors(ckpt, tmp_path):
    out = _saved_adapter(ckpt, tmp_path, seed=2, rank=4, alpha=8, name="speaker")
    names = {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "studio_adapter.json"} <= names
    tensors = load_file(out / "adapter_model.safetensors")
    assert tensors and all("lora_" in k for k in tensors)
    (out / "optimizer.pt").write_bytes(b"training state")  # a training checkpoint holds more
    zip_path = export_adapter_zip(out, tmp_path / "zips" / "a.zip")
    with zipfile.ZipFile(zip_path) as zf:
        assert {"adapter_config.json", "adapter_model.safetensors"} <= set(zf.namelist())
        assert "optimizer.pt" not in zf.namelist()
        zf.extractall(tmp_path / "unzipped")
    model = load_lm(ckpt)[0]
    load_adapters(model, [(tmp_path / "unzipped", 1.0)])  # the download is a loadable adapter


def test_stacked_adapters_equal_manually_weighted_weights(ckpt, tmp_path):
    a = _saved_adapter(ckpt, tmp_path, seed=3, rank=4, alpha=8)
    b = _saved_adapter(ckpt, tmp_path, seed=4, rank=2, alpha=8)
    weights = (0.5, 2.0)
    model = load_lm(ckpt)[0]
    batch = _batch(model, seed=1)
    load_adapters(model, [(a, 1.0)])  # replaced by the next call, not stacked
    stacked = load_adapters(model, [(a, weights[0]), (b, weights[1])])
    assert sorted(adapter_scales(stacked).values()) == [0.5 * 8 / 4, 2.0 * 8 / 2]
    got = _outputs(model, batch)

    expected_model = load_lm(ckpt)[0]
    params = dict(expected_model.named_parameters())
    for path, w, scaling in ((a, weights[0], 8 / 4), (b, weights[1], 8 / 2)):
        tensors = load_file(path / "adapter_model.safetensors")
        for key, lora_a in tensors.items():
            if ".lora_A." not in key:
                continue
            lora_b = tensors[key.replace(".lora_A.", ".lora_B.")]
            target = key.removeprefix("base_model.model.").replace(".lora_A.weight", ".weight")
            with torch.no_grad():
                params[target] += w * scaling * (lora_b @ lora_a)
    want = _outputs(expected_model, batch)
    for x, y in zip(got, want):
        torch.testing.assert_close(x, y, atol=1e-3, rtol=1e-3)

    bare = remove_adapters(stacked)
    assert bare is model and not any(hasattr(m, "base_layer") for m in model.modules())
    torch.testing.assert_close(_outputs(model, batch)[0], _outputs(load_lm(ckpt)[0], batch)[0])


def test_bad_adapter_directory_is_rejected(model, tmp_path):
    with pytest.raises(AdapterError, match="missing"):
        load_adapters(model, [(tmp_path, 1.0)])
    with pytest.raises(AdapterError, match="at least one"):
        load_adapters(model, [])
