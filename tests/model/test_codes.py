"""VQ extraction with the tiny codec: shapes, batching, the content-addressed cache, resuming."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from pipeline.model.checkpoints import load_codec
from pipeline.model.tiny_checkpoint import write_tiny_checkpoint
from pipeline.model.codes import (
    CodesError,
    cache_key,
    cache_path,
    codec_identity,
    encode_audio,
    encode_batch,
    extract_codes,
    load_codes,
    load_for_codec,
)

SR = 44100
FRAME = 2048  # samples per code frame of the (tiny and real) codec


def _clip(seconds: float, freq: float, seed: int, sr: int = SR) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    rng = np.random.default_rng(seed)
    return (0.3 * np.sin(2 * np.pi * freq * t) + 0.02 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.fixture
def dataset(tmp_path):
    """A manifest of 5 ok clips (one at 22.05 kHz, one stereo), one rejected row, one broken file."""
    rows = []
    specs = [("a", 0.4, 220), ("b", 1.3, 330), ("c", 0.9, 440), ("d", 0.05, 550), ("e", 1.0, 660)]
    for i, (clip_id, seconds, freq) in enumerate(specs):
        path = tmp_path / f"{clip_id}.wav"
        if clip_id == "c":
            sf.write(path, _clip(seconds, freq, i, sr=22050), 22050)
        elif clip_id == "e":
            mono = _clip(seconds, freq, i)
            sf.write(path, np.stack([mono, -mono * 0.5], axis=1), SR)
        else:
            sf.write(path, _clip(seconds, freq, i), SR)
        rows.append({"id": clip_id, "audio_path": str(path), "duration_s": seconds, "status": "ok", "reason": ""})
    sf.write(tmp_path / "rej.wav", _clip(0.5, 100, 9), SR)
    rows.append({"id": "rej", "audio_path": str(tmp_path / "rej.wav"), "duration_s": 0.5,
                 "status": "rejected", "reason": "too quiet"})
    (tmp_path / "broken.wav").write_bytes(b"RIFF not really a wav")
    rows.append({"id": "broken", "audio_path": str(tmp_path / "broken.wav"), "duration_s": 0.7,
                 "status": "ok", "reason": ""})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def codec(tiny_checkpoint):
    return load_codec(tiny_checkpoint)


def test_first_run_encodes_every_ok_clip(dataset, tiny_checkpoint, tmp_path, codec):
    messages = []
    report = extract_codes(dataset, tiny_checkpoint, tmp_path / "cache", batch_seconds=3.0,
                           progress=lambda f, m: messages.append((f, m)), codec=codec)
    assert report.total == 6 and report.computed == 5 and report.hits == 0
    assert set(report.failed) == {"broken"} and "broken.wav" in report.failed["broken"]
    out = report.manifest
    assert list(out["id"]) == list(dataset["id"]) and "codes_path" not in dataset.columns
    assert pd.isna(out.set_index("id").loc["rej", "codes_path"])
    assert pd.isna(out.set_index("id").loc["broken", "codes_path"])
    for _, row in out[out["id"].isin(list("abcde"))].iterrows():
        codes = load_codes(row["codes_path"])
        assert codes.dtype == torch.long and codes.shape[0] == 4
        # ceil(duration * SR / frame), also for the 22.05 kHz file (resampled to the codec's rate)
        assert codes.shape[1] == math.ceil(round(row["duration_s"] * SR) / FRAME), row["id"]
        assert int(codes.max()) < 64 and int(codes.min()) >= 0
    assert report.codes_paths == out.dropna(subset=["codes_path"]).set_index("id")["codes_path"].to_dict()
    assert messages[-1][0] == pytest.approx(1.0)
    assert report.audio_seconds == pytest.approx(0.4 + 1.3 + 0.9 + 0.05 + 1.0, abs=1e-3)
    assert report.throughput > 0


def test_second_run_is_a_full_cache_hit(dataset, tiny_checkpoint, tmp_path, codec):
    first = extract_codes(dataset, tiny_checkpoint, tmp_path / "cache", codec=codec)
    second = extract_codes(dataset, tiny_checkpoint, tmp_path / "cache", codec=codec)
    assert second.hits == 5 and second.computed == 0
    assert second.codes_paths == first.codes_paths
    # Content addressed: a renamed copy of a clip hits the same entry.
    moved = dataset.copy()
    moved.loc[0, "id"] = "renamed"
    assert extract_codes(moved, tiny_checkpoint, tmp_path / "cache", codec=codec).computed == 0


def test_edited_clip_recomputes_only_that_clip(dataset, tiny_checkpoint, tmp_path, codec):
    first = extract_codes(dataset, tiny_checkpoint, tmp_path / "cache", codec=codec)
    path = dataset.set_index("id").loc["b", "audio_path"]
    data, sr = sf.read(path, dtype="float32")
    data[1000] += 0.01
    sf.write(path, data, sr)
    second = extract_codes(dataset, tiny_checkpoint, tmp_path / "cache", codec=codec)
    assert second.computed == 1 and second.hits == 4
    assert second.codes_paths["b"] != first.codes_paths["b"]
    assert {k: v for k, v in second.codes_paths.items() if k != "b"} == {
        k: v for k, v in first.codes_paths.items() if k != "b"}


def test_partial_files_from_a_killed_run_are_ignored(dataset, tiny_checkpoint, tmp_path, codec):
    cache = tmp_path / "cache"
    audio = load_for_codec(dataset.loc[0, "audio_path"], SR)
    target = cache_path(cache, cache_key(audio, SR, codec_identity(tiny_checkpoint)))
    target.parent.mkdir(parents=True)
    # A leftover temporary file, and a truncated final file (as a non-atomic writer would leave).
    leftover = target.with_name(f".{target.name}.deadbeef.tmp")
    leftover.write_bytes(b"\x93NUMPY half")
    np.save(target, np.zeros((4, 500), dtype=np.int16))
    target.write_bytes(target.read_bytes()[:200])
    report = extract_codes(dataset, tiny_checkpoint, cache, codec=codec)
    assert report.computed == 5 and report.hits == 0
    assert load_codes(target).shape == (4, math.ceil(0.4 * SR / FRAME))
    assert not any(p.name.endswith(".tmp") and p != leftover for p in cache.rglob("*"))


def test_interrupted_run_resumes(dataset, tiny_checkpoint, tmp_path, codec):
    calls = []

    def stop_after_first_batch(fraction, message):
        calls.append(fraction)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract_codes(dataset, tiny_checkpoint, tmp_path / "cache", batch_seconds=1.0,
                      progress=stop_after_first_batch, codec=codec)
    done_first = len(list((tmp_path / "cache").rglob("*.npy")))
    assert 0 < done_first < 5
    report = extract_codes(dataset, tiny_checkpoint, tmp_path / "cache", codec=codec)
    assert report.hits == done_first and report.computed == 5 - done_first


def test_another_codec_gets_other_keys(dataset, tiny_checkpoint, tmp_path, codec):
    extract_codes(dataset, tiny_checkpoint, tmp_path / "cache", codec=codec)
    other = write_tiny_checkpoint(tmp_path / "other", seed=1)
    report = extract_codes(dataset, other, tmp_path / "cache", device="cpu")
    assert report.computed == 5 and report.hits == 0


def test_batched_encode_equals_single_encode(codec):
    # The codec is causal, so zero right-padding in a batch leaves each clip's frames unchanged;
    # lengths straddle frame boundaries (2047, 2049) on purpose.
    clips = [_clip(n / SR, 200 + 50 * i, i) for i, n in enumerate([30000, 2047, 2049, 50000, 8192])]
    batched = encode_batch(codec, clips)
    for clip, codes in zip(clips, batched):
        single = encode_audio(codec, clip)
        assert codes.shape == single.shape == (4, math.ceil(len(clip) / FRAME))
        assert torch.equal(codes, single)
    assert len(torch.unique(batched[0][0])) > 3  # real content, not one repeated code


def test_decode_reconstructs_frame_aligned_length(codec):
    clip = _clip(1.0, 300, 0)
    codes = encode_audio(codec, clip)
    with torch.inference_mode():
        audio, lengths = codec.decode(codes[None], torch.tensor([codes.shape[1]]))
    assert audio.shape == (1, 1, codes.shape[1] * FRAME) and int(lengths[0]) == codes.shape[1] * FRAME
    assert len(clip) <= audio.shape[-1] < len(clip) + FRAME
    assert torch.isfinite(audio).all()


def test_manifest_without_columns_and_bad_codes_file(tiny_checkpoint, tmp_path, codec):
    with pytest.raises(CodesError, match="audio_path"):
        extract_codes(pd.DataFrame({"id": ["x"]}), tiny_checkpoint, tmp_path, codec=codec)
    (tmp_path / "bad.npy").write_bytes(b"nope")
    with pytest.raises(CodesError, match="bad.npy"):
        load_codes(tmp_path / "bad.npy")


def test_clip_the_codec_cannot_encode_is_rejected_not_fatal(dataset, tiny_checkpoint, tmp_path, codec, monkeypatch):
    import pipeline.model.codec_batches as codes_module

    real = codes_module.encode_batch

    def limited(codec, audios, device=None, padded=None):
        # Like the real codec past its attention table (block_size): IndexError for long input.
        if max(len(a) for a in audios) > 1.2 * SR:
            raise IndexError("index 4096 is out of bounds for dimension 0 with size 4096")
        return real(codec, audios, device, padded)

    monkeypatch.setattr(codes_module, "encode_batch", limited)
    report = extract_codes(dataset, tiny_checkpoint, tmp_path / "cache", batch_seconds=10.0, codec=codec)
    assert set(report.failed) == {"b", "broken"} and "cannot encode" in report.failed["b"]
    assert report.computed == 4
    # training lists each such clip with the codec's reason, not a generic "no codes"
    from pipeline.model.checkpoints import load_tokenizer
    from pipeline.model.codes import codec_num_codebooks
    from pipeline.train.samples import prepare_clips

    manifest = report.manifest.assign(text="Hei maailma.", speaker="s")
    _, rejected = prepare_clips(manifest, load_tokenizer(tiny_checkpoint), codec_num_codebooks(codec), 4096)
    assert rejected["b"].startswith("no codes: the codec cannot encode this clip")
    assert "broken" in rejected and rejected["broken"].startswith("no codes: ")


def test_the_loader_threads_give_the_same_codes_as_one_clip_at_a_time(dataset, tiny_checkpoint, tmp_path, codec):
    # many small batches, so loads run ahead of the codec on several threads
    report = extract_codes(dataset, tiny_checkpoint, tmp_path / "threads", batch_seconds=1.0, codec=codec,
                           loader_threads=4)
    serial = extract_codes(dataset, tiny_checkpoint, tmp_path / "serial", batch_seconds=1.0, codec=codec,
                           loader_threads=1)
    assert report.loader_threads == 4 and serial.loader_threads == 1
    assert set(report.codes_paths) == set(serial.codes_paths) == set("abcde") and set(report.failed) == {"broken"}
    rows = dataset.set_index("id")
    for clip_id, path in report.codes_paths.items():
        audio = load_for_codec(rows.loc[clip_id, "audio_path"], SR)
        # same cache key as a clip read alone, and the same codes as encoding it alone
        assert Path(path).name == Path(serial.codes_paths[clip_id]).name == f"{cache_key(audio, SR, codec_identity(tiny_checkpoint))}.npy"
        assert torch.equal(load_codes(path), encode_audio(codec, audio)), clip_id
    assert report.load_wait_seconds >= report.first_load_seconds >= 0
    assert 0.0 <= report.gpu_idle_share <= 1.0 and report.encode_seconds > 0


def test_the_report_counts_the_codec_waiting_for_audio(dataset, tiny_checkpoint, tmp_path, codec, monkeypatch):
    import time as time_module

    import pipeline.model.codes as codes_module

    real = codes_module.load_for_codec

    def slow(path, sample_rate):
        time_module.sleep(0.2)  # a slow disk: the codec has nothing to encode meanwhile
        return real(path, sample_rate)

    monkeypatch.setattr(codes_module, "load_for_codec", slow)
    report = extract_codes(dataset, tiny_checkpoint, tmp_path / "cache", batch_seconds=1.0, codec=codec,
                           loader_threads=1)
    assert report.computed == 5
    # the first clip's 0.2 s read is (almost all) waited for, whatever the machine's load
    assert report.load_wait_seconds >= report.first_load_seconds >= 0.15 and 0.0 <= report.gpu_idle_share <= 1.0


def test_several_devices_encode_in_turn_and_give_the_same_codes(dataset, tiny_checkpoint, tmp_path, codec):
    from pipeline.model.codes import codec_devices

    # two codecs (as on two GPUs), small batches so both encode
    report = extract_codes(dataset, tiny_checkpoint, tmp_path / "two", batch_seconds=1.0, devices=["cpu", "cpu"])
    assert set(report.codes_paths) == set("abcde") and set(report.failed) == {"broken"}
    rows = dataset.set_index("id")
    for clip_id, path in report.codes_paths.items():
        audio = load_for_codec(rows.loc[clip_id, "audio_path"], SR)
        assert torch.equal(load_codes(path), encode_audio(codec, audio)), clip_id
    assert codec_devices("cpu") == [torch.device("cpu")]
    assert codec_devices(devices=["cpu", "cpu"]) == [torch.device("cpu")] * 2


def test_the_codec_encodes_the_next_batch_while_the_codes_before_are_written(dataset, tiny_checkpoint, tmp_path,
                                                                            codec, monkeypatch):
    import threading
    import time as time_module

    import pipeline.model.codec_batches as batches_module
    import pipeline.model.codes as codes_module

    events, lock = [], threading.Lock()
    real_group, real_save = batches_module.encode_group, codes_module.save_codes

    def encode_group(*args, **kwargs):
        with lock:
            events.append(("encode", time_module.perf_counter()))
        return real_group(*args, **kwargs)

    def slow_save(path, codes):
        time_module.sleep(0.1)  # a slow disk
        with lock:
            events.append(("saved", time_module.perf_counter()))
        return real_save(path, codes)

    monkeypatch.setattr(batches_module, "encode_group", encode_group)
    monkeypatch.setattr(codes_module, "save_codes", slow_save)
    report = extract_codes(dataset, tiny_checkpoint, tmp_path / "cache", batch_seconds=1.0, codec=codec,
                           loader_threads=1)
    assert report.computed == 5 and report.codecs == 1
    encodes = [t for kind, t in events if kind == "encode"]
    first_save = min(t for kind, t in events if kind == "saved")
    # a later batch went to the codec before the first batch's codes were on disk
    assert len(encodes) >= 2 and encodes[1] < first_save


def test_batches_of_one_padding_step_share_one_shape():
    from pipeline.model.codes import _batches, pad_batch

    rng = np.random.default_rng(0)
    items = sorted(({"id": str(i), "duration": float(d)} for i, d in enumerate(rng.uniform(2, 20, 500))),
                   key=lambda it: it["duration"])
    groups = _batches(items, batch_seconds=60.0, step_seconds=1.5)
    assert [it["id"] for g in groups for it in g] == [it["id"] for it in items]  # every clip once, in order
    shapes = set()
    for group in groups:
        steps = {math.ceil(it["duration"] / 1.5 - 1e-9) for it in group}
        assert len(steps) == 1  # one padded length per group
        padded = steps.pop() * 1.5
        assert len(group) * padded <= 60.0 or len(group) == 1
        shapes.add((len(group), padded))
    # unpadded, nearly every group of sorted random lengths would be a shape of its own
    assert len(shapes) <= 2 * 14 < len(groups) / 2
    batch, lengths = pad_batch([np.ones(5, np.float32), np.ones(9, np.float32)], step=4)
    assert batch.shape == (2, 1, 12) and lengths.tolist() == [5, 9] and float(batch[0, 0, 5:].abs().sum()) == 0


def test_the_batch_size_follows_the_free_gpu_memory(monkeypatch):
    from pipeline.model.codes import MAX_BATCH_SECONDS, MIN_BATCH_SECONDS, default_batch_seconds

    assert default_batch_seconds([torch.device("cpu")]) == 120.0
    free = {0: 140e9, 1: 24e9}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (free[device.index], 150e9))
    assert default_batch_seconds([torch.device("cuda", 0)]) == MAX_BATCH_SECONDS  # a big card: the bound
    assert default_batch_seconds([torch.device("cuda", 1)]) == pytest.approx(120.0)  # half of 24 GB at 0.1 GB/s
    assert default_batch_seconds([torch.device("cuda", 0), torch.device("cuda", 1)]) == pytest.approx(120.0)
    # two codecs on one GPU (codec_slots) share its memory: each batch gets half
    assert default_batch_seconds([torch.device("cuda", 1)] * 2) == pytest.approx(60.0)
    free[1] = 4e9
    assert default_batch_seconds([torch.device("cuda", 1)]) == MIN_BATCH_SECONDS


def test_a_codec_copy_has_the_same_weights_and_gives_the_same_codes(tiny_checkpoint, codec):
    from pipeline.model.checkpoints import codec_config_path, codec_copy

    twin = codec_copy(codec, codec_config_path(tiny_checkpoint))
    assert twin is not codec and not twin.training
    assert all(torch.equal(a, b) for a, b in zip(codec.state_dict().values(), twin.state_dict().values()))
    audio = np.random.default_rng(0).standard_normal(int(codec.sample_rate)).astype(np.float32) * 0.1
    assert torch.equal(encode_audio(twin, audio), encode_audio(codec, audio))


def test_codecs_sharing_a_device_read_the_checkpoint_once(dataset, tiny_checkpoint, tmp_path, codec, monkeypatch):
    import pipeline.model.codes as codes_module

    loads = []
    real_load = codes_module.load_codec
    monkeypatch.setattr(codes_module, "codec_slots", lambda devices: devices * 2)  # as a GPU gets two
    monkeypatch.setattr(codes_module, "load_codec", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    report = extract_codes(dataset, tiny_checkpoint, tmp_path / "two", batch_seconds=1.0, device="cpu")
    assert report.codecs == 2 and len(loads) == 1
    rows = dataset.set_index("id")
    for clip_id, path in report.codes_paths.items():
        assert torch.equal(load_codes(path), encode_audio(codec, load_for_codec(rows.loc[clip_id, "audio_path"], SR)))


def test_each_gpu_gets_two_codecs_and_the_cpu_one():
    from pipeline.model.codec_batches import CODECS_PER_GPU, codec_slots

    gpu, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert codec_slots([cpu]) == [cpu]
    assert codec_slots([gpu, torch.device("cuda", 1)]) == [gpu] * CODECS_PER_GPU + [torch.device("cuda", 1)] * CODECS_PER_GPU


def test_the_codecs_it_loaded_are_let_go_before_it_gives_gpu_memory_back(dataset, tiny_checkpoint, tmp_path,
                                                                          monkeypatch):
    """The training ranks that follow are other processes: every codec extraction loaded must be
    unreferenced when it empties the CUDA cache, after an error (a stop) too."""
    import gc
    import weakref

    import pipeline.model.codes as codes_module

    loaded, alive_at_release = [], []
    real_load = codes_module.load_codec

    def load(*args, **kwargs):
        codec = real_load(*args, **kwargs)
        loaded.append(weakref.ref(codec))
        return codec

    def empty_cache():
        gc.collect()
        alive_at_release.append([ref() is not None for ref in loaded])

    monkeypatch.setattr(codes_module, "load_codec", load)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the GPU branch, on a CPU
    monkeypatch.setattr(torch.cuda, "empty_cache", empty_cache)
    extract_codes(dataset, tiny_checkpoint, tmp_path / "cache", batch_seconds=1.0, device="cpu")

    def stop(fraction, message):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract_codes(dataset, tiny_checkpoint, tmp_path / "other", batch_seconds=1.0, device="cpu", progress=stop)
    assert alive_at_release == [[False], [False, False]]


def test_a_batch_that_runs_out_of_memory_is_halved_with_its_memory_let_go(monkeypatch):
    """Each smaller try starts with the failed one's tensors unreferenced, or the halves would run
    out of memory too and clips that fit alone would be rejected."""
    import gc
    import weakref

    from pipeline.model import codec_batches

    class OutOfMemoryAboveOne(torch.nn.Module):
        frame_length = 4

        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))
            self.activations, self.alive_at_start = [], []

        def encode(self, batch, lengths):
            gc.collect()
            self.alive_at_start.append(any(ref() is not None for ref in self.activations))
            activation = torch.empty(batch.shape[0], 1000)  # what an attempt holds when it fails
            self.activations.append(weakref.ref(activation))
            if batch.shape[0] > 1:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
            return torch.zeros(1, 2, 3, dtype=torch.long), torch.tensor([3])

    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    codec = OutOfMemoryAboveOne()
    failed: dict = {}
    clips = [({"id": f"c{i}"}, np.zeros(8, np.float32), None, 0.1) for i in range(4)]
    encoded = codec_batches.encode_group(codec, clips, 44100, failed)
    assert failed == {} and len(encoded) == 4 and all(codes is not None for codes in encoded)
    assert codec.alive_at_start == [False] * 7  # 4, 2, 1, 1, 2, 1, 1: none began beside a failed one
