"""The Playground's pipeline side: model listing, stacked and merged speech, the warm-model cache,
blind A/B votes and artifact disk usage, over a fake run in the real run-directory layout."""

from __future__ import annotations

import functools
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from studio.logic import downloads
from studio.logic import playground as pg
from pipeline.model.adapters import adapter_scales, attach_lora, export_adapter_zip, save_adapter
from pipeline.model.checkpoints import load_lm
from pipeline.config import Config
from pipeline.model.merge import merge_lora
from pipeline.data.selection import reference_clips
from pipeline.generate.synth import SynthError

RUN = "20250101-120000-quick_lora"
RUN2 = "20250102-090000-full_finetune"
SPEAK = dict(max_new_tokens=8, seed=3)


def trained_adapter(ckpt: Path, out: Path, seed: int) -> Path:
    """A LoRA adapter whose lora_B is non-zero (an untrained one would change nothing)."""
    peft_model = attach_lora(load_lm(ckpt)[0], rank=4, alpha=8)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return save_adapter(peft_model, out, metadata={"step": 4, "mode": "lora"})


def make_runs(workspace: Path, ckpt: Path) -> dict:
    """RUN: quick_lora finished (checkpoint adapter, merged model, adapter zip, evaluation audio).
    RUN2: a phase-1 full model and a second adapter kept under artifacts/adapter."""
    run = workspace / "runs" / RUN
    adapter = trained_adapter(ckpt, run / "phases" / "lora" / "checkpoints" / "step_000004", seed=1)
    merged = merge_lora(ckpt, adapter, run / "artifacts" / "merged")
    adapter_zip = export_adapter_zip(adapter, run / "artifacts" / "adapter.zip")
    (run / "audio").mkdir(parents=True)
    sf.write(run / "audio" / "example_1.wav", np.zeros(4410, np.float32), 44100)
    (run / "run.json").write_text(json.dumps({"id": RUN, "mode": "quick_lora", "status": "finished", "artifacts": {
        "merged": str(merged), "adapter": str(adapter), "adapter_zip": str(adapter_zip), "phase1_model": None}}))
    run2 = workspace / "runs" / RUN2
    phase1 = run2 / "phases" / "full" / "checkpoints" / "step_000010"
    shutil.copytree(ckpt, phase1)
    second = trained_adapter(ckpt, run2 / "artifacts" / "adapter", seed=2)
    (run2 / "run.json").write_text(json.dumps({"id": RUN2, "mode": "full_finetune", "status": "running",
                                               "artifacts": {"phase1_model": str(phase1)}}))
    return {"adapter": adapter, "merged": merged, "zip": adapter_zip, "phase1": phase1, "second": second}


@pytest.fixture(scope="module")
def world(tiny_checkpoint, tmp_path_factory):
    torch.set_num_threads(1)
    workspace = tmp_path_factory.mktemp("pg") / "workspace"
    paths = make_runs(workspace, tiny_checkpoint)
    config = Config().with_overrides({"studio.workspace": str(workspace),
                                      "base_model.local_dir": str(tiny_checkpoint)})
    return config, paths


@pytest.fixture(scope="module")
def cache():
    return pg.SynthCache(size=2, device="cpu")


@pytest.fixture(autouse=True)
def workspace_env(world, monkeypatch):
    monkeypatch.setenv("STUDIO_WORKSPACE", str(world[0].studio.workspace))
    # the project's checkpoints/ (a downloaded base model) must not show up in these listings
    monkeypatch.setattr(pg, "LOCAL_MODELS_DIR", Path(world[0].studio.workspace) / "no-local-models")


def test_lists_base_merged_phase1_and_adapters(world, tiny_checkpoint):
    config, paths = world
    models = pg.list_models(config)
    by_path = {Path(m.path).resolve(): m for m in models}
    assert [m.kind for m in models] == ["base", "phase1", "merged"]  # base, then newest run first
    assert by_path[tiny_checkpoint.resolve()].kind == "base"
    merged = by_path[paths["merged"].resolve()]
    assert merged.run_id == RUN and merged.random_weights
    assert "random weights: produces noise" in merged.label and merged.label.startswith(f"Run {RUN} · merged")
    assert by_path[paths["phase1"].resolve()].run_id == RUN2
    adapters = {Path(a.path).resolve(): a for a in pg.list_adapters(config)}
    assert set(adapters) == {paths["adapter"].resolve(), paths["second"].resolve()}
    assert adapters[paths["adapter"].resolve()].label == f"{RUN} · lora step 4 · final"


def test_no_model_says_how_to_get_one(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIO_WORKSPACE", str(tmp_path / "ws"))
    config = Config().with_overrides({"studio.workspace": str(tmp_path / "ws"),
                                      "base_model.local_dir": str(tmp_path / "missing")})
    assert pg.list_models(config) == [] and pg.list_adapters(config) == []
    with pytest.raises(pg.PlaygroundError, match="setup.sh.*HF_TOKEN.*train a run"):
        pg.resolve_model(config, None)


def test_refuses_models_and_adapters_not_on_offer(world, tmp_path):
    config, paths = world
    with pytest.raises(pg.PlaygroundError, match="not available"):
        pg.resolve_model(config, str(tmp_path))
    with pytest.raises(pg.PlaygroundError, match="not available"):
        pg.resolve_adapters(config, [(str(tmp_path), 1.0)])
    with pytest.raises(pg.PlaygroundError, match="between 0 and 1.5"):
        pg.resolve_adapters(config, [(str(paths["adapter"]), 2.0)])
    assert pg.resolve_adapters(config, [("", 1.0)]) == []


def test_stacked_adapter_speaks_like_the_merged_model(world, cache, tiny_checkpoint):
    config, paths = world
    stacked, wav = pg.speak_to_file(config, cache, str(tiny_checkpoint), [(str(paths["adapter"]), 1.0)],
                                    "Hyvää huomenta!", **SPEAK)
    merged, merged_wav = pg.speak_to_file(config, cache, str(paths["merged"]), [], "Hyvää huomenta!", **SPEAK)
    data, sr = sf.read(wav, dtype="float32")
    assert sr == 44100 and len(data) == len(stacked.audio) > 0 and np.isfinite(data).all()
    assert wav.parent == Path(config.workspace) / "playground" and merged_wav.is_file() and wav != merged_wav
    # merged = base + adapter: same seed, same codes
    assert all(np.array_equal(a, b) for a, b in zip(stacked.codes, merged.codes))
    base = cache.factory(tiny_checkpoint, device="cpu").speak("Hyvää huomenta!", **SPEAK)
    assert not all(np.array_equal(a, b) for a, b in zip(base.codes, stacked.codes))  # the adapter matters


def test_two_adapters_stack_and_strength_zero_is_the_base(world, tiny_checkpoint):
    config, paths = world
    cache = pg.SynthCache(size=2, device="cpu")
    both = [(str(paths["adapter"]), 0.0), (str(paths["second"]), 0.0)]
    silent, _ = pg.speak_to_file(config, cache, str(tiny_checkpoint), both, "Kiitos.", **SPEAK)
    base = cache.factory(tiny_checkpoint, device="cpu").speak("Kiitos.", **SPEAK)
    assert all(np.array_equal(a, b) for a, b in zip(base.codes, silent.codes))
    loud, _ = pg.speak_to_file(config, cache, str(tiny_checkpoint), [(p, 1.5) for p, _ in both], "Kiitos.", **SPEAK)
    assert cache.loads == 1  # the strength change re-weighted the warm model
    assert not all(np.array_equal(a, b) for a, b in zip(base.codes, loud.codes))


def test_reweighting_reaches_the_fast_decoder(world, tiny_checkpoint):
    """pipeline.generate.fastgen merges adapter weights into its own matrices: a strength change must reach them."""
    config, paths = world
    cache = pg.SynthCache(size=1, device="cpu", factory=functools.partial(pg.Synthesizer, fast=True))
    adapters = [(str(paths["adapter"]), 0.0), (str(paths["second"]), 0.0)]
    base, _ = pg.speak_to_file(config, cache, str(tiny_checkpoint), adapters, "Kiitos.", **SPEAK)
    with cache.use(tiny_checkpoint, adapters) as synth:
        assert synth._fastgen is not None  # the fast decoder really ran (eagerly, on the CPU)
    loud, _ = pg.speak_to_file(config, cache, str(tiny_checkpoint), [(p, 1.5) for p, _ in adapters], "Kiitos.", **SPEAK)
    again, _ = pg.speak_to_file(config, cache, str(tiny_checkpoint), adapters, "Kiitos.", **SPEAK)
    assert cache.loads == 1
    assert not all(np.array_equal(a, b) for a, b in zip(base.codes, loud.codes))
    assert all(np.array_equal(a, b) for a, b in zip(base.codes, again.codes))


def test_cache_reuses_reweights_and_evicts_least_recent(world, tiny_checkpoint):
    config, paths = world
    cache = pg.SynthCache(size=2, device="cpu")
    adapter = str(paths["adapter"])
    with cache.use(tiny_checkpoint, [(adapter, 1.0)]) as first:
        pass
    with cache.use(tiny_checkpoint, [(adapter, 0.5)]) as again:
        assert again is first and cache.loads == 1
        assert adapter_scales(again.model) == {"adapter_0": pytest.approx(0.5 * 8 / 4)}  # weight * alpha / r
    with cache.use(paths["merged"]) as merged:
        assert merged is not first and cache.loads == 2
    with cache.use(paths["phase1"]):
        pass
    assert len(cache) == 2 and cache.loads == 3
    with cache.use(paths["merged"]) as merged_again:  # still warm; the adapter model was evicted
        assert merged_again is merged and cache.loads == 3
    with cache.use(tiny_checkpoint, [(adapter, 1.0)]) as reloaded:
        assert reloaded is not first and cache.loads == 4


def _shuffled(seed: int) -> list[str]:
    order = ["A", "B"]
    random.Random(seed).shuffle(order)
    return order


def test_blind_vote_records_identities_in_the_run(world, tiny_checkpoint):
    config, paths = world
    base = pg.model_identity(config, pg.resolve_model(config, str(tiny_checkpoint)), [])
    merged = pg.model_identity(config, pg.resolve_model(config, str(paths["merged"])), [])
    stacked = pg.model_identity(config, pg.resolve_model(config, str(tiny_checkpoint)),
                                pg.resolve_adapters(config, [(str(paths["second"]), 0.8)]))
    assert merged["id"] == f"runs/{RUN}/artifacts/merged" and merged["runs"] == [RUN]
    assert stacked["id"].endswith(f" + runs/{RUN2}/artifacts/adapter x0.8") and stacked["runs"] == [RUN2]
    with pytest.raises(pg.PlaygroundError, match="same"):
        pg.new_trial("Kiitos.", 1, base, dict(base), blind=True)

    # A seed whose shuffle plays B first: voting for sample 1 then prefers B.
    seed = next(s for s in range(100) if _shuffled(s) == ["B", "A"])
    trial = pg.new_trial("Kiitos.", 7, base, merged, blind=True, rng=random.Random(seed))
    assert trial["order"] == ["B", "A"]
    record = pg.record_preference(config, trial, 1)
    assert record["choice"] == "B" and record["preferred"] == merged["id"]
    lines = (Path(config.runs_dir) / RUN / "preferences.jsonl").read_text().splitlines()
    saved = json.loads(lines[-1])
    assert {k: saved[k] for k in ("text", "seed", "model_a", "model_b", "choice", "blind")} == {
        "text": "Kiitos.", "seed": 7, "model_a": base["id"], "model_b": merged["id"], "choice": "B", "blind": True}
    assert "time" in saved
    with pytest.raises(pg.PlaygroundError, match="already"):
        pg.record_preference(config, trial, 2)

    # The same pair in the other order, a tie: the tally counts per model, whatever the side.
    pg.record_preference(config, pg.new_trial("Moi.", 8, merged, base, blind=False), None)
    assert pg.preference_tally(config, trial) == {base["id"]: 0, merged["id"]: 1, "tie": 1, "total": 2}

    # A vote between two runs goes to both, and counts once.
    cross = pg.new_trial("Moi.", 9, merged, stacked, blind=False)
    pg.record_preference(config, cross, 2)
    assert (Path(config.runs_dir) / RUN2 / "preferences.jsonl").is_file()
    assert pg.preference_tally(config, cross) == {merged["id"]: 0, stacked["id"]: 1, "tie": 0, "total": 1}
    assert not (Path(config.workspace) / "preferences.jsonl").exists()


def test_vote_between_non_run_models_goes_to_the_workspace(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIO_WORKSPACE", str(tmp_path / "ws"))
    config = Config().with_overrides({"studio.workspace": str(tmp_path / "ws")})
    a = {"id": "checkpoints/a", "name": "a", "label": "a", "runs": []}
    b = {"id": "checkpoints/b", "name": "b", "label": "b", "runs": []}
    trial = pg.new_trial("Hei.", 1, a, b, blind=False)
    pg.record_preference(config, trial, 2)
    line = json.loads((tmp_path / "ws" / "preferences.jsonl").read_text())
    assert line["preferred"] == "checkpoints/b" and line["choice"] == "B"
    with pytest.raises(pg.PlaygroundError, match="sample 1 or 2"):
        pg.record_preference(config, pg.new_trial("Hei.", 1, a, b, blind=False), 3)

    # a vote torn inside "ä" by a crash: that line is skipped, the others still count
    votes = tmp_path / "ws" / "preferences.jsonl"
    votes.write_bytes(votes.read_bytes() + '{"trial": "x", "text": "Hyvää'.encode()[:-1] + b"\n")
    assert pg.preference_tally(config, trial)["total"] == 1


def test_disk_usage_sums_files_once_per_inode(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "a.bin").write_bytes(b"x" * 1000)
    (tmp_path / "d" / "sub" / "b.bin").write_bytes(b"y" * 234)
    assert downloads.disk_usage(tmp_path / "d") == (1234, 0)
    os.link(tmp_path / "d" / "a.bin", tmp_path / "d" / "sub" / "a-link.bin")
    assert downloads.disk_usage(tmp_path / "d") == (1234, 1000)
    assert downloads.format_bytes(1234) == "1.2 KB" and downloads.format_bytes(5 * 1024 ** 3) == "5.0 GB"


def test_artifacts_list_downloads_and_sizes(world):
    config, paths = world
    runs = {r.run_id: r for r in downloads.list_run_artifacts(config)}
    run = runs[RUN]
    assert run.adapter_zip == paths["zip"] and run.status == "finished"
    assert {p.name for p in run.merged_files} >= {"model.pth", "config.json", "codec.pth", "RANDOM_WEIGHTS"}
    assert [p.name for p in run.audio_files] == ["example_1.wav"]
    inodes = {}
    for p in (Path(config.runs_dir) / RUN).rglob("*"):
        if p.is_file():
            inodes[(p.stat().st_dev, p.stat().st_ino)] = p.stat().st_size
    assert run.size_bytes == sum(inodes.values())
    assert runs[RUN2].adapter_zip is None and runs[RUN2].merged_files == []
    total, _ = downloads.total_disk_usage(config)
    assert total == run.size_bytes + runs[RUN2].size_bytes


def test_bad_text_is_a_synth_error(world, cache, tiny_checkpoint):
    config, _ = world
    with pytest.raises(SynthError, match="no text"):
        pg.speak_to_file(config, cache, str(tiny_checkpoint), [], "   ", **SPEAK)


def test_reference_clips_of_the_picked_speaker_prompt_the_voice(world, cache, tiny_checkpoint, tmp_path, monkeypatch):
    from audio_fixtures import write_clip
    from pipeline.data.dataset import load_dataset
    from pipeline.data.selection import save_selection
    from pipeline.data.source_spec import SourceSpec

    monkeypatch.setenv("STUDIO_WORKSPACE", str(tmp_path / "ws"))
    config = world[0]
    assert reference_clips(config).clips == []  # no dataset yet: nothing to offer, no error
    for speaker, count in {"anna": 3, "bert": 2}.items():
        for i in range(count):
            write_clip(tmp_path / "voices", speaker, f"{speaker}{i}", f"{speaker.title()} sanoo {i + 1}. lauseen.",
                       seed=i + (10 if speaker == "bert" else 0))
    ds = load_dataset(SourceSpec("folder", path=str(tmp_path / "voices")), config)
    save_selection(config, dataset_id=ds.id, speaker="bert")

    refs = reference_clips(config)
    assert refs.speaker == "bert" and set(refs.speakers) == {"anna", "bert"}
    assert sorted(c["text"] for c in refs.clips) == ["Bert sanoo 1. lauseen.", "Bert sanoo 2. lauseen."]
    anna = reference_clips(config, "anna")
    assert len(anna.clips) == 3 and all(Path(c["path"]).is_file() for c in anna.clips)

    clip = refs.clips[0]
    with_ref, _ = pg.speak_to_file(config, cache, str(tiny_checkpoint), [], "Hei.", reference_audio=clip["path"],
                                   reference_text=clip["text"], **SPEAK)
    without, _ = pg.speak_to_file(config, cache, str(tiny_checkpoint), [], "Hei.", **SPEAK)
    assert with_ref.frames > 0 and not all(np.array_equal(a, b) for a, b in zip(with_ref.codes, without.codes))
    with pytest.raises(SynthError, match="transcript"):
        pg.speak_to_file(config, cache, str(tiny_checkpoint), [], "Hei.", reference_audio=clip["path"], **SPEAK)


def test_the_studio_has_the_playground_tab(world):
    from studio.app import TABS, build_app

    assert "Playground" in [title for title, *_ in TABS]
    demo = build_app(world[0])
    ids = {getattr(block, "elem_id", None) for block in demo.blocks.values()}
    assert {"pg-text", "pg-normalized", "pg-model", "pg-adapter-0", "pg-weight-2", "pg-generate", "pg-audio", "pg-live",
            "pg-a-model", "pg-b-model", "pg-blind", "pg-ab-audio-1", "pg-ab-audio-2", "pg-vote-1", "pg-tally",
            "pg-runs", "pg-merged-files", "pg-ref-clip", "pg-seed"} <= ids
    assert {"speak", "compare", "vote_1", "vote_2", "vote_tie", "artifacts", "run_files",
            "refresh_models"} <= {fn.api_name for fn in demo.fns.values()}


def test_text_over_the_limit_is_refused_naming_it(world, cache, tiny_checkpoint):
    config, _ = world
    with pytest.raises(pg.PlaygroundError, match=r"1,001 characters.*at most 1,000"):
        pg.speak_to_file(config, cache, str(tiny_checkpoint), [], "a" * 1001, **SPEAK)
    assert pg.check_text("a" * 1000) == "a" * 1000


def test_stream_stops_when_the_caller_goes_away(world, cache, tiny_checkpoint):
    config, _ = world
    before = set((Path(config.workspace) / pg.OUTPUT_DIR_NAME).glob("*.wav"))
    steps = pg.speak_stream(config, cache, str(tiny_checkpoint), [], "Yksi. Kaksi. Kolme.", **SPEAK)
    step, path = next(steps)
    assert (step.index, step.total, path) == (0, 3, None)
    steps.close()  # Gradio closes the handler's generator when the browser leaves
    assert set((Path(config.workspace) / pg.OUTPUT_DIR_NAME).glob("*.wav")) == before  # nothing written
    with cache.use(str(tiny_checkpoint)):  # the model is free again for the next request
        pass


def test_files_of_stacked_adapters_name_them(world, cache, tiny_checkpoint):
    config, paths = world
    _, plain = pg.speak_to_file(config, cache, str(tiny_checkpoint), [], "Hei.", **SPEAK)
    _, stacked = pg.speak_to_file(config, cache, str(tiny_checkpoint),
                                  [(str(paths["adapter"]), 0.8), (str(paths["second"]), 1.0)], "Hei.", **SPEAK)
    assert "-base-" in plain.name
    assert "base__20250101-120000-quick-lora-lora-step-4-x0.8__20250102-090000-full-finetune-artifacts-adapter" \
        in stacked.name
    assert len(stacked.name) < 200 and " " not in stacked.name


def test_tiny_offline_model_is_offered_and_created(tmp_path, monkeypatch, tiny_checkpoint):
    monkeypatch.setenv("STUDIO_WORKSPACE", str(tmp_path / "ws"))
    config = Config().with_overrides({"base_model.local_dir": str(tmp_path / "no-base")})
    monkeypatch.setattr(pg, "LOCAL_MODELS_DIR", tmp_path / "checkpoints")
    monkeypatch.setattr(pg, "TINY_MODEL_DIR", tmp_path / "checkpoints" / "tiny-random")
    assert pg.list_models(config) == [] and "tiny-model" in pg.no_model_help(config)
    created = pg.create_tiny_model()
    [option] = pg.list_models(config)
    assert option.path == created.path and option.kind == "local" and option.random_weights
    assert option.title == "Tiny offline model" and "random weights: produces noise" in option.label


def test_downloads_carry_the_model_card_and_the_merged_model_zips(world):
    import zipfile

    from pipeline.model.model_card import is_model_card

    config, paths = world
    with zipfile.ZipFile(paths["zip"]) as zf:  # as written by peft: its empty template
        assert not is_model_card(zf.read("README.md").decode())
    run = downloads.prepare_downloads(config, RUN)
    with zipfile.ZipFile(run.adapter_zip) as zf:
        readme = zf.read("README.md").decode()
    assert is_model_card(readme) and "CC-BY-NC-SA-4.0" in readme and "| Run | " + RUN in readme
    assert is_model_card((run.merged_dir / "README.md").read_text())
    assert run.merged_zip is None

    zip_path = downloads.merged_zip(config, RUN)
    assert zip_path.name == f"{RUN}-merged.zip"
    with zipfile.ZipFile(zip_path) as zf:
        assert {f"{RUN}-merged/model.pth", f"{RUN}-merged/README.md"} <= set(zf.namelist())
    again = downloads.run_artifacts(config, RUN)
    assert again.merged_zip == zip_path and again.adapter_zip == paths["zip"]  # the zip is not an adapter
    assert downloads.merged_zip(config, RUN).stat().st_mtime == zip_path.stat().st_mtime  # made once
    with pytest.raises(pg.PlaygroundError, match="no merged model"):
        downloads.merged_zip(config, RUN2)


def test_spoken_text_is_collapsed_and_warns():
    from studio.tabs.playground import _spoken

    short = _spoken("Hei maailma.")
    assert short.startswith("<b>Spoken as:</b> Hei maailma.") and "<details>" not in short
    long = _spoken("Tämä on pitkä lause. " * 60)
    assert long.startswith("<details><summary><b>Spoken as:</b>") and "1,259 characters" in long
    assert "at most 1,000" in long
    assert "Nothing to say" in _spoken("😀") and "😀" in _spoken("😀")
    assert "trained on Finnish" in _spoken("こんにちは")
