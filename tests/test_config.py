"""The run configuration: defaults, validation messages, overrides, persistence."""

import re
from pathlib import Path

import pytest
import yaml

from pipeline.config import DEFAULT_CONFIG_PATH, Config, ConfigError, load_config, parse_override


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "launchable.yaml"
    path.write_text(text)
    return path


def test_repository_launchable_yaml_loads_with_reference_defaults():
    config = load_config(DEFAULT_CONFIG_PATH)
    assert config.training_mode.selected == "quick_lora"
    assert set(config.training_mode.choices) == {"quick_lora", "full_finetune"}
    assert config.base_model.repo == "fishaudio/openaudio-s1-mini"
    assert config.training.quick_lora.steps == 2800
    assert config.training.lora.rank == 8 and config.training.lora.alpha == 16
    assert config.gpu.price_per_hour == pytest.approx(1.32)
    assert config.dataset.hf_repo == "facebook/voxpopuli" and config.dataset.hf_config == "fi"


def test_empty_file_gives_all_defaults(tmp_path):
    assert load_config(write(tmp_path, "")) == Config()


def test_unknown_key_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"'training\.lora\.rnak': unknown key"):
        load_config(write(tmp_path, "training:\n  lora:\n    rnak: 4\n"))


def test_invalid_choice_lists_allowed_values(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "training_mode:\n  selected: turbo\n"))
    message = str(err.value)
    assert "training_mode.selected" in message and "quick_lora" in message and "full_finetune" in message


def test_wrong_type_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"training\.batch_size"):
        load_config(write(tmp_path, "training:\n  batch_size: many\n"))


def test_out_of_range_value_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match=r"training\.lora\.dropout"):
        load_config(write(tmp_path, "training:\n  lora:\n    dropout: 1.5\n"))


def test_not_a_mapping_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "a: [1, 2\n"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_overrides_apply_validate_and_leave_original_alone():
    config = Config()
    changed = config.with_overrides({"training.quick_lora.steps": 50, "speaker.name": "espeak_m3"})
    assert changed.training.quick_lora.steps == 50 and changed.speaker.name == "espeak_m3"
    assert config.training.quick_lora.steps == 2800
    with pytest.raises(ConfigError, match="Allowed here"):
        config.with_overrides({"training.stepz": 1})
    with pytest.raises(ConfigError, match="training.quick_lora.steps"):
        config.with_overrides({"training.quick_lora.steps": -3})


def test_parse_override_reads_yaml_values():
    assert parse_override("training.quick_lora.steps=50") == ("training.quick_lora.steps", 50)
    assert parse_override("speaker.name=null") == ("speaker.name", None)
    assert parse_override("training.lora.train_embeddings=true") == ("training.lora.train_embeddings", True)
    with pytest.raises(ConfigError, match="key.path=value"):
        parse_override("steps")


def test_save_round_trips(tmp_path):
    config = Config().with_overrides({"training.lora.rank": 16, "gpu.type": "H100-80GB"})
    path = config.save(tmp_path / "run" / "config.yaml")
    assert load_config(path) == config
    assert yaml.safe_load(path.read_text())["training"]["lora"]["rank"] == 16


def test_workspace_env_override(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIO_WORKSPACE", str(tmp_path))
    config = Config()
    assert config.workspace == tmp_path and config.runs_dir == tmp_path / "runs"


def test_min_duration_above_max_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"min_duration_s \(30.0\) is above dataset.max_duration_s \(25.0\)"):
        load_config(write(tmp_path, "dataset:\n  min_duration_s: 30\n"))
    with pytest.raises(ConfigError, match="max_duration_s"):
        Config().with_overrides({"dataset.max_duration_s": 0.5})
    assert Config().with_overrides({"dataset.min_duration_s": 2, "dataset.max_duration_s": 2}).dataset.min_duration_s == 2


@pytest.mark.parametrize("key,value", [("training.batch_size", "true"), ("gpu.price_per_hour", "false"),
                                       ("training.full_finetune.epochs", "yes"), ("dataset.min_snr_db", "on")])
def test_booleans_are_not_numbers(tmp_path, key, value):
    section, field = key.rsplit(".", 1)
    text = "".join(f"{'  ' * i}{part}:\n" for i, part in enumerate(section.split(".")))
    text += f"{'  ' * (section.count('.') + 1)}{field}: {value}\n"
    with pytest.raises(ConfigError, match=rf"'{re.escape(key)}': must be a number"):
        load_config(write(tmp_path, text))
    with pytest.raises(ConfigError, match=re.escape(key)):
        Config().with_overrides({key: True})
    # whole numbers given as floats (number inputs in the studio) still work
    assert Config().with_overrides({"training.batch_size": 8.0}).training.batch_size == 8
    assert Config().with_overrides({"training.lora.train_embeddings": True}).training.lora.train_embeddings


def test_non_utf8_or_unreadable_config_names_the_file(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: Hyvää päivää\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=rf"{re.escape(str(path))} is not UTF-8 text.*re-save it as UTF-8"):
        load_config(path)
    folder = tmp_path / "folder.yaml"
    folder.mkdir()
    with pytest.raises(ConfigError, match=re.escape(str(folder))):
        load_config(folder)


def test_speed_section_defaults_file_set_and_environment(monkeypatch):
    for name in ("LORA_DROPOUT_KERNEL", "SEGMENT_ATTENTION_KERNEL", "FASTGEN_FUSED", "FASTGEN_GEMV",
                 "FASTGEN_COMPILE_MODE", "FASTGEN_PDL", "CUDNN_ATTENTION"):
        monkeypatch.delenv(name, raising=False)
    speed = load_config().speed
    assert speed == Config().speed  # launchable.yaml states the defaults
    assert (speed.lora_dropout_kernel, speed.segment_attention_kernel, speed.fused_decoder, speed.gemv,
            speed.compile_mode, speed.programmatic_launch, speed.cudnn_attention) == (True, True, True, True, None, True,
                                                                                      True)
    changed = load_config(overrides=dict([parse_override("speed.gemv=false"),
                                          parse_override("speed.compile_mode=max-autotune-no-cudagraphs")])).speed
    assert changed.gemv is False and changed.compile_mode == "max-autotune-no-cudagraphs"
    with pytest.raises(ConfigError, match=r"speed\.compile_mode"):
        load_config(overrides={"speed.compile_mode": "fastest"})
    # the documented environment overrides win over the file and --set
    monkeypatch.setenv("FASTGEN_FUSED", "0")
    monkeypatch.setenv("LORA_DROPOUT_KERNEL", "1")
    speed = load_config(overrides={"speed.lora_dropout_kernel": False}).speed
    assert speed.fused_decoder is False and speed.lora_dropout_kernel is True
    monkeypatch.setenv("FASTGEN_COMPILE_MODE", "fastest")
    with pytest.raises(ConfigError, match="FASTGEN_COMPILE_MODE='fastest' in the environment"):
        load_config()
