"""The Modes & cost tab's views and settings (no server): the estimate for the selected dataset."""

import pandas as pd
import pytest

from audio_fixtures import write_clip
from pipeline.config import Config, ConfigError
from pipeline.cost import load_price_table
from pipeline.selection import load_selection, save_selection
from studio import modes_tab


@pytest.fixture(scope="module")
def voices(tmp_path_factory):
    root = tmp_path_factory.mktemp("voices")
    for s, speaker in enumerate(["aino", "eero"]):
        for i in range(3 + 2 * s):
            write_clip(root, speaker, f"{speaker}{i}", text=f"Tämä on lause numero {i}.", seed=10 * s + i)
    return root


@pytest.fixture
def config(tmp_path, monkeypatch) -> Config:
    monkeypatch.setenv("STUDIO_WORKSPACE", str(tmp_path / "ws"))
    return Config()


@pytest.fixture
def selected(config, voices):
    """The folder dataset loaded and selected, as the Dataset tab leaves it."""
    from pipeline.dataset import load_dataset
    from pipeline.sources import SourceSpec

    dataset = load_dataset(SourceSpec(kind="folder", path=str(voices)), config)
    save_selection(config, dataset_id=dataset.id)
    return dataset


def _row(view, gpu, mode):
    rows = view.raw[(view.raw["gpu"] == gpu) & (view.raw["mode"] == mode)]
    assert len(rows) == 1
    return rows.iloc[0]


def test_without_a_dataset_the_tab_points_to_the_dataset_tab(config):
    view = modes_tab.estimate_view(config)
    assert "Dataset tab" in view.message and view.dataset_id is None
    assert view.table.empty and list(view.table.columns)[:4] == ["GPU", "Mode", "Time", "Cost"]
    assert view.figure.data == ()


def test_estimate_has_every_gpu_and_mode_for_the_selected_dataset(config, selected):
    view = modes_tab.estimate_view(config)
    gpus = list(load_price_table()["gpus"])
    assert view.dataset_id == selected.id and "error" not in view.message
    assert len(view.table) == len(view.raw) == 2 * len(gpus)
    assert {(g, m) for g, m in zip(view.raw["gpu"], view.raw["mode"])} == \
        {(g, m) for g in gpus for m in ("quick_lora", "full_finetune")}
    assert set(view.table["Mode"]) == {"Quick LoRA", "Full fine-tune + speaker LoRA"}
    assert {"Time", "Cost", "Peak memory", "Fits", "Output", "Throughput from"} <= set(view.table.columns)
    starred = view.table[view.table["GPU"].str.startswith("★ ")]
    assert set(starred["GPU"]) == {"★ A100-80GB"} and len(starred) == 2          # the configured GPU
    # 24 GB cards: full fine-tuning only fits with small micro-batches and recomputed activations
    small = view.table[view.table["GPU"].str.contains("24GB") & view.table["Mode"].str.startswith("Full")]
    assert len(small) == 2 and all("checkpointing" in plan for plan in small["Batch plan"])
    # the headline names the GPU, its price and where the throughput came from
    assert "A100-80GB" in view.headline and "$1.32/h" in view.headline and "estimated" in view.headline
    # describe_workload's numbers are shown
    accepted = int((selected.manifest["status"] == "ok").sum())
    assert f"<div class='value'>{accepted}</div><div class='label'>accepted clips" in view.workload
    assert "eero" in view.workload            # the recommended voice (most minutes) when none is picked
    assert len([t for t in view.figure.data if t.name != "your choice"]) == len(gpus)


def test_settings_are_saved_as_config_keys_and_the_estimate_follows(config, selected):
    before = _row(modes_tab.estimate_view(config), "A100-80GB", "quick_lora")
    selection = modes_tab.save_settings(config, quick_steps=5600, rank=16, price=2.64, gpu="A100-80GB",
                                        mode="full_finetune")
    assert selection["training.quick_lora.steps"] == 5600 and selection["gpu.price_per_hour"] == 2.64
    assert selection["training.lora.rank"] == 16 and selection["training.lora.alpha"] == 32
    assert load_selection(config)["training_mode.selected"] == "full_finetune"
    assert load_selection(config)["dataset_id"] == selected.id                     # kept
    after = _row(modes_tab.estimate_view(config), "A100-80GB", "quick_lora")
    assert after.minutes == pytest.approx(2 * before.minutes, rel=0.02)
    assert after.cost_usd == pytest.approx(after.minutes / 60 * 2.64, rel=0.02)    # your price, not the list's
    settings = modes_tab.current_settings(config)
    assert (settings["mode"], settings["quick_steps"], settings["rank"], settings["price"]) == \
        ("full_finetune", 5600, 16, 2.64)
    view = modes_tab.estimate_view(config)
    assert "<b>Full fine-tune" in view.headline                                    # the chosen mode stands out
    ring = next(t for t in view.figure.data if t.name == "your choice")
    assert ring.y[0] == pytest.approx(_row(view, "A100-80GB", "full_finetune").cost_usd)


def test_invalid_settings_are_refused_with_the_key_and_not_saved(config, selected):
    with pytest.raises(ConfigError, match="training.quick_lora.steps"):
        modes_tab.save_settings(config, quick_steps=0)
    with pytest.raises(ConfigError, match="whole number"):
        modes_tab.save_settings(config, batch_size=2.5)
    with pytest.raises(ConfigError, match="gpu.type"):
        modes_tab.save_settings(config, gpu=None)
    assert "training.quick_lora.steps" not in load_selection(config)


def test_gpu_choices_and_list_prices_come_from_the_price_table():
    table = load_price_table()["gpus"]
    assert [value for _, value in modes_tab.gpu_choices()] == list(table)
    assert modes_tab.list_price("H100-80GB") == table["H100-80GB"]["price_per_hour"]
    assert modes_tab.list_price("nope") is None


def test_display_table_formats_and_orders_rows():
    raw = pd.DataFrame([
        {"gpu": "B", "mode": "full_finetune", "minutes": 0.2, "cost_usd": 0.0, "peak_gb": 76.5, "fits": False,
         "output_gb": 5.4, "price_per_hour": 1.0, "throughput_source": "estimated: x × 0.3"},
        {"gpu": "A", "mode": "quick_lora", "minutes": 238.0, "cost_usd": 5.28, "peak_gb": 31.7, "fits": True,
         "output_gb": 0.047, "price_per_hour": 1.32, "throughput_source": "measured: H100 on 2026-01-01"},
    ])
    table = modes_tab.display_table(raw, "A")
    assert list(table["GPU"]) == ["★ A", "B"]                   # quick LoRA first
    assert list(table["Time"]) == ["3 h 58 min", "< 1 min"]
    assert list(table["Cost"]) == ["$5.28", "< $0.01"]
    assert list(table["Output"]) == ["47 MB", "5.4 GB"]
    assert list(table["Throughput from"]) == ["measured: H100 on 2026-01-01", "estimated: reference × 0.3"]


def test_the_app_has_the_tab_and_its_api(config):
    from studio.app import TABS, build_app

    titles = [title for title, *_ in TABS]
    assert titles.index("Modes & cost") == titles.index("Dataset") + 1
    demo = build_app(config)
    ids = {getattr(block, "elem_id", None) for block in demo.blocks.values()}
    assert {"mode-choice", "gpu-choice", "gpu-price", "quick-steps", "lora-rank", "batch-size", "chart-cost",
            "estimate-table", "estimate-headline", "estimate-workload"} <= ids
    assert {"save_settings", "cost_estimate"} <= {fn.api_name for fn in demo.fns.values()}
