"""The engine's value types: what a call decides (`Decision`, `Outcome`) and the timing
it decides with (`EngineSettings`, contract.md §3 "settle" and "close")."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class Decision:
    kind: str  # vocabulary.LINE or vocabulary.ALERT
    key: str  # line_id or alert_id
    value: dict  # the full output record, revision included


@dataclass(slots=True)
class Outcome:
    decisions: list[Decision] = field(default_factory=list)
    duplicates: int = 0  # redelivered event ids ignored
    late: int = 0  # records for an already closed patient-day
    closed_days: int = 0
    opened_days: int = 0
    dropped_days: int = 0


@dataclass(frozen=True, slots=True)
class EngineSettings:
    settle_seconds: float = 900.0
    close_after_seconds: float = 86400.0
    retention_days: float = 30.0
    default_tz: str = "UTC"
