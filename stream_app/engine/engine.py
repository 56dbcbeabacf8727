"""The engine façade driven by both `replay` and the streaming worker.

State is per patient (`PatientState`): every record version that won, the processed
event ids, and per patient-day bookkeeping of what was emitted. It is serialisable to
bytes (`to_bytes` / `PatientState.from_bytes`) so the worker can keep it in a Faust table.

Time is always passed in (`now`, seconds since the epoch). `rev_floor` is the lowest
revision the next emission may carry: replay passes 0 (revisions 1, 2, ...); the worker
passes the wall clock in microseconds so that a key's revision keeps rising across
crashes and restarts (contract.md §3).
"""

from __future__ import annotations

from dataclasses import dataclass, field

LINE = "line"
ALERT = "alert"


@dataclass(slots=True)
class Decision:
    kind: str  # LINE or ALERT
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


def __getattr__(name: str):
    # Engine and PatientState live in core.py / state.py (which import this module).
    if name == "Engine":
        from stream_app.engine.core import Engine

        return Engine
    if name == "PatientState":
        from stream_app.engine.state import PatientState

        return PatientState
    raise AttributeError(name)
