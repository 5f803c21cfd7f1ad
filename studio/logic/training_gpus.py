"""The Training tab's GPU choice, without gradio: the GPUs found, the counts on offer, the default
(training.gpus, auto = all), the plan's words for a data-parallel run, and the count a job is started
with, refused before starting when the global batch does not split over it.

A run on this machine uses the GPUs it finds (unlike the Modes & cost tab's count, which is what the
user means to rent). Without a GPU the studio trains in one CPU process."""

from __future__ import annotations

import html
from pathlib import Path

from pipeline.config import Config
from pipeline.train.distributed import World, global_batch, rank_share, resolve_gpus
from pipeline.train.gpus import visible_gpus
from pipeline.train.settings import TrainError
from studio.logic.runs_view import run_config

LABEL = "GPUs for this run"
INFO = "data-parallel, one process per GPU: the global batch and data order stay the same (a resume may change it)"
NO_GPU = "no GPU: training runs on the CPU, one process"


def found_text(devices: list[dict]) -> str:
    """'GPUs found: 4 × NVIDIA H100 80GB HBM3 (85.5 GB)'; mixed cards each with their count."""
    if not devices:
        return NO_GPU
    groups: dict[tuple[str, float], int] = {}
    for device in devices:
        key = (str(device["name"]), float(device["memory_gb"]))
        groups[key] = groups.get(key, 0) + 1
    return "GPUs found: " + ", ".join(f"{count} × {name} ({memory:g} GB)" for (name, memory), count in groups.items())


def counts(devices: list[dict]) -> list[int]:
    """The counts on offer: 1 to the GPUs found (1 alone without a GPU)."""
    return list(range(1, max(len(devices), 1) + 1))


def selectable(devices: list[dict]) -> bool:
    """A choice only where there is one to make: two GPUs or more."""
    return len(devices) > 1


def default_count(config: Config, devices: list[dict]) -> int:
    """training.gpus resolved for the GPUs found (auto = all); a configured count above them is
    capped, since the choice cannot offer more than the machine has."""
    found = len(devices)
    if found <= 1:
        return 1
    try:
        return min(resolve_gpus(config.training.gpus, cuda_devices=found), found)
    except TrainError:
        return found


def checked_count(config: Config, value, devices: list[dict] | None = None) -> int:
    """The count a job starts with (None: the default). ValueError naming the field for a count the
    machine cannot run; TrainError (rank_share's message) when `config`'s global batch does not split."""
    devices = visible_gpus() if devices is None else devices
    if value is None or value == "":
        value = default_count(config, devices)
    offered = counts(devices)
    try:
        count = int(value)
    except (TypeError, ValueError):
        count = None
    if isinstance(value, bool) or count not in offered or float(value) != count:
        machine = f"{len(devices)} GPU(s)" if devices else "no GPU"
        raise ValueError(f"{LABEL}: choose a whole number from 1 to {offered[-1]} (this machine has {machine}); "
                         f"got {value!r}.")
    rank_share(global_batch(config.training), World(0, count))
    return count


def resume_count(config: Config, run_id: str, value, devices: list[dict] | None = None) -> int:
    """The count a resume starts with, checked against the run's own configuration (its global batch
    is kept whatever the count)."""
    run_cfg = run_config(Path(config.runs_dir) / run_id, config)
    return checked_count(run_cfg, value, devices)


def plan_rows(config: Config, value=None, devices: list[dict] | None = None) -> list[tuple[str, str]]:
    """The plan's row for a run on several GPUs (none on one): the count, each GPU's share of a step,
    and a global batch that cannot split, as HTML."""
    devices = visible_gpus() if devices is None else devices
    try:
        count = default_count(config, devices) if value in (None, "") else int(value)
    except (TypeError, ValueError):
        return []
    if count <= 1:
        return []
    effective = global_batch(config.training)
    try:
        share = rank_share(effective, World(0, count))
    except TrainError as exc:
        return [("GPUs", f"on {count} GPUs (data-parallel) — <span class='warn'>{html.escape(str(exc))}</span>")]
    return [("GPUs", html.escape(f"on {count} GPUs (data-parallel): {share} of the {effective} sequences of each "
                                 "step on each GPU"))]


def started_text(value) -> str:
    """' on 2 GPUs (data-parallel)' for the message of a start or resume with count `value` ('' on
    one; a start that succeeded had a valid count)."""
    count = int(value) if value not in (None, "") else 1
    return f" on {count} GPUs (data-parallel)" if count > 1 else ""
