"""A seeded generation's random state, kept across the yields of a streaming call."""

from __future__ import annotations

import torch


class SeededRandom:
    """A seeded call's random state (a no-op without a seed): forked from the caller's on entry,
    and kept across each yield (`save` before, `restore` after), so whatever runs between two
    yields does not change the audio of a seeded call."""

    def __init__(self, device: torch.device, seed: int | None):
        self.seed = seed
        self.cuda = [device.index or 0] if device.type == "cuda" else []
        self._fork = torch.random.fork_rng(devices=self.cuda, enabled=seed is not None)

    def __enter__(self) -> "SeededRandom":
        self._fork.__enter__()
        if self.seed is not None:
            torch.manual_seed(self.seed)
        return self

    def __exit__(self, *exc) -> None:
        self._fork.__exit__(*exc)

    def save(self) -> tuple | None:
        if self.seed is None:
            return None
        return torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in self.cuda]

    def restore(self, state: tuple | None) -> None:
        if state is None:
            return
        torch.set_rng_state(state[0])
        for device, cuda_state in zip(self.cuda, state[1]):
            torch.cuda.set_rng_state(cuda_state, device)
