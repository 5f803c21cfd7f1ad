"""pipeline.data.dataset (the facade) and pipeline.data.selection, plus the bundled sample end to end."""

import json
import os

import pytest

from audio_fixtures import test_config, write_clip
from pipeline.data import dataset as dataset_module
from pipeline.config import PROJECT_ROOT
from pipeline.data.dataset import DatasetError, list_datasets, load_dataset, open_dataset
from pipeline.data.selection import apply_selection, load_selection, save_selection
from pipeline.data.source_spec import SourceError, SourceSpec

SAMPLE = PROJECT_ROOT / "assets" / "sample"


def make_folder(root, counts={"anna": 5, "bert": 2}):
    for speaker, count in counts.items():
        for i in range(count):
            write_clip(root, speaker, f"{speaker[0]}{i}", f"{speaker} sanoo lauseen {i}.", seed=ord(speaker[0]) * 100 + i)
    return root


def test_load_dataset_builds_then_hits_cache_and_rebuilds_on_change(tmp_path):
    src = make_folder(tmp_path / "voices")
    config = test_config(tmp_path)
    spec = SourceSpec("folder", path=str(src))
    calls = []
    ds = load_dataset(spec, config, progress=lambda f, m: calls.append(f))
    assert ds.dir == config.workspace / "datasets" / spec.dataset_id()
    assert {"manifest.parquet", "speakers.parquet", "meta.json"} <= {p.name for p in ds.dir.iterdir()}
    assert ds.summary["accepted"] == 7 and ds.recommendation.speaker == "anna"
    assert calls == sorted(calls) and calls[-1] == 1.0
    assert ds.speaker_names() == ["anna", "bert"]

    def no_rebuild(*a, **k):
        raise AssertionError("rebuilt although nothing changed")

    real_read = dataset_module.read_source
    dataset_module.read_source = no_rebuild
    try:
        again = load_dataset(spec, config)
        assert again.manifest.equals(ds.manifest) and again.recommendation == ds.recommendation
    finally:
        dataset_module.read_source = real_read

    write_clip(src, "bert", "b9", "Uusi lause.", seed=99)  # source changed → rebuilt
    assert load_dataset(spec, config).summary["total"] == 8
    stricter = config.with_overrides({"dataset.min_duration_s": 2.0})  # limits changed → rebuilt
    assert load_dataset(spec, stricter).summary["reasons"] == {"too short": 8}
    assert list_datasets(config) == [spec.dataset_id()]


def test_clips_of_is_random_per_seed(tmp_path):
    ds = load_dataset(SourceSpec("folder", path=str(make_folder(tmp_path / "v", {"anna": 6}))), test_config(tmp_path))
    a = ds.clips_of("anna", n=3, seed=1)
    assert len(a) == 3 and set(a["speaker"]) == {"anna"} and (a["status"] == "ok").all()
    assert a["id"].tolist() == ds.clips_of("anna", n=3, seed=1)["id"].tolist()
    assert any(ds.clips_of("anna", 3, seed=s)["id"].tolist() != a["id"].tolist() for s in range(2, 6))
    assert len(ds.clips_of("anna", n=50)) == 6 and ds.clips_of("nobody").empty


def test_open_dataset_and_errors(tmp_path):
    config = test_config(tmp_path)
    with pytest.raises(DatasetError, match="not in"):
        open_dataset(config, "missing")
    with pytest.raises(SourceError, match="does not exist"):
        load_dataset(SourceSpec("folder", path=str(tmp_path / "nope")), config)
    ds = load_dataset(SourceSpec("folder", path=str(make_folder(tmp_path / "v", {"anna": 2}))), config)
    opened = open_dataset(config, ds.id)
    assert opened.spec == ds.spec and opened.summary == ds.summary and len(opened.manifest) == 2


def test_unreachable_hub_reuses_the_previous_build(tmp_path, monkeypatch):
    config = test_config(tmp_path)
    spec = SourceSpec("huggingface", hf_repo="someone/finnish", hf_config="fi")
    src = make_folder(tmp_path / "v", {"anna": 2})
    from pipeline.data.sources import read_folder

    monkeypatch.setattr(dataset_module, "source_fingerprint", lambda s: "fp1")
    monkeypatch.setattr(dataset_module, "read_source", lambda s, d, progress=None: read_folder(src))
    built = load_dataset(spec, config)

    def offline(_):
        raise SourceError("Cannot reach the Hugging Face Hub")

    monkeypatch.setattr(dataset_module, "source_fingerprint", offline)
    assert load_dataset(spec, config).manifest.equals(built.manifest)
    with pytest.raises(SourceError):
        load_dataset(spec, config, force=True)


def test_selection_round_trip_and_apply(tmp_path):
    config = test_config(tmp_path)
    assert load_selection(config) == {}
    ds = load_dataset(SourceSpec("folder", path=str(make_folder(tmp_path / "v", {"anna": 2}))), config)
    save_selection(config, dataset_id=ds.id, speaker="anna")
    saved = save_selection(config, **{"training.quick_lora.steps": 50, "tab": "dataset"})
    assert saved == json.loads((config.workspace / "selection.json").read_text())
    assert load_selection(config)["speaker"] == "anna"
    applied = apply_selection(config, load_selection(config))
    assert (applied.speaker.policy, applied.speaker.name) == ("manual", "anna")
    assert applied.dataset.source == "folder" and applied.dataset.path == ds.spec.path
    assert applied.training.quick_lora.steps == 50
    assert config.speaker.policy == "recommended"  # the original is untouched
    assert "speaker" not in save_selection(config, speaker=None)
    assert apply_selection(config, {}) is config
    (config.workspace / "selection.json").write_text("{broken")
    assert load_selection(config) == {}
    assert not [p for p in os.listdir(config.workspace) if p.endswith(".tmp")]


@pytest.mark.skipif(not SAMPLE.is_dir(), reason="bundled sample not generated yet")
def test_bundled_sample_end_to_end(tmp_path):
    config = test_config(tmp_path)
    spec = SourceSpec.from_config(config.with_overrides({"dataset.source": "sample"}))
    ds = load_dataset(spec, config)
    assert ds.id == "sample"
    speakers_on_disk = sorted(p.name for p in SAMPLE.iterdir() if p.is_dir())
    clips_on_disk = {s: len(list((SAMPLE / s).glob("*.ogg"))) for s in speakers_on_disk}
    per_speaker = ds.manifest.groupby("speaker").size().to_dict()
    assert per_speaker == clips_on_disk
    assert ds.summary["accepted"] >= 0.9 * ds.summary["total"]
    assert ds.recommendation.speaker == ds.speakers.iloc[0]["speaker"]
    assert ds.recommendation.speaker in ds.recommendation.reason and "minutes" in ds.recommendation.reason
    assert ds.speakers["pitch_hz"].notna().all()
    mtime = (ds.dir / "manifest.parquet").stat().st_mtime_ns
    again = load_dataset(spec, config)                                  # cache hit
    assert (ds.dir / "manifest.parquet").stat().st_mtime_ns == mtime
    assert again.summary == ds.summary


def test_damaged_cache_is_rebuilt_and_force_rebuilds(tmp_path):
    config = test_config(tmp_path)
    spec = SourceSpec("folder", path=str(make_folder(tmp_path / "v", {"anna": 2})))
    ds = load_dataset(spec, config)
    manifest_path = ds.dir / "manifest.parquet"
    manifest_path.write_bytes(manifest_path.read_bytes()[:100])            # truncated by a crash
    messages = []
    again = load_dataset(spec, config, progress=lambda f, m: messages.append(m))
    assert again.manifest.equals(ds.manifest) and any("cannot be read" in m for m in messages)
    assert open_dataset(config, ds.id).manifest.equals(ds.manifest)        # the file is whole again
    (ds.dir / "speakers.parquet").write_text("garbage")                      # derived data: recomputed
    assert open_dataset(config, ds.id).speaker_names() == ["anna"]
    manifest_path.write_text("not parquet")
    with pytest.raises(DatasetError, match="cannot be read.*load the dataset from its source again"):
        open_dataset(config, ds.id)
    mtime = manifest_path.stat().st_mtime_ns
    load_dataset(spec, config, force=True)
    assert manifest_path.stat().st_mtime_ns != mtime and len(open_dataset(config, ds.id).manifest) == 2


def test_summary_says_how_many_clips_were_used(tmp_path):
    config = test_config(tmp_path)
    src = make_folder(tmp_path / "v", {"anna": 4, "bert": 4, "cecilia": 4})
    messages = []
    ds = load_dataset(SourceSpec("folder", path=str(src), max_clips=6), config,
                      progress=lambda f, m: messages.append(m))
    assert ds.summary["total"] == 6 and ds.summary["source_clips"] == 12
    assert ds.summary["selection"].startswith("using 6 of 12 clips")
    assert ds.manifest.groupby("speaker").size().to_dict() == {"anna": 2, "bert": 2, "cecilia": 2}
    assert "using 6 of 12 clips" in messages[-1]
    assert open_dataset(config, ds.id).summary["selection"] == ds.summary["selection"]
    whole = load_dataset(SourceSpec("folder", path=str(src)), config)
    assert whole.summary["selection"] == "" and whole.summary["source_clips"] == 12


def test_list_prepared_datasets_describes_every_build(tmp_path):
    from pipeline.data.dataset import list_prepared_datasets

    config = test_config(tmp_path)
    assert list_prepared_datasets(config) == []
    first = load_dataset(SourceSpec("folder", path=str(make_folder(tmp_path / "a", {"anna": 2}))), config)
    second = load_dataset(SourceSpec("folder", path=str(make_folder(tmp_path / "b", {"bert": 2}))), config)
    meta = json.loads((first.dir / "meta.json").read_text())
    meta["created"] = "2000-01-01T00:00:00+0000"                      # built long ago
    (first.dir / "meta.json").write_text(json.dumps(meta))
    (config.workspace / "datasets" / "half-built").mkdir()           # no manifest: not offered
    items = list_prepared_datasets(config)
    assert [item["id"] for item in items] == [second.id, first.id]
    assert set(items[0]) == {"id", "spec", "summary", "created"}
    assert items[1]["spec"]["kind"] == "folder" and items[1]["spec"]["path"] == first.spec.path
    assert items[1]["summary"]["accepted"] == 2 and items[1]["created"].startswith("2000")
    assert SourceSpec(**items[0]["spec"]) == second.spec              # a picked item reloads its source


def test_local_parquet_folder_loads_end_to_end(tmp_path):
    import pyarrow.parquet as pq
    from test_sources import voxpopuli_table

    hub = tmp_path / "voxpopuli"
    (hub / "fi").mkdir(parents=True)
    pq.write_table(voxpopuli_table(0, 4), hub / "fi" / "train-00000-of-00001.parquet")
    config = test_config(tmp_path)
    ds = load_dataset(SourceSpec("folder", path=str(hub)), config)
    assert ds.summary["total"] == 4 and set(ds.manifest["speaker"]) == {"1001", "1002", "1003"}
    assert (ds.manifest["status"] == "ok").sum() >= 3
    assert load_dataset(SourceSpec("folder", path=str(hub)), config).manifest.equals(ds.manifest)  # cached
