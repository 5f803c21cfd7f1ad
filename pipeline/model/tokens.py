"""The one token layout, shared by training and generation.

It reproduces what fish-speech 0.1.0's `generate_long` builds with `ContentSequence(modality=
"interleave")` and `encode_for_inference`:

    <|interleave|>  then per utterance  <|speaker:0|> TEXT AUDIO-FRAMES <|im_end|>

and, for generation, a last utterance `<|speaker:0|> TEXT` that the model continues with frames.

The result has `num_codebooks + 1` rows. Row 0 holds token ids; at an audio frame it holds the
semantic token id `semantic_begin_id + code0`. Rows 1..num_codebooks hold ALL codebooks of that
frame (row 1 = codebook 0 again, row k+1 = codebook k), and 0 where there is no audio. Each text
piece is tokenised on its own, exactly as ContentSequence encodes one TextPart at a time.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
import torch

from fish_speech.tokenizer import IM_END_TOKEN, MODALITY_INTERLEAVE_TOKEN, TIKTOKEN_MAX_ENCODE_CHARS, FishTokenizer

SPEAKER_TOKEN = "<|speaker:0|>"
# codebooks 1.. are sampled from the fast head's first RESIDUAL_VOCAB logits (fish-speech's
# decode_one_token_ar): generation draws them there and training scores them there
RESIDUAL_VOCAB = 1024


class SequenceError(ValueError):
    """An utterance that cannot be encoded (bad codes shape or range, wrong use of text-only)."""


@dataclass
class Utterance:
    text: str
    codes: torch.Tensor | None = None  # (num_codebooks, T) integer codes, None for the target text


@dataclass
class EncodedSequence:
    tokens: torch.Tensor  # (num_codebooks + 1, T) long
    loss_mask: torch.Tensor  # (T,) bool: True where the NEXT token is an audio frame or <|im_end|>
    audio_mask: torch.Tensor | None = None  # (T,) bool: True where this column is an audio frame

    def __len__(self) -> int:
        return self.tokens.shape[1]


def _as_codes(codes, num_codebooks: int, n_semantic: int, where: str) -> torch.Tensor:
    if isinstance(codes, np.ndarray):
        codes = torch.from_numpy(np.ascontiguousarray(codes))
    if not isinstance(codes, torch.Tensor):
        raise SequenceError(f"{where}: codes must be a tensor or array, not {type(codes).__name__}.")
    if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
        raise SequenceError(f"{where}: codes must be integers, got {codes.dtype}.")
    if codes.ndim != 2 or codes.shape[0] != num_codebooks or codes.shape[1] == 0:
        raise SequenceError(
            f"{where}: codes must have shape ({num_codebooks}, T>0), got {tuple(codes.shape)}. "
            "Re-extract the codes with this model's codec."
        )
    codes = codes.to(torch.long).cpu()
    if int(codes.min()) < 0:
        raise SequenceError(f"{where}: codes contain negative values.")
    if int(codes[0].max()) >= n_semantic:
        raise SequenceError(
            f"{where}: semantic code {int(codes[0].max())} is outside the tokenizer's "
            f"{n_semantic} semantic tokens; the codes do not belong to this model."
        )
    return codes


def _check_semantic_ids(tokenizer: FishTokenizer) -> int:
    """Number of semantic tokens; ensures ids are contiguous (encode and encode_for_inference agree)."""
    mapping = tokenizer.semantic_id_to_token_id
    n = len(mapping)
    begin = tokenizer.semantic_begin_id
    if any(mapping.get(i) != begin + i for i in (0, n // 2, n - 1)):
        raise SequenceError(
            "The tokenizer's semantic tokens are not contiguous; build it from the checkpoint's "
            "special_tokens.json (FishTokenizer.from_pretrained)."
        )
    return n


_ENCODED: "weakref.WeakKeyDictionary[FishTokenizer, dict[str, tuple[int, ...]]]" = weakref.WeakKeyDictionary()


def encode_text(tokenizer: FishTokenizer, text: str) -> list[int]:
    """`FishTokenizer.encode(text)`, memoised per tokenizer and without its thread pool (it runs
    tiktoken's encode_batch on a new ThreadPoolExecutor per call: ~3 ms each, half a second per
    training batch). Same ids; every epoch encodes the same transcripts again."""
    cache = _ENCODED.setdefault(tokenizer, {})
    ids = cache.get(text)
    if ids is None:
        if len(text) > TIKTOKEN_MAX_ENCODE_CHARS:
            ids = tuple(tokenizer.encode(text))
        else:
            model = tokenizer.tkt_model
            ids = tuple(model.encode(text, allowed_special=model.special_tokens_set, disallowed_special=set()))
        if len(cache) > 200_000:
            cache.clear()
        cache[text] = ids
    return list(ids)


def _text_piece(tokenizer: FishTokenizer, text: str, num_codebooks: int):
    ids = torch.tensor(encode_text(tokenizer, text), dtype=torch.long)
    tokens = torch.zeros((num_codebooks + 1, len(ids)), dtype=torch.long)
    tokens[0] = ids
    zeros = torch.zeros(len(ids), dtype=torch.bool)
    return tokens, zeros, zeros


def _utterance_pieces(tokenizer, num_codebooks, n_semantic, utt: Utterance, index: int, add_end: bool):
    """(tokens, is_loss_target, is_audio) column pieces of one utterance."""
    pieces = [_text_piece(tokenizer, SPEAKER_TOKEN, num_codebooks)]
    if not isinstance(utt.text, str) or not utt.text.strip():
        raise SequenceError(f"utterance {index}: text is empty.")
    pieces.append(_text_piece(tokenizer, utt.text, num_codebooks))
    if utt.codes is not None:
        codes = _as_codes(utt.codes, num_codebooks, n_semantic, f"utterance {index}")
        frames = torch.empty((num_codebooks + 1, codes.shape[1]), dtype=torch.long)
        frames[0] = codes[0] + tokenizer.semantic_begin_id
        frames[1:] = codes
        ones = torch.ones(codes.shape[1], dtype=torch.bool)
        pieces.append((frames, ones, ones))
    if add_end:
        end_tokens, _, no_audio = _text_piece(tokenizer, IM_END_TOKEN, num_codebooks)
        pieces.append((end_tokens, torch.ones(end_tokens.shape[1], dtype=torch.bool), no_audio))
    return pieces


def build_sequence(
    tokenizer: FishTokenizer,
    num_codebooks: int,
    utterances: list[Utterance],
    for_generation: bool = False,
) -> EncodedSequence:
    """Encode utterances in the inference layout.

    Training (`for_generation=False`): every utterance needs codes and ends with <|im_end|>;
    the loss mask marks positions whose next token is an audio frame or <|im_end|>.
    Generation: every utterance but the last needs codes (reference prompts, ended with
    <|im_end|>); the last is text only and left open for the model to continue.
    """
    if not utterances:
        raise SequenceError("build_sequence needs at least one utterance.")
    n_semantic = _check_semantic_ids(tokenizer)
    pieces = [_text_piece(tokenizer, MODALITY_INTERLEAVE_TOKEN, num_codebooks)]
    last = len(utterances) - 1
    for i, utt in enumerate(utterances):
        is_target = for_generation and i == last
        if is_target and utt.codes is not None:
            raise SequenceError("For generation the last utterance is the text to speak: give it no codes.")
        if not is_target and utt.codes is None:
            raise SequenceError(f"utterance {i} ({utt.text[:40]!r}) has no codes; every prompt or training "
                                "utterance needs its audio codes.")
        pieces.extend(_utterance_pieces(tokenizer, num_codebooks, n_semantic, utt, i, add_end=not is_target))

    tokens = torch.cat([p[0] for p in pieces], dim=1)
    is_loss_target = torch.cat([p[1] for p in pieces])
    audio_mask = torch.cat([p[2] for p in pieces])
    if for_generation:
        is_loss_target[:] = False
    loss_mask = torch.zeros_like(is_loss_target)
    loss_mask[:-1] = is_loss_target[1:]
    return EncodedSequence(tokens=tokens, loss_mask=loss_mask, audio_mask=audio_mask)


def sequence_overhead(tokenizer: FishTokenizer) -> int:
    """Tokens of the <|interleave|> prefix at the start of every sequence."""
    return len(encode_text(tokenizer, MODALITY_INTERLEAVE_TOKEN))


def utterance_length(tokenizer: FishTokenizer, text: str, n_frames: int) -> int:
    """Columns one training utterance takes: speaker tag + text + frames + <|im_end|>."""
    return (
        len(encode_text(tokenizer, SPEAKER_TOKEN))
        + len(encode_text(tokenizer, text))
        + n_frames
        + len(encode_text(tokenizer, IM_END_TOKEN))
    )


def to_labels(seq: EncodedSequence) -> torch.Tensor:
    """Shifted targets, (num_codebooks + 1, T): column t holds column t+1's tokens where the loss
    mask is on, -100 elsewhere; codebook rows are also -100 where the target is <|im_end|>."""
    tokens, mask = seq.tokens, seq.loss_mask
    shifted = torch.cat([tokens[:, 1:], torch.full_like(tokens[:, :1], -100)], dim=1)
    next_is_audio = torch.cat([seq.audio_mask[1:], torch.zeros_like(mask[:1])])
    keep = torch.cat([mask[None], (mask & next_is_audio)[None].expand(tokens.shape[0] - 1, -1)])
    return torch.where(keep, shifted, torch.tensor(-100, dtype=tokens.dtype))
