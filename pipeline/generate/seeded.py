"""A seeded generation's random state, kept across the yields of a streaming call.

torch's random generators belong to the process. The Playground serves two requests at once (two
models, or the start-up warm-up beside a request), so every generation call, seeded or not, holds
the process's sampling lock while it samples and lets go of it at each yield. Without it two calls
would draw from the same generators in turn, and a seeded call's audio would depend on the other
call's timing.
"""

from __future__ import annotations

import threading

import torch

_SAMPLING = threading.Lock()  # a plain lock: a paused generator may resume on another thread
_held_here = threading.local()  # whether this thread holds it (a call inside a call takes it once)


class SeededRandom:
    """A generation call's hold on the random generators (see the module doc). With a seed, its
    random state is forked from the caller's on entry and kept across each yield (`pause` before,
    `resume` after), so whatever runs between two yields does not change the audio."""

    def __init__(self, device: torch.device, seed: int | None):
        self.seed = seed
        self.cuda = [device.index or 0] if device.type == "cuda" else []
        self._fork = torch.random.fork_rng(devices=self.cuda, enabled=seed is not None)
        self._holding = False

    def _acquire(self) -> None:
        if getattr(_held_here, "value", False):
            return  # the enclosing call on this thread holds it
        _SAMPLING.acquire()
        _held_here.value = self._holding = True

    def _release(self) -> None:
        if self._holding:
            _held_here.value = self._holding = False
            _SAMPLING.release()

    def __enter__(self) -> "SeededRandom":
        self._acquire()
        try:
            self._fork.__enter__()
            if self.seed is not None:
                torch.manual_seed(self.seed)
        except BaseException:
            self._release()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._acquire()  # closed at a yield (the listener left): the caller's state is put back under the lock
        try:
            self._fork.__exit__(*exc)
        finally:
            self._release()

    def pause(self) -> tuple | None:
        """Before a yield: this call's random state, and the lock let go."""
        state = None
        if self.seed is not None:
            state = torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in self.cuda]
        self._release()
        return state

    def resume(self, state: tuple | None) -> None:
        """After a yield: the lock taken again and this call's random state put back."""
        self._acquire()
        if state is None:
            return
        torch.set_rng_state(state[0])
        for device, cuda_state in zip(self.cuda, state[1]):
            torch.cuda.set_rng_state(cuda_state, device)
