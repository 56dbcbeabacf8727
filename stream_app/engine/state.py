"""Per-patient state kept between batches, and its byte encoding for the worker's table.

A patient's state holds the winning version of each of its records (all days: dispense
matching by order_id and payer frequency limits cross days), the event ids already
processed (redelivery), and per patient-day the timing and the last message emitted for
every key the day has ever emitted (needed to void, resolve and re-emit on close), and
the versions of each encounter its records may inherit context from (encounters.py).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field, fields
from datetime import date, datetime
from operator import attrgetter

import orjson

from stream_app.engine.records import (
    Administration,
    Dispense,
    Drug,
    EMService,
    Encounter,
    InputRecord,
)
from stream_app.vocabulary import ADMINISTRATION, DISPENSE, EM_SERVICE, ENCOUNTER_UPDATED

# Layout of PatientState.to_bytes(); the worker's table header carries it so a value
# written in another layout is refused rather than misread.
LAYOUT = 3

_CLASSES = {ADMINISTRATION: Administration, EM_SERVICE: EMService, DISPENSE: Dispense,
            ENCOUNTER_UPDATED: Encounter}


class Emitted:
    """The last message a key emitted, without its revision.

    Held as the dict it was rendered as, or, once loaded from the worker's table, as its
    JSON bytes: a patient's emitted messages were most of what loading its state parsed
    (~2 kB of JSON a patient), yet they are read only to void, resolve, close or re-emit
    a key. A diff compares a freshly rendered message with the dict when there is one,
    else with the bytes (`same_as`).
    """

    __slots__ = ("rev", "kind", "state", "final", "_value", "_body")

    def __init__(self, rev: int, kind: str, value: dict | None = None, *,
                 body: bytes | memoryview | None = None, state: str | None = None,
                 final: bool | None = None):
        self.rev = rev
        self.kind = kind  # "line" | "alert"
        self._value = value
        self._body = body
        if value is not None:
            state, final = value["state"], value["final"]
        self.state: str = state  # type: ignore[assignment]
        self.final: bool = final  # type: ignore[assignment]

    @property
    def value(self) -> dict:
        if self._value is None:
            self._value = orjson.loads(self._body)
        return self._value

    @property
    def body(self) -> bytes | memoryview:
        if self._body is None:
            self._body = orjson.dumps(self._value)
        return self._body

    def same_as(self, value: dict) -> bool:
        """Whether `value` is the message emitted last (what a diff asks)."""
        if self._value is not None:
            return self._value == value
        return self._body == orjson.dumps(value)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Emitted):
            return NotImplemented
        return (self.rev, self.kind, self.value) == (other.rev, other.kind, other.value)

    def __repr__(self) -> str:
        return f"Emitted(rev={self.rev}, kind={self.kind!r}, state={self.state!r})"


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
    records: dict[tuple[str, str], InputRecord] = field(default_factory=dict)
    seen: dict[str, str] = field(default_factory=dict)  # event_id -> service date (ISO)
    days: dict[str, DayState] = field(default_factory=dict)  # ISO date -> day
    # encounter_id -> the versions the context rule needs (encounters.needed_versions)
    encounters: dict[str, list[Encounter]] = field(default_factory=dict)
    # Encoded form of each record as last loaded or saved (record object, bytes): records
    # are immutable, so an unchanged one is not encoded again on the next save.
    _encoded: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def open_days(self) -> int:
        return sum(1 for d in self.days.values() if d.closed_at is None)

    def to_bytes(self) -> bytes:
        """u32 length + JSON header (patient, seen ids, days with `[rev, kind, state,
        final]` per emitted key), then per emitted key in header order u32 length + its
        message's JSON, then per record u32 length + JSON `[event_type, field values in
        declaration order...]`. Messages sit outside the header so loading a state need
        not parse them (see Emitted). Encounter versions are encoded as records."""
        bodies = []
        days = {}
        for k, d in self.days.items():
            keys = {}
            for key, e in d.emitted.items():
                keys[key] = [e.rev, e.kind, e.state, e.final]
                body = e.body
                bodies.append(_U32.pack(len(body)))
                bodies.append(body)
            days[k] = [d.last_input_at, d.end_ts, d.settled_evaluated, d.closed_at, keys]
        head = orjson.dumps({"p": self.patient_id, "s": self.seen, "d": days})
        parts = [_U32.pack(len(head)), head, *bodies]
        enc = self._encoded
        fresh = {}
        for key, rec in self.records.items():
            cached = enc.get(key)
            if cached is not None and cached[0] is rec:
                blob = cached[1]
            else:
                et = rec.event_type
                blob = orjson.dumps((et,) + _GETTERS[et](rec))
            fresh[key] = (rec, blob)
            parts.append(_U32.pack(len(blob)))
            parts.append(blob)
        for versions in self.encounters.values():
            for v in versions:
                blob = orjson.dumps((ENCOUNTER_UPDATED,) + _GETTERS[ENCOUNTER_UPDATED](v))
                parts.append(_U32.pack(len(blob)))
                parts.append(blob)
        self._encoded = fresh
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes, layout: int = LAYOUT) -> PatientState:
        if layout != LAYOUT:
            raise ValueError(f"unknown patient state layout {layout} (this build reads {LAYOUT})")
        view = memoryview(data)
        (n,) = _U32.unpack_from(view, 0)
        obj = orjson.loads(view[4:4 + n])
        st = cls(obj["p"])
        st.seen = obj["s"]
        pos = 4 + n
        unpack = _U32.unpack_from
        for k, (last, end, settled, closed, em) in obj["d"].items():
            emitted = {}
            for key, (rev, kind, state, final) in em.items():
                (n,) = unpack(view, pos)
                emitted[key] = Emitted(rev, kind, body=view[pos + 4:pos + 4 + n],
                                       state=state, final=final)
                pos += 4 + n
            st.days[k] = DayState(last, end, settled, closed, emitted)
        end = len(data)
        records, enc = st.records, st._encoded
        while pos < end:
            (n,) = unpack(view, pos)
            blob = view[pos + 4:pos + 4 + n]  # kept as a view: join() takes it as is
            pos += 4 + n
            rec = _decode_record(orjson.loads(blob))
            if rec.event_type == ENCOUNTER_UPDATED:
                st.encounters.setdefault(rec.encounter_id, []).append(rec)
                continue
            key = (rec.event_type, rec.record_id)
            records[key] = rec
            enc[key] = (rec, blob)
        return st


_U32 = struct.Struct(">I")
_FIELDS = {et: tuple(f.name for f in fields(cls)) for et, cls in _CLASSES.items()}
_GETTERS = {et: attrgetter(*names) for et, names in _FIELDS.items()}


def _indices(et: str, names: set[str]) -> tuple[int, ...]:
    return tuple(i for i, n in enumerate(_FIELDS[et], 1) if n in names)


# Positions (in the encoded list, after the event type) that need converting back.
_DATETIMES = {et: _indices(et, {"occurred_at", "recorded_at", "ended_at"}) for et in _CLASSES}
_DATES = {et: _indices(et, {"service_date"}) for et in _CLASSES}
_TUPLES = {et: _indices(et, {"diagnosis_codes", "charge_modifiers", "modifiers"}) for et in _CLASSES}
_DRUGS = {et: _indices(et, {"drug"}) for et in _CLASSES}


def _decode_record(obj: list):
    """Inverse of the encoding above (orjson writes datetimes and dates as RFC 3339
    strings, tuples as lists and the nested Drug as an object)."""
    et = obj[0]
    fromiso = datetime.fromisoformat
    for i in _DATETIMES[et]:
        if obj[i] is not None:
            obj[i] = fromiso(obj[i])
    for i in _DATES[et]:
        obj[i] = date.fromisoformat(obj[i])
    for i in _TUPLES[et]:
        if obj[i] is not None:
            obj[i] = tuple(obj[i])
    for i in _DRUGS[et]:
        obj[i] = Drug(**obj[i])
    return _CLASSES[et](*obj[1:])
