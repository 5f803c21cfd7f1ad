"""One line of the doctor's report."""

from __future__ import annotations

from dataclasses import asdict, dataclass

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
