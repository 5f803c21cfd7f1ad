"""Out-of-memory on the CPU, told apart from other errors.

CUDA has its own exception type (`torch.cuda.OutOfMemoryError`); the CPU allocator raises a
plain `RuntimeError` ("DefaultCPUAllocator: can't allocate memory: you tried to allocate …")
or Python's `MemoryError`, so those are recognized by type and message.
"""

from __future__ import annotations

_CPU_OOM_TEXT = ("defaultcpuallocator: can't allocate memory", "defaultcpuallocator: not enough memory",
                 "can't allocate memory: you tried to allocate")


def cpu_oom(exc: BaseException) -> bool:
    """True for a CPU out-of-memory error (`MemoryError`, or the CPU allocator's RuntimeError)."""
    if isinstance(exc, MemoryError):
        return True
    if not isinstance(exc, RuntimeError):
        return False
    text = str(exc).lower()
    return any(part in text for part in _CPU_OOM_TEXT)


def cpu_oom_message(batch_size: int, max_length: int, step: int) -> str:
    """What to do after a CPU out-of-memory error, naming the settings to lower."""
    return (f"Out of memory (CPU RAM) at step {step}. To fit: lower training.batch_size (now {batch_size}; raise "
            f"training.grad_accumulation to keep the effective batch) or training.max_length (now {max_length}). "
            "A resume keeps this run's settings, so start a new run with the change.")
