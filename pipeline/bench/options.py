"""The options of `python -m pipeline bench` and `python -m pipeline.bench` (one definition, no
heavy imports: the CLI builds its parser from it)."""

from __future__ import annotations

import argparse


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `python -m pipeline bench` and `python -m pipeline.bench` (one definition)."""
    parser.add_argument("--only", choices=["train", "loop", "extract", "generate", "evaluation", "workflow", "scaling", "compile"], action="append",
                        help="run only this section (repeatable; default: all)")
    parser.add_argument("--out", help="folder for the JSON (default: the workspace's runs/bench)")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes, any device (CI)")
    parser.add_argument("--steps", type=int, help="timed training steps per variant (and loop steps)")
    parser.add_argument("--clips", type=int,
                        help="workflow section: clips in the synthetic dataset (default 3,000, ~8 h of audio)")
    parser.add_argument("--variants", help="comma-separated training variants (default: see bench_sections)")
    parser.add_argument("--profile", action="store_true",
                        help="also profile one step per training variant and 20 generated frames (kernel tables, GPU idle gaps and gzipped Chrome traces next to the JSON)")
