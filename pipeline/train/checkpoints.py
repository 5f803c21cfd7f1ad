"""Checkpoints of a training phase: written whole (integrity.json last), pruned, resumed.

`ResumableCheckpoints` is the training loop's (pipeline.train.loop) checkpoint half: it reads
and writes the trainer's model, optimizer, scheduler, RNG and stream position. A damaged
checkpoint is skipped for an older one; the last two keep their optimizer state so that there
is always one to fall back to.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from pipeline import atomic
from pipeline.model.adapters import save_adapter, unwrap
from pipeline.model.merge import save_full_model
from pipeline.train import integrity as checkpoint_integrity
from pipeline.train.settings import TrainError

STATE_FILE, METRICS_FILE, TRAINER_FILE, OPTIMIZER_FILE = "state.json", "metrics.jsonl", "trainer_state.json", "optimizer.pt"
MASTER_FILE = "master_weights.safetensors"


def write_json(path: Path, data: dict) -> None:
    atomic.write_json(path, data)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])



class ResumableCheckpoints:
    """The checkpoint methods of the training loop's trainer (run_dir, settings, model, optimizer,
    scheduler, world, step, position, best and latest are the trainer's)."""

    def _checkpoints(self) -> list[Path]:
        dirs = [p for p in (self.run_dir / "checkpoints").glob("step_*") if p.is_dir() and not p.name.endswith(".tmp")]
        return sorted(dirs, key=lambda p: int(p.name.split("_")[1]))

    def _resume(self) -> None:
        """Continue from the newest whole checkpoint with resume state; a damaged one is skipped
        (named in the log and the state message), and none at all is an error naming the files."""
        resumable = [p for p in self._checkpoints() if (p / OPTIMIZER_FILE).is_file() and (p / TRAINER_FILE).is_file()]
        self.resume_notes: list[str] = []
        for ckpt in reversed(resumable):
            issue = checkpoint_integrity.problem(ckpt)
            if issue is None:
                try:
                    loaded = self._read_checkpoint(ckpt)
                except TrainError:
                    raise
                except Exception as exc:  # noqa: BLE001 - any unreadable file means: try the older one
                    issue = f"{getattr(exc, 'filename', None) or 'a file'} could not be read ({type(exc).__name__}: {exc})"
            if issue is not None:
                note = f"checkpoint {ckpt.name} is damaged: {issue}"
                self.resume_notes.append(note)
                print(f"{note}; trying an older one", flush=True)
                continue
            self._apply_checkpoint(ckpt, *loaded)
            return
        if resumable:
            raise TrainError(f"{self.run_dir}: no checkpoint can be resumed: " + "; ".join(self.resume_notes)
                             + ". Start a new run, or restore the named files.")

    def _read_checkpoint(self, ckpt: Path):
        """Everything a resume needs from `ckpt`, read before anything is changed."""
        try:
            info = json.loads((ckpt / TRAINER_FILE).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{TRAINER_FILE} is not valid JSON ({exc})") from None
        if info.get("mode") != self.settings.mode:
            raise TrainError(f"{self.run_dir} holds a {info.get('mode')} run; start a new run for mode {self.settings.mode}.")
        if self.settings.mode == "lora":
            weights_file = ckpt / "adapter_model.safetensors"
        else:
            weights_file = ckpt / MASTER_FILE if (ckpt / MASTER_FILE).is_file() else ckpt / "model.safetensors"
        try:
            weights = load_file(weights_file, device=str(self.device) if self.settings.mode == "full" else "cpu")
        except Exception as exc:  # safetensors raises its own error types, without the file name
            raise ValueError(f"{weights_file.name} is unreadable ({exc})") from None
        # our own file; CPU first: RNG states must stay CPU tensors, the optimizer moves its state itself
        try:
            saved = torch.load(ckpt / OPTIMIZER_FILE, map_location="cpu", weights_only=False)
        except Exception as exc:  # noqa: BLE001 - pickle/zip errors of a truncated file
            raise ValueError(f"{OPTIMIZER_FILE} is unreadable ({type(exc).__name__}: {exc})") from None
        if saved["param_names"] != [n for n, _ in self.params]:
            raise TrainError(f"{ckpt}: trainable parameters differ from this run's; start a new run.")
        saved_settings = info.get("settings") or {}
        effective = info.get("effective_batch") or (saved_settings.get("batch_size", 0) * saved_settings.get("grad_accumulation", 0))
        if effective and effective != self.effective_batch:
            raise TrainError(
                f"{self.run_dir} was trained with a global batch of {effective} sequences per step and now asks for "
                f"{self.effective_batch} (training.batch_size x training.grad_accumulation); resume with the same "
                "product (any GPU count that divides it keeps the same data order), or start a new run.")
        return info, weights, saved

    def _apply_checkpoint(self, ckpt: Path, info: dict, weights: dict, saved: dict) -> None:
        if self.settings.mode == "lora":
            from peft import set_peft_model_state_dict

            result = set_peft_model_state_dict(self.model, weights)
            if getattr(result, "unexpected_keys", None):
                raise TrainError(f"{ckpt}: adapter does not match the configured LoRA ({result.unexpected_keys[:3]}).")
        else:
            unwrap(self.model).load_state_dict(weights, strict=False)
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        set_rng_state(saved["rng"])
        self._seed_rank(info["step"])
        # the stream position in this plan's micro-batches: the same sequences whatever the GPU count
        self.step, self.bad_evals = info["step"], info["bad_evals"]
        self.position = self.step * self.step_micro_batches
        self.pending_eval = bool(info.get("pending_eval"))
        self.best, self.best_val_loss, self.prior_elapsed = info["best"], info["best_val_loss"], info["elapsed_s"]
        best_dir = self.run_dir / self.best if self.best else None
        if best_dir is not None and (not best_dir.is_dir() or checkpoint_integrity.problem(best_dir)):
            self.best = self.best_val_loss = None  # a damaged or deleted best is no candidate: the next evaluation picks one
        self.latest = str(ckpt.relative_to(self.run_dir))
        self._truncate_metrics(self.step)

    def _truncate_metrics(self, step: int) -> None:
        """Drop rows written after the checkpoint we resume from (the resumed run writes them
        again) and a half-written line a killed process left behind."""
        path = self.run_dir / METRICS_FILE
        if not self.world.main or not path.is_file():  # rank 0 owns the file
            return
        rows = []
        for line in path.read_text(errors="replace").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
                rows.append(line)
        atomic.write_text(path, "".join(r + "\n" for r in rows))

    def _save(self) -> None:
        """Rank 0 writes the checkpoint (every rank holds the same weights); all ranks keep the bookkeeping."""
        if not self.settings.save_checkpoints:
            return
        final = self.run_dir / "checkpoints" / f"step_{self.step:06d}"
        if self.world.main:
            with atomic.replacing(final) as tmp:  # a hidden temp folder: _checkpoints never lists a half-written one
                self._write_checkpoint(tmp)
        self.latest = str(final.relative_to(self.run_dir))
        if self.data.val is None:
            self.best = self.latest
        if self.world.main:
            self._prune()

    def _write_checkpoint(self, tmp: Path) -> None:
        meta = {"step": self.step, "mode": self.settings.mode, "base_checkpoint": str(self.ckpt_dir),
                "pending_eval": self.pending_eval}
        if self.settings.mode == "lora":
            save_adapter(self.model, tmp, metadata=meta)
        else:
            save_full_model(self.model, self.ckpt_dir, tmp)
            if not self.base_is_fp32:  # the exact fp32 weights, for resuming only
                state = {k: v.detach().float().contiguous().cpu() for k, v in unwrap(self.model).state_dict().items()
                         if "kv_cache" not in k}
                save_file(state, tmp / MASTER_FILE)
        torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                    "rng": rng_state(), "param_names": [n for n, _ in self.params]}, tmp / OPTIMIZER_FILE)
        write_json(tmp / TRAINER_FILE, meta | {
            "position": self.position, "effective_batch": self.effective_batch, "ranks": self.world.size, "bad_evals": self.bad_evals, "best": self.best,
            "best_val_loss": self.best_val_loss, "elapsed_s": self._elapsed(), "settings": asdict(self.settings)})
        checkpoint_integrity.write_integrity(tmp)  # last: its presence means every file above is complete

    def _prune(self) -> None:
        """Keep the last `keep_last` checkpoints and the best; the last two of them keep their resume
        state, so a damaged newest one still leaves one to resume from (with keep_last: 1, the
        person chose disk space over that)."""
        checkpoints = self._checkpoints()
        keep = set(checkpoints[-self.settings.keep_last:]) | ({self.run_dir / self.best} if self.best else set())
        for path in checkpoints:
            if path not in keep:
                shutil.rmtree(path, ignore_errors=True)
            elif path not in checkpoints[-2:]:
                for big in (OPTIMIZER_FILE, MASTER_FILE):
                    checkpoint_integrity.forget(path, big)
