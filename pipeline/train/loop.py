"""One training loop for LoRA and full fine-tuning, resumable bit for bit.

`run_dir/` (one training phase):
    state.json          status running/finished/cancelled/failed, step, best, latest, message
    metrics.jsonl       one row per step ({"kind": "train", ...}) and per evaluation ({"kind": "val"})
    tensorboard/        the same numbers as TensorBoard events
    checkpoints/step_N/ LoRA: a peft adapter dir; full: a Fish Speech model dir (load_lm/init_model
                        load it). The latest also holds optimizer.pt (+ fp32 master weights) to resume.
"""

from __future__ import annotations

import json
import math
import random
import signal
import threading
import time
import dataclasses
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from pipeline.model.checkpoints import load_lm
from pipeline.train.checkpoints import (  # noqa: F401  (the run folder's file names are this module's API too)
    METRICS_FILE,
    STATE_FILE,
    ResumableCheckpoints,
    write_json,
)
from pipeline.train.examples import SpokenExamples
from pipeline.train.cpu_memory import cpu_oom, cpu_oom_message
from pipeline.train.distributed import ALONE, World, data_parallel, rank_split
from pipeline.train.loss import compute_loss
from pipeline.train.plan import autocast, build_optimizer, plan_phase, train_step, trainable_model
from pipeline.train.samples import make_training_data
from pipeline.train.settings import (  # noqa: F401  (TrainSettings/TrainResult are this module's API)
    TrainError,
    TrainResult,
    TrainSettings,
    lr_factor,
    oom_message,
    resolve_device,
)

Progress = Callable[[float, str], None] | None
# scores the evaluation sentences a validation spoke: (step, [(text, wav)]) -> {"val_cer": …, …}
Scorer = Callable[[int, list[tuple[str, Path]]], dict] | None
STATE_EVERY_S = 2.0  # state.json while running: often enough for a viewer, not a file write per step
STOP_CHECK_EVERY = 8  # data-parallel steps between the ranks' agreements on a stop request


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# -- the loop -------------------------------------------------------------------------------------
class _Trainer(ResumableCheckpoints, SpokenExamples):
    def __init__(self, run_dir, ckpt_dir, manifest, settings: TrainSettings, stop_event, progress,
                 world: World = ALONE, scorer: Scorer = None):
        if settings.mode not in ("lora", "full"):
            raise TrainError(f"TrainSettings.mode must be 'lora' or 'full', got {settings.mode!r}.")
        self.run_dir, self.ckpt_dir, self.settings = Path(run_dir), Path(ckpt_dir), settings
        self.stop_event, self.progress, self.sigterm = stop_event, progress, False
        self.world, self.scorer, self.scorer_notes = world, scorer, 0
        if world.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "checkpoints").mkdir(exist_ok=True)
        self.step = self.position = self.bad_evals = 0
        self.pending_eval = False  # the checkpoint at this step still owes its evaluation
        self.best = self.latest = self.best_val_loss = None
        self.prior_elapsed, self.started = 0.0, time.time()
        self.unread, self.prefetched, self.last_read, self.state_written = None, None, 0.0, 0.0
        self.builder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batches")
        self.setup_s: dict[str, float] = {}
        self._setup(manifest)

    # -- setup ----------------------------------------------------------------------------------
    def _rank_plan(self):
        """This rank's plan: its share of the global batch, split for its device's memory."""
        s, world = self.settings, self.world
        self.effective_batch = s.batch_size * s.grad_accumulation  # sequences per optimizer step, all ranks
        micro, accumulation = rank_split(s.batch_size, s.grad_accumulation, world)
        device = None
        if world.distributed:
            device = resolve_device(s)
            device = torch.device("cuda", world.local_rank) if device.type == "cuda" else device
        return plan_phase(dataclasses.replace(s, batch_size=micro, grad_accumulation=accumulation), device)

    def _setup(self, manifest) -> None:
        plan = self.plan = self._rank_plan()
        self.device, self.bf16, self.compile = plan.device, plan.bf16, plan.compile
        self.checkpointing, self.memory_plan = plan.gradient_checkpointing, plan.describe_memory()
        s = self.settings = dataclasses.replace(self.settings, batch_size=plan.micro_batch,
                                                grad_accumulation=plan.grad_accumulation)
        self.step_micro_batches = plan.grad_accumulation * self.world.size  # of all ranks
        _seed_everything(s.seed)
        mark = time.perf_counter()
        model, tokenizer = load_lm(self.ckpt_dir, self.device, plan.weights_dtype)
        self.tokenizer = tokenizer
        reference = torch.load(self.ckpt_dir / "model.pth", map_location="cpu", mmap=True, weights_only=True)
        self.base_is_fp32 = all(v.dtype == torch.float32 for v in reference.values() if torch.is_tensor(v))
        max_length = min(s.max_length, model.config.max_seq_len)
        loaded = time.perf_counter()
        self.data = make_training_data(manifest, tokenizer, model.config.num_codebooks, max_length=max_length,
                                       batch_size=s.batch_size, val_fraction=s.val_fraction, seed=s.seed,
                                       width_multiple=512 if self.compile else 1)
        packed = time.perf_counter()
        self.model = model = trainable_model(model, s)
        self.params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.optimizer = build_optimizer([p for _, p in self.params], s, self.device)
        self.ddp = data_parallel(model, plan, self.world)
        self._seed_rank(0)
        per_step = self.effective_batch
        if s.steps:
            self.total = int(s.steps)
        elif s.epochs:
            self.total = max(1, math.ceil(s.epochs * len(self.data.train.groups_for_epoch(0)) / per_step))
        else:
            raise TrainError("Set either steps or epochs.")
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda i: lr_factor(i, s.warmup_steps, self.total, s.schedule))
        self._resume()
        self.writer = self._tensorboard() if self.world.main else None
        # where the wait before the first step goes (the rest, to the first row, is its compilation)
        self.setup_s = {"load_model": round(loaded - mark, 2), "pack_data": round(packed - loaded, 2),
                        "prepare": round(time.perf_counter() - packed, 2)}

    def _tensorboard(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard not installed: metrics.jsonl still has everything
            return None
        return SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=self.step + 1 if self.step else None)

    def _seed_rank(self, step: int) -> None:
        """Ranks after the first draw their own dropout masks (rank 0's stream is the one-process run's)."""
        if self.world.rank:
            torch.manual_seed(hash((self.settings.seed, step, self.world.rank)) % 2**63)

    # -- bookkeeping ----------------------------------------------------------------------------
    def _elapsed(self) -> float:
        return round(self.prior_elapsed + time.time() - self.started, 3)

    def write_state(self, status: str, message: str = "") -> None:
        self.state_written = time.time()
        if not self.world.main:
            return
        write_json(self.run_dir / STATE_FILE, {
            "status": status, "mode": self.settings.mode, "device": str(self.device), "step": self.step,
            "total_steps": self.total,
            "epoch": round(self.data.train.epoch_progress(self.position), 4), "best": self.best,
            "best_val_loss": self.best_val_loss, "latest": self.latest, "message": message,
            "base_checkpoint": str(self.ckpt_dir), "data": self.data.summary(), "memory_plan": self.memory_plan,
            "setup_s": self.setup_s,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S")})

    def _log(self, row: dict) -> None:
        if not self.world.main:
            return
        with open(self.run_dir / METRICS_FILE, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.writer is None:
            return
        prefix = "val" if row["kind"] == "val" else "train"
        for key, value in row.items():
            if key not in ("step", "kind") and isinstance(value, (int, float)):
                self.writer.add_scalar(f"{prefix}/{key.removeprefix('val_')}", value, row["step"])

    def _stop_requested(self) -> bool:
        return self.sigterm or (self.stop_event is not None and self.stop_event.is_set())

    def _stop_check_due(self) -> bool:
        """Alone, a stop request is seen at every step; data-parallel, ranks agree on it every
        few steps (each agreement waits for the GPU)."""
        return not self.world.distributed or self.step % STOP_CHECK_EVERY == 0

    def _stop_all(self) -> bool:
        """A stop request seen by any rank, on every rank (they must stop at the same step)."""
        return self.world.any(self._stop_requested(), self.device)

    def _to_device(self, batch: dict) -> dict:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    # -- steps ----------------------------------------------------------------------------------
    def _fetch(self, position: int) -> list[dict]:
        """This rank's micro-batches of the step that starts at stream `position` (a contiguous
        share of the step's), on the host; pinned on a GPU so the copy does not wait."""
        first = position + self.world.rank * self.plan.grad_accumulation
        batches = [self.data.train.batch(i) for i in range(first, first + self.plan.grad_accumulation)]
        if self.device.type == "cuda":
            batches = [{k: v.pin_memory() for k, v in b.items()} for b in batches]
        return batches

    def _step_batches(self) -> list[dict]:
        """The step's batches, built ahead on a helper thread while the previous step ran."""
        ready = self.prefetched
        batches = ready[1].result() if ready and ready[0] == self.position else self._fetch(self.position)
        self.position += self.step_micro_batches
        self.prefetched = (self.position, self.builder.submit(self._fetch, self.position))
        return batches

    def _launch_step(self) -> dict:
        """Queue one optimizer step on the device without waiting for it; `_read` turns the
        returned record into its metrics row."""
        batches = self._step_batches()
        # this rank's tokens x ranks: an estimate, with no exchange between ranks for a log line
        tokens = sum(int(b["lengths"].sum()) for b in batches) * self.world.size
        lr = self.optimizer.param_groups[0]["lr"]
        pending = train_step(self.model, self.optimizer, (self._to_device(b) for b in batches), self.plan,
                             [p for _, p in self.params], self.settings.grad_clip, ddp=self.ddp, world=self.world,
                             wait=False)
        self.scheduler.step()
        return {"pending": pending, "step": self.step + 1, "tokens": tokens, "lr": lr, "launched": time.time(),
                "epoch": round(self.data.train.epoch_progress(self.position), 4)}

    def _read(self, record: dict) -> dict:
        """The step's metrics row: waits for the step's numbers (the next step is already queued)."""
        means = record["pending"].means()
        if not math.isfinite(means["loss"]):
            raise TrainError(f"The loss became {means['loss']} at step {record['step']}; lower the learning rate.")
        now = time.time()
        seconds = max(now - max(record["launched"], self.last_read), 1e-9)  # the steady-state time per step
        self.last_read = now
        gpu_gb = torch.cuda.max_memory_allocated(self.device) / 1e9 if self.device.type == "cuda" else 0.0
        grad_norm = means.pop("grad_norm")
        return {"kind": "train", "step": record["step"], "epoch": record["epoch"],
                **{k: round(v, 6) for k, v in means.items()}, "lr": record["lr"], "grad_norm": round(grad_norm, 6),
                "tokens_per_s": round(record["tokens"] / seconds, 1), "elapsed_s": self._elapsed(),
                "gpu_mem_gb": round(gpu_gb, 3)}

    def _flush(self) -> dict | None:
        """Log the step still on the device, if any; returns its row."""
        record, self.unread = self.unread, None
        if record is None:
            return None
        row = self._read(record)
        self._log(row)
        return row

    @torch.no_grad()
    def _validate(self) -> dict:
        self.model.eval()
        totals, weight = dict(loss=0.0, token_loss=0.0, codebook_loss=0.0, top1=0.0, top5=0.0), 0
        world = self.world
        for index, batch in enumerate(self.data.val):
            if index % world.size != world.rank:  # each rank its share of the held-out set
                continue
            if not world.distributed and self._stop_requested():  # a cancel must not wait for the whole held-out set
                self.model.train()
                return None
            with autocast(self.plan, self.model):
                out = compute_loss(self.model, self._to_device(batch), compile_blocks=self.compile,
                                   options=self.plan.options)
            for key in totals:
                value = getattr(out, key)
                totals[key] += (value.item() if torch.is_tensor(value) else value) * out.n_tokens
            weight += out.n_tokens
        if world.distributed:
            summed = world.sum_(torch.tensor([*totals.values(), weight], dtype=torch.float64, device=self.device))
            totals, weight = dict(zip(totals, summed[:-1].tolist())), summed[-1].item()
        self.model.train()
        return {"kind": "val", "step": self.step, **{f"val_{k}": round(v / max(weight, 1), 6) for k, v in totals.items()},
                "elapsed_s": self._elapsed()}

    def _evaluate(self) -> bool:
        """Held-out loss, example audio and the best checkpoint at this step. False when a stop
        request interrupted it: the step is then saved as pending and evaluated on resume."""
        val = self._validate()
        if val is None:
            self.pending_eval = True
            return False
        self.pending_eval = False
        val |= self._score(self._speak_examples())  # rank 0 speaks; the others wait at the next collective
        self._log(val)
        if self.best_val_loss is None or val["val_loss"] < self.best_val_loss:
            self.best_val_loss, self.bad_evals = val["val_loss"], 0
            self.best = f"checkpoints/step_{self.step:06d}"  # the caller saves it: the best is always on disk
        else:
            self.bad_evals += 1
        return True

    def run(self) -> TrainResult:
        s = self.settings
        if self.compile and self.progress:  # the one silent wait of a run: say what it is
            self.progress(self.step / self.total, "compiling the training step (its graphs load from the compile "
                          "cache when `python -m pipeline warmup` ran; otherwise a minute or two)")
        if self.step == 0:
            self._truncate_metrics(0)
            if self.data.val is not None:
                start = self._validate()  # the starting point of the held-out curve (not a "best")
                if start is not None:
                    self._log(start)
        notes = "; ".join(getattr(self, "resume_notes", []))
        resumed = f"resumed at step {self.step}" + (f" ({notes})" if notes else "") if self.step else notes
        self.write_state("running", resumed)
        status, message, interrupted = "finished", "", False
        if self.pending_eval and not self._stop_all():  # the evaluation a cancel interrupted
            interrupted = not self._evaluate()
            if not interrupted:
                self._save()  # clears the pending mark, and keeps this step if it is the new best
        row = None
        while self.step < self.total and not interrupted:
            if self._stop_check_due() and self._stop_all():
                break
            record = self._launch_step()
            self.step += 1
            row = self._flush() or row  # the previous step's numbers, read while this one runs
            self.unread = record
            save = self.step % s.save_every == 0 or self.step == self.total
            validate = self.data.val is not None and (self.step % s.val_every == 0 or self.step == self.total)
            if save or validate:
                row = self._flush()  # a checkpoint or an evaluation follows its own step's numbers
            if validate:
                if not self._evaluate():
                    interrupted = True
                    self._save()
                    break
                save = save or self.best.endswith(f"{self.step:06d}")
            early = bool(s.patience) and self.data.val is not None and self.bad_evals >= s.patience
            if save or early:
                self._save()
            if self.progress:
                loss = f" loss {row['loss']:.3f}" if row else ""
                self.progress(self.step / self.total, f"step {self.step}/{self.total}{loss}")
            if early:
                message = (f"stopped early at step {self.step}: held-out loss has not improved for {s.patience} "
                           f"evaluations (best {self.best_val_loss:.4f} at {self.best})")
                break
            if time.time() - self.state_written >= STATE_EVERY_S:
                self.write_state("running")
        self._flush()
        if interrupted:
            status, message = "cancelled", (f"stopped during the evaluation at step {self.step} of {self.total}; "
                                            "resume to evaluate and continue")
        elif self.step < self.total and not message:
            # a stop before the first step has nothing to keep (a full phase's checkpoint is the
            # whole model, and a cancel waits for it): a resume starts the phase afresh
            if self.step and (not self.latest or not self.latest.endswith(f"{self.step:06d}")):
                self._save()
            status, message = "cancelled", f"stopped at step {self.step} of {self.total}; resume to continue"
        if self.data.val is None:
            message = (message + "; " if message else "") + "no held-out clips (every speaker has < 3 clips): best = latest"
        if self.writer is not None:
            self.writer.flush()
        self.write_state(status, message)
        return self.result(status, message)

    def result(self, status: str, message: str) -> TrainResult:
        def absolute(rel):
            return str(self.run_dir / rel) if rel else None

        return TrainResult(status=status, step=self.step, total_steps=self.total, best=absolute(self.best),
                           best_val_loss=self.best_val_loss, latest=absolute(self.latest), message=message,
                           summary=self.data.summary() | {"rejected_clips": self.data.rejected})


def mark_failed(run_dir: str | Path, message: str) -> None:
    """state.json says failed with `message`, keeping the progress already recorded (a failed
    resume, or a data-parallel job whose rank died, must not read as step 0)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        previous = json.loads((run_dir / STATE_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        previous = {"step": 0}
    write_json(run_dir / STATE_FILE, previous | {"status": "failed", "message": message})


def train(run_dir, ckpt_dir, manifest_with_codes, settings: TrainSettings,
          stop_event: threading.Event | None = None, progress: Progress = None,
          world: World = ALONE, scorer: Scorer = None) -> TrainResult:
    """Train (or resume) one phase in `run_dir` on the base model in `ckpt_dir`.

    `world`: this process's rank when the phase runs data-parallel (pipeline.train.launch starts
    the ranks); `scorer` scores the evaluation sentences spoken at each validation.

    Returns status finished, cancelled (stop_event or SIGTERM: a checkpoint was saved) or failed
    (out of GPU memory: the message says what to lower). Other errors mark state.json failed and raise.
    """
    run_dir, trainer, previous_handler = Path(run_dir), None, None

    def fail(message: str) -> None:
        if not world.main:
            return
        if trainer is not None:
            trainer.write_state("failed", message)
        else:
            mark_failed(run_dir, message)

    try:
        trainer = _Trainer(run_dir, ckpt_dir, manifest_with_codes, settings, stop_event, progress, world, scorer)
        if threading.current_thread() is threading.main_thread():  # signal handlers only work there
            previous_handler = signal.signal(signal.SIGTERM, lambda *_: setattr(trainer, "sigterm", True))
        return trainer.run()
    except torch.cuda.OutOfMemoryError:
        message = oom_message(settings, trainer.step + 1 if trainer else 0, trainer.checkpointing if trainer else False)
        if trainer is not None:
            trainer.model = trainer.optimizer = None
        torch.cuda.empty_cache()
        fail(message)
        return trainer.result("failed", message) if trainer else TrainResult("failed", 0, 0, None, None, None, message)
    except (RuntimeError, MemoryError) as exc:
        if not cpu_oom(exc):
            fail(f"{type(exc).__name__}: {exc}")
            raise
        message = cpu_oom_message(settings.batch_size, settings.max_length, trainer.step + 1 if trainer else 0)
        if trainer is not None:
            trainer.model = trainer.optimizer = None
        fail(message)
        return trainer.result("failed", message) if trainer else TrainResult("failed", 0, 0, None, None, None, message)
    except BaseException as exc:
        fail(f"{type(exc).__name__}: {exc}")
        raise
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
        if trainer is not None and getattr(trainer, "writer", None) is not None:
            trainer.writer.close()
        if trainer is not None:
            trainer.builder.shutdown(wait=True, cancel_futures=True)
