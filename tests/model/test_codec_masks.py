"""The codec's kept, device-side window masks: the same masks and codes as the wheel's own."""

import numpy as np
import torch
from fish_speech.models.dac.modded_dac import WindowLimitedTransformer

from pipeline.model.checkpoints import build_codec, codec_config_path, load_codec
from pipeline.model.codec_masks import keep_window_masks, window_mask
from pipeline.model.codes import encode_batch


def test_the_mask_is_the_wheels():
    wheel = WindowLimitedTransformer.make_window_limited_mask
    for length, window in [(1, 4), (7, 4), (44, 128), (176, 512), (300, 128)]:
        fake = type("T", (), {"causal": True, "window_size": window})()
        assert torch.equal(window_mask(length, window, "cpu"), wheel(fake, length)), (length, window)
    fake = type("T", (), {"causal": True, "window_size": None})()
    assert torch.equal(window_mask(50, None, "cpu"), wheel(fake, 50))


def test_every_codec_built_keeps_its_masks_and_gives_the_wheels_codes(tiny_checkpoint):
    codec = load_codec(tiny_checkpoint)
    transformers = [m for m in codec.modules() if isinstance(m, WindowLimitedTransformer)]
    assert transformers and all("make_window_limited_mask" in m.__dict__ for m in transformers)
    plain = build_codec(codec_config_path(tiny_checkpoint))
    plain.load_state_dict(codec.state_dict())
    for module in plain.modules():  # back to the wheel's method
        module.__dict__.pop("make_window_limited_mask", None)
    plain.eval()
    rng = np.random.default_rng(0)
    clips = [(rng.standard_normal(n) * 0.1).astype(np.float32) for n in (3000, 9000, 20000)]
    for kept, wheel in zip(encode_batch(codec, clips), encode_batch(plain, clips)):
        assert torch.equal(kept, wheel)
    masks = transformers[0].__dict__["_kept_masks"]
    before = dict(masks)
    encode_batch(codec, clips)  # the same length again: the kept masks, not new ones
    assert all(masks[key] is mask for key, mask in before.items())


def test_keeping_is_idempotent_and_counted(tiny_checkpoint):
    codec = build_codec(codec_config_path(tiny_checkpoint))
    assert keep_window_masks(codec) == keep_window_masks(codec) >= 1
