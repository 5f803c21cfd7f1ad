"""The evaluation sentences a validation speaks, and their scores: progress you can hear.

`SpokenExamples` is the training loop's (pipeline.train.loop) half that speaks the fixed
evaluation sentences with the model as it is at a validation (data-parallel: each rank its
share) and has a scorer (pipeline.quality.live, passed in) score them. Neither ever stops
training: a failure is one line in the log.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from pipeline.model.adapters import unwrap


class SpokenExamples:
    """Uses the trainer's settings, world, model, tokenizer, device, ckpt_dir, run_dir, step and scorer."""

    @torch.no_grad()
    def _speak_examples(self) -> list[tuple[str, Path]]:
        """The fixed evaluation sentences spoken by the model as it is now: progress you can hear.
        Data-parallel, each rank speaks its share and rank 0 collects them. Returns (sentence, wav)
        of those spoken (on rank 0). A failure here is reported in the log and never stops training."""
        s, world = self.settings, self.world
        if not s.eval_texts:
            return []
        from pipeline.generate.synth import Synthesizer, save_wav

        out_dir = self.run_dir / "audio" / f"step_{self.step:06d}"
        mine = [(i, text) for i, text in enumerate(s.eval_texts, 1) if (i - 1) % world.size == world.rank]
        spoken: list[tuple[str, Path]] = []
        self.model.eval()
        # building the codec initialises weights from the global RNG: keep training's RNG untouched
        cuda = [self.device] if self.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=cuda):
                synth = Synthesizer.from_model(unwrap(self.model), self.tokenizer, self.ckpt_dir, self.device)
                for i, text in mine:
                    if not world.distributed and self._stop_requested():
                        break
                    result = synth.speak(text, seed=s.seed, max_new_tokens=s.eval_max_frames)
                    spoken.append((text, save_wav(result, out_dir / f"sentence_{i}.wav")))
        except Exception as exc:  # noqa: BLE001 - evaluation audio is a nice-to-have, training is not
            print(f"evaluation audio at step {self.step} failed: {type(exc).__name__}: {exc}", flush=True)
        finally:
            self.model.train()
        if not world.distributed:
            return spoken
        world.barrier()  # every rank's share is on disk
        if not world.main:
            return []
        return [(text, out_dir / f"sentence_{i}.wav") for i, text in enumerate(s.eval_texts, 1)
                if (out_dir / f"sentence_{i}.wav").is_file()]

    def _score(self, spoken: list[tuple[str, Path]]) -> dict:
        """The scorecard means of the sentences just spoken (val_similarity, val_ovrl, val_cer), or
        nothing: scoring, like the audio, never stops training."""
        if self.scorer is None or not spoken:
            return {}
        try:
            scores = self.scorer(self.step, spoken) or {}
        except Exception as exc:  # noqa: BLE001 - a scorer that cannot run costs the curve, not the run
            print(f"scoring the evaluation audio at step {self.step} failed: {type(exc).__name__}: {exc}", flush=True)
            return {}
        for note in getattr(self.scorer, "notes", ())[self.scorer_notes:]:  # why a curve is missing, said once
            print(f"scoring: {note}", flush=True)
        self.scorer_notes = len(getattr(self.scorer, "notes", ()))
        return {k: round(float(v), 6) for k, v in scores.items() if v is not None and math.isfinite(float(v))}
