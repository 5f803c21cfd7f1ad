"""The GPUs PyTorch shows, as the studio lists them (CUDA faked: no GPU is needed)."""

from types import SimpleNamespace

from pipeline.train import gpus


def test_each_visible_gpu_with_its_name_and_memory(monkeypatch):
    cards = [SimpleNamespace(name="NVIDIA H100 80GB HBM3", total_memory=85_520_809_984),
             SimpleNamespace(name="NVIDIA L4", total_memory=23_580_639_232)]
    monkeypatch.setattr(gpus.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(gpus.torch.cuda, "device_count", lambda: len(cards))
    monkeypatch.setattr(gpus.torch.cuda, "get_device_properties", lambda index: cards[index])
    assert gpus.visible_gpus() == [{"name": "NVIDIA H100 80GB HBM3", "memory_gb": 85.5},
                                   {"name": "NVIDIA L4", "memory_gb": 23.6}]
    monkeypatch.setattr(gpus.torch.cuda, "is_available", lambda: False)
    assert gpus.visible_gpus() == []
