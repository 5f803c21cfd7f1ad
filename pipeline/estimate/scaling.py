"""How much faster N GPUs train than one, for the cost estimate, and the words that say so.

The figure is the scaling efficiency `python -m pipeline bench --only scaling` records per mode
(tokens/s on N GPUs / (N x tokens/s on one), the bench JSON's "scaling" section), from the card's
own benchmarks only: the interconnect, not the chip's peak, decides it, so it is never carried
over from another card. Where the card has none, N GPUs are assumed to train N times as fast,
and the estimate says so. Training speed divides by N x efficiency; money multiplies by N (every
GPU is paid for the whole run).
"""

from __future__ import annotations

from dataclasses import dataclass

KINDS = ("lora", "full")
SCOPE = ("training and held-out loss ÷ (GPUs × efficiency); VQ extraction, example audio and merge "
         "as on one GPU; money × GPUs")


@dataclass(frozen=True)
class Scaling:
    """The efficiency used for `gpus` GPUs of one card, and where it came from."""

    gpus: int
    efficiency: dict[str, float]   # kind (lora, full) → share of linear speed-up used
    measured: bool                 # recorded by the bench for exactly this GPU count
    text: str                      # the assumption in words, shown beside the estimate

    def speed_factor(self, kind: str) -> float:
        """Tokens/s on `gpus` GPUs over tokens/s on one."""
        return self.gpus * self.efficiency[kind]


ONE_GPU = Scaling(1, dict.fromkeys(KINDS, 1.0), True, "")


def recorded_scaling(bench: dict) -> tuple[int, dict[str, float]] | None:
    """(GPU count, {kind: efficiency}) of a bench JSON's scaling section; None when it has no
    usable one (no section, an error, a single GPU, a mode without a figure)."""
    section = bench.get("scaling")
    if not isinstance(section, dict) or "error" in section:
        return None
    gpus = section.get("gpus")
    if not isinstance(gpus, int) or isinstance(gpus, bool) or gpus < 2:
        return None
    figures = {kind: (section.get(kind) or {}).get("efficiency") for kind in KINDS}
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in figures.values()):
        return None
    return gpus, {kind: float(value) for kind, value in figures.items()}


def _figures(efficiency: dict[str, float]) -> str:
    return f"LoRA {efficiency['lora']:.2f}, full {efficiency['full']:.2f} of linear"


def card_scaling(gpus: int, card: str, benches: list[tuple[str, dict]]) -> Scaling:
    """The scaling for `gpus` GPUs from `benches` ((label, bench JSON), the card's own, newest
    first): a figure recorded for exactly that count, else the nearest recorded count (a larger
    one first: efficiency falls as GPUs are added, so it errs slow), else linear, each said in words."""
    if gpus < 1:
        raise ValueError(f"The GPU count must be at least 1, got {gpus}.")
    if gpus == 1:
        return ONE_GPU
    recorded = [(label, *found) for label, bench in benches if (found := recorded_scaling(bench))]
    exact = next((r for r in recorded if r[1] == gpus), None)
    if exact:
        label, _, efficiency = exact
        return Scaling(gpus, efficiency, True, f"scaling measured on {gpus} GPUs ({label}): {_figures(efficiency)}")
    larger = sorted((r for r in recorded if r[1] > gpus), key=lambda r: r[1])
    smaller = sorted((r for r in recorded if r[1] < gpus), key=lambda r: -r[1])
    if larger or smaller:
        label, measured_on, efficiency = (larger or smaller)[0]
        how = ("fewer GPUs scale at least as well, so this errs slow" if larger
               else f"assumed to hold for {gpus}, not measured")
        return Scaling(gpus, efficiency, False, f"scaling measured on {measured_on} GPUs, not {gpus} ({label}): "
                                                f"{_figures(efficiency)}; {how}")
    return Scaling(gpus, dict.fromkeys(KINDS, 1.0), False,
                   f"scaling not measured on {card}: assumed linear ({gpus} × one GPU's speed), not measured")
