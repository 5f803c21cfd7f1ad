"""The scorecard over the configuration (`evaluation:`): its sentences, the chosen speaker's
reference clips, its scorers, a run's models, one model evaluated into its folder, and the table
of summaries the CLI and the studio show."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline.model.checkpoints import LM_FILES
from pipeline.quality.asr import Transcriber
from pipeline.quality.scorecard import (
    ADAPTER_FILES,
    EvaluationError,
    ModelSpec,
    Progress,
    Scorecard,
    Scorers,
    SpeakOptions,
    cache_dir,
    eval_dir,
    evaluate,
)
from pipeline.train.runs import read_run


def evaluation_sentences(config) -> list[str]:
    from pipeline.data.text import example_sentences

    return example_sentences()[: config.evaluation.sentences]


def speaker_references(config, speaker: str | None = None, dataset_id: str | None = None) -> list[Path]:
    """Clips of the chosen speaker of `dataset_id` (default: the studio's current dataset), cleanest
    first; none without a dataset."""
    from pipeline.data.selection import reference_clips

    if config.evaluation.references == 0:
        return []
    found = reference_clips(config, speaker, limit=config.evaluation.references, dataset_id=dataset_id)
    return [Path(c["path"]) for c in found.clips]


def config_scorers(config, references: list[str | Path] = (), asr: str | Transcriber | None = "config",
                   device: str | None = None) -> Scorers:
    """The scorers `evaluation:` asks for (asr "config": evaluation.asr_model)."""
    return Scorers(config.evaluation.asr_model if asr == "config" else asr, language=config.evaluation.language,
                   speaker=True, references=references, device=device)


def run_models(config, run_id: str) -> list[ModelSpec]:
    """A run's models to score: each kept checkpoint of each phase (LoRA on its base), then merged."""
    run_dir = Path(config.runs_dir) / run_id
    if not run_dir.is_dir():
        raise EvaluationError(f"Run {run_id} does not exist under {config.runs_dir}; check the run id.")
    run = read_run(run_dir)
    artifacts = run.get("artifacts") or {}
    base = run.get("base_model") or str(config.base_model_dir)
    specs = []
    for phase_dir in sorted(p for p in (run_dir / "phases").glob("*") if p.is_dir()):
        for ckpt in sorted(p for p in (phase_dir / "checkpoints").glob("step_*") if p.is_dir() and not p.name.endswith(".tmp")):
            label = f"{phase_dir.name}-{ckpt.name}"
            if all((ckpt / name).is_file() for name in ADAPTER_FILES):
                # a full fine-tune's speaker LoRA sits on its language-adapted model
                on = artifacts.get("phase1_model") if phase_dir.name == "speaker_lora" and artifacts.get("phase1_model") else base
                specs.append(ModelSpec(str(on), ((str(ckpt), 1.0),), label))
            elif all((ckpt / name).is_file() for name in LM_FILES):
                specs.append(ModelSpec(str(ckpt), (), label))
    merged = artifacts.get("merged") or run_dir / "artifacts" / "merged"
    if all((Path(merged) / name).is_file() for name in LM_FILES):
        specs.append(ModelSpec(str(merged), (), "merged"))
    if not specs:
        raise EvaluationError(f"Run {run_id} has no checkpoint or merged model yet; evaluate it after a validation step.")
    return specs


def evaluate_config_model(config, spec: ModelSpec, run_id: str | None = None, scorers: Scorers | None = None,
                          progress: Progress = None, synth_factory=None, device: str | None = None,
                          out_dir: str | Path | None = None) -> Scorecard:
    """`evaluate` with the configuration's sentences, seed, token limit, output folder and cache
    (out_dir: another folder than `eval_dir(config, spec.name, run_id)`)."""
    out_dir = Path(out_dir) if out_dir else eval_dir(config, spec.name, run_id)
    return evaluate(spec, out_dir, cache_dir(config), evaluation_sentences(config),
                    seed=config.evaluation.seed, options=SpeakOptions(max_new_tokens=config.evaluation.max_new_tokens),
                    scorers=scorers or config_scorers(config, speaker_references(config), device=device),
                    progress=progress, synth_factory=synth_factory, device=device)


def scorecard_table(summaries: list[dict]) -> pd.DataFrame:
    """One row per model: CER, similarity, DNSMOS OVRL as 'mean [low, high]' (for the studio and the CLI)."""
    def cell(summary: dict, metric: str) -> str:
        stats = (summary.get("metrics") or {}).get(metric)
        return "–" if not stats else f"{stats['mean']:.3f} [{stats['low']:.3f}, {stats['high']:.3f}]"

    return pd.DataFrame([{"model": s.get("model", ""), "CER": cell(s, "cer"), "similarity": cell(s, "similarity"),
                          "DNSMOS OVRL": cell(s, "ovrl"), "flagged": s.get("flagged", 0),
                          "note": "random weights: produces noise" if s.get("random_weights") else ""}
                         for s in summaries])
