"""Fixtures of the Training tab's tests (test_training_tab*.py): a workspace config without a GPU
and a one-speaker folder dataset. Modules that define their own `config` or `dataset` keep theirs."""

import pytest

from audio_fixtures import write_clip
from pipeline.config import Config
from pipeline.data.selection import save_selection
from studio.logic import training_gpus


@pytest.fixture
def config(tmp_path, monkeypatch) -> Config:
    monkeypatch.setenv("STUDIO_WORKSPACE", str(tmp_path / "ws"))
    monkeypatch.setattr(training_gpus, "visible_gpus", lambda: [])  # the same answer on machines with GPUs
    return Config().with_overrides({"base_model.local_dir": str(tmp_path / "no-model"), "gpu.type": "H100-80GB",
                                    "gpu.price_per_hour": 3.0})


@pytest.fixture(scope="module")
def voices(tmp_path_factory):
    root = tmp_path_factory.mktemp("voices")
    for i in range(4):
        write_clip(root, "aino", f"aino{i}", text=f"Tämä on lause numero {i}.", seed=i)
    return root


@pytest.fixture
def dataset(config, voices):
    from pipeline.data.dataset import load_dataset
    from pipeline.data.source_spec import SourceSpec

    ds = load_dataset(SourceSpec(kind="folder", path=str(voices)), config)
    save_selection(config, dataset_id=ds.id)
    return ds
