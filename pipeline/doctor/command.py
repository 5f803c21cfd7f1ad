"""`python -m pipeline doctor [--model DIR] [--quick]`: the checks, the table, the saved report.

Exit status 0 only when no row is ✗ (1 otherwise), so set-up scripts and CI can act on it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.doctor.checks import exit_code, run_checks
from pipeline.doctor.report import build_report, report_dir, rich_table, save_report, summary_line

HELP = "check this machine and the model against every assumption of the code (first run on a GPU)"


def doctor(config, model_dir: str | Path | None = None, quick: bool = False, progress=None,
           smoke_steps: int | None = None) -> dict:
    """Run every check, save the report in the workspace and return it (with its `path`)."""
    model_dir = Path(model_dir) if model_dir else config.base_model_dir
    rows = run_checks(config, model_dir, quick=quick, out_dir=report_dir(config), progress=progress,
                      smoke_steps=smoke_steps)
    report = build_report(rows, model_dir, quick)
    report["path"] = str(save_report(config, report))
    return report


def cmd_doctor(args) -> int:
    from rich.console import Console

    from pipeline.config import load_config, parse_override
    from pipeline.doctor.report import report_rows

    console = Console(stderr=True, soft_wrap=True)
    config = load_config(args.config, dict(parse_override(item) for item in args.set or []) or None)

    def progress(fraction: float, message: str) -> None:
        console.print(f"[dim]{fraction:6.1%}[/dim] {message}", highlight=False)

    report = doctor(config, args.model, quick=args.quick, progress=progress)
    rows = report_rows(report)
    Console(soft_wrap=False).print(rich_table(rows, title=f"doctor: {report['model_dir']}"))
    colour = "green" if report["ok"] else "red"
    console.print(f"[{colour}]{summary_line(report)}[/{colour}]  report: {report['path']}")
    return exit_code(rows)


def add_doctor_command(sub, parents: list[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Register `doctor` on the CLI's sub-parsers; `parents` give --config/--set (and maybe --model)."""
    p = sub.add_parser("doctor", parents=parents, help=HELP, description=HELP)
    has_model = any("--model" in parent._option_string_actions for parent in parents)
    if not has_model:
        p.add_argument("--model", help="model checkpoint folder (default: base_model.local_dir; never downloaded)")
    p.add_argument("--quick", action="store_true", help="skip the spoken sentence and the LoRA smoke run")
    for action in p._actions:  # the shared --config/--set are needed by cmd_doctor
        if action.dest in ("config", "set"):
            break
    else:
        p.add_argument("--config", help="configuration file (default: launchable.yaml)")
        p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a setting (repeatable)")
    p.set_defaults(func=cmd_doctor)
    return p


def main(argv: list[str] | None = None) -> int:
    """`python -m pipeline.doctor.command` until the sub-command is registered in pipeline.cli."""
    parser = argparse.ArgumentParser(prog="python -m pipeline")
    add_doctor_command(parser.add_subparsers(dest="command", required=True), [])
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
