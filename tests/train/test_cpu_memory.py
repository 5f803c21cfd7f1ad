"""pipeline.train.cpu_memory: a CPU out-of-memory error is recognized, other errors are not."""

import pytest
import torch

from pipeline.train.cpu_memory import cpu_oom, cpu_oom_message


def test_real_cpu_allocator_failure_is_recognized():
    with pytest.raises(RuntimeError) as info:
        torch.empty(2**62, dtype=torch.uint8)                  # what a huge batch on CPU runs into
    assert cpu_oom(info.value)
    assert cpu_oom(MemoryError())


@pytest.mark.parametrize("exc", [RuntimeError("shape mismatch"), ValueError("DefaultCPUAllocator: can't allocate memory"),
                                 KeyError("x"), RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")])
def test_other_errors_are_not_cpu_oom(exc):
    assert not cpu_oom(exc)


def test_message_names_the_settings():
    message = cpu_oom_message(batch_size=64, max_length=4096, step=3)
    assert "CPU" in message and "training.batch_size (now 64" in message and "training.max_length (now 4096)" in message
    assert "start a new run" in message  # a resume would keep the settings that ran out of memory

