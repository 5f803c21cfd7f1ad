"""The figures the cost estimate takes from `python -m pipeline bench`: which benchmark JSONs
exist (the workspace's `runs/bench/` and the committed `assets/bench/`), newest first, and each
card's throughput and start-up seconds, measured on that card or scaled from another (every
figure says which): training and extraction by the ratio of bf16 peaks, since their kernels are
bound by arithmetic; one generated stream by the ratio of memory bandwidths, since each frame
reads every weight once and does little arithmetic on it."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from pipeline.config import PROJECT_ROOT

COMMITTED_BENCH_DIR = PROJECT_ROOT / "assets" / "bench"


def _bench_time(bench: dict) -> str:
    """Sortable ISO time of a benchmark: its `time`, else its `date`, else the date in its file name."""
    for key in ("time", "date"):
        value = bench.get(key)
        if isinstance(value, str) and re.match(r"\d{4}-\d{2}-\d{2}", value):
            return value
    found = re.search(r"\d{4}-\d{2}-\d{2}", Path(str(bench.get("path", ""))).name)
    if found:
        return found.group(0)
    return bench.get("_mtime", "")


def latest_benchmarks(runs_dir: Path) -> list[dict]:
    """Benchmark JSON files written by `python -m pipeline bench` with training, extraction,
    generation or scaling figures (the workspace's and the ones committed with the project), newest
    first by the time recorded in them. Sub-folders are not read: assets/bench/profiles/ keeps
    profiled calls, whose step times the profiler slows."""
    paths = list((Path(runs_dir) / "bench").glob("*.json")) + list(COMMITTED_BENCH_DIR.glob("*.json"))
    results = []
    for path in paths:
        try:
            data = json.loads(path.read_text())
            mtime = datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).isoformat()
        except (OSError, json.JSONDecodeError):
            continue
        measured = isinstance(data, dict) and any(isinstance(data.get(k), dict) for k in ("train", "extract", "generate", "scaling"))
        if measured and not data.get("tiny"):
            results.append(data | {"path": str(path), "_mtime": mtime})  # tiny CPU benches time nothing real
    return sorted(results, key=_bench_time, reverse=True)


def card_matches(row_name: str, row: dict, bench: dict) -> bool:
    word = row.get("bench_name") or row_name.split("-")[0]
    return re.search(rf"(?<![A-Za-z0-9]){re.escape(str(word))}(?![A-Za-z0-9])", str(bench.get("card", "")),
                     re.IGNORECASE) is not None


def _variant(bench: dict, mode: str) -> dict:
    variants = (bench.get("train") or {}).get("variants") or []
    return next((v for v in variants if v.get("impl") == "project" and v.get("mode") == mode), {})


def _tokens_per_s(bench: dict, mode: str) -> float | None:
    """The training loop's tokens/s where the bench ran it (what a run gets: batches built ahead,
    no waits for the host), else the bare step's."""
    loop = ((bench.get("loop") or {}).get(mode) or {}).get("tokens_per_s")
    return loop or ((bench.get("train") or {}).get(mode) or {}).get("tokens_per_s")


def _batch_label(label: str) -> tuple[float, int]:
    """"360" → (360.0, 1) and "360x2" → (360.0, 2): audio seconds per batch, codecs at once."""
    seconds, _, codecs = label.partition("x")
    return float(seconds), int(codecs or 1)


def _extract_realtime(bench: dict) -> float | None:
    """Extraction over a written dataset at the largest batch measured, with the most codecs
    (extract_codes' default on a big card: loading, the encoder threads and cache writes
    included), else the codec's speed on one repeated batch."""
    extract = bench.get("extract") or {}
    batches = (extract.get("dataset") or {}).get("batches") or {}
    if batches:
        return batches[max(batches, key=_batch_label)].get("realtime_factor")
    return extract.get("realtime_factor")


COMPUTE, MEMORY = "compute", "memory"  # what limits a figure: it scales with bf16 peak, or with bandwidth
# figure → (how to read it from a bench, what limits it on another card; None: CPU work, taken as it is)
FIGURES = {
    "lora_tokens_per_s": (lambda b: _tokens_per_s(b, "lora"), COMPUTE),
    "full_tokens_per_s": (lambda b: _tokens_per_s(b, "full"), COMPUTE),
    "lora_start_s": (lambda b: _start(_variant(b, "lora")), None),
    "full_start_s": (lambda b: _start(_variant(b, "full")), None),
    "extract_realtime": (lambda b: _extract_realtime(b), COMPUTE),
    "extract_start_s": (lambda b: (b.get("extract") or {}).get("first_s"), None),
    "generate_frames_per_s": (lambda b: (b.get("generate") or {}).get("frames_per_s"), MEMORY),
    "generate_start_s": (lambda b: (b.get("generate") or {}).get("warmup_s"), None),
}
FIGURE_GROUPS = {"training": ("lora_tokens_per_s", "full_tokens_per_s", "lora_start_s", "full_start_s"),
                 "extraction": ("extract_realtime", "extract_start_s"),
                 "generation": ("generate_frames_per_s", "generate_start_s")}


def _start(variant: dict) -> float | None:
    """Model load and compile before the first step: the first step's time beyond a normal one."""
    first, step = variant.get("first_step_s"), variant.get("step_s")
    return max(0.0, first - step) if isinstance(first, (int, float)) and isinstance(step, (int, float)) else None


def bench_label(bench: dict) -> str:
    return f"{bench.get('card', '?')}, {_bench_time(bench)[:16].replace('T', ' ')}"


@dataclass(frozen=True)
class CardFigures:
    values: dict[str, float]
    sources: dict[str, str]          # figure → "measured on …" / "scaled from … by bf16 peak …" (or
                                     # "… by memory bandwidth …") / "taken from …"
    stale: str = ""                  # the card's own bench is older than the newest one: which that is

    def summary(self) -> str:
        """Per group of speeds: measured on which bench, or scaled from which and by what."""
        parts = [f"{group} {self.sources[names[0]]}" for group, names in FIGURE_GROUPS.items()]
        if self.stale:
            parts.append(f"its benchmark is older than the newest ({self.stale}): re-run "
                         "`python -m pipeline bench` on this card to refresh it")
        return "; ".join(parts)


def _ratio(limit: str | None, row: dict, donor: dict) -> tuple[float, str]:
    """How much faster `row`'s card is than the donor's for a figure `limit` bounds, and the words
    for it. `donor` holds the donor card's bf16_tflops and, where known, memory_tb_s. A card
    without bandwidth figures on both sides falls back to bf16 peak, and says so."""
    if limit is None:
        return 1.0, ""
    if limit == MEMORY and row.get("memory_tb_s") and donor.get("memory_tb_s"):
        mine, theirs = float(row["memory_tb_s"]), float(donor["memory_tb_s"])
        return mine / theirs, f"by memory bandwidth {mine:g}/{theirs:g} TB/s"
    mine, theirs = float(row["bf16_tflops"]), float(donor["bf16_tflops"])
    return mine / theirs, f"by bf16 peak {mine:g}/{theirs:g}"


def _donor_card(bench: dict, reference: dict | None, row: dict, cards: dict | None) -> dict:
    """The peaks of the card a bench ran on: its row in the price table when listed, its recorded
    bf16 peak, else the reference's (the last resort: this card's own, a ratio of 1)."""
    listed = next((r for name, r in (cards or {}).items() if card_matches(name, r, bench)), {})
    peak = bench.get("peak_tflops") or listed.get("bf16_tflops") or (reference or {}).get("bf16_tflops") \
        or row["bf16_tflops"]
    return {"bf16_tflops": peak, "memory_tb_s": listed.get("memory_tb_s")}


def card_figures(gpu: str, row: dict, benches: list[dict], reference: dict | None = None,
                 cards: dict | None = None) -> CardFigures:
    """Each speed figure for `gpu`: from its newest own benchmark, else from the newest benchmark
    that has the figure, scaled by the bound that limits it (see the module doc; start-up times are
    CPU work: taken as they are). `cards`: the price table's rows, for the donor card's bandwidth."""
    # each figure from the newest bench that has it (an extraction-only call has no step times)
    own = [b for b in benches if card_matches(gpu, row, b)]
    values, sources = {}, {}
    for name, (read, limit) in FIGURES.items():
        got = next(((b, read(b)) for b in own if isinstance(read(b), (int, float)) and read(b) > 0), None)
        if got:
            values[name], sources[name] = float(got[1]), f"measured on {bench_label(got[0])}"
            continue
        donor = next(((b, read(b)) for b in benches if isinstance(read(b), (int, float)) and read(b) >= 0), None)
        if donor:
            bench, value = donor
            label = bench_label(bench)
            ratio, words = _ratio(limit, row, _donor_card(bench, reference, row, cards))
        elif reference and isinstance(reference.get(name), (int, float)):
            value, label = reference[name], reference.get("source", "the reference speeds")
            ratio, words = _ratio(limit, row, {"bf16_tflops": reference.get("bf16_tflops", row["bf16_tflops"]),
                                               "memory_tb_s": reference.get("memory_tb_s")})
        else:
            values[name] = 0.0 if name.endswith("_start_s") else math.nan
            sources[name] = "not measured"
            continue
        values[name] = float(value) * ratio
        sources[name] = f"scaled from {label} {words}" if words else f"taken from {label}"
    stale = ""
    timed = [b for b in benches if isinstance(b.get("train"), dict)]  # a scaling or extraction call times no step
    timed_own = [b for b in timed if card_matches(gpu, row, b)]
    if timed_own and _bench_time(timed_own[0]) < _bench_time(timed[0]) and not card_matches(gpu, row, timed[0]):
        stale = bench_label(timed[0])
    return CardFigures(values, sources, stale)


# -- phases ----------------------------------------------------------------------------------------
