"""The GPUs this machine shows to PyTorch (CUDA_VISIBLE_DEVICES applies), as the studio lists them."""

from __future__ import annotations

import torch

GB = 1e9  # decimal, as the doctor and the bench report memory


def visible_gpus() -> list[dict]:
    """One {"name", "memory_gb"} per visible CUDA device, in device order ([] without CUDA)."""
    if not torch.cuda.is_available():
        return []
    found = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        found.append({"name": props.name, "memory_gb": round(props.total_memory / GB, 1)})
    return found
