"""pipeline.model.tokens reproduces fish-speech's own prompt encoding bit for bit."""

import numpy as np
import pytest
import torch
from fish_speech.content_sequence import ContentSequence, TextPart, VQPart
from fish_speech.tokenizer import IM_END_TOKEN, FishTokenizer

from pipeline.model.tokens import (
    SequenceError,
    Utterance,
    build_sequence,
    sequence_overhead,
    to_labels,
    utterance_length,
)

NUM_CODEBOOKS = 4


@pytest.fixture
def tokenizer(tiny_checkpoint):
    return FishTokenizer.from_pretrained(tiny_checkpoint)


def _codes(tokenizer, frames, seed):
    g = torch.Generator().manual_seed(seed)
    n_sem = len(tokenizer.semantic_id_to_token_id)
    codes = torch.randint(0, min(n_sem, 1024), (NUM_CODEBOOKS, frames), generator=g)
    codes[0] = torch.randint(0, n_sem, (frames,), generator=g)
    return codes


def _wheel_encoding(tokenizer, utterances, for_generation):
    """What generate_long builds (same ContentSequence calls)."""
    seq = ContentSequence(modality="interleave")
    for i, utt in enumerate(utterances):
        target = for_generation and i == len(utterances) - 1
        parts = [TextPart(text=utt.text)] if target else [TextPart(text=utt.text), VQPart(codes=utt.codes)]
        seq.append(parts, add_end=not target, speaker=0)
    values, _, _ = seq.encode_for_inference(tokenizer, num_codebooks=NUM_CODEBOOKS)
    return values.long()


TEXTS = ["Hyvää huomenta, Suomi!", "Kaksi kertaa 3 on 6.", "Ääkköset: öljyä ja åäö?"]


def test_training_layout_equals_content_sequence(tokenizer):
    utts = [Utterance(t, _codes(tokenizer, 5 + i * 3, seed=i)) for i, t in enumerate(TEXTS)]
    ours = build_sequence(tokenizer, NUM_CODEBOOKS, utts)
    wheel = _wheel_encoding(tokenizer, utts, for_generation=False)
    assert ours.tokens.dtype == torch.long
    assert torch.equal(ours.tokens, wheel)
    # the semantic row is semantic_begin_id + code0, rows 1.. are all codebooks incl. codebook 0
    first_audio = int(ours.audio_mask.nonzero()[0])
    assert ours.tokens[0, first_audio] == tokenizer.semantic_begin_id + utts[0].codes[0, 0]
    assert torch.equal(ours.tokens[1:, first_audio], utts[0].codes[:, 0])


def test_generation_layout_equals_generate_long(tokenizer):
    utts = [Utterance(TEXTS[0], _codes(tokenizer, 7, seed=3)), Utterance(TEXTS[1])]
    ours = build_sequence(tokenizer, NUM_CODEBOOKS, utts, for_generation=True)
    assert torch.equal(ours.tokens, _wheel_encoding(tokenizer, utts, for_generation=True))
    assert not ours.loss_mask.any()
    # the open target: ends with the text, no <|im_end|>
    tail = tokenizer.encode(TEXTS[1])
    assert ours.tokens[0, -len(tail):].tolist() == tail
    only_text = build_sequence(tokenizer, NUM_CODEBOOKS, [Utterance(TEXTS[2])], for_generation=True)
    assert torch.equal(only_text.tokens, _wheel_encoding(tokenizer, [Utterance(TEXTS[2])], True))


def test_numpy_codes_accepted(tokenizer):
    codes = _codes(tokenizer, 6, seed=1)
    a = build_sequence(tokenizer, NUM_CODEBOOKS, [Utterance("moi", codes)])
    b = build_sequence(tokenizer, NUM_CODEBOOKS, [Utterance("moi", codes.numpy().astype(np.int32))])
    assert torch.equal(a.tokens, b.tokens)


def test_loss_mask_and_labels(tokenizer):
    utts = [Utterance(t, _codes(tokenizer, 4 + i, seed=10 + i)) for i, t in enumerate(TEXTS[:2])]
    seq = build_sequence(tokenizer, NUM_CODEBOOKS, utts)
    im_end = tokenizer.get_token_id(IM_END_TOKEN)
    row0 = seq.tokens[0]
    is_audio = (row0 >= tokenizer.semantic_begin_id) & (row0 <= tokenizer.semantic_end_id)
    assert torch.equal(is_audio, seq.audio_mask)
    expected = torch.zeros_like(seq.loss_mask)
    expected[:-1] = is_audio[1:] | (row0[1:] == im_end)
    assert torch.equal(seq.loss_mask, expected)
    assert int(seq.loss_mask.sum()) == sum(u.codes.shape[1] + 1 for u in utts)

    labels = to_labels(seq)
    assert labels.shape == seq.tokens.shape
    on = seq.loss_mask.nonzero().flatten()
    assert torch.equal(labels[0, on], row0[on + 1])
    assert (labels[:, ~seq.loss_mask] == -100).all()
    # codebook rows carry the next frame's codes, -100 where the target is <|im_end|>
    end_targets = on[row0[on + 1] == im_end]
    assert len(end_targets) == 2 and (labels[1:, end_targets] == -100).all()
    audio_targets = on[is_audio[on + 1]]
    assert torch.equal(labels[1:, audio_targets], seq.tokens[1:, audio_targets + 1])


def test_lengths_add_up(tokenizer):
    utts = [Utterance(t, _codes(tokenizer, 3 + i, seed=i)) for i, t in enumerate(TEXTS)]
    seq = build_sequence(tokenizer, NUM_CODEBOOKS, utts)
    predicted = sequence_overhead(tokenizer) + sum(utterance_length(tokenizer, u.text, u.codes.shape[1]) for u in utts)
    assert predicted == len(seq)


def test_bad_input_is_rejected(tokenizer):
    n_sem = len(tokenizer.semantic_id_to_token_id)
    good = _codes(tokenizer, 4, seed=0)
    with pytest.raises(SequenceError, match="shape"):
        build_sequence(tokenizer, NUM_CODEBOOKS, [Utterance("moi", good[:2])])
    bad = good.clone()
    bad[0, 1] = n_sem
    with pytest.raises(SequenceError, match="semantic code"):
        build_sequence(tokenizer, NUM_CODEBOOKS, [Utterance("moi", bad)])
    with pytest.raises(SequenceError, match="no codes"):
        build_sequence(tokenizer, NUM_CODEBOOKS, [Utterance("moi", None)])
    with pytest.raises(SequenceError, match="give it no codes"):
        build_sequence(tokenizer, NUM_CODEBOOKS, [Utterance("moi", good)], for_generation=True)
    with pytest.raises(SequenceError, match="empty"):
        build_sequence(tokenizer, NUM_CODEBOOKS, [Utterance("  ", good)])
    with pytest.raises(SequenceError, match="integers"):
        build_sequence(tokenizer, NUM_CODEBOOKS, [Utterance("moi", good.float())])


def test_fast_text_encoding_equals_fish_tokenizer(tokenizer):
    from pipeline.model.tokens import encode_text

    for text in TEXTS + ["<|speaker:0|>Moi<|im_end|>", "  väli  lyönnit \n rivit", "", "€ 1 234,50 ∑"]:
        assert encode_text(tokenizer, text) == tokenizer.encode(text)
