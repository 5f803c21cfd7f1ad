"""The Modes & cost tab's views and settings (no server): the estimate for the selected dataset."""

import pandas as pd
import pytest

from audio_fixtures import write_clip
from pipeline.config import Config, ConfigError
from pipeline.estimate.cost import load_price_table
from pipeline.data.selection import load_selection, save_selection
from studio.logic import modes_estimate, modes_settings, modes_view


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
    monkeypatch.setattr(modes_estimate, "machine_has_gpu", lambda: True)
    return Config()


@pytest.fixture
def selected(config, voices):
    """The folder dataset loaded and selected, as the Dataset tab leaves it."""
    from pipeline.data.dataset import load_dataset
    from pipeline.data.source_spec import SourceSpec

    dataset = load_dataset(SourceSpec(kind="folder", path=str(voices)), config)
    save_selection(config, dataset_id=dataset.id)
    return dataset


def _row(view, gpu, mode):
    rows = view.raw[(view.raw["gpu"] == gpu) & (view.raw["mode"] == mode)]
    assert len(rows) == 1
    return rows.iloc[0]


def test_without_a_dataset_the_tab_points_to_the_dataset_tab(config):
    view = modes_estimate.estimate_view(config)
    assert "Dataset tab" in view.message and view.dataset_id is None
    assert view.table.empty and list(view.table.columns)[:4] == ["GPU", "Mode", "Time", "Cost"]
    assert view.figure.data == ()


def test_estimate_has_every_gpu_and_mode_for_the_selected_dataset(config, selected):
    view = modes_estimate.estimate_view(config)
    gpus = list(load_price_table()["gpus"])
    assert view.dataset_id == selected.id and "error" not in view.message
    assert len(view.table) == len(view.raw) == 2 * len(gpus)
    assert {(g, m) for g, m in zip(view.raw["gpu"], view.raw["mode"])} == \
        {(g, m) for g in gpus for m in ("quick_lora", "full_finetune")}
    assert set(view.table["Mode"]) == {"Quick LoRA", "Full fine-tune + speaker LoRA"}
    assert list(view.table.columns) == ["GPU", "Mode", "Time", "Cost", "Memory", "Figures"]   # fits, no scrolling
    starred = view.table[view.table["GPU"].str.startswith("★ ")]
    assert set(starred["GPU"]) == {"★ A100-80GB · $1.32/h"} and len(starred) == 2   # the configured GPU
    # 24 GB cards: full fine-tuning only fits with small micro-batches and recomputed activations
    small = view.table[view.table["GPU"].str.contains("24GB") & view.table["Mode"].str.startswith("Full")]
    assert len(small) == 2 and all("checkpointing" in plan for plan in small["Memory"])
    assert set(view.table[view.table["GPU"].str.contains("H100")]["Figures"]) == {"measured (H100 80GB HBM3, 2026-11-27 16:34)"}
    assert view.table[view.table["GPU"].str.contains("A100")]["Figures"].str.startswith("scaled from ").all()
    # the headline names the GPU, its price, every stage, where the speeds came from and the reference's quote
    assert "A100-80GB" in view.headline and "$1.32/h" in view.headline and "scaled from" in view.headline
    for stage in ("VQ extraction", "Full fine-tune on all clips", "Speaker LoRA", "Evaluation", "Merge"):
        assert stage in view.headline
    assert "reference project&#x27;s quote" in view.headline and "4 h / $5.28" in view.headline
    assert "6.6 h / $7.94" in view.headline
    # describe_workload's numbers are shown
    accepted = int((selected.manifest["status"] == "ok").sum())
    assert f"<div class='value'>{accepted}</div><div class='label'>accepted clips" in view.workload
    assert "eero" in view.workload            # the recommended voice (most minutes) when none is picked
    assert len([t for t in view.figure.data if t.name != "your choice"]) == len(gpus)


def test_settings_are_saved_as_config_keys_and_the_estimate_follows(config, selected):
    before = _row(modes_estimate.estimate_view(config), "A100-80GB", "quick_lora")
    selection = modes_settings.save_settings(config, quick_steps=5600, rank=16, price=2.64, gpu="A100-80GB",
                                        mode="full_finetune")
    assert selection["training.quick_lora.steps"] == 5600 and selection["gpu.price_per_hour"] == 2.64
    assert selection["training.lora.rank"] == 16 and selection["training.lora.alpha"] == 32
    assert load_selection(config)["training_mode.selected"] == "full_finetune"
    assert load_selection(config)["dataset_id"] == selected.id                     # kept
    after = _row(modes_estimate.estimate_view(config), "A100-80GB", "quick_lora")
    lora = lambda row: next(p for p in row.phases if p["phase"] == "lora")  # noqa: E731
    assert lora(after)["steps_max"] == 2 * lora(before)["steps_max"] and after.minutes > before.minutes
    assert after.cost_usd == pytest.approx(after.minutes / 60 * 2.64, rel=0.02)    # your price, not the list's
    settings = modes_settings.current_settings(config)
    assert (settings["mode"], settings["quick_steps"], settings["rank"], settings["price"]) == \
        ("full_finetune", 5600, 16, 2.64)
    view = modes_estimate.estimate_view(config)
    assert "<b>Full fine-tune" in view.headline                                    # the chosen mode stands out
    ring = next(t for t in view.figure.data if t.name == "your choice")
    assert ring.y[0] == pytest.approx(_row(view, "A100-80GB", "full_finetune").cost_usd)


def test_invalid_settings_are_refused_with_the_key_and_not_saved(config, selected):
    with pytest.raises(ConfigError, match="training.quick_lora.steps"):
        modes_settings.save_settings(config, quick_steps=0)
    with pytest.raises(ConfigError, match="whole number"):
        modes_settings.save_settings(config, batch_size=2.5)
    with pytest.raises(ConfigError, match="gpu.type"):
        modes_settings.save_settings(config, gpu=None)
    assert "training.quick_lora.steps" not in load_selection(config)


def test_gpu_choices_and_list_prices_come_from_the_price_table():
    table = load_price_table()["gpus"]
    assert [value for _, value in modes_settings.gpu_choices()] == list(table)
    assert modes_settings.list_price("H100-80GB") == table["H100-80GB"]["price_per_hour"]
    assert modes_settings.list_price("nope") is None


def _raw_row(gpu, mode, low, high, cost_low, cost_high, **extra):
    return {"gpu": gpu, "mode": mode, "minutes_min": low, "minutes": high, "cost_usd_min": cost_low,
            "cost_usd": cost_high, "peak_gb": 31.7, "fits": True, "plan_brief": "4×1", "output_gb": 0.05,
            "price_per_hour": 1.32, "throughput_source": "measured on NVIDIA H100 80GB HBM3, 2026-01-01 10:00",
            "charge": ""} | extra


def test_display_table_formats_ranges_and_orders_rows():
    raw = pd.DataFrame([
        _raw_row("B", "full_finetune", 7.6, 32.1, 0.17, 0.71, fits=False, peak_gb=76.5,
                 throughput_source="scaled from NVIDIA H100 80GB HBM3, 2026-01-01 10:00 by bf16 peak 312/989"),
        _raw_row("A", "quick_lora", 238.0, 238.0, 5.28, 5.28),
    ])
    table = modes_view.display_table(raw, "A")
    assert list(table["GPU"]) == ["★ A · $1.32/h", "B · $1.32/h"]                   # quick LoRA first
    assert list(table["Time"]) == ["3 h 58 min", "7.6–32 min"]
    assert list(table["Cost"]) == ["$5.28", "$0.17–$0.71"]
    assert list(table["Memory"]) == ["32 GB · fits (4×1)", "76 GB · too little memory (4×1)"]
    assert list(table["Figures"]) == ["measured (H100 80GB HBM3, 2026-01-01 10:00)", "scaled from H100 80GB HBM3 × 0.32 (bf16 peak)"]


def test_mode_words_follow_the_figures():
    dear = pd.DataFrame([_raw_row("A", "quick_lora", 10, 10, 1.0, 1.0), _raw_row("A", "full_finetune", 20, 60, 2.0, 6.0)])
    cheap = pd.DataFrame([_raw_row("A", "quick_lora", 240, 240, 5.0, 5.0), _raw_row("A", "full_finetune", 8, 30, 0.2, 0.7)])
    cfg = Config().with_overrides({"gpu.type": "A"})
    assert "slower and dearer than quick LoRA" in modes_view.modes_html(cfg, dear)
    cards = modes_view.modes_html(cfg, cheap)
    assert "faster and cheaper than quick LoRA" in cards and "slower and dearer than quick LoRA" not in cards
    assert "slower and dearer than full fine-tune" in cards
    assert "8.0–30 min, $0.20–$0.70" in cards and "slower · dearer" in cards      # the quick card's tag follows too
    assert "dearer" not in modes_view.modes_html(cfg)                             # no dataset: no claim


def test_an_invalid_field_is_named_inline_and_the_others_are_still_saved(config, selected):
    values = modes_settings.current_settings(config) | {"quick_steps": 0, "price": -1, "gpu": "H100-80GB"}
    selection, errors = modes_settings.save_valid_settings(config, **values)
    assert set(errors) == {"quick_steps", "price"}
    assert "training.quick_lora.steps" in errors["quick_steps"] and "gpu.price_per_hour" in errors["price"]
    assert selection["gpu.type"] == "H100-80GB"                                  # the GPU pick still works
    assert load_selection(config).get("training.quick_lora.steps", 2800) == 2800  # the bad value is not saved
    message = modes_settings.settings_message(errors)
    assert "Quick LoRA: steps" in message and "Price per hour (USD)" in message and "Saved" not in message
    infos = modes_settings.field_infos(errors)
    assert infos["quick_steps"].startswith("⚠ not saved") and infos["gpu"] == modes_settings.FIELD_INFO["gpu"]
    view = modes_estimate.estimate_view(config)                                      # the estimate still renders
    assert "error" not in view.message and len(view.table) == 12
    assert modes_settings.settings_message({}).count("Saved") == 1


def test_the_recipe_check_and_the_one_click_scaled_recipe(config, selected):
    view = modes_estimate.estimate_view(config)
    assert "risk of over-fitting: high" in view.recipe and "usable minutes" in view.recipe
    assert "Reference" in view.recipe and "Scaled to your data" in view.recipe
    selection, values = modes_settings.apply_scaled_recipe(config)
    assert values["quick_steps"] < 2800 and values["speaker_steps"] < 2000
    assert selection["training.quick_lora.steps"] == values["quick_steps"]
    settings = modes_settings.current_settings(config)                               # what the next run starts with
    assert (settings["quick_steps"], settings["speaker_steps"]) == (values["quick_steps"], values["speaker_steps"])
    from pipeline.data.selection import apply_selection
    assert apply_selection(config, load_selection(config)).training.quick_lora.steps == values["quick_steps"]


def test_without_a_dataset_the_scaled_recipe_is_refused_with_a_reason(config):
    with pytest.raises(ValueError, match="Dataset tab"):
        modes_settings.apply_scaled_recipe(config)


def test_on_a_machine_without_a_gpu_cpu_rows_say_no_charge(config, selected, monkeypatch):
    monkeypatch.setattr(modes_estimate, "machine_has_gpu", lambda: False)
    view = modes_estimate.estimate_view(config)
    cpu = view.table[view.table["GPU"].str.startswith("CPU")]
    assert len(cpu) == 2 and set(cpu["Cost"]) == {"CPU: no charge"} and set(cpu["Time"]) == {"not measured"}
    assert "CPU: no charge" in view.headline
    assert all(trace.name != "CPU (this machine)" for trace in view.figure.data)


def test_the_app_has_the_tab_and_its_api(config):
    from studio.app import TABS, build_app

    titles = [title for title, *_ in TABS]
    assert titles.index("Modes & cost") == titles.index("Dataset") + 1
    demo = build_app(config)
    ids = {getattr(block, "elem_id", None) for block in demo.blocks.values()}
    assert {"mode-choice", "gpu-choice", "gpu-price", "gpu-count", "quick-steps", "lora-rank", "batch-size", "chart-cost",
            "estimate-table", "estimate-headline", "estimate-workload"} <= ids
    assert {"save_settings", "cost_estimate", "apply_scaled_recipe"} <= {fn.api_name for fn in demo.fns.values()}
    assert "apply-scaled-recipe" in ids and "recipe-check" in ids


def test_evaluation_and_checkpoint_intervals_are_settings_of_the_next_run(config, selected):
    from pipeline.data.selection import apply_selection

    values = modes_settings.current_settings(config) | {"val_every": 50, "save_every": 150}
    selection, errors = modes_settings.save_valid_settings(config, **values)
    assert not errors and selection["training.val_every"] == 50 and selection["training.save_every"] == 150
    applied = apply_selection(config, selection)
    assert (applied.training.val_every, applied.training.save_every) == (50, 150)
    _, errors = modes_settings.save_valid_settings(config, **(values | {"save_every": 0}))
    assert "training.save_every" in errors["save_every"]


def test_the_gpu_count_is_saved_and_the_estimate_follows_it(config, selected):
    from studio.logic import estimate_gpus

    one = _row(modes_estimate.estimate_view(config), "A100-80GB", "quick_lora")
    assert estimate_gpus.saved_gpu_count(config) == 1 and one.gpus == 1
    selection = estimate_gpus.save_gpu_count(config, 2)
    assert selection[estimate_gpus.SELECTION_KEY] == 2 and "training.gpus" not in selection   # not this machine's run
    view = modes_estimate.estimate_view(config)
    two = _row(view, "A100-80GB", "quick_lora")
    assert two.gpus == 2 and two.cost_usd == pytest.approx(two.hours * 1.32 * 2, rel=1e-3)
    assert two.train_minutes < one.train_minutes
    # the headline names the count and the scaling it assumed; the table shows both per row
    assert "On 2 × <b>A100-80GB</b> at $1.32/h each" in view.headline
    assert "Scaling: 2 GPUs: scaling not measured on A100-80GB: assumed linear" in view.headline
    starred = view.table[view.table["GPU"].str.startswith("★ ")]
    assert set(starred["GPU"]) == {"★ 2 × A100-80GB · $1.32/h"}
    assert starred["Figures"].str.endswith("× 2 GPUs: linear assumed, not measured").all()
    assert "on 2 × A100-80GB for this dataset" in view.cards
    with pytest.raises(ValueError, match="GPUs: choose one of 1, 2, 4, 8"):
        estimate_gpus.save_gpu_count(config, 3)
    assert estimate_gpus.saved_gpu_count(config) == 2                              # the bad value is not saved


def test_an_unsplittable_batch_and_a_measured_scaling_are_shown():
    from studio.logic import estimate_gpus

    raw = pd.DataFrame([
        _raw_row("A", "quick_lora", 10, 10, 1.0, 1.0, gpus=8, scaling_measured=False, scaling_efficiency={"lora": 1.0},
                 scaling="8 GPUs: scaling not measured on A: assumed linear", batch_split="does not split evenly"),
        _raw_row("A", "full_finetune", 20, 60, 2.0, 6.0, gpus=8, scaling_measured=True,
                 scaling_efficiency={"lora": 0.9, "full": 0.85}, scaling="8 GPUs: scaling measured on 8 GPUs",
                 batch_split=""),
    ])
    table = modes_view.display_table(raw, "A")
    assert list(table["Figures"]) == ["measured (H100 80GB HBM3, 2026-01-01 10:00) · batch does not split over 8 GPUs",
                                      "measured (H100 80GB HBM3, 2026-01-01 10:00) · × 8 GPUs at 0.85 of linear (measured)"]
    line = estimate_gpus.scaling_html(raw)
    assert "Training would refuse this: does not split evenly" in line and "Scaling: 8 GPUs" in line
    assert estimate_gpus.scaling_html(raw.assign(gpus=1)) == ""
    assert estimate_gpus.gpu_count({"estimate_gpus": 5}) == 1 and estimate_gpus.gpu_count({}) == 1
