"""`python -m pipeline …`: everything the studio does, from the command line.

Each sub-command loads `launchable.yaml` (or `--config`), applies `--set key.path=value`
overrides, and calls one pipeline stage. Expected failures (bad input, missing files, the Hub
unreachable) print one readable message and exit with status 2; no traceback
(set PIPELINE_DEBUG=1 to see one). Temporary files a killed run left in the workspace are
removed at start (`pipeline.data.cleanup`).

Local parquet (a Hugging Face export on disk, e.g. `<dir>/fi/train-00000-of-00001.parquet`) is a
folder source: `prepare --set dataset.source=folder --set dataset.path=<dir>`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rich.console import Console

from pipeline.bench.options import add_bench_arguments
from pipeline.config import Config, load_config, parse_override

console = Console(stderr=True, soft_wrap=True)  # no hard wraps: paths stay copyable in logs


LIVE_SCORER = "pipeline.quality.live:live_scorer"  # scores each validation's spoken sentences


def _overrides(args) -> dict:
    overrides = dict(parse_override(item) for item in args.set or [])
    if getattr(args, "gpus", None):
        overrides["training.gpus"] = args.gpus
    return overrides


def _config(args) -> Config:
    return load_config(args.config, _overrides(args) or None)


def _progress(fraction: float, message: str) -> None:
    console.print(f"[dim]{fraction:6.1%}[/dim] {message}", highlight=False)


def _dataset(config: Config, force: bool = False):
    from pipeline.data.dataset import load_configured_dataset

    return load_configured_dataset(config, progress=_progress, force=force)


def _model_dir(config: Config, args) -> Path:
    if getattr(args, "model", None):
        return Path(args.model)
    from pipeline.model.checkpoints import ensure_base_model

    return ensure_base_model(config)


# -- commands -------------------------------------------------------------------------------
def cmd_download(args) -> int:
    from pipeline.model.checkpoints import ensure_base_model

    config = _config(args)

    def model() -> str:
        return f"at {ensure_base_model(config)}"

    def dataset() -> str:
        data = _dataset(config)
        return f"{data.summary['accepted']} accepted clips ({data.id})"

    wanted = [("base model", model)] if not args.no_model else []
    if config.dataset.source == "huggingface":
        wanted.append(("dataset", dataset))
    failures = 0
    for name, fetch in wanted:
        try:
            console.print(f"[green]{name} ready[/green] {fetch()}")
        except Exception as exc:  # noqa: BLE001 - set-up must go on and say why, whatever broke
            failures += 1
            console.print(f"[yellow]{name} not downloaded:[/yellow] {exc}")
    return 1 if failures else 0


def cmd_prepare(args) -> int:
    config = _config(args)
    data = _dataset(config, force=args.force)
    summary = data.summary
    console.print(
        f"[bold]{data.id}[/bold]: {summary['accepted']} of {summary['total']} clips accepted, "
        f"{summary['accepted_minutes']:.1f} usable minutes, {len(data.speakers)} speakers"
    )
    for line in [summary.get("selection"), *(summary.get("source_notes") or [])]:
        if line:
            console.print(f"  {line}")
    for reason, count in (summary.get("reasons") or {}).items():
        console.print(f"  rejected {count:4d}: {reason}")
    console.print(f"recommended speaker: [bold]{data.recommendation.speaker}[/bold] ({data.recommendation.reason})")
    console.print(f"manifest: {data.dir / 'manifest.parquet'}")
    return 0


def cmd_extract(args) -> int:
    from pipeline.model.codes import extract_codes

    config = _config(args)
    data = _dataset(config)
    report = extract_codes(data.manifest, _model_dir(config, args), config.workspace / "codes", progress=_progress)
    console.print(extract_summary(report))
    return 0


def extract_summary(report, shown: int = 5) -> str:
    """The report in a few lines: counts, seconds, cache hits and the first failures."""
    lines = [report.summary()]
    failed = list(report.failed.items())
    for clip_id, reason in failed[:shown]:
        lines.append(f"  failed {clip_id}: {reason}")
    if len(failed) > shown:
        lines.append(f"  … and {len(failed) - shown} more failures")
    return "\n".join(lines)


def cmd_run(args) -> int:
    from pipeline.train.workflow import run_workflow

    config = _config(args)
    result = run_workflow(config, model_dir=Path(args.model) if args.model else None, run_id=args.run_id,
                          progress=_progress, overrides=_overrides(args), mode=args.mode, scorer_factory=LIVE_SCORER)
    _print_run(config, result)
    return 0 if result.get("status") == "finished" else 1


def _print_run(config: Config, run: dict) -> None:
    status = run.get("status", "?")
    colour = "green" if status == "finished" else "yellow"
    console.print(f"[{colour}]run {run.get('id')} {status}[/{colour}] ({config.runs_dir / str(run.get('id'))})")
    for name, path in (run.get("artifacts") or {}).items():
        if path:
            console.print(f"  {name:13s} {path}")
    for path in run.get("audio") or []:
        console.print(f"  audio         {path}")
    if run.get("message"):
        console.print(f"  {run['message']}")


def cmd_train(args) -> int:
    from pipeline.train.workflow import train_only

    config = _config(args)
    result = train_only(config, mode=args.mode, model_dir=Path(args.model) if args.model else None,
                        run_id=args.run_id, speaker=args.speaker, progress=_progress, overrides=_overrides(args),
                        scorer_factory=LIVE_SCORER)
    _print_run(config, result)
    return 0 if result.get("status") == "finished" else 1


def cmd_merge(args) -> int:
    from pipeline.model.merge import merge_lora

    out = merge_lora(Path(args.base), Path(args.adapter), Path(args.out))
    console.print(f"[green]merged model written[/green] to {out}")
    return 0


def cmd_say(args) -> int:
    from pipeline.generate.synth import Synthesizer, save_wav

    config = _config(args)
    adapters = [(path, float(weight)) for path, _, weight in (a.partition(":") if ":" in a else (a, ":", "1.0") for a in args.adapter or [])]
    from pipeline.generate.fastgen import DecodeOptions

    synth = Synthesizer(_model_dir(config, args), adapters=adapters or None,
                        decode_options=DecodeOptions.from_speed(config.speed))
    result = synth.speak(args.text, reference_audio=args.reference, reference_text=args.reference_text,
                         temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    out = save_wav(result, args.out)
    console.print(f"[green]{result.seconds:.1f} s of audio[/green] written to {out} (normalized text: {result.normalized_text!r})")
    return 0


def cmd_tiny_model(args) -> int:
    from pipeline.model.tiny_checkpoint import write_tiny_checkpoint

    out = write_tiny_checkpoint(Path(args.out), seed=args.seed)
    console.print(f"[green]tiny random-weights model written[/green] to {out} (it produces noise, not speech).\n"
                  f"Use it with --model {out}, or set base_model.local_dir: {out} in launchable.yaml.")
    return 0


def cmd_warmup(args) -> int:
    from pipeline.model.checkpoints import has_all_files
    from pipeline.train.warmup import MODE_PHASES, warm_compile_cache

    config = _config(args)
    modes = tuple(MODE_PHASES) if args.mode == "all" else (args.mode,)
    model_dir = Path(args.model) if args.model else config.base_model_dir
    if not args.model and not has_all_files(model_dir):
        console.print(f"[dim]{model_dir} is not downloaded: compiling for the s1-mini shape with random weights "
                      "(the compiled graphs depend on the shape only)[/dim]")
        model_dir = None
    result = warm_compile_cache(config, model_dir, modes, force=args.force, progress=_progress)
    for phase, row in result["phases"].items():
        if "skipped" in row:
            console.print(f"  {phase:13s} {row['skipped']}")
        else:
            first = row.get("first_step_s")
            console.print(f"  {phase:13s} compiled in {row['seconds']:.0f} s"
                          + (f" (first step {first:.0f} s)" if isinstance(first, (int, float)) else ""))
    console.print(f"[green]compile cache ready[/green] in {result['cache']}: a run's first step loads these graphs "
                  "instead of compiling them")
    return 0


def cmd_bench(args) -> int:
    from pipeline.bench.runner import run_from_args

    run_from_args(_config(args), args)
    return 0


# -- parser ---------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help="configuration file (default: launchable.yaml)")
    common.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override a setting, e.g. --set training.quick_lora.steps=50 (repeatable)")
    gpus = argparse.ArgumentParser(add_help=False)
    gpus.add_argument("--gpus", help="data-parallel processes, one per GPU: auto (every visible GPU) or N "
                                     "(default: training.gpus)")
    model = argparse.ArgumentParser(add_help=False)
    model.add_argument("--model", help="model checkpoint folder (default: the base model, downloaded if missing)")

    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("download", parents=[common], help="fetch the base model and the default dataset from the Hub")
    p.add_argument("--no-model", action="store_true", help="skip the base model")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("prepare", parents=[common], help="load the configured dataset into a validated manifest")
    p.add_argument("--force", action="store_true", help="rebuild the manifest even when the cached one is current")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("extract", parents=[common, model], help="encode accepted clips into VQ codes (cached)")
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("train", parents=[common, model, gpus], help="train one phase (LoRA or full) on the prepared dataset")
    p.add_argument("--mode", choices=["lora", "full", "speaker_lora"], default="lora")
    p.add_argument("--speaker", help="speaker for speaker_lora (default: the configured or recommended one)")
    p.add_argument("--run-id", help="run folder name under the workspace's runs/ (resumes when it exists)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("merge", parents=[common], help="merge a LoRA adapter into its base model")
    p.add_argument("--base", required=True, help="base model folder")
    p.add_argument("--adapter", required=True, help="adapter folder (peft format)")
    p.add_argument("--out", required=True, help="output folder for the merged model")
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("say", parents=[common, model], help="Finnish text to speech")
    p.add_argument("text")
    p.add_argument("--out", default="speech.wav")
    p.add_argument("--adapter", action="append", metavar="PATH[:WEIGHT]", help="LoRA adapter to stack (repeatable)")
    p.add_argument("--reference", help="reference clip for the voice")
    p.add_argument("--reference-text", help="transcript of the reference clip")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-p", type=float, default=0.8)
    p.add_argument("--seed", type=int, default=None)
    p.set_defaults(func=cmd_say)

    p = sub.add_parser("run", parents=[common, model, gpus], help="the whole launchable.yaml workflow, headless")
    p.add_argument("--run-id", help="run folder name (resumes when it exists, with its own settings)")
    p.add_argument("--mode", choices=["speaker_lora"],
                   help="speaker_lora: a new speaker on a finished full fine-tune's language-adapted model "
                        "(--model runs/<id>/phases/full/checkpoints/step_N); default: training_mode.selected")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("tiny-model", help="write a tiny random-weights model (offline demos of the whole flow)")
    p.add_argument("--out", default="checkpoints/tiny-random")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_tiny_model)

    p = sub.add_parser("warmup", parents=[common],
                       help="compile the training steps into the workspace's cache now, so a run's first step "
                            "does not wait for it (GPU; setup.sh runs it)")
    p.add_argument("--mode", choices=["all", "quick_lora", "full_finetune"], default="all",
                   help="which training modes' phases to compile (default: all)")
    p.add_argument("--model", help="model folder whose shape and weights to compile with (default: the base model "
                                   "when downloaded, else random weights of its s1-mini shape; never downloads)")
    p.add_argument("--force", action="store_true", help="compile again even where the cache says it holds them")
    p.set_defaults(func=cmd_warmup)

    p = sub.add_parser("bench", parents=[common], help="GPU benchmark on the real model shape (random weights)")
    add_bench_arguments(p)
    p.set_defaults(func=cmd_bench)

    # these two bring their own --model (base | a folder; they never download)
    from pipeline.doctor.command import add_doctor_command

    add_doctor_command(sub, [common])
    from pipeline.quality.command import add_evaluate_command  # its own --model: base | a folder

    add_evaluate_command(sub, [common])
    return parser


def _remove_stale_temp(args) -> None:
    """Clear what a killed run left in the workspace; never a reason to stop the command."""
    from pipeline.data.cleanup import remove_stale_temp

    try:
        workspace = _config(args).workspace if hasattr(args, "config") else None
    except ValueError:
        return  # the command itself reports the bad configuration
    if workspace is not None:
        try:
            remove_stale_temp(workspace)
        except OSError:
            pass


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _remove_stale_temp(args)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]")
        return 130
    except (ValueError, FileNotFoundError) as exc:
        if os.environ.get("PIPELINE_DEBUG"):
            raise
        console.print(f"[red]error:[/red] {exc}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
