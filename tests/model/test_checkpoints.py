"""Checkpoint download errors, loading, and the tiny-checkpoint factory (CPU, no network)."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import huggingface_hub
import pytest
import torch
from huggingface_hub import errors as hf_errors

from pipeline.model import checkpoints
from pipeline.model.checkpoints import (
    HUB_FILES,
    CheckpointError,
    codec_identity,
    describe_checkpoint,
    download_base_model,
    is_random_weights,
    load_codec,
    load_lm,
    load_tokenizer,
    real_shape_args,
)
from pipeline.model.tiny_checkpoint import write_tiny_checkpoint
from hub_fakes import fake_response, raising

REPO = "fishaudio/openaudio-s1-mini"


# -- tiny checkpoint round trip -----------------------------------------------------------------


def test_tiny_checkpoint_has_hub_layout(tiny_checkpoint):
    for name in HUB_FILES + ("codec_config.yaml", "RANDOM_WEIGHTS"):
        assert (tiny_checkpoint / name).is_file(), name
    assert is_random_weights(tiny_checkpoint)
    assert "random weights" in describe_checkpoint(tiny_checkpoint)
    # Small enough to write per test session.
    assert sum(p.stat().st_size for p in tiny_checkpoint.iterdir()) < 5_000_000


def test_load_lm_returns_saved_weights(tiny_checkpoint):
    model, tokenizer = load_lm(tiny_checkpoint)
    saved = torch.load(tiny_checkpoint / "model.pth", weights_only=True)
    state = model.state_dict()
    assert set(saved) == set(state)
    for key, value in saved.items():
        assert torch.equal(state[key], value), key
    assert not model.training
    assert model.config.num_codebooks == 4


def test_tokenizer_matches_special_tokens_json_and_encodes_finnish(tiny_checkpoint):
    tokenizer = load_tokenizer(tiny_checkpoint)
    special = json.loads((tiny_checkpoint / "special_tokens.json").read_text())
    assert tokenizer.all_special_tokens_with_ids == special
    for name in ("<|interleave|>", "<|speaker:0|>", "<|im_end|>", "<|semantic:0|>"):
        assert [special[name]] == tokenizer.encode(name)
    n_semantic = sum(k.startswith("<|semantic:") for k in special)
    # Not fish_speech.tokenizer.SEMANTIC_TOKENS' 1024 (docs/FISH_SPEECH_NOTES.md, wheel bug 2): the checkpoint's own count.
    assert n_semantic == json.loads((tiny_checkpoint / "config.json").read_text())["codebook_size"]
    assert tokenizer.semantic_end_id - tokenizer.semantic_begin_id == n_semantic - 1
    text = "Hyvää päivää! Öljyä ja älyä, 123."
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    assert len(ids) < len(text.encode("utf-8"))  # merges are used, not just single bytes
    assert max(ids) < tokenizer.get_token_id("<|begin_of_text|>")  # plain text has no special ids


def test_fish_speech_init_model_loads_tiny_checkpoint(tiny_checkpoint):
    from fish_speech.models.text2semantic.inference import init_model

    model, _ = init_model(str(tiny_checkpoint), "cpu", torch.float32)
    ours, _ = load_lm(tiny_checkpoint)
    theirs = model.state_dict()
    for key, value in ours.state_dict().items():
        assert torch.equal(theirs[key], value), key
    assert model.tokenizer.semantic_begin_id == ours.tokenizer.semantic_begin_id


def test_load_codec_returns_saved_weights(tiny_checkpoint):
    codec = load_codec(tiny_checkpoint)
    saved = torch.load(tiny_checkpoint / "codec.pth", weights_only=True)
    state = codec.state_dict()
    for key, value in saved.items():
        assert torch.equal(state[key], value), key
    assert codec.sample_rate == 44100 and codec.frame_length == 2048
    # Codebooks match the LM: semantic == LM semantic tokens, residual == fast codebook_size.
    cfg = json.loads((tiny_checkpoint / "config.json").read_text())
    assert codec.quantizer.semantic_quantizer.codebook_size == cfg["codebook_size"]
    assert codec.quantizer.quantizer.codebook_size == cfg["codebook_size"]
    assert 1 + codec.quantizer.quantizer.n_codebooks == cfg["num_codebooks"]


def test_same_seed_same_weights_other_seed_differs(tmp_path):
    a = write_tiny_checkpoint(tmp_path / "a", seed=3)
    b = write_tiny_checkpoint(tmp_path / "b", seed=3)
    c = write_tiny_checkpoint(tmp_path / "c", seed=4)
    wa, wb, wc = (torch.load(d / "model.pth", weights_only=True) for d in (a, b, c))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not torch.equal(wa["embeddings.weight"], wc["embeddings.weight"])
    assert not (tmp_path / "a.writing").exists()


def test_codec_identity_changes_with_weights_and_config(tiny_checkpoint, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_checkpoint, copy)
    first = codec_identity(copy)
    assert first == codec_identity(tiny_checkpoint)  # content, not path
    state = torch.load(copy / "codec.pth", weights_only=True)
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = state[key] + 1e-3
    torch.save(state, copy / "codec.pth")
    second = codec_identity(copy)
    assert second != first
    (copy / "codec_config.yaml").write_text((copy / "codec_config.yaml").read_text() + "\n# edited\n")
    assert codec_identity(copy) != second


def test_real_shape_args_parameter_count():
    from fish_speech.models.text2semantic.llama import DualARTransformer

    args = real_shape_args()
    assert (args.dim, args.n_layer, args.n_head, args.n_local_heads) == (1024, 28, 16, 8)
    assert (args.num_codebooks, args.codebook_size, args.vocab_size) == (10, 4096, 155776)
    with torch.device("meta"):
        model = DualARTransformer(args, tokenizer=SimpleNamespace(semantic_id_to_token_id={0: 0}))
    n = sum(p.numel() for p in model.parameters())
    assert 0.84e9 < n < 0.88e9  # docs/FISH_SPEECH_NOTES.md: ~860 M


# -- loading errors -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["config.json", "model.pth", "tokenizer.tiktoken", "special_tokens.json"])
def test_missing_lm_file_names_the_file(tiny_checkpoint, tmp_path, name):
    copy = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, copy)
    (copy / name).unlink()
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
        load_lm(copy)


def test_missing_codec_and_directory(tiny_checkpoint, tmp_path):
    copy = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, copy)
    (copy / "codec.pth").unlink()
    with pytest.raises(CheckpointError, match=r"codec\.pth"):
        load_codec(copy)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_lm(tmp_path / "nowhere")


def test_truncated_model_and_mismatched_codec_are_clear_errors(tiny_checkpoint, tmp_path):
    copy = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, copy)
    data = (copy / "model.pth").read_bytes()
    (copy / "model.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.pth.*re-download"):
        load_lm(copy)
    # A codec config of another shape than codec.pth.
    config = (copy / "codec_config.yaml").read_text()
    (copy / "codec_config.yaml").write_text(config.replace("encoder_dim: 4", "encoder_dim: 8"))
    with pytest.raises(CheckpointError, match=r"does not match the codec config codec_config\.yaml"):
        load_codec(copy)


# -- download -----------------------------------------------------------------------------------




def test_download_skips_network_when_files_present(tiny_checkpoint, monkeypatch):
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", raising(AssertionError("network used")))
    assert download_base_model(REPO, tiny_checkpoint) == tiny_checkpoint


def test_download_fetches_each_missing_file(tmp_path, monkeypatch, hub_reachable):
    calls = []

    def fake(repo_id, filename, revision, local_dir, token):
        calls.append((repo_id, filename, revision, token))
        (local_dir / filename).write_bytes(b"x")
        return str(local_dir / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake)
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    (tmp_path / "config.json").write_text("{}")
    out = download_base_model(REPO, tmp_path, revision="abc")
    assert out == tmp_path
    assert sorted(c[1] for c in calls) == sorted(set(HUB_FILES) - {"config.json"})
    assert all(c[0] == REPO and c[2] == "abc" and c[3] == "hf_secret" for c in calls)


@pytest.mark.parametrize(
    "error, expected",
    [
        (hf_errors.GatedRepoError("gated", response=fake_response(403)),
         r"accept the licence at https://huggingface\.co/fishaudio/openaudio-s1-mini.*HF_TOKEN"),
        (hf_errors.RepositoryNotFoundError("401 Client Error", response=fake_response(401)),
         r"needs a login: set HF_TOKEN"),
        (hf_errors.HfHubHTTPError("401 Unauthorized", response=fake_response(401)), r"refused the token"),
        (hf_errors.RevisionNotFoundError("no rev", response=fake_response(404)), r"Revision 'main'"),
        (hf_errors.LocalEntryNotFoundError("Cannot connect"), r"tiny test model still\s+work offline"),
        (ConnectionError("Name or service not known"), r"bundled sample data"),
    ],
)
def test_download_errors_are_clear(tmp_path, monkeypatch, error, expected, hub_reachable):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", raising(error))
    with pytest.raises(CheckpointError, match=expected):
        download_base_model(REPO, tmp_path / "dl")


def test_repo_not_found_with_token_says_not_found(tmp_path, monkeypatch, hub_reachable):
    error = hf_errors.RepositoryNotFoundError("404", response=fake_response(404))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", raising(error))
    with pytest.raises(CheckpointError, match="not found on the Hugging Face Hub"):
        download_base_model("nobody/nothing", tmp_path, token="hf_x")


def test_ensure_base_model_uses_config(tiny_checkpoint, tmp_path, monkeypatch):
    from pipeline.config import Config

    config = Config().with_overrides({"base_model.local_dir": str(tiny_checkpoint)})
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", raising(AssertionError("network used")))
    assert checkpoints.ensure_base_model(config) == tiny_checkpoint
