"""`python -m pipeline evaluate`: the voice-quality scorecard of a model or of a run's checkpoints."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from pipeline.config import load_config, parse_override
from pipeline.quality.overview import baseline_dir
from pipeline.quality.scorecard import ModelSpec, parse_adapter
from pipeline.quality.configured import (
    config_scorers,
    evaluate_config_model,
    run_models,
    scorecard_table,
    speaker_references,
)

console = Console(stderr=True, soft_wrap=True)


def _specs(config, args) -> list[ModelSpec]:
    if args.run_id:
        if args.model or args.adapter:
            raise ValueError("--run-id evaluates the run's own checkpoints; leave out --model and --adapter.")
        return run_models(config, args.run_id)
    if not args.model or args.model == "base":
        from pipeline.model.checkpoints import ensure_base_model

        model_dir, label = ensure_base_model(config), "base"
    else:
        model_dir, label = Path(args.model), ""
        if not model_dir.is_dir():
            raise ValueError(f"--model {args.model}: no such folder; give 'base' or a model folder.")
    adapters = tuple(parse_adapter(a) for a in args.adapter or [])
    for path, _ in adapters:
        if not Path(path).is_dir():
            raise ValueError(f"--adapter {path}: no such folder; give a peft adapter folder, optionally :WEIGHT.")
    return [ModelSpec(str(model_dir), adapters, label if not adapters else "")]


def cmd_evaluate(args) -> int:
    overrides = dict(parse_override(item) for item in args.set or [])
    if args.asr_model:
        overrides["evaluation.asr_model"] = None if args.asr_model == "none" else args.asr_model
    config = load_config(args.config, overrides or None)
    specs = _specs(config, args)
    scorers = config_scorers(config, speaker_references(config, args.speaker))
    summaries = []
    columns = (TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        for spec in specs:
            task = bar.add_task(spec.name, total=1.0)

            def progress(fraction: float, message: str, task=task, name=spec.name) -> None:
                bar.update(task, completed=fraction, description=f"{name}: {message[:70]}")

            # the base model alone is the baseline of the current dataset and speaker, shared with the studio
            base = spec.label == "base" and not spec.adapters and not args.run_id
            card = evaluate_config_model(config, spec, args.run_id, scorers=scorers, progress=progress,
                                         out_dir=baseline_dir(config, speaker=args.speaker) if base else None)
            bar.update(task, completed=1.0, description=f"{spec.name}: {card.out_dir}")
            summaries.append(card.summary)
    for note in dict.fromkeys(scorers.notes):
        console.print(f"[yellow]note:[/yellow] {note}")
    table = Table(title="Voice quality (means, 95 % intervals)")
    frame = scorecard_table(summaries)
    for column in frame.columns:
        table.add_column(str(column))
    for row in frame.itertuples(index=False):
        table.add_row(*(str(v) for v in row))
    console.print(table)
    return 0


def add_evaluate_command(sub, parents: list[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Register `evaluate` on the CLI's sub-parsers (`parents`: the common --config/--set parser)."""
    p = sub.add_parser("evaluate", parents=parents,
                       help="voice-quality scorecard (CER, speaker similarity, DNSMOS) of a model or a run's checkpoints")
    p.add_argument("--model", help="'base' (default) or a model folder (merged or full fine-tune)")
    p.add_argument("--adapter", action="append", metavar="PATH[:WEIGHT]", help="LoRA adapter to stack (repeatable)")
    p.add_argument("--run-id", help="evaluate every kept checkpoint and the merged model of this run")
    p.add_argument("--asr-model", help="ASR for CER/WER (Hub repo or folder; 'none' leaves CER out); "
                                       "default: evaluation.asr_model")
    p.add_argument("--speaker", help="reference speaker of the current dataset (default: the chosen one)")
    p.set_defaults(func=cmd_evaluate)
    return p
