"""The studio's choices (dataset, speaker, settings) that survive a reload and feed the run config.

Stored as `workspace/selection.json`. Keys: `dataset_id`, `speakers` (dataset id → picked speaker,
so a pick survives switching datasets), `speaker` (the pick for `dataset_id`, kept in step with
`speakers` for readers that only know the current dataset), and free entries; entries whose key is
a dotted config path ("training.quick_lora.steps") are applied as config overrides.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.atomic import write_text

SELECTION_NAME = "selection.json"
SPEAKERS_KEY = "speakers"
# config.dataset fields that a dataset's source spec sets when a dataset is selected
_SPEC_FIELDS = {"kind": "source", "path": "path", "hf_repo": "hf_repo", "hf_config": "hf_config",
                "hf_split": "hf_split", "hf_revision": "hf_revision", "columns": "columns",
                "max_clips": "max_clips"}


def selection_path(config) -> Path:
    return Path(config.workspace) / SELECTION_NAME


def _speaker_map(selection: dict) -> dict:
    picks = selection.get(SPEAKERS_KEY)
    return {str(k): str(v) for k, v in picks.items() if v} if isinstance(picks, dict) else {}


def _sync_speaker(selection: dict) -> dict:
    """`speaker` mirrors the pick for `dataset_id`; a file without the map gains it."""
    picks = _speaker_map(selection)
    dataset_id = selection.get("dataset_id")
    if not dataset_id:
        return selection  # a pick with no dataset has nothing to be remembered under
    if selection.get("speaker") and SPEAKERS_KEY not in selection:
        picks[str(dataset_id)] = str(selection["speaker"])
    selection[SPEAKERS_KEY] = picks
    if picks.get(str(dataset_id)):
        selection["speaker"] = picks[str(dataset_id)]
    else:
        selection.pop("speaker", None)
    if not picks:
        selection.pop(SPEAKERS_KEY)
    return selection


def load_selection(config) -> dict:
    """The saved selection, or {} when none was saved (or the file is unreadable)."""
    try:
        data = json.loads(selection_path(config).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return _sync_speaker(data) if isinstance(data, dict) else {}


def picked_speaker(selection: dict, dataset_id: str | None) -> str | None:
    """The speaker picked for `dataset_id` (None when none was picked for it)."""
    if not dataset_id:
        return None
    return _speaker_map(_sync_speaker(dict(selection))).get(str(dataset_id))


def save_selection(config, **changes) -> dict:
    """Merge `changes` into the saved selection (a value of None removes the key); returns it.

    `speaker` sets (None: clears) the pick of the selection's dataset, after a `dataset_id` in the
    same call is applied; changing `dataset_id` alone brings back that dataset's earlier pick.
    """
    selection = load_selection(config)
    speaker_given = "speaker" in changes
    speaker = changes.pop("speaker", None)
    for key, value in changes.items():
        if value is None:
            selection.pop(key, None)
        else:
            selection[key] = value
    dataset_id = selection.get("dataset_id")
    if speaker_given and dataset_id:
        picks = _speaker_map(selection)
        if speaker is None:
            picks.pop(str(dataset_id), None)
        else:
            picks[str(dataset_id)] = str(speaker)
        selection[SPEAKERS_KEY] = picks
    elif speaker_given:
        if speaker is None:
            selection.pop("speaker", None)
        else:
            selection["speaker"] = speaker
    selection = _sync_speaker(selection)
    write_text(selection_path(config), json.dumps(selection, indent=1, ensure_ascii=False))
    return selection


def _dataset_overrides(config, dataset_id: str) -> dict:
    """config.dataset settings that reproduce the selected dataset's source (if it was built)."""
    meta_path = Path(config.workspace) / "datasets" / dataset_id / "meta.json"
    try:
        spec = json.loads(meta_path.read_text(encoding="utf-8"))["spec"]
    except (OSError, ValueError, KeyError):
        return {}
    return {f"dataset.{target}": spec[name] for name, target in _SPEC_FIELDS.items()
            if spec.get(name) is not None}


def apply_selection(config, selection: dict):
    """A Config with the selection applied: picked speaker → policy manual, dataset → its source."""
    overrides: dict = {}
    if selection.get("dataset_id"):
        overrides.update(_dataset_overrides(config, selection["dataset_id"]))
    if selection.get("speaker"):
        overrides.update({"speaker.policy": "manual", "speaker.name": str(selection["speaker"])})
    overrides.update({k: v for k, v in selection.items() if "." in k})
    return config.with_overrides(overrides) if overrides else config


# -- reference clips of the picked speaker ----------------------------------------------------
@dataclass
class ReferenceClips:
    dataset_id: str | None = None
    speaker: str | None = None
    speakers: list[str] = field(default_factory=list)
    clips: list[dict] = field(default_factory=list)  # id, path, text, duration_s (best first)


def reference_clips(config, speaker: str | None = None, limit: int = 30,
                    dataset_id: str | None = None) -> ReferenceClips:
    """Accepted clips of a speaker of `dataset_id` (default: the studio's current dataset), 3-15 s
    and cleanest first."""
    from pipeline.data.dataset import DatasetError, list_datasets, open_dataset

    selection = load_selection(config)
    dataset_id = dataset_id or selection.get("dataset_id")
    if not dataset_id or dataset_id not in list_datasets(config):
        return ReferenceClips()
    try:
        ds = open_dataset(config, dataset_id)
    except DatasetError:
        return ReferenceClips()
    speakers = ds.speaker_names()
    speaker = speaker if speaker in speakers else picked_speaker(selection, dataset_id)
    speaker = speaker if speaker in speakers else (ds.recommendation.speaker or (speakers[0] if speakers else None))
    rows = ds.accepted()
    rows = rows[rows["speaker"].astype(str) == str(speaker)].copy()
    rows["fit"] = rows["duration_s"].between(3.0, 15.0)
    rows = rows.sort_values(["fit", "snr_db"], ascending=False).head(limit)
    clips = [{"id": str(r.id), "path": str(r.audio_path), "text": str(r.text), "duration_s": float(r.duration_s)}
             for r in rows.itertuples()]
    return ReferenceClips(dataset_id, speaker, speakers, clips)
