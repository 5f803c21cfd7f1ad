"""Do ears and metrics agree? Blind A/B votes set beside the scorecards of the models compared.

A vote (a line of a Playground `preferences.jsonl`) names its two models by `model_id`: the model
folder and each stacked adapter with its strength, paths relative to the first root holding them
(the workspace, then the project). A scorecard summary carries the same facts (`model_dir`,
`adapters`), so both sides meet on that id. Among the votes that preferred one model and whose two
models both have a scorecard with a quality score (`pipeline.train.select.quality_score`), the
agreement is the share where the preferred model has the higher score.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.train.select import quality_score


def short_path(path: str | Path, roots=()) -> str:
    """`path` relative to the first of `roots` holding it (posix), else absolute."""
    path = Path(path).resolve()
    for root in roots:
        root = Path(root).resolve()
        if path.is_relative_to(root):
            return path.relative_to(root).as_posix()
    return str(path)


def model_id(model_dir: str | Path, adapters=(), roots=()) -> str:
    """'runs/<id>/artifacts/merged', 'checkpoints/base + runs/<id>/…/step_000004 x0.8': what a vote records."""
    return short_path(model_dir, roots) + "".join(f" + {short_path(p, roots)} x{float(w):g}" for p, w in adapters)


def summary_score(summary: dict) -> float | None:
    """The scorecard's means folded into one number in [0, 1], higher better (None without any)."""
    metrics = summary.get("metrics") or {}
    mean = lambda name: (metrics.get(name) or {}).get("mean")  # noqa: E731
    return quality_score(mean("cer"), mean("similarity"), mean("ovrl"))


def scores_by_model(summaries: list[dict], roots=()) -> dict[str, float]:
    """model id → quality score of each summary that has one; the newest summary of a model wins."""
    scored: dict[str, tuple[str, float]] = {}
    for summary in summaries:
        score = summary_score(summary)
        if score is None or not summary.get("model_dir"):
            continue
        key = model_id(summary["model_dir"], summary.get("adapters") or (), roots)
        created = str(summary.get("created") or "")
        if key not in scored or created >= scored[key][0]:
            scored[key] = (created, score)
    return {key: score for key, (_, score) in scored.items()}


@dataclass(frozen=True)
class Agreement:
    counted: int  # votes for one model, both models scored, scores different
    agreed: int  # of those, the preferred model has the higher score
    no_preference: int  # "no preference" votes between two scored models
    equal_scores: int  # votes for one model between two models scored the same
    unscored: int  # votes where a model has no scorecard yet

    @property
    def rate(self) -> float | None:
        return self.agreed / self.counted if self.counted else None

    def text(self) -> str:
        if not self.counted:
            return "no votes with scorecards yet"
        return f"{self.counted} vote{'s' if self.counted != 1 else ''}, agreement {100 * self.rate:.0f} %"


def agreement(votes: list[dict], scores: dict[str, float]) -> Agreement:
    """How often the listener's pick is the model with the higher quality score (`scores`: model id →
    score, as `scores_by_model` gives)."""
    counted = agreed = no_preference = equal = unscored = 0
    for vote in votes:
        a, b = vote.get("model_a"), vote.get("model_b")
        if a not in scores or b not in scores:
            unscored += 1
            continue
        preferred = vote.get("preferred")
        if preferred not in (a, b):
            no_preference += 1
            continue
        other = b if preferred == a else a
        if scores[preferred] == scores[other]:
            equal += 1
            continue
        counted += 1
        agreed += scores[preferred] > scores[other]
    return Agreement(counted, agreed, no_preference, equal, unscored)
