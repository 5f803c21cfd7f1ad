"""Ears against metrics: blind A/B votes matched to scorecards by model id, the agreement counted."""

from __future__ import annotations

import pytest

from pipeline.quality.agreement import Agreement, agreement, model_id, scores_by_model, summary_score


def _summary(model_dir, cer=None, similarity=None, ovrl=None, adapters=(), created="2025-01-01T00:00:00"):
    stat = lambda v: None if v is None else {"mean": v, "low": v, "high": v, "n": 20}  # noqa: E731
    return {"model": "m", "model_dir": str(model_dir), "adapters": [list(a) for a in adapters], "created": created,
            "metrics": {"cer": stat(cer), "similarity": stat(similarity), "ovrl": stat(ovrl)}}


def _vote(a, b, preferred):
    return {"model_a": a, "model_b": b, "preferred": preferred, "choice": "tie" if preferred is None else "A"}


def test_model_id_is_relative_to_the_first_root_holding_the_path(tmp_path):
    ws, project = tmp_path / "ws", tmp_path / "project"
    merged = ws / "runs" / "r1" / "artifacts" / "merged"
    adapter = ws / "runs" / "r1" / "phases" / "lora" / "checkpoints" / "step_000004"
    base = project / "checkpoints" / "base"
    assert model_id(merged, (), (ws, project)) == "runs/r1/artifacts/merged"
    assert model_id(base, [(str(adapter), 0.8)], (ws, project)) == \
        "checkpoints/base + runs/r1/phases/lora/checkpoints/step_000004 x0.8"
    assert model_id(base, [(adapter, 1)], (ws, project)).endswith(" x1")  # 1.0 and 1 read the same
    elsewhere = tmp_path / "other" / "model"
    assert model_id(elsewhere, (), (ws, project)) == str(elsewhere.resolve())


def test_summary_score_folds_the_means_present():
    assert summary_score(_summary("m", cer=0.2, similarity=0.8, ovrl=3.0)) == pytest.approx((0.8 + 0.8 + 0.5) / 3)
    assert summary_score(_summary("m", similarity=0.6)) == pytest.approx(0.6)
    assert summary_score(_summary("m")) is None and summary_score({}) is None


def test_agreement_counts_decided_votes_between_scored_models(tmp_path):
    roots = (tmp_path,)
    base, merged, ckpt = tmp_path / "base", tmp_path / "runs/r1/artifacts/merged", tmp_path / "runs/r1/ckpt"
    summaries = [_summary(base, cer=0.9, similarity=0.1, ovrl=1.2),             # score ≈ 0.05
                 _summary(merged, cer=0.1, similarity=0.8, ovrl=3.4),           # score ≈ 0.77
                 _summary(base, similarity=0.5, adapters=[(ckpt, 1.0)]),        # score 0.5
                 _summary(tmp_path / "unscored")]                               # no metric: not offered
    scores = scores_by_model(summaries, roots)
    assert set(scores) == {"base", "runs/r1/artifacts/merged", "base + runs/r1/ckpt x1"}
    a, m, s = "base", "runs/r1/artifacts/merged", "base + runs/r1/ckpt x1"
    votes = [_vote(a, m, m),         # agrees: merged scores higher
             _vote(m, a, m),         # agrees, the other order
             _vote(a, m, a),         # disagrees
             _vote(s, m, s),         # disagrees (the stacked adapter scores lower than merged)
             _vote(a, s, s),         # agrees
             _vote(a, m, None),      # no preference: not counted
             _vote(a, "runs/r2/artifacts/merged", a)]  # r2 has no scorecard
    result = agreement(votes, scores)
    assert result == Agreement(counted=5, agreed=3, no_preference=1, equal_scores=0, unscored=1)
    assert result.rate == pytest.approx(0.6) and result.text() == "5 votes, agreement 60 %"


def test_agreement_without_scored_votes_says_so(tmp_path):
    assert agreement([], {}).text() == "no votes with scorecards yet"
    only_ties = agreement([_vote("a", "b", None)], {"a": 0.5, "b": 0.7})
    assert only_ties.counted == 0 and only_ties.rate is None and only_ties.no_preference == 1
    same = agreement([_vote("a", "b", "a")], {"a": 0.5, "b": 0.5})
    assert same.equal_scores == 1 and same.text() == "no votes with scorecards yet"
    one = agreement([_vote("a", "b", "b")], {"a": 0.5, "b": 0.7})
    assert one.text() == "1 vote, agreement 100 %"


def test_the_newest_summary_of_a_model_wins(tmp_path):
    old = _summary(tmp_path / "m", similarity=0.2, created="2025-01-01T00:00:00")
    new = _summary(tmp_path / "m", similarity=0.9, created="2025-02-01T00:00:00")
    assert scores_by_model([new, old], (tmp_path,)) == {"m": pytest.approx(0.9)}
    assert scores_by_model([old, new], (tmp_path,)) == {"m": pytest.approx(0.9)}
