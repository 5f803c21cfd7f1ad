"""Seeded generation calls on several threads: torch's generators are the process's, so each call
samples under one lock and keeps its own state across its yields (pipeline.generate.seeded)."""

from __future__ import annotations

import threading
import time

import torch

from pipeline.generate.seeded import SeededRandom

CPU = torch.device("cpu")


def _call(seed: int | None, out: dict, key: str, pieces: int = 4, draws: int = 5) -> None:
    """A streaming call's shape: frames sampled, then a yield (paused), `pieces` times."""
    with SeededRandom(CPU, seed) as rng:
        got = []
        for _ in range(pieces):
            for _ in range(draws):
                got.append(torch.rand(1).item())
                time.sleep(0.001)  # the rest of a frame's work: another thread gets the interpreter
            state = rng.pause()
            time.sleep(0.005)  # the listener's side of the yield
            rng.resume(state)
        out[key] = got


def _together(*calls) -> dict:
    out: dict = {}
    threads = [threading.Thread(target=_call, args=(seed, out, key)) for key, seed in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return out


def test_two_seeded_calls_at_once_sample_as_each_would_alone():
    alone: dict = {}
    _call(1234, alone, "a")
    _call(99, alone, "b")
    both = _together(("a", 1234), ("b", 99))
    assert both["a"] == alone["a"] and both["b"] == alone["b"]


def test_an_unseeded_call_beside_a_seeded_one_does_not_change_its_draws():
    alone: dict = {}
    _call(7, alone, "seeded")
    both = _together(("seeded", 7), ("other", None), ("third", None))
    assert both["seeded"] == alone["seeded"] and len(both["other"]) == len(both["third"]) == 20


def test_a_call_closed_at_a_yield_gives_the_lock_back_and_the_callers_state():
    torch.manual_seed(5)
    before = torch.get_rng_state()

    def stream():
        with SeededRandom(CPU, 1) as rng:
            torch.rand(3)
            state = rng.pause()
            yield 1
            rng.resume(state)
            yield 2

    pieces = stream()
    assert next(pieces) == 1
    pieces.close()  # the listener left
    assert torch.equal(torch.get_rng_state(), before)
    out: dict = {}
    worker = threading.Thread(target=_call, args=(3, out, "next"))
    worker.start()
    worker.join(timeout=30)
    assert len(out["next"]) == 20  # not blocked by the closed call
    with SeededRandom(CPU, 2):
        with SeededRandom(CPU, 3):  # a call inside a call on one thread takes the lock once
            torch.rand(1)
