"""The loops over FastGenerator's steps: `generate` (several prompts, until each ends or the
budget is spent), `generate_stream` (one prompt, frames handed out in blocks as they are made)
and `teacher_forced_logits` (the logits of given frames, for the checks against fish-speech).

A mixin: FastGenerator (pipeline.generate.fastgen) holds the buffers and the step itself
(`start`, `_run_step`, `_bucket`, `out`, ...); these methods only decide when to step and what to
hand back.
"""

from __future__ import annotations

from typing import Iterator

import torch


class DecodingLoops:
    @torch.inference_mode()
    def generate(self, prompts: list[torch.Tensor], max_new_tokens: int, temperature: float = 0.7,
                 top_p: float = 0.8, repetition_penalty: float = 1.1, stop_at_end: bool = True,
                 check_every: int = 8) -> list[torch.Tensor]:
        """New frames per prompt: (N+1, n) token rows (row 0 tokens, rows 1.. codes), ending with
        <|im_end|> when one was sampled (nothing after it)."""
        self.start(prompts, temperature, top_p, repetition_penalty)
        steps = max(0, min(max_new_tokens, self.S - max(self.lengths) + 1))
        done = 0
        while done < steps:
            length = self._bucket(max(self.lengths) - 1 + done)
            self._run_step(length)
            done += 1
            checked = stop_at_end and (done % check_every == 0 or done == steps)
            if checked and bool((self.out[: len(prompts), 0, :done] == self.im_end).any(-1).all()):
                break
        out = self.out[: len(prompts), :, :done].cpu()
        results = []
        for row in out:
            ends = (row[0] == self.im_end).nonzero()
            results.append(row[:, : int(ends[0]) + 1] if stop_at_end and len(ends) else row)
        return results

    @torch.inference_mode()
    def generate_stream(self, prompt: torch.Tensor, max_new_tokens: int, temperature: float = 0.7,
                        top_p: float = 0.8, repetition_penalty: float = 1.1, first: int = 8, every: int = 16,
                        check_every: int = 8) -> Iterator[torch.Tensor]:
        """One prompt's new frames as they are made: (N+1, n) token rows on the CPU, the first
        block after `first` frames, then every `every` (both rounded up to `check_every`, where
        the host looks anyway), the rest at the end; never the <|im_end|> column. It steps and
        checks exactly as `generate` (same random draws: a seed gives the same codes); closing the
        iterator stops the decoding."""
        self.start([prompt], temperature, top_p, repetition_penalty)
        steps = max(0, min(max_new_tokens, self.S - self.lengths[0] + 1))
        done = sent = 0
        while done < steps:
            self._run_step(self._bucket(self.lengths[0] - 1 + done))
            done += 1
            if done % check_every and done < steps:
                continue
            ends = (self.out[0, 0, sent:done] == self.im_end).nonzero()
            end = sent + int(ends[0]) if len(ends) else done
            if len(ends) or done == steps or done - sent >= (every if sent else first):
                if end > sent:
                    yield self.out[0, :, sent:end].cpu()
                sent = end
            if len(ends):
                return

    @torch.inference_mode()
    def teacher_forced_logits(self, prompt: torch.Tensor, frames: torch.Tensor):
        """Logits of each step when the frames are given (checks): prompt (N+1, T), frames
        (N+1, F) → codebook-0 logits (F, 1 + n_semantic) and residual logits (F, N-1, V)."""
        self.start([prompt], 1.0, 1.0, 1.0)
        self.force_flag.fill_(True)
        heads, fast = [], []
        for i in range(frames.shape[1]):
            token = int(frames[0, i])
            idx0 = 0 if token == self.im_end else token - self.sem_begin + 1
            self.force[:, 0] = idx0
            self.force[:, 1:] = frames[2:, i].to(self.device)
            self._run_step(self._bucket(self.lengths[0] - 1 + i))
            heads.append(self.last_logits0[0].clone())
            fast.append(self.last_fast_logits[0].clone())
        self.force_flag.fill_(False)
        return torch.stack(heads), torch.stack(fast)
