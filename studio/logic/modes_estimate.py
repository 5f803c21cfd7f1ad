"""The Modes & cost tab's estimate, without gradio: the comparison for the dataset and speaker selected
in the Dataset tab, with the saved settings, as the tab shows it."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import plotly.graph_objects as go

from pipeline.config import Config
from pipeline.data.dataset import list_datasets, open_dataset
from pipeline.data.selection import apply_selection, load_selection
from pipeline.estimate.cost import CPU_NAME, describe_workload, estimate
from pipeline.estimate.recipe import check_recipe
from studio.logic import estimate_gpus, run_charts
from studio.logic.modes_settings import effective_config
from studio.logic.modes_view import display_table, headline_html, modes_html, note, recipe_html, workload_html
from studio.logic.run_estimate import priced_table


def machine_has_gpu() -> bool:
    """Whether a run started here trains on a GPU (else on the CPU, which costs no GPU time)."""
    import torch

    return bool(torch.cuda.is_available())


@dataclass
class EstimateView:
    message: str                 # HTML note (empty when all is well)
    headline: str                # HTML: the configured GPU's numbers, per phase, and the reference quote
    workload: str                # HTML stat cards from describe_workload
    table: pd.DataFrame          # one row per GPU × mode, formatted for people
    raw: pd.DataFrame            # cost.estimate's own table
    figure: go.Figure
    dataset_id: str | None
    cards: str = ""              # the mode cards, their words following this dataset's figures
    recipe: str = ""             # HTML: epochs, over-fitting risk, reference beside scaled recipe


def estimate_view(config: Config) -> EstimateView:
    """The comparison for the dataset and speaker selected in the Dataset tab, with the saved settings."""
    selection = load_selection(config)
    dataset_id = selection.get("dataset_id")
    empty = pd.DataFrame()
    cfg = effective_config(config)
    if not dataset_id or dataset_id not in list_datasets(config):
        text = ("No dataset loaded yet: load one in the Dataset tab (the bundled sample works offline) "
                "and the estimate appears here.")
        return EstimateView(note(text, "info"), "", "", display_table(empty), empty,
                            run_charts.cost_comparison(empty), None, modes_html(cfg))
    on_cpu = not machine_has_gpu()
    try:
        cfg = apply_selection(config, selection)
        dataset = open_dataset(cfg, dataset_id)
        speaker = selection.get("speaker") or dataset.recommendation.speaker
        raw = estimate(cfg, dataset.manifest, speaker, prices=priced_table(cfg), include_cpu=on_cpu,
                       gpus=estimate_gpus.gpu_count(selection))
        work = describe_workload(cfg, dataset.manifest, speaker)
        report = check_recipe(cfg, dataset.manifest, speaker)
    except ValueError as exc:
        return EstimateView(note(str(exc), "error"), "", "", display_table(empty), empty,
                            run_charts.cost_comparison(empty), dataset_id, modes_html(cfg))
    message = note(f"Dataset “{dataset_id}”, voice {speaker} "
                   f"({'your pick' if selection.get('speaker') else 'recommended'}).", "ok")
    gpus = raw[raw["gpu"] != CPU_NAME].reset_index(drop=True)  # the chart plots priced GPU time only
    return EstimateView(message, headline_html(gpus, cfg, on_cpu), workload_html(work),
                        display_table(raw, cfg.gpu.type), raw,
                        run_charts.cost_comparison(gpus, cfg.gpu.type, cfg.training_mode.selected), dataset_id,
                        modes_html(cfg, gpus, work), recipe_html(report, cfg))
