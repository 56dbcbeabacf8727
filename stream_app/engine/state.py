"""Per-patient state kept between batches, and its byte encoding for the worker's table.

A patient's state holds the winning version of each of its records (all days: dispense
matching by order_id and payer frequency limits cross days), the event ids already
processed (redelivery), and per patient-day the timing and the last message emitted for
every key the day has ever emitted (needed to void, resolve and re-emit on close).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import date, datetime

import orjson

from stream_app.engine.records import (
    ADMINISTRATION,
    DISPENSE,
    EM_SERVICE,
    Administration,
    Dispense,
    Drug,
    EMService,
)

_CLASSES = {ADMINISTRATION: Administration, EM_SERVICE: EMService, DISPENSE: Dispense}
_DATETIME_FIELDS = frozenset({"occurred_at", "recorded_at", "ended_at"})
_TUPLE_FIELDS = frozenset({"diagnosis_codes", "charge_modifiers", "modifiers"})
_FIELD_NAMES = {et: tuple(f.name for f in fields(cls)) for et, cls in _CLASSES.items()}
_DRUG_FIELDS = tuple(f.name for f in fields(Drug))


@dataclass(slots=True)
class Emitted:
    rev: int
    kind: str  # "line" | "alert"
    value: dict  # last emitted message without "revision"


@dataclass(slots=True)
class DayState:
    last_input_at: float = 0.0
    end_ts: float = 0.0  # end of the service date in the facility zone (max over records)
    settled_evaluated: bool = False  # last evaluation already treated the day as settled
    closed_at: float | None = None
    emitted: dict[str, Emitted] = field(default_factory=dict)

    @property
    def closed(self) -> bool:
        return self.closed_at is not None


@dataclass(slots=True)
class PatientState:
    patient_id: str
    records: dict[tuple[str, str], object] = field(default_factory=dict)
    seen: dict[str, str] = field(default_factory=dict)  # event_id -> service date (ISO)
    days: dict[str, DayState] = field(default_factory=dict)  # ISO date -> day

    @property
    def open_days(self) -> int:
        return sum(1 for d in self.days.values() if d.closed_at is None)

    def to_bytes(self) -> bytes:
        return orjson.dumps({
            "p": self.patient_id,
            "r": [_record_to_obj(r) for r in self.records.values()],
            "s": self.seen,
            "d": {k: [d.last_input_at, d.end_ts, d.settled_evaluated, d.closed_at,
                      {key: [e.rev, e.kind, e.value] for key, e in d.emitted.items()}]
                  for k, d in self.days.items()},
        })

    @classmethod
    def from_bytes(cls, data: bytes) -> PatientState:
        obj = orjson.loads(data)
        st = cls(obj["p"])
        for ro in obj["r"]:
            rec = _obj_to_record(ro)
            st.records[(rec.event_type, rec.record_id)] = rec
        st.seen = obj["s"]
        for k, (last, end, settled, closed, em) in obj["d"].items():
            st.days[k] = DayState(last, end, settled, closed,
                                  {key: Emitted(rev, kind, value) for key, (rev, kind, value) in em.items()})
        return st


def _record_to_obj(rec) -> list:
    out: list = [rec.event_type]
    for name in _FIELD_NAMES[rec.event_type]:
        v = getattr(rec, name)
        if isinstance(v, datetime | date):
            v = v.isoformat()
        elif isinstance(v, Drug):
            v = [getattr(v, n) for n in _DRUG_FIELDS]
        out.append(v)
    return out


def _obj_to_record(obj: list):
    et = obj[0]
    kwargs = {}
    for name, v in zip(_FIELD_NAMES[et], obj[1:], strict=True):
        if v is not None:
            if name in _DATETIME_FIELDS:
                v = datetime.fromisoformat(v)
            elif name == "service_date":
                v = date.fromisoformat(v)
            elif name in _TUPLE_FIELDS:
                v = tuple(v)
            elif name == "drug":
                v = Drug(*v)
        kwargs[name] = v
    return _CLASSES[et](**kwargs)
