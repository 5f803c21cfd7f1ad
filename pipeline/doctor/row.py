"""One line of the doctor's report."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

PASS, WARN, FAIL = "✓", "⚠", "✗"
STATUSES = (PASS, WARN, FAIL)


@dataclass
class Row:
    group: str  # machine | hub | checkpoint | codec | model | training
    name: str
    status: str  # PASS | WARN | FAIL
    detail: str
    advice: str = ""  # one line: what to do (always set for FAIL)

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"Row status must be one of {STATUSES}, got {self.status!r}.")

    @property
    def failed(self) -> bool:
        return self.status == FAIL

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Row":
        return cls(**{k: str(data.get(k, "")) for k in ("group", "name", "status", "detail", "advice")})


def guarded(group: str, name: str, check: Callable[[], "Row"]) -> "Row":
    """check(), or a ✗ row naming the error it raised: one broken check never hides the others
    or stops the report."""
    try:
        return check()
    except Exception as exc:  # noqa: BLE001 - a failing check is a row of the report, not a crash
        message = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        return Row(group, name, FAIL, f"{type(exc).__name__}: {message}",
                   "Fix what the message names; run the doctor again (PIPELINE_DEBUG=1 shows the traceback).")
