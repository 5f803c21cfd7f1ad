"""The Dataset tab: speaker picks remembered per dataset, both speaker rankings, the picker of
prepared datasets and the folder help. Handlers are called as the server would call them."""

from __future__ import annotations

import json

import pytest

from audio_fixtures import speech_like, test_config, write_clip
from pipeline.data import dataset as datasets
from pipeline.data.dataset import list_datasets, load_dataset, open_dataset
from pipeline.data.selection import apply_selection, load_selection, picked_speaker, save_selection
from pipeline.data.source_spec import SourceError, SourceSpec
from studio.tabs import dataset_view as view


def make_folder(root, counts):
    """`counts`: speaker → (clips, seconds per clip)."""
    for s, (speaker, (count, seconds)) in enumerate(counts.items()):
        for i in range(count):
            write_clip(root, speaker, f"{speaker}{i}", f"{speaker} sanoo lauseen {i}.",
                       data=speech_like(seconds, seed=100 * s + i))
    return root


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("tab")
    # "pitka" has the most minutes (few long clips), "lyhyt" the most clips (many short ones)
    first = make_folder(root / "first", {"pitka": (2, 6.0), "lyhyt": (4, 1.0)})
    second = make_folder(root / "second", {"toinen": (2, 1.5), "kolmas": (2, 1.5)})
    return first, second


# -- selection: one pick per dataset ------------------------------------------------------------
def test_a_pick_survives_loading_another_dataset(tmp_path):
    config = test_config(tmp_path)
    save_selection(config, dataset_id="a", speaker="anna")
    assert save_selection(config, dataset_id="b").get("speaker") is None
    save_selection(config, speaker="bert")
    back = save_selection(config, dataset_id="a")
    assert back["speaker"] == "anna" and back["speakers"] == {"a": "anna", "b": "bert"}
    assert picked_speaker(back, "b") == "bert" and picked_speaker(back, "c") is None
    assert json.loads((config.workspace / "selection.json").read_text())["speaker"] == "anna"
    assert "speaker" not in save_selection(config, speaker=None)  # clears only a's pick
    assert load_selection(config)["speakers"] == {"b": "bert"}


def test_a_selection_file_without_the_map_keeps_its_pick(tmp_path):
    config = test_config(tmp_path)
    config.workspace.mkdir(parents=True)
    (config.workspace / "selection.json").write_text(json.dumps({"dataset_id": "a", "speaker": "anna"}))
    assert load_selection(config)["speaker"] == "anna"
    save_selection(config, dataset_id="b")
    assert save_selection(config, dataset_id="a")["speaker"] == "anna"
    applied = apply_selection(config, load_selection(config))
    assert (applied.speaker.policy, applied.speaker.name) == ("manual", "anna")


# -- views --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def first_dataset(folders, tmp_path_factory):
    config = test_config(tmp_path_factory.mktemp("views"))
    return load_dataset(SourceSpec(kind="folder", path=str(folders[0])), config)


def test_both_rankings_are_shown(first_dataset):
    ds = first_dataset
    assert ds.recommendation.speaker == "pitka"
    table = view.ranking_table(ds)
    assert list(table.columns) == ["speaker", "usable min", "accepted clips", "rank by minutes", "rank by clips"]
    rows = table.set_index("speaker")
    assert (rows.loc["pitka", "rank by minutes"], rows.loc["pitka", "rank by clips"]) == (1, 2)
    assert (rows.loc["lyhyt", "rank by minutes"], rows.loc["lyhyt", "rank by clips"]) == (2, 1)
    text = view.recommendation_md(ds)
    assert "Recommended speaker: pitka." in text and "**lyhyt**" in text and "most_clips" in text
    by_clips = view.recommendation_md(ds, "most_clips")
    assert "Recommended speaker: lyhyt." in by_clips and "**pitka**" in by_clips
    labels = dict((value, label) for label, value in view.speaker_choices(ds))
    assert "★ recommended" in labels["pitka"] and "most clips" in labels["lyhyt"]
    assert view.initial_speaker(ds, policy="most_clips") == "lyhyt"
    assert view.initial_speaker(ds, policy="manual") == "pitka"  # no ranking: usable minutes


def test_folder_help_names_parquet_layouts():
    assert "parquet" in view.FOLDER_INFO and "Hugging Face" in view.FOLDER_INFO


def test_prepared_choices_and_checks():
    entries = [{"id": "folder-x-1234", "source": {"kind": "folder", "path": "/data/x"},
                "summary": {"accepted": 9, "total": 10, "accepted_minutes": 1.25},
                "created": "2026-01-02T03:04:05+0000"},
               {"id": "hf-org-data-fi-train", "spec": {"kind": "huggingface", "hf_repo": "org/data",
                                                         "hf_config": "fi", "hf_split": "train"},
                "summary": {}, "created": None}]
    (label, value), (hf_label, _) = view.prepared_choices(entries)
    assert value == "folder-x-1234"
    assert label == "folder-x-1234 · folder /data/x · 9/10 clips accepted, 1.2 min · 2026-01-02 03:04"
    assert "Hugging Face org/data/fi (train)" in hf_label
    assert view.check_prepared("a", ["a"]) == "a"
    with pytest.raises(SourceError, match="python -m pipeline prepare"):
        view.check_prepared(None, [])
    with pytest.raises(SourceError, match="Choose a prepared dataset"):
        view.check_prepared("", ["a"])
    with pytest.raises(SourceError, match="'gone' is not in this workspace"):
        view.check_prepared("gone", ["a"])


# -- the tab's handlers -------------------------------------------------------------------------
def _prepared_from_workspace(config) -> list[dict]:
    """The contract of pipeline.data.dataset.list_prepared_datasets, from the datasets' meta.json."""
    entries = []
    for dataset_id in list_datasets(config):
        meta = json.loads((datasets.datasets_root(config) / dataset_id / "meta.json").read_text())
        entries.append({"id": dataset_id, "source": meta["spec"], "summary": meta["summary"],
                        "created": meta.get("created")})
    return entries


@pytest.fixture()
def tab(tmp_path, monkeypatch):
    """The app's Dataset handlers by API name, and its components by elem_id."""
    from studio.app import build_app

    if not hasattr(datasets, "list_prepared_datasets"):  # being added alongside; same contract
        monkeypatch.setattr(datasets, "list_prepared_datasets", _prepared_from_workspace, raising=False)
    monkeypatch.setenv("STUDIO_WORKSPACE", str(tmp_path / "workspace"))
    config = test_config(tmp_path)
    demo = build_app(config)
    handlers = {fn.api_name: fn.fn for fn in demo.fns.values() if fn.api_name}
    blocks = {block.elem_id: block for block in demo.blocks.values() if getattr(block, "elem_id", None)}
    return config, handlers, blocks


def _load(handlers, kind, folder=None, prepared=None):
    return handlers["load_dataset"](kind, folder, None, "", "", "train", "", "audio", "text", "", 3000,
                                    False, prepared, progress=lambda *a, **k: None)


def test_tab_remembers_the_pick_of_each_dataset(tab, folders):
    config, handlers, blocks = tab
    first = _load(handlers, "folder", str(folders[0]))
    first_id = first[blocks["dataset-id"]]
    assert first[blocks["speaker-choice"]]["value"] == "pitka"  # the recommendation
    handlers["use_speaker"](first_id, "lyhyt")
    second = _load(handlers, "folder", str(folders[1]))
    assert second[blocks["dataset-id"]] != first_id
    assert "No speaker picked yet" in second[blocks["speaker-confirmation"]]
    again = _load(handlers, "folder", str(folders[0]))
    assert again[blocks["speaker-choice"]]["value"] == "lyhyt"
    assert "Current pick: lyhyt" in again[blocks["speaker-confirmation"]]
    assert load_selection(config)["speaker"] == "lyhyt"
    rankings = again[blocks["speaker-ranking"]]
    assert set(rankings["speaker"]) == {"pitka", "lyhyt"}


def test_tab_opens_a_prepared_dataset(tab, folders):
    config, handlers, blocks = tab
    prepared = load_dataset(SourceSpec(kind="folder", path=str(folders[1])), config)  # as the CLI does
    ids = [value for _, value in view.prepared_choices(datasets.list_prepared_datasets(config))]
    assert prepared.id in ids
    shown = _load(handlers, "prepared", prepared=prepared.id)
    assert shown[blocks["dataset-id"]] == prepared.id
    assert shown[blocks["source-kind"]] == "prepared"
    assert prepared.id in shown[blocks["dataset-message"]] and "note ok" in shown[blocks["dataset-message"]]
    assert load_selection(config)["dataset_id"] == prepared.id
    assert shown[blocks["prepared-dataset"]]["value"] == prepared.id
    assert len(shown[blocks["clip-table"]]) == len(open_dataset(config, prepared.id).manifest)

    for choice, expected in ((None, "Choose a prepared dataset"), ("nope", "&#x27;nope&#x27; is not in this workspace")):
        refused = _load(handlers, "prepared", prepared=choice)
        assert list(refused) == [blocks["dataset-message"]]
        assert "note error" in refused[blocks["dataset-message"]] and expected in refused[blocks["dataset-message"]]
