"""The codec's attention masks, made on the codec's own device and kept per length.

fish-speech's `WindowLimitedTransformer` builds its causal window mask at every call on the CPU
(a float T × T lower triangle, then comparisons) and copies it to the GPU, where the codec waits
for it. The real codec has three such transformers; for a 20 s clip the largest mask is
1,723 × 1,723, ~36 ms of host time per call measured on a CPU, repeated for every batch of an
extraction. Here each transformer gets a method that makes the same mask from two index vectors
on its device and keeps it per length (batches of one padding step share a length), so a call
costs a dictionary lookup. The wheel is not modified: the method is set on the instances.
"""

from __future__ import annotations

import types

import torch

MAX_KEPT_MASKS = 32  # per transformer: one per padded length an extraction meets; a 1,723² mask is 3 MB


def window_mask(length: int, window: int | None, device) -> torch.Tensor:
    """(1, 1, length, length) bool: query i sees keys i - window + 1 .. i (all earlier ones without
    a window), as the wheel's make_window_limited_mask."""
    rows = torch.arange(length, device=device).view(-1, 1)
    cols = torch.arange(length, device=device).view(1, -1)
    mask = cols <= rows
    if window:
        mask &= cols > rows - window
    return mask[None, None]


def _kept_window_mask(self, max_length: int, x_lens=None) -> torch.Tensor:
    if not self.causal:  # the wheel raises NotImplementedError there too
        return type(self).make_window_limited_mask(self, max_length, x_lens)
    device = next(self.parameters()).device
    key = (int(max_length), device)
    masks = self.__dict__.setdefault("_kept_masks", {})
    if key not in masks:
        if len(masks) >= MAX_KEPT_MASKS:
            masks.pop(next(iter(masks)))
        with torch.inference_mode(False):  # usable outside inference mode too
            masks[key] = window_mask(int(max_length), self.window_size, device)
    return masks[key]


def keep_window_masks(codec) -> int:
    """Give every window-limited transformer of `codec` the device-side, kept masks; returns how many."""
    from fish_speech.models.dac.modded_dac import WindowLimitedTransformer

    count = 0
    for module in codec.modules():
        if isinstance(module, WindowLimitedTransformer):
            module.make_window_limited_mask = types.MethodType(_kept_window_mask, module)
            count += 1
    return count
