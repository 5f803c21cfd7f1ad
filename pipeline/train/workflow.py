"""The two training modes as one headless workflow over a run directory.

`runs/<id>/` holds everything about a run, so the studio only has to read it:

    config.yaml     the configuration snapshot (launchable.yaml + overrides)
    run.json        mode, phases, current phase, status, speaker choice, artifacts (pipeline.train.runs)
    log.txt         stdout/stderr of the job process (written by pipeline.train.jobs)
    phases/<name>/  one training phase: metrics.jsonl, state.json, checkpoints/ (pipeline.train.loop)
    artifacts/      merged model, adapter zip
    audio/          evaluation sentences rendered with the result

quick_lora:     lora (all clips) → merge → evaluation audio
full_finetune:  full (all clips, N epochs) → speaker choice → speaker_lora (that speaker, early
                stopping on held-out loss) → merge → evaluation audio

Running the workflow again on the same run id resumes it: finished phases are skipped and the
current phase continues from its last checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from pathlib import Path
from typing import Callable

from pipeline.config import Config, load_config
from pipeline.train.lock import TrainingLock
from pipeline.train import integrity as checkpoint_integrity
from pipeline.data.speakers import recommend_by_policy
from pipeline.data.text import example_sentences
from pipeline.train.select import best_checkpoint
from pipeline.train.warmup import use_compile_cache
from pipeline.train.runs import (PHASES, RunError, create_run, list_runs, new_run_id, read_json, read_run,
                                 run_dir_for, update_run)

Progress = Callable[[float, str], None]


class RunCancelled(BaseException):
    """A stop request (SIGTERM, stop_event) outside a training step: there is nothing to save.

    A BaseException, like KeyboardInterrupt, so that `except Exception` around one clip or one
    file (the dataset and codes stages) cannot swallow it.
    """


# what a resumed run must not change: the data, the model and the recipe
_RUN_DEFINING = ("training_mode.selected", "base_model", "dataset", "speaker", "training")
# how a run is executed, not what it computes: each attempt may choose its own (a resume on
# another GPU count keeps the global batch and data order)
_PER_ATTEMPT = ("training.gpus", "training.collective_timeout_s")


def _flatten(data: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def settings_differences(saved: Config, requested: Config) -> dict[str, tuple]:
    """{dotted key: (the run's value, the requested value)} for the settings that define a run."""
    a, b = _flatten(saved.model_dump()), _flatten(requested.model_dump())
    return {key: (a.get(key), b.get(key)) for key in sorted(a.keys() | b.keys())
            if key.startswith(_RUN_DEFINING) and key not in _PER_ATTEMPT and a.get(key) != b.get(key)}


def resume_config(run_dir: Path, requested: Config, overrides: dict | None = None) -> tuple[Config, list[str]]:
    """The settings a (possibly resumed) run uses: always its own snapshot.

    A setting given explicitly (`overrides`, the command line's --set) that differs from the run's
    is refused, since it would apply only partly (a new step count but the old learning rate
    inside the optimizer state); other differences (an edited launchable.yaml) are listed."""
    saved = load_config(Path(run_dir) / "config.yaml")
    differences = settings_differences(saved, requested)
    asked = {key for key in differences if any(key == o or key.startswith(o + ".") for o in overrides or {})}
    if asked:
        listed = "; ".join(f"{key}: the run has {differences[key][0]!r}, you asked {differences[key][1]!r}" for key in sorted(asked))
        raise RunError(f"Run '{Path(run_dir).name}' continues with its own settings, so these cannot change: {listed}. "
                       "Drop those --set options to resume it, or start a new run (another --run-id).")
    notes = [f"{key}: using the run's {old!r}, not {new!r}" for key, (old, new) in differences.items()]
    attempt = {key: getattr(requested.training, key.split(".")[1]) for key in _PER_ATTEMPT}
    return saved.with_overrides(attempt), notes


def choose_speaker(config: Config, dataset) -> tuple[str, str]:
    """The speaker for the single-speaker phase and the reason, recorded in run.json."""
    picked = config.speaker.name
    if config.speaker.policy == "manual" and picked:
        if picked not in set(dataset.accepted()["speaker"]):
            raise RunError(f"speaker.name '{picked}' has no accepted clips in dataset {dataset.id}; "
                           f"pick one of: {', '.join(sorted(set(dataset.accepted()['speaker'])))}.")
        return picked, "picked by the user (speaker.policy: manual, speaker.name)"
    if config.speaker.policy == "most_clips":  # the reference project's rule
        pick = recommend_by_policy(dataset.speakers, "most_clips")
        return pick.speaker, f"most accepted clips (speaker.policy: most_clips): {pick.reason}"
    return dataset.recommendation.speaker, f"recommended: {dataset.recommendation.reason}"


# -- the workflow ------------------------------------------------------------------------------
def _phase_finished(run_dir: Path, phase: str) -> bool:
    return (read_json(run_dir / "phases" / phase / "state.json", {}) or {}).get("status") == "finished"


def _started_speaker(run_dir: Path, phase: str) -> str | None:
    """The speaker a begun speaker phase trains (run.json): a resume continues its checkpoint on
    the same voice, even where a rebuilt dataset would now recommend another."""
    if not (run_dir / "phases" / phase / "state.json").is_file():
        return None
    return read_run(run_dir).get("speaker") or None


def _best_checkpoint(run_dir: Path, phase: str) -> Path:
    state = read_json(run_dir / "phases" / phase / "state.json", {}) or {}
    best = state.get("best") or state.get("latest")
    if not best:
        raise RunError(f"phase '{phase}' of {run_dir.name} has no checkpoint; resume the run to finish it.")
    best = Path(best)
    return _whole(run_dir, best if best.is_absolute() else run_dir / "phases" / phase / best)


def _whole(run_dir: Path, checkpoint: Path) -> Path:
    damage = checkpoint_integrity.problem(checkpoint) if checkpoint.is_dir() else "the folder is missing"
    if damage:
        raise RunError(f"The chosen checkpoint {checkpoint.relative_to(run_dir)} of run {run_dir.name} is damaged: {damage}.")
    return checkpoint


def _chosen_adapter(config: Config, run_dir: Path, phase: str) -> Path:
    """The checkpoint the merge uses: the best held-out loss, or with training.select_by: score the
    best scorecard among the validations (falling back to the loss, and saying so, where a phase
    logged no scores). The reason is recorded in run.json."""
    why = "training.select_by: loss"
    if config.training.select_by == "score":
        choice = best_checkpoint(run_dir / "phases" / phase, by="score")
        if choice is not None and choice.checkpoint is not None:
            update_run(run_dir, selection=choice.reason)
            return _whole(run_dir, choice.checkpoint)
        why = "training.select_by: score, but no scored validation of this phase has a checkpoint"
    state = read_json(run_dir / "phases" / phase / "state.json", {}) or {}
    selection = (f"best held-out loss ({why})" if state.get("best") else
                 "the last checkpoint: the phase had no held-out loss to compare (no held-out clips)")
    update_run(run_dir, selection=selection)
    return _best_checkpoint(run_dir, phase)


def _prepare(config: Config, base_dir: Path, progress: Progress, stage: Callable[..., None] = lambda **_: None):
    """The configured dataset and its codes for `base_dir`'s codec: (dataset, manifest with codes_path)."""
    from pipeline.model.codes import extract_codes
    from pipeline.data.dataset import load_configured_dataset

    stage(phase="prepare", base_model=str(base_dir))
    dataset = load_configured_dataset(config, progress=progress)
    stage(phase="extract", dataset=dataset.id)
    codes = extract_codes(dataset.manifest, base_dir, config.workspace / "codes", progress=progress,
                          devices=_training_gpus(config))
    return dataset, codes.manifest


def _training_gpus(config: Config) -> list[str] | None:
    """The GPUs a run trains on (training.gpus), which also share its extraction; None without a GPU."""
    import torch

    from pipeline.train.distributed import training_gpus

    if not torch.cuda.is_available():
        return None
    return [f"cuda:{i}" for i in range(training_gpus(config))]


def _train_phase(config: Config, run_dir: Path, phase: str, base_dir: Path, manifest, stop_event, progress,
                 scorer_factory: str | None = None):
    """One phase: in this process on one device, under torchrun on several (training.gpus)."""
    from pipeline.train.distributed import training_gpus
    from pipeline.train.loop import TrainSettings, train

    settings = TrainSettings.from_config(config, phase)
    gpus = training_gpus(config)
    update_run(run_dir, phase=phase, status="running", gpus=gpus)
    phase_dir = run_dir / "phases" / phase
    if gpus > 1:
        from pipeline.train.launch import train_data_parallel

        return train_data_parallel(phase_dir, base_dir, manifest, settings, gpus, stop_event=stop_event,
                                   progress=progress, timeout_s=config.training.collective_timeout_s,
                                   scorer_factory=scorer_factory, config_path=run_dir / "config.yaml")
    from pipeline.train.rank_worker import build_scorer

    return train(phase_dir, base_dir, manifest, settings, stop_event=stop_event, progress=progress,
                 scorer=build_scorer(scorer_factory, str(run_dir / "config.yaml")))


def render_examples(model_dir: Path, out_dir: Path, count: int = 3, seed: int = 1234,
                    progress: Progress | None = None, decode_options=None) -> list[str]:
    """Speak the first evaluation sentences with a model; returns the written wav paths."""
    from pipeline.generate.synth import Synthesizer, save_wav

    sentences = example_sentences()[:count]
    synth = Synthesizer(model_dir, decode_options=decode_options)
    paths = []
    for i, sentence in enumerate(sentences):
        if progress:
            progress(i / len(sentences), f"evaluation audio: {i}/{len(sentences)} sentences")
        result = synth.speak(sentence, seed=seed, max_new_tokens=400)
        paths.append(str(save_wav(result, out_dir / f"example_{i + 1}.wav")))
    return paths


def _open_run(config: Config, run_id: str | None, overrides: dict | None, progress: Progress,
              mode: str | None = None) -> tuple[Path, Config]:
    """The run folder (created when new) and the settings it runs with; call it holding the lock."""
    existed = run_id is not None and (run_dir_for(config, run_id) / "config.yaml").exists()
    run_dir = create_run(config, run_id, mode)
    config, notes = resume_config(run_dir, config, overrides)
    if existed and notes:
        progress(0.0, f"resuming {run_dir.name} with its own settings; " + "; ".join(notes))
    return run_dir, config


def _recording_progress(run_dir: Path, progress: Progress | None, every_s: float = 2.0) -> Progress:
    """`progress`, also written to run.json (stage_progress, stage_message) at most every
    `every_s` seconds and at the end of a stage, so the Training view can show it."""
    last = [0.0]

    def report(fraction: float, message: str) -> None:
        if progress:
            progress(fraction, message)
        now = time.monotonic()
        if now - last[0] >= every_s or fraction >= 1:
            last[0] = now
            update_run(run_dir, stage_progress=round(float(fraction), 4), stage_message=message)

    return report


def language_models(config: Config) -> list[dict]:
    """The language-adapted (phase-1) models of finished full_finetune runs, newest first: the
    bases a new speaker run (mode speaker_lora) can start from."""
    found = []
    for run in list_runs(config):
        path = (run.get("artifacts") or {}).get("phase1_model")
        if run.get("mode") == "full_finetune" and run.get("status") == "finished" and path and Path(path).is_dir():
            found.append({"run_id": run["id"], "path": path, "speaker": run.get("speaker"), "created": run.get("created")})
    return found


def run_workflow(config: Config, model_dir: Path | None = None, run_id: str | None = None,
                 progress: Progress | None = None, stop_event: threading.Event | None = None,
                 overrides: dict | None = None, mode: str | None = None, scorer_factory: str | None = None) -> dict:
    """Run (or resume) the configured mode end to end; returns the final run.json.

    `mode` speaker_lora trains one speaker on `model_dir`, the language-adapted model of a
    finished full fine-tune (see `language_models`); otherwise the configured mode runs.
    `scorer_factory` ("module:function", called with the run's config) scores the evaluation
    sentences at each validation (pipeline.quality.live; named because quality sits above training).
    Holds the machine's training lock for its whole life (pipeline.train.lock): a second
    training, however it was started, is refused before it writes anything."""
    if mode not in (None, *PHASES):
        raise RunError(f"Unknown mode '{mode}'; choose one of {', '.join(PHASES)}.")
    run_id = run_id or new_run_id(mode or config.training_mode.selected)
    with _failure_recorded(run_dir_for(config, run_id)):
        with TrainingLock(config.workspace, run_dir_for(config, run_id)):
            use_compile_cache(config, prune=True)
            return _run_workflow(config, model_dir, run_id, progress, stop_event, overrides, mode, scorer_factory)


@contextlib.contextmanager
def _failure_recorded(run_dir: Path):
    """An error before the run records its own (the lock busy, settings a resume may not change, a
    missing model) is written to run.json too, when this process is the one the run was started
    as (the studio records the job's pid): else the studio would read a run stuck at "starting"
    as killed, and Resume would fail the same way without saying why."""
    try:
        yield
    except Exception as exc:
        run = read_run(run_dir)  # {} where the run was never recorded
        if run.get("pid") == os.getpid() and run.get("status") in ("starting", "running", "created"):
            update_run(run_dir, status="failed", error=f"{type(exc).__name__}: {exc}")
        raise


def _speaker_run_base(run_dir: Path, model_dir: Path | None) -> Path:
    """The language-adapted model a speaker_lora run trains on: given when it starts, recorded for resumes."""
    model_dir = model_dir or read_run(run_dir).get("base_model")
    if not model_dir or not (Path(model_dir) / "config.json").is_file():
        raise RunError("A speaker_lora run trains on a language-adapted model: give the phase-1 model folder of a "
                       f"finished full_finetune run (--model), e.g. one of runs/*/artifacts; got {model_dir!r}.")
    update_run(run_dir, base_model=str(model_dir))
    return Path(model_dir)


def _run_workflow(config, model_dir, run_id, progress, stop_event, overrides, mode, scorer_factory) -> dict:
    from pipeline.model.checkpoints import ensure_base_model
    from pipeline.model.merge import export_adapter, merge_lora
    from pipeline.model.model_card import run_card_facts

    run_dir, config = _open_run(config, run_id, overrides, progress or (lambda f, m: None), mode=mode)
    progress = _recording_progress(run_dir, progress)  # a resumed run keeps its settings (above)
    mode = read_run(run_dir).get("mode") or config.training_mode.selected
    if mode not in PHASES:  # a single phase of `python -m pipeline train`
        raise RunError(f"Run '{run_dir.name}' is one {mode} phase started with `python -m pipeline train`: resume it "
                       f"with `python -m pipeline train --mode {mode} --run-id {run_dir.name}`.")
    if mode == "speaker_lora":
        model_dir = _speaker_run_base(run_dir, model_dir)
    started = time.time()
    before = float(read_run(run_dir).get("elapsed_s") or 0.0)  # earlier attempts of a resumed run

    def elapsed() -> float:
        return round(before + time.time() - started, 1)

    # started_at/elapsed_before_s let a viewer compute the running total (time × price) live
    update_run(run_dir, status="running", pid=os.getpid(), error=None, message=None,
               started_at=started, elapsed_before_s=before)
    stop_event = stop_event or threading.Event()
    training = {"now": False}
    previous_handler = _install_sigterm(stop_event, training)

    def check_stop() -> None:
        if stop_event.is_set():
            raise RunCancelled()

    try:
        from pipeline.train.distributed import training_gpus

        training_gpus(config)  # a GPU count the batch cannot split over fails now, not after extraction
        base_dir = Path(model_dir) if model_dir else ensure_base_model(config)
        check_stop()

        def stage(**info) -> None:
            check_stop()
            update_run(run_dir, **info)

        dataset, manifest = _prepare(config, base_dir, progress, stage)
        check_stop()
        phases = PHASES[mode]
        trained_base = base_dir
        for phase in phases:
            phase_manifest = manifest
            if phase == "speaker_lora":
                speaker = _started_speaker(run_dir, phase)
                if speaker is None:
                    speaker, reason = choose_speaker(config, dataset)
                    update_run(run_dir, speaker=speaker, speaker_reason=reason)
                phase_manifest = manifest[manifest["speaker"] == speaker]
            if not _phase_finished(run_dir, phase):
                training["now"] = True  # a SIGTERM now only sets stop_event: train saves a checkpoint
                try:
                    result = _train_phase(config, run_dir, phase, trained_base, phase_manifest, stop_event, progress,
                                          scorer_factory)
                finally:
                    training["now"] = False
                if getattr(result, "status", "finished") != "finished":
                    return update_run(run_dir, status=result.status, message=getattr(result, "message", ""),
                                      elapsed_s=elapsed())
                check_stop()
            if phase == "full":
                trained_base = _best_checkpoint(run_dir, phase)
        check_stop()
        update_run(run_dir, phase="merge")
        adapter = _chosen_adapter(config, run_dir, phases[-1])
        artifacts = run_dir / "artifacts"
        card = run_card_facts(run_dir, read_run(run_dir))  # every download says what it is, its licence and how to load it
        merged = merge_lora(trained_base, adapter, artifacts / "merged", card=card)
        adapter_zip = export_adapter(adapter, artifacts / "adapter.zip", card=card)
        update_run(run_dir, phase="evaluate", artifacts={"merged": str(merged), "adapter": str(adapter),
                                                          "adapter_zip": str(adapter_zip),
                                                          "phase1_model": str(trained_base) if "full" in phases else None,
                                                          "language_model": str(trained_base) if mode == "speaker_lora" else None})
        check_stop()
        from pipeline.generate.fastgen import DecodeOptions

        audio = render_examples(merged, run_dir / "audio", progress=progress,
                                decode_options=DecodeOptions.from_speed(config.speed))
        return update_run(run_dir, phase="done", status="finished", audio=audio, elapsed_s=elapsed())
    except RunCancelled:
        stage = read_run(run_dir).get("phase") or "start"
        return update_run(run_dir, status="cancelled", elapsed_s=elapsed(),
                          message=f"cancelled during '{stage}' (nothing to save there); resume to continue")
    except Exception as exc:  # recorded for the studio, then re-raised for the CLI/job log
        update_run(run_dir, status="failed", error=f"{type(exc).__name__}: {exc}", elapsed_s=elapsed())
        raise
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)


def _install_sigterm(stop_event: threading.Event, training: dict):
    """SIGTERM (pipeline.train.jobs.cancel_job) → stop. Inside a training phase train() saves a
    checkpoint first; elsewhere (dataset, codes, merge) the run stops at once. Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def on_sigterm(signum, frame):
        stop_event.set()
        if not training["now"]:
            raise RunCancelled()

    return signal.signal(signal.SIGTERM, on_sigterm)


def train_only(config: Config, mode: str = "lora", model_dir: Path | None = None, run_id: str | None = None,
               speaker: str | None = None, progress: Progress | None = None, overrides: dict | None = None,
               scorer_factory: str | None = None) -> dict:
    """One training phase on the prepared dataset (the CLI's `train`); merge is left to `merge`.

    The run is recorded as what it is: mode `lora`, `full` or `speaker_lora`, and for a speaker
    phase where the speaker came from."""
    run_id = run_id or new_run_id(mode)
    with _failure_recorded(run_dir_for(config, run_id)):
        with TrainingLock(config.workspace, run_dir_for(config, run_id)):
            use_compile_cache(config, prune=True)
            return _train_only(config, mode, model_dir, run_id, speaker, progress, overrides, scorer_factory)


def _train_only(config, mode, model_dir, run_id, speaker, progress, overrides, scorer_factory) -> dict:
    from pipeline.model.checkpoints import ensure_base_model

    progress = progress or (lambda fraction, message: None)
    if speaker:
        config = config.with_overrides({"speaker.policy": "manual", "speaker.name": speaker})
        overrides = (overrides or {}) | {"speaker.name": speaker}
    run_dir, config = _open_run(config, run_id, overrides, progress, mode=mode)
    if read_run(run_dir).get("mode") not in (mode, None):
        raise RunError(f"Run '{run_dir.name}' is a {read_run(run_dir)['mode']} run; start a new run for {mode}.")
    from pipeline.train.distributed import training_gpus

    training_gpus(config)  # a GPU count the batch cannot split over fails now, not after extraction
    base_dir = Path(model_dir) if model_dir else ensure_base_model(config)
    update_run(run_dir, status="running", pid=os.getpid(), error=None, base_model=str(base_dir))
    try:
        dataset, manifest = _prepare(config, base_dir, progress, lambda **info: update_run(run_dir, **info))
        if mode == "speaker_lora":
            picked, reason = choose_speaker(config, dataset)
            if speaker:
                reason = "given on the command line (--speaker)"
            update_run(run_dir, speaker=picked, speaker_reason=reason)
            manifest = manifest[manifest["speaker"] == picked]
        result = _train_phase(config, run_dir, mode, base_dir, manifest, None, progress, scorer_factory)
    except Exception as exc:
        update_run(run_dir, status="failed", error=f"{type(exc).__name__}: {exc}")
        raise
    return update_run(run_dir, status=getattr(result, "status", "finished"), phase=mode,
                      message=getattr(result, "message", "") or None)
