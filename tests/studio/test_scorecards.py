"""The studio's scorecards (no server): a run's table and sentences, the quality curves of training,
the cross-model table and the agreement of blind votes with it, and the panels' handlers, over
scorecard folders written as `pipeline.quality.scorecard.evaluate` writes them."""

from __future__ import annotations

import html
import json
import os
import time

import pandas as pd
import pytest

from audio_fixtures import speech_like, write_audio
from pipeline.atomic import write_json
from pipeline.config import Config
from pipeline.quality.overview import baseline_dir
from studio.logic import scorecards as sc

RUN = "20250101-120000-quick_lora"
RUN2 = "20250102-090000-full_finetune"


@pytest.fixture
def config(tmp_path, monkeypatch) -> Config:
    monkeypatch.setenv("STUDIO_WORKSPACE", str(tmp_path / "ws"))
    return Config().with_overrides({"base_model.local_dir": str(tmp_path / "ws" / "base")})


def write_scorecard(folder, model_dir, cer, similarity, ovrl, *, random_weights=False, adapters=(),
                    sentences=("Hyvää huomenta.", "Kello on 7.30.", "Missä asema on?")):
    """scores.parquet (one row per sentence, its wav under audio/) and summary.json, as `evaluate` writes."""
    rows = []
    for i, (sentence, c, s, o) in enumerate(zip(sentences, cer, similarity, ovrl), start=1):
        wav = write_audio(folder / "audio" / f"{i:02d}.wav", speech_like(seconds=0.3, seed=i))
        rows.append({"index": i, "sentence": sentence, "cer": c, "similarity": s, "ovrl": o,
                     "flags": "silent" if o is not None and o < 1.5 else "", "audio_path": str(wav)})
    pd.DataFrame(rows).to_parquet(folder / "scores.parquet", index=False)

    def stat(values):
        values = [v for v in values if v is not None]
        return {"mean": sum(values) / len(values), "low": min(values), "high": max(values), "n": len(values)} \
            if values else None
    write_json(folder / "summary.json", {
        "model": folder.name, "model_dir": str(model_dir), "adapters": [list(a) for a in adapters],
        "random_weights": random_weights, "flagged": sum(1 for r in rows if r["flags"]), "notes": [],
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "metrics": {"cer": stat(cer), "similarity": stat(similarity), "ovrl": stat(ovrl)}})
    return folder


def make_run(config, run_id=RUN, mode="quick_lora", scored=True):
    run_dir = config.runs_dir / run_id
    merged = run_dir / "artifacts" / "merged"
    merged.mkdir(parents=True)
    write_json(run_dir / "run.json", {"id": run_id, "mode": mode, "phases": ["lora"], "status": "finished",
                                      "artifacts": {"merged": str(merged)}})
    rows = [{"kind": "train", "step": s, "loss": 3 - 0.1 * s} for s in range(1, 9)]
    rows += [{"kind": "val", "step": s, "val_loss": 2.5, "val_similarity": 0.5 + s / 100, "val_ovrl": 2.0 + s / 10}
             for s in (4, 8)]
    (run_dir / "phases" / "lora").mkdir(parents=True)
    (run_dir / "phases" / "lora" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if scored:
        write_scorecard(run_dir / "eval" / "lora-step_000004", config.base_model_dir, [0.6, 0.5, 0.4],
                        [0.5, 0.6, 0.55], [2.0, 2.2, 2.1], adapters=[(str(run_dir / "ckpt4"), 1.0)])
        write_scorecard(run_dir / "eval" / "merged", merged, [0.1, 0.45, 0.2], [0.8, 0.7, 0.75], [3.1, 1.2, 3.3])
    return run_dir


def make_baseline(config):
    return write_scorecard(baseline_dir(config), config.base_model_dir, [0.9, 0.95, 1.0], [0.1, 0.15, 0.12],
                           [1.3, 1.2, 1.25], random_weights=True)


def test_a_runs_table_has_the_baseline_its_models_intervals_and_the_random_weights_note(config):
    make_baseline(config)
    make_run(config)
    rows = sc.run_rows(config, RUN)
    frame = sc.table(rows)
    assert list(frame["model"]) == ["base", "lora step 4", "quick_lora merged"]
    assert list(frame.columns) == ["model", "CER", "similarity", "DNSMOS OVRL", "quality score", "flagged", "note"]
    assert frame.loc[2, "CER"] == "0.250 [0.100, 0.450]"          # mean [low, high]
    assert frame.loc[0, "note"] == "random weights: produces noise" and frame.loc[2, "note"] == ""
    assert float(frame.loc[2, "quality score"]) > float(frame.loc[0, "quality score"])
    assert frame.loc[2, "flagged"] == 1
    text, kind = sc.status_note(rows, RUN)
    assert kind == "ok" and "95 %" in text
    assert [label for label, _ in sc.model_choices(rows)] == ["base", "lora step 4", "quick_lora merged"]
    assert sc.default_model(rows, RUN).endswith("merged")


def test_a_run_without_a_scorecard_says_how_to_get_one(config):
    make_baseline(config)
    make_run(config, scored=False)
    rows = sc.run_rows(config, RUN)
    assert [r["label"] for r in rows] == ["base"]
    text, kind = sc.status_note(rows, RUN)
    assert "Score this run" in text and kind == "info"
    assert sc.default_model(rows, RUN) == rows[0]["out_dir"]  # the baseline's sentences meanwhile
    assert sc.status_note([], None)[0] == sc.NO_RUN and sc.run_rows(config, None) == []


def test_sentences_worst_first_with_players_for_the_worst(config):
    folder = make_run(config) / "eval" / "merged"
    shown, players = sc.sentences(config, folder)
    assert list(shown.columns) == ["#", "sentence", "CER", "similarity", "DNSMOS OVRL", "flags"]
    assert list(shown["#"]) == [2, 3, 1] and list(shown["CER"]) == ["0.450", "0.200", "0.100"]
    assert shown.loc[0, "flags"] == "silent"
    assert [os.path.basename(p) for p, _ in players] == ["02.wav", "03.wav", "01.wav"]
    assert players[0][1].startswith("#2 · CER 0.450") and "Kello on 7.30." in players[0][1]
    with pytest.raises(ValueError, match="not a scorecard folder"):  # a path from the page, outside the workspace
        sc.sentences(config, "/etc")


def test_quality_figure_of_a_runs_phase(config):
    run_dir = make_run(config)
    fig = sc.quality_figure(run_dir, "lora")
    traces = {t.name: t for t in fig.data}
    assert set(traces) == {"similarity", "DNSMOS OVRL"} and list(traces["similarity"].x) == [4, 8]
    assert "LoRA on all clips" in fig.layout.title.text
    empty = sc.quality_figure(None, None)
    assert empty.data == () and "No voice-quality scores" in empty.layout.annotations[0].text


def _vote(config, run_ids, a, b, preferred):
    line = json.dumps({"trial": f"{a}-{b}-{preferred}-{time.monotonic_ns()}", "model_a": a, "model_b": b,
                       "preferred": preferred, "choice": "tie" if preferred is None else "A"}) + "\n"
    for run_id in run_ids:
        with open(config.runs_dir / run_id / "preferences.jsonl", "a") as handle:
            handle.write(line)


def test_cross_model_table_and_agreement_of_blind_votes(config):
    from studio.logic.playground import vote_roots
    from pipeline.quality.agreement import model_id

    assert sc.agreement_text(sc.ears_vs_metrics(config)) == "Ears vs metrics: no votes with scorecards yet."
    make_baseline(config)
    make_run(config)
    make_run(config, RUN2, "full_finetune", scored=False)
    frame = sc.cross_model_table(config)
    assert list(frame["model"]) == ["base", f"quick_lora ({RUN})"]
    base = model_id(config.base_model_dir, (), vote_roots(config))
    merged, merged2 = f"runs/{RUN}/artifacts/merged", f"runs/{RUN2}/artifacts/merged"
    step4 = model_id(config.base_model_dir, [(config.runs_dir / RUN / "ckpt4", 1)], vote_roots(config))
    _vote(config, [RUN], base, merged, merged)      # agrees (the merged model scores higher)
    _vote(config, [RUN], merged, step4, step4)      # disagrees: a checkpoint's scorecard counts too
    _vote(config, [RUN], base, merged, None)        # no preference
    _vote(config, [RUN, RUN2], merged, merged2, merged2)  # RUN2 is not scored; written to both runs, read once
    result = sc.ears_vs_metrics(config)
    assert (result.counted, result.agreed, result.no_preference, result.unscored) == (2, 1, 1, 1)
    text = sc.agreement_text(result)
    assert text.startswith("Ears vs metrics: 2 votes, agreement 50 %")
    assert "1 without a preference" in text and "1 with a model not scored yet" in text


# -- the panels' handlers -----------------------------------------------------------------------
def _handlers(config):
    from studio.app import build_app

    demo = build_app(config)
    return {fn.api_name: fn for fn in demo.fns.values() if fn.api_name}


def test_the_training_panel_shows_a_runs_scorecard_and_scores_on_request(config, monkeypatch):
    make_baseline(config)
    run_dir = make_run(config, scored=False)
    handlers = _handlers(config)
    message, table, model, sentences, *players = handlers["run_scorecard"].fn(RUN)
    assert "Score this run" in html.unescape(message) and list(table["model"]) == ["base"]
    assert model["value"].endswith(baseline_dir(config).name) and players[0]["visible"]

    calls = []

    def fake_score(cfg, run_id, progress=None, device=None):  # the models' work is pipeline.quality's
        calls.append(run_id)
        progress(0.5, "speaking")
        write_scorecard(run_dir / "eval" / "merged", run_dir / "artifacts" / "merged", [0.2, 0.3, 0.1],
                        [0.7, 0.8, 0.9], [3.0, 3.2, 3.1])
        from pipeline.quality.overview import run_scorecards
        return run_scorecards(cfg, run_id)

    monkeypatch.setattr("studio.tabs.scorecard_view.score_run", fake_score)
    out = handlers["score_run"].fn(RUN, progress=lambda *a, **k: None)
    assert calls == [RUN] and "Scored: base, quick_lora merged" in html.unescape(out[0])
    assert list(out[1]["model"]) == ["base", "quick_lora merged"] and out[2]["value"].endswith("merged")

    chosen = handlers["scorecard_sentences"].fn(str(baseline_dir(config)))
    assert list(chosen[1]["#"]) == [3, 2, 1]  # the baseline's sentences, worst CER first
    refused = handlers["scorecard_sentences"].fn("/etc")
    assert "not a scorecard folder" in html.unescape(refused[0]) and refused[1] is None


def test_the_training_panel_says_why_it_cannot_score(config, monkeypatch):
    make_run(config, scored=False)
    handlers = _handlers(config)
    bad = html.unescape(handlers["score_run"].fn("../x", progress=lambda *a, **k: None)[0])
    assert "not a run id" in bad and "Traceback" not in bad

    def broken(*args, **kwargs):
        from pipeline.quality.scorecard import EvaluationError
        raise EvaluationError("The baseline needs the base model: not downloaded.")

    monkeypatch.setattr("studio.tabs.scorecard_view.score_run", broken)
    out = handlers["score_run"].fn(RUN, progress=lambda *a, **k: None)
    assert "The baseline needs the base model" in html.unescape(out[0])
    monkeypatch.setattr("studio.tabs.scorecard_view.current_job", lambda cfg: {"run_id": "r-busy"})
    busy = html.unescape(handlers["score_run"].fn(RUN, progress=lambda *a, **k: None)[0])
    assert "r-busy is training now" in busy
    from pipeline.train.jobs import current_job
    from pipeline.train.lock import WARMUP_HOLDER, TrainingLock

    monkeypatch.setattr("studio.tabs.scorecard_view.current_job", current_job)

    with TrainingLock(config.workspace, config.workspace / "compile_cache" / WARMUP_HOLDER):  # `pipeline warmup`
        warming = html.unescape(handlers["score_run"].fn(RUN, progress=lambda *a, **k: None)[0])
    assert "being compiled ahead" in warming and "score when it has finished" in warming
    # a broken summary: a note in the panel, never an exception
    (config.runs_dir / RUN / "eval" / "merged").mkdir(parents=True)
    (config.runs_dir / RUN / "eval" / "merged" / "summary.json").write_text("{}")
    (config.runs_dir / RUN / "eval" / "merged" / "scores.parquet").write_text("not parquet")
    shown = handlers["run_scorecard"].fn(RUN)
    assert "note" in shown[0]


def test_the_playground_panel_shows_every_model_and_the_agreement(config):
    handlers = _handlers(config)
    empty = html.unescape(handlers["model_scorecards"].fn()[0])
    assert "No model has a scorecard yet" in empty and "no votes with scorecards yet" in empty
    make_baseline(config)
    make_run(config)
    _vote(config, [RUN], f"runs/{RUN}/artifacts/merged",
          f"{os.path.relpath(config.base_model_dir, config.workspace)}", f"runs/{RUN}/artifacts/merged")
    agreement, frame = handlers["model_scorecards"].fn()
    assert "1 vote, agreement 100 %" in html.unescape(agreement)
    assert list(frame["model"]) == ["base", f"quick_lora ({RUN})"] and "random weights" in frame.loc[0, "note"]


def test_the_app_has_the_scorecard_components_and_api(config):
    from studio.app import build_app

    demo = build_app(config)
    ids = {getattr(block, "elem_id", None) for block in demo.blocks.values()}
    assert {"run-scorecard", "scorecard-table", "score-run", "scorecard-model", "scorecard-sentences",
            "scorecard-audio-0", "quality-curves", "pg-scorecards", "pg-scorecard-table", "pg-agreement"} <= ids
    assert {"score_run", "run_scorecard", "scorecard_sentences", "model_scorecards"} <= \
        {fn.api_name for fn in demo.fns.values()}
