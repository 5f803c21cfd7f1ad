"""The training forward computes exactly what generation computes, step by step with KV caches."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from fish_speech.models.text2semantic.llama import DualARTransformer

from pipeline.model.checkpoints import load_lm
from pipeline.train.forward import fast_logits, slow_forward, token_logits
from pipeline.train.loss import compute_loss
from pipeline.model.tokens import Utterance, build_sequence, to_labels


@pytest.fixture
def ckpt(tiny_checkpoint):
    return tiny_checkpoint


def _variant(ckpt):
    """The tiny model reshaped so every code path is exercised: GQA, qk-norm, fast_dim != dim,
    larger init so a wrong embedding scale changes the logits clearly."""
    base, tokenizer = load_lm(ckpt)
    args = dataclasses.replace(
        base.config, fast_dim=32, fast_n_head=2, fast_n_local_heads=1, fast_head_dim=16,
        fast_intermediate_size=64, initializer_range=0.2, max_seq_len=256,
    )
    torch.manual_seed(0)
    model = DualARTransformer(args, tokenizer=tokenizer).eval()
    assert args.scale_codebook_embeddings and args.n_head != args.n_local_heads
    return model, tokenizer


def _sequence(model, tokenizer, seed=0, frames=(6, 9)):
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    n_sem = len(tokenizer.semantic_id_to_token_id)
    utts = []
    for i, t in enumerate(frames):
        codes = torch.randint(0, min(cfg.codebook_size, 1024), (cfg.num_codebooks, t), generator=g)
        codes[0] = torch.randint(0, n_sem, (t,), generator=g)
        utts.append(Utterance(["Hyvää päivää.", "Moi vaan!"][i % 2], codes))
    return build_sequence(tokenizer, cfg.num_codebooks, utts)


@torch.no_grad()
def _generation_logits(model, tokens):
    """Per position: token logits and (where the next column is audio) fast logits, computed the way
    fish_speech.models.text2semantic.inference.generate does (prefill, then one column at a time)."""
    n = model.config.num_codebooks
    model.setup_caches(max_batch_size=1, max_seq_len=model.config.max_seq_len, dtype=torch.float32)
    length = tokens.shape[1]
    is_audio = (tokens[0] >= model.tokenizer.semantic_begin_id) & (tokens[0] <= model.tokenizer.semantic_end_id)
    prefill = int(is_audio.nonzero()[0])  # the prompt up to the first audio frame
    out = model.forward_generate(tokens[None, :, :prefill], torch.arange(prefill))
    tok = {prefill - 1: out.logits[0, -1]}
    hid = {prefill - 1: out.hidden_states[0, -1]}
    for t in range(prefill, length):
        out = model.forward_generate(tokens[None, :, t : t + 1], torch.tensor([t]))
        tok[t], hid[t] = out.logits[0, -1], out.hidden_states[0, -1]
    fast = {}
    for t in range(prefill - 1, length - 1):
        if not is_audio[t + 1]:
            continue
        for layer in model.fast_layers:
            layer.attention.kv_cache.k_cache.fill_(0)
            layer.attention.kv_cache.v_cache.fill_(0)
        model.forward_generate_fast(hid[t][None], torch.tensor([0]))
        rows = []
        for k in range(1, n):
            x = model.fast_embeddings(tokens[k, t + 1].view(1))  # previous codebook of the frame
            rows.append(model.forward_generate_fast(x, torch.tensor([k]))[0, 0])
        fast[t] = torch.stack(rows)
    return tok, fast


@torch.no_grad()
def _training_logits(model, tokens):
    hidden = slow_forward(model, tokens[None])[0]
    logits = token_logits(model, hidden)
    labels = to_labels_from_tokens(model, tokens)
    frame_pos = (labels[1] != -100).nonzero().flatten()
    fl = fast_logits(model, hidden[frame_pos], labels[1:, frame_pos].T)[:, 1:]
    return logits, {int(t): fl[i] for i, t in enumerate(frame_pos)}


def to_labels_from_tokens(model, tokens):
    labels = torch.full_like(tokens, -100)
    labels[:, :-1] = tokens[:, 1:]
    is_audio = (tokens[0] >= model.tokenizer.semantic_begin_id) & (tokens[0] <= model.tokenizer.semantic_end_id)
    labels[1:, :-1][:, ~is_audio[1:]] = -100
    return labels


def _max_difference(model, seq):
    gen_tok, gen_fast = _generation_logits(model, seq.tokens)
    train_tok, train_fast = _training_logits(model, seq.tokens)
    assert set(gen_fast) == set(train_fast) and len(gen_fast) == int(seq.audio_mask.sum())
    diff = max((train_tok[t] - v).abs().max().item() for t, v in gen_tok.items())
    diff_fast = max((train_fast[t] - v).abs().max().item() for t, v in gen_fast.items())
    scale = max(v.abs().max().item() for v in gen_tok.values())
    return diff, diff_fast, scale


def test_teacher_forced_logits_equal_generation(ckpt):
    model, tokenizer = _variant(ckpt)
    seq = _sequence(model, tokenizer)
    diff, diff_fast, scale = _max_difference(model, seq)
    assert scale > 0.1
    assert diff < 1e-4 and diff_fast < 1e-4, (diff, diff_fast)


def test_equivalence_catches_a_missing_embedding_scale(ckpt):
    model, tokenizer = _variant(ckpt)
    seq = _sequence(model, tokenizer)
    gen_tok, _ = _generation_logits(model, seq.tokens)
    model.config.scale_codebook_embeddings = False  # the training path alone loses the scale
    train_tok, _ = _training_logits(model, seq.tokens)
    diff = max((train_tok[t] - v).abs().max().item() for t, v in gen_tok.items())
    assert diff > 1e-2


def test_equivalence_on_the_shared_tiny_checkpoint(ckpt):
    model, tokenizer = load_lm(ckpt)
    seq = _sequence(model, tokenizer, seed=4, frames=(5, 3, 7))
    diff, diff_fast, _ = _max_difference(model, seq)
    assert diff < 1e-4 and diff_fast < 1e-4


def test_compute_loss_is_cross_entropy_of_generation_logits(ckpt):
    model, tokenizer = _variant(ckpt)
    seq = _sequence(model, tokenizer, seed=1)
    labels = to_labels(seq)
    gen_tok, gen_fast = _generation_logits(model, seq.tokens)
    on = seq.loss_mask.nonzero().flatten().tolist()
    token_ce = F.cross_entropy(torch.stack([gen_tok[t] for t in on]), labels[0, on])
    frames = sorted(gen_fast)
    fast = torch.stack([gen_fast[t] for t in frames])
    codebook_ce = F.cross_entropy(fast.reshape(-1, fast.shape[-1]), labels[2:, frames].T.reshape(-1))

    out = compute_loss(model, {"tokens": seq.tokens[None], "labels": labels[None]})
    assert out.n_tokens == len(on)
    torch.testing.assert_close(out.token_loss, token_ce, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.codebook_loss, codebook_ce, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.loss, token_ce + codebook_ce, atol=1e-5, rtol=1e-5)
    assert 0 <= out.top1 <= out.top5 <= 1


def test_padding_at_the_end_and_batching_do_not_change_the_loss(ckpt):
    model, tokenizer = load_lm(ckpt)
    a, b = _sequence(model, tokenizer, seed=2), _sequence(model, tokenizer, seed=3, frames=(4,))
    la, lb = to_labels(a), to_labels(b)
    pad = len(a) - len(b)
    tokens = torch.stack([a.tokens, F.pad(b.tokens, (0, pad))])
    labels = torch.stack([la, F.pad(lb, (0, pad), value=-100)])
    both = compute_loss(model, {"tokens": tokens, "labels": labels})
    only_b = compute_loss(model, {"tokens": b.tokens[None], "labels": lb[None]})
    only_a = compute_loss(model, {"tokens": a.tokens[None], "labels": la[None]})
    assert both.n_tokens == only_a.n_tokens + only_b.n_tokens
    # token CE is a mean over all positions of the batch
    expected = (only_a.token_loss * only_a.n_tokens + only_b.token_loss * only_b.n_tokens) / both.n_tokens
    torch.testing.assert_close(both.token_loss, expected, atol=1e-5, rtol=1e-5)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(ckpt):
    model, tokenizer = load_lm(ckpt)
    model.train()
    seq = _sequence(model, tokenizer, seed=5)
    batch = {"tokens": seq.tokens[None], "labels": to_labels(seq)[None]}
    grads = []
    for gc in (False, True):
        model.zero_grad()
        out = compute_loss(model, batch, gradient_checkpointing=gc)
        out.loss.backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for k in grads[0]:
        torch.testing.assert_close(grads[0][k], grads[1][k], atol=1e-6, rtol=1e-5)
    # every trainable submodule the loss should reach gets a gradient
    for name in ("embeddings.weight", "codebook_embeddings.weight", "fast_embeddings.weight", "output.weight",
                 "fast_output.weight", "layers.0.attention.wqkv.weight", "fast_layers.0.feed_forward.w2.weight"):
        assert grads[0][name].abs().sum() > 0, name


def test_bad_batch_shape_is_rejected(ckpt):
    model, _ = load_lm(ckpt)
    tokens = torch.zeros(1, 2, 8, dtype=torch.long)
    with pytest.raises(ValueError, match="must be"):
        compute_loss(model, {"tokens": tokens, "labels": tokens})


def test_chunked_token_loss_matches_unchunked(ckpt):
    model, tokenizer = load_lm(ckpt)
    model.train()
    seq = _sequence(model, tokenizer, seed=6)
    batch = {"tokens": seq.tokens[None], "labels": to_labels(seq)[None]}
    results = []
    for rows in (4096, 5):  # 5 rows per chunk: several recomputed chunks
        model.zero_grad()
        out = compute_loss(model, batch, chunk_rows=rows)
        out.loss.backward()
        results.append((out, model.output.weight.grad.clone(), model.layers[0].attention.wqkv.weight.grad.clone()))
    (a, ga, wa), (b, gb, wb) = results
    torch.testing.assert_close(a.loss, b.loss, atol=1e-6, rtol=1e-6)
    assert (a.top1, a.top5, a.n_tokens) == (b.top1, b.top5, b.n_tokens)
    torch.testing.assert_close(ga, gb, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(wa, wb, atol=1e-6, rtol=1e-5)


def test_positions_are_read_once_and_padded_for_the_compiled_path(ckpt):
    """compute_loss's host-side indices: token and frame positions, frames padded to FRAME_BUCKET
    rows when compiled (extra rows repeat position 0), every position for the "allpos" layout."""
    from pipeline.train import loss

    model, tokenizer = load_lm(ckpt)
    seq = _sequence(model, tokenizer, seed=7)
    labels = to_labels(seq)[None]
    n = model.config.num_codebooks
    plain = loss._positions(labels, None, labels.device, n, 1024, compile_blocks=False, frames_only=True)
    assert plain.tokens.tolist() == (labels[0, 0] != -100).nonzero().flatten().tolist()
    assert plain.frames.tolist() == (labels[0, 1] != -100).nonzero().flatten().tolist() == plain.rows.tolist()
    assert plain.n_tokens == plain.tokens.numel() and plain.n_frames == plain.frames.numel() > 0
    padded = loss._positions(labels, None, labels.device, n, 1024, compile_blocks=True, frames_only=True)
    assert padded.rows.numel() == min(loss.FRAME_BUCKET, labels.shape[-1])
    assert padded.rows[: plain.n_frames].tolist() == plain.frames.tolist()
    assert not padded.rows[plain.n_frames :].any()
    every = loss._positions(labels, None, labels.device, n, 1024, compile_blocks=True, frames_only=False)
    assert every.all_rows and every.rows.tolist() == list(range(labels.shape[-1]))


def test_residual_code_of_another_codec_is_a_clear_error(ckpt):
    model, tokenizer = load_lm(ckpt)
    seq = _sequence(model, tokenizer, seed=8)
    labels = to_labels(seq)
    frame = int((labels[1] != -100).nonzero()[0])
    original = int(labels[3, frame])
    labels[3, frame] = 1024  # codebook 2 of the first frame: outside the residual vocabulary
    with pytest.raises(ValueError, match="do not belong to this model's codec"):
        compute_loss(model, {"tokens": seq.tokens[None], "labels": labels[None]})
    # only frames' codes are checked: the same value where no frame follows is not a target
    labels[3, frame] = original
    no_frame = int((labels[1] == -100).nonzero()[0])
    labels[3, no_frame] = 1024
    assert compute_loss(model, {"tokens": seq.tokens[None], "labels": labels[None]}).loss.isfinite()
