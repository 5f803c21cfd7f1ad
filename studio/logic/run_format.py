"""Durations, money, sizes and ranges in words, as the Training and Modes & cost tabs show them.

Pure formatting of numbers, apart from where they are read, so that both tabs word a run and an
estimate alike. No gradio import.
"""

from __future__ import annotations

import math


def format_duration(seconds: float | None) -> str:
    """`3 h 58 min`, `12 min`, `45 s`; an em dash when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "—"
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = seconds / 60
    if minutes < 60:
        return f"{minutes:.0f} min" if minutes >= 10 else f"{minutes:.1f} min"
    hours, rest = divmod(round(minutes), 60)
    return f"{hours} h {rest:02d} min"


def format_money(usd: float | None) -> str:
    if usd is None or not math.isfinite(usd):
        return "—"
    return f"${usd:,.2f}" if usd >= 0.01 or usd == 0 else "< $0.01"


def _money(usd: float) -> str:
    return "< $0.01" if 0 < usd < 0.01 else format_money(usd)


def _approx_time(minutes: float) -> str:
    return "< 1 min" if minutes < 1 else format_duration(minutes * 60)


def time_range(low: float, high: float) -> str:
    """Minutes as `12–40 min`, `1 h 05 min – 3 h 10 min`, or one value when both ends agree."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return "not measured"
    if abs(high - low) <= 0.02 * max(high, 1e-9):
        return _approx_time(high)
    a, b = _approx_time(low), _approx_time(high)
    if a.endswith(" min") and b.endswith(" min") and "h" not in a + b:
        return f"{a[:-4]}–{b}"
    return f"{a} – {b}"


def money_range(low: float, high: float) -> str:
    """Dollars as `$0.40–$1.20`, or one value when both ends agree."""
    if abs(high - low) <= 0.02 * max(high, 1e-9):
        return _money(high)
    return f"{_money(low)}–{_money(high)}"


def format_size(gb: float) -> str:
    return f"{gb:.1f} GB" if gb >= 1 else f"{gb * 1000:.0f} MB"


def short_source(text: str) -> str:
    """`estimated: <long reference> × 0.35` → `estimated: reference × 0.35` (for narrow tables)."""
    if text.startswith("estimated:") and "×" in text:
        return "estimated: reference × " + text.rsplit("×", 1)[1].strip()
    return text


def hourly_price(price: float, gpus: int) -> str:
    return f"${price:.2f}/h" if gpus == 1 else f"{gpus} × ${price:.2f}/h"
