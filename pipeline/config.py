"""The run configuration: `launchable.yaml` loaded into one typed object.

Every setting has a default here, so an empty file is a valid configuration; the YAML only
overrides. Unknown keys, wrong types and invalid choices fail with `ConfigError`, whose
message names the key (dotted path) and what is allowed.

The `speed:` section's switches can also be set by environment variables, for a one-off
measurement without editing the file: LORA_DROPOUT_KERNEL, SEGMENT_ATTENTION_KERNEL, FASTGEN_FUSED
and FASTGEN_GEMV (`0` switches the speed-up off, any other value on) and FASTGEN_COMPILE_MODE (a
torch.compile mode). Where set, they win over the file and `--set`; this module is the only place
that reads them (`SPEED_ENVIRONMENT`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, get_args

import yaml

from pipeline.atomic import write_text
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, PositiveInt, field_validator, model_validator

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG_PATH = PROJECT_ROOT / "launchable.yaml"

TrainingModeName = Literal["quick_lora", "full_finetune"]
SourceKind = Literal["sample", "folder", "zip", "huggingface"]


class ConfigError(ValueError):
    """A configuration that cannot be used; the message says which key and what to do."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic reads `true` as 1 for numbers; `batch_size: true` is a mistake, not a size
        field = cls.model_fields.get(info.field_name or "")
        if isinstance(value, bool) and field is not None and field.annotation in (int, float):
            raise ValueError(f"must be a number, not {str(value).lower()}")
        return value


class TrainingModeConfig(_Section):
    selected: TrainingModeName = "quick_lora"
    choices: dict[TrainingModeName, str] = Field(
        default_factory=lambda: {
            "quick_lora": "LoRA on all clips of all speakers.",
            "full_finetune": "Full fine-tune on all clips, then a LoRA on one speaker.",
        }
    )


class BaseModelConfig(_Section):
    repo: str = "fishaudio/openaudio-s1-mini"
    revision: str = "main"
    local_dir: str = "checkpoints/openaudio-s1-mini"


class ColumnMapping(_Section):
    audio: str = "audio"
    text: str = "raw_text"
    speaker: str | None = "speaker_id"


class DatasetConfig(_Section):
    source: SourceKind = "huggingface"
    path: str | None = None
    hf_repo: str = "facebook/voxpopuli"
    hf_config: str | None = "fi"
    hf_split: str = "train"
    hf_revision: str | None = "refs/convert/parquet"
    columns: ColumnMapping = Field(default_factory=ColumnMapping)
    max_clips: int = Field(3000, gt=0)
    min_duration_s: float = Field(0.6, ge=0)
    max_duration_s: float = Field(25.0, gt=0)
    max_clipping_ratio: float = Field(0.001, ge=0, le=1)
    min_snr_db: float = 5.0

    @model_validator(mode="after")
    def _durations_ordered(self) -> "DatasetConfig":
        if self.min_duration_s > self.max_duration_s:
            raise ValueError(f"dataset.min_duration_s ({self.min_duration_s}) is above dataset.max_duration_s "
                             f"({self.max_duration_s}), so no clip could pass; lower the first or raise the second")
        return self


class SpeakerConfig(_Section):
    # recommended: most usable minutes (SNR breaks ties); most_clips: the reference project's rule
    policy: Literal["recommended", "most_clips", "manual"] = "recommended"
    name: str | None = None


class QuickLoraConfig(_Section):
    steps: int = Field(2800, gt=0)
    learning_rate: float = Field(1e-4, gt=0)


class FullFinetuneConfig(_Section):
    epochs: float = Field(3, gt=0)
    learning_rate: float = Field(1e-5, gt=0)
    speaker_learning_rate: float = Field(1e-4, gt=0)
    speaker_max_steps: int = Field(2000, gt=0)
    speaker_patience: int = Field(3, gt=0)


class LoraConfig(_Section):
    rank: int = Field(8, gt=0)
    alpha: float = Field(16, gt=0)
    dropout: float = Field(0.01, ge=0, lt=1)
    train_embeddings: bool = False


class TrainingConfig(_Section):
    seed: int = 1234
    select_by: Literal["loss", "score"] = "loss"  # the checkpoint to merge: best held-out loss or best scorecard
    gpus: Literal["auto"] | PositiveInt = "auto"  # data-parallel processes (auto: every visible GPU, 1 on a CPU)
    collective_timeout_s: int = Field(900, gt=0)  # a rank that stops answering fails the job after this
    batch_size: int = Field(4, gt=0)
    max_length: int = Field(4096, gt=0)
    grad_accumulation: int = Field(1, gt=0)
    gradient_checkpointing: Literal["auto", "on", "off"] = "auto"
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    compile: Literal["auto", "on", "off"] = "auto"    # torch.compile the transformer blocks (auto: on GPU)
    warmup_steps: int = Field(10, ge=0)
    schedule: Literal["constant", "cosine"] = "constant"
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    val_every: int = Field(100, gt=0)
    save_every: int = Field(200, gt=0)
    keep_last: int = Field(3, gt=0)
    val_fraction: float = Field(0.05, gt=0, lt=1)
    eval_sentences: int = Field(2, ge=0)       # example sentences spoken at each validation (0: none)
    eval_max_frames: int = Field(300, gt=0)    # cap per sentence (21.5 frames = 1 s)
    quick_lora: QuickLoraConfig = Field(default_factory=QuickLoraConfig)
    full_finetune: FullFinetuneConfig = Field(default_factory=FullFinetuneConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)


class EvaluationConfig(_Section):
    asr_model: str | None = "openai/whisper-large-v3-turbo"  # Hub repo or local folder; null: no CER/WER
    language: str = "fi"
    speaker_model: Literal["resemblyzer"] = "resemblyzer"
    sentences: int = Field(20, gt=0)      # the first N of assets/examples_fi.txt
    references: int = Field(10, ge=0)     # clips of the chosen speaker the similarity is measured against
    seed: int = 1234
    max_new_tokens: int = Field(1024, gt=0)


SPEED_ENVIRONMENT = {  # speed.<key> ← the environment variable that overrides it
    "lora_dropout_kernel": "LORA_DROPOUT_KERNEL",
    "segment_attention_kernel": "SEGMENT_ATTENTION_KERNEL",
    "cudnn_attention": "CUDNN_ATTENTION",
    "fused_decoder": "FASTGEN_FUSED",
    "gemv": "FASTGEN_GEMV",
    "compile_mode": "FASTGEN_COMPILE_MODE",
    "programmatic_launch": "FASTGEN_PDL",
}
CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]


class SpeedConfig(_Section):
    """How training and generation compute, never what: every switch gives the same results."""

    lora_dropout_kernel: bool = True       # LoRA dropout drawn inside Triton kernels (off: torch's dropout)
    segment_attention_kernel: bool = True  # fast-transformer attention in Triton kernels (off: flex attention)
    cudnn_attention: bool = True           # slow-stack training attention: cuDNN on Hopper+ (off: torch's choice)
    fused_decoder: bool = True             # one stream decodes through fused Triton layers (off: compiled layers)
    gemv: bool = True                      # compiled decode layers use the one-row Triton product (off: cuBLAS)
    compile_mode: CompileMode | None = None  # torch.compile mode of the decoder (null: torch's default)
    programmatic_launch: bool = True       # fused decoder on Hopper+: each kernel starts before the last ends

    @model_validator(mode="before")
    @classmethod
    def _environment(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for key, name in SPEED_ENVIRONMENT.items():
            value = os.environ.get(name)
            if value is None or (key == "compile_mode" and not value):
                continue
            if key == "compile_mode" and value not in get_args(CompileMode):
                raise ValueError(f"{name}={value!r} in the environment is not a torch.compile mode; choose one of "
                                 f"{', '.join(get_args(CompileMode))}, or unset it")
            data[key] = value if key == "compile_mode" else value != "0"
        return data


class GpuConfig(_Section):
    type: str = "A100-80GB"
    price_per_hour: float = Field(1.32, ge=0)


class StudioConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(7860, gt=0, lt=65536)
    workspace: str = "workspace"


class Config(_Section):
    name: str = "finnish-tts-studio"
    description: str = ""
    target_audience: str = ""
    training_mode: TrainingModeConfig = Field(default_factory=TrainingModeConfig)
    base_model: BaseModelConfig = Field(default_factory=BaseModelConfig)
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    speaker: SpeakerConfig = Field(default_factory=SpeakerConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    speed: SpeedConfig = Field(default_factory=SpeedConfig)
    gpu: GpuConfig = Field(default_factory=GpuConfig)
    studio: StudioConfig = Field(default_factory=StudioConfig)

    # -- paths -------------------------------------------------------------------------
    @property
    def workspace(self) -> Path:
        """Root of everything the studio writes (datasets, codes, runs). `STUDIO_WORKSPACE` wins."""
        root = Path(os.environ.get("STUDIO_WORKSPACE") or self.studio.workspace)
        return root if root.is_absolute() else PROJECT_ROOT / root

    @property
    def runs_dir(self) -> Path:
        return self.workspace / "runs"

    @property
    def base_model_dir(self) -> Path:
        path = Path(self.base_model.local_dir)
        return path if path.is_absolute() else PROJECT_ROOT / path

    # -- overrides and persistence -------------------------------------------------------
    def with_overrides(self, overrides: dict[str, Any]) -> "Config":
        """A copy with dotted-key overrides applied (`{"training.quick_lora.steps": 50}`), validated."""
        data = self.model_dump()
        for dotted, value in overrides.items():
            _set_dotted(data, dotted, value)
        return _validate(data, source="overrides")

    def save(self, path: str | Path) -> Path:
        return write_text(path, yaml.safe_dump(self.model_dump(), sort_keys=False, allow_unicode=True))


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for i, key in enumerate(keys[:-1]):
        if not isinstance(node.get(key), dict):
            raise ConfigError(f"Unknown setting '{dotted}': '{'.'.join(keys[: i + 1])}' is not a section.")
        node = node[key]
    if keys[-1] not in node:
        allowed = ", ".join(sorted(node)) or "(none)"
        raise ConfigError(f"Unknown setting '{dotted}'. Allowed here: {allowed}.")
    node[keys[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """`key.path=value` from the command line; the value is read as YAML (numbers, booleans, null)."""
    if "=" not in text:
        raise ConfigError(f"Override '{text}' must look like key.path=value, e.g. training.quick_lora.steps=50.")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw) if raw.strip() else None


def _describe_error(err: dict) -> str:
    key = ".".join(str(p) for p in err["loc"]) or "(top level)"
    kind = err["type"]
    if kind == "extra_forbidden":
        return f"'{key}': unknown key. Remove it or check its spelling."
    if kind in ("literal_error", "enum"):
        expected = err.get("ctx", {}).get("expected", "")
        return f"'{key}': {err.get('input')!r} is not allowed; choose one of {expected}."
    if kind == "value_error":
        message = str(err.get("ctx", {}).get("error") or err["msg"].removeprefix("Value error, "))
        if isinstance(err.get("input"), dict):  # a check across fields: the section is the place
            return f"'{key}': {message}."
        return f"'{key}': {message} (got {err.get('input')!r})."
    return f"'{key}': {err['msg']} (got {err.get('input')!r})."


def _validate(data: Any, source: str) -> Config:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of settings, not {type(data).__name__}.")
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        lines = [_describe_error(e) for e in exc.errors()]
        raise ConfigError(f"{source} is invalid:\n  " + "\n  ".join(lines)) from None


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Load `launchable.yaml` (or `path`), apply dotted overrides, and validate."""
    path = Path(path) if path else DEFAULT_CONFIG_PATH
    if not path.exists():
        raise ConfigError(f"Configuration file {path} does not exist.")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text (byte {exc.start}: {exc.reason}); re-save it as UTF-8.") from None
    except OSError as exc:
        raise ConfigError(f"Configuration file {path} cannot be read ({exc.strerror or exc}).") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    config = _validate(data, source=str(path))
    return config.with_overrides(overrides) if overrides else config
