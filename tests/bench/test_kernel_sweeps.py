"""The kernel sweeps' command lines (their timings need a GPU)."""

import pytest
import torch

import pipeline.bench.decode_tiles as decode_tiles
import pipeline.bench.lora_tiles as lora_tiles
from pipeline.kernels import decode_layer


def test_the_decoder_sweep_starts_with_the_settings_in_use_and_puts_them_back(monkeypatch):
    assert decode_tiles.SETTINGS[0] == (decode_layer.ROWS_PER_PROGRAM, decode_layer.PRODUCT_WARPS,
                                        decode_layer.ATTENTION_BLOCK, decode_layer.ATTENTION_WARPS)
    assert len(set(decode_tiles.SETTINGS)) == len(decode_tiles.SETTINGS)
    import pipeline.generate.fastgen as fastgen

    seen = []

    class Failing:  # the second setting's generator breaks, as a compile error would
        def __init__(self, *args, **kwargs):
            seen.append(decode_layer.ROWS_PER_PROGRAM)
            if len(seen) == 2:
                raise RuntimeError("broken setting")

        def warmup(self):
            pass

        def generate(self, *args, **kwargs):
            pass

        def teacher_forced_logits(self, *args):
            return [torch.zeros(2)]

        pdl = False

    monkeypatch.setattr(decode_tiles, "_model", lambda device: (None, None, None))
    monkeypatch.setattr(fastgen, "FastGenerator", Failing)
    monkeypatch.setattr(decode_tiles, "time_calls", lambda *args: {"median_s": 1.0})
    with pytest.raises(RuntimeError, match="broken setting"):
        decode_tiles.measure(torch.device("cpu"))
    assert seen == [decode_tiles.SETTINGS[0][0], decode_tiles.SETTINGS[1][0]]
    assert (decode_layer.ROWS_PER_PROGRAM, decode_layer.PRODUCT_WARPS, decode_layer.ATTENTION_BLOCK,
            decode_layer.ATTENTION_WARPS) == decode_tiles.SETTINGS[0]


@pytest.mark.parametrize("sweep", [decode_tiles, lora_tiles])
def test_without_a_gpu_a_sweep_says_what_it_needs(sweep):
    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    with pytest.raises(SystemExit, match="needs a CUDA GPU of Ampere or newer"):
        sweep.main([])
