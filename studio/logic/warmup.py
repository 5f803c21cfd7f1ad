"""Warm the Playground's first model in the background when the studio starts.

On a GPU the first speech otherwise waits for the model to load and for the decoder to compile
(~30 s on an H200, docs/PERFORMANCE.md). The studio starts this at launch; a request that
arrives meanwhile waits on the same cache entry instead of loading a second copy.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from studio.logic.playground import SynthCache

WARMUP_TEXT = "Hei."


def warm_up_wanted() -> bool:
    """Only where it pays: a CUDA GPU (compilation), or when asked for (STUDIO_WARMUP=1)."""
    flag = os.environ.get("STUDIO_WARMUP")
    if flag is not None:
        return flag == "1"
    import torch

    return torch.cuda.is_available()


class WarmUp:
    """One background warm-up of one model in a SynthCache, with a state the UI can show."""

    def __init__(self, cache: SynthCache):
        self.cache = cache
        self.state, self.message, self.model_dir = "idle", "", None
        self.thread: threading.Thread | None = None

    def start(self, model_dir: str | Path) -> threading.Thread:
        self.model_dir, self.state = str(model_dir), "warming"
        self.message = f"Loading {Path(model_dir).name} and preparing fast generation in the background…"
        self.thread = threading.Thread(target=self._run, name="studio-warm-up", daemon=True)
        self.thread.start()
        return self.thread

    def _run(self) -> None:
        started = time.time()
        try:
            with self.cache.use(self.model_dir) as synth:
                synth.speak(WARMUP_TEXT, seed=0, max_new_tokens=8)
        except Exception as exc:  # noqa: BLE001 - a failed warm-up only means the first request is slower
            self.state, self.message = "failed", f"Warm-up failed ({type(exc).__name__}: {exc}); the first request loads the model."
            return
        self.state = "ready"
        self.message = f"{Path(self.model_dir).name} is loaded and warm ({time.time() - started:.0f} s)."

    def describe(self) -> str:
        return self.message
