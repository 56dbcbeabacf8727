"""`parse_record`: one message value -> a typed input record or a dead letter.

Hot path. Never raises. Error messages name the field and the problem, never the value
(values may be PHI).
"""

from __future__ import annotations

import re
from dataclasses import fields
from datetime import datetime

import orjson

from stream_app.engine import normalise
from stream_app.engine.records import (
    MAX_RECORD_BYTES,
    Administration,
    DeadLetter,
    Dispense,
    Drug,
    EMService,
    Encounter,
    InputRecord,
)
from stream_app.vocabulary import (
    ADMINISTRATION,
    COMPLETED,
    CONTAINERS,
    DRUG_CATEGORIES,
    EHR_EVENT_TYPES,
    EM_SERVICE,
    ENCOUNTER_UPDATED,
    ENTERED_IN_ERROR,
    INCONSISTENT_FIELD,
    INVALID_ENCODING,
    INVALID_JSON,
    INVALID_TIMESTAMP,
    MISSING_FIELD,
    NDC_UNITS,
    NOT_AN_OBJECT,
    PAYER_CLASSES,
    TOO_LARGE,
    UNKNOWN_EVENT_TYPE,
    WRONG_TYPE,
)

MAX_ID_CHARS = 256  # ids, codes, zone names, lot numbers
MAX_TEXT_CHARS = 4096  # free text: drug name, site
MAX_NUMBER = 1e9
MIN_YEAR = 1900
MAX_YEAR = 2100

_DOSE_UNITS = {"mg": "mg", "mcg": "mcg", "g": "g", "ml": "mL", "units": "units",
               "unit": "units", "u": "units"}
_QUANTITY_UNITS = {u: u for u in NDC_UNITS}
_CATEGORIES = {c: c for c in DRUG_CATEGORIES}
_CONTAINERS = {c: c for c in CONTAINERS}
_PAYER_CLASSES = {p: p for p in PAYER_CLASSES}
_STATUSES = {COMPLETED: COMPLETED, ENTERED_IN_ERROR: ENTERED_IN_ERROR}
_POS = frozenset(f"{i:02d}" for i in range(100))
_ENUM_SEPARATORS = str.maketrans({" ": "_", "-": "_"})

# RFC 3339 date-time (section 5.6), `T` or space between date and time, explicit offset.
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})", re.ASCII)

# The common shapes of _RFC3339, which fromisoformat takes as they are.
_PLAIN_TIMESTAMP = re.compile(
    r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:Z|[+-]\d{2}:\d{2})", re.ASCII).fullmatch
_fromisoformat = datetime.fromisoformat

_UTF8_BOM = b"\xef\xbb\xbf"
_NO_DRUG = Drug()  # frozen: one shared instance for records without a drug object


class _Reject(Exception):  # noqa: N818 - internal control flow, never escapes
    __slots__ = ("dead_letter",)

    def __init__(self, code: str, error: str, field: str | None) -> None:
        self.dead_letter = DeadLetter(code, error, field)


def _missing(path: str) -> _Reject:
    return _Reject(MISSING_FIELD, f"required field {path} is missing or empty", path)


def _wrong(path: str, what: str) -> _Reject:
    return _Reject(WRONG_TYPE, f"field {path} {what}", path)


# --- field readers -----------------------------------------------------------------------

def _too_long(path: str, limit: int) -> _Reject:
    return _wrong(path, f"is longer than {limit} characters")


def _opt_str(obj: dict, key: str, path: str, limit: int) -> str | None:
    """The trimmed string, None when absent or empty."""
    v = obj.get(key)
    if type(v) is not str:
        if v is None:
            return None
        raise _wrong(path, "must be a string")
    v = v.strip()
    if len(v) > limit:
        raise _too_long(path, limit)
    return v or None


def _req_str(obj: dict, key: str, limit: int) -> str:
    v = _opt_str(obj, key, key, limit)
    if v is None:
        raise _missing(key)
    return v


def _opt_upper(obj: dict, key: str, path: str) -> str | None:
    v = _opt_str(obj, key, path, MAX_ID_CHARS)
    return v.upper() if v is not None else None


def _opt_enum(obj: dict, key: str, path: str, allowed: dict[str, str], what: str,
              *, lower: bool = True) -> str | None:
    v = _opt_str(obj, key, path, MAX_ID_CHARS)
    if v is None:
        return None
    canonical = allowed.get(v)
    if canonical is None:
        folded = v.lower() if lower else v.upper()
        canonical = allowed.get(folded) or allowed.get(folded.translate(_ENUM_SEPARATORS))
        if canonical is None:
            raise _wrong(path, f"must be one of {what}")
    return canonical


def _opt_number(obj: dict, key: str, path: str, *, allow_zero: bool) -> float | None:
    v = obj.get(key)
    if v is None:
        return None
    t = type(v)
    if t is not int and t is not float:  # bool is not int by `type`
        raise _wrong(path, "must be a number")
    f = float(v)
    if not (-MAX_NUMBER <= f <= MAX_NUMBER):  # also NaN
        raise _wrong(path, "is not a finite number of plausible size")
    if f < 0 or (f == 0 and not allow_zero):
        raise _wrong(path, "must be greater than or equal to zero" if allow_zero
                     else "must be greater than zero")
    return f


def _opt_codes(obj: dict, key: str, path: str) -> tuple[str, ...] | None:
    v = obj.get(key)
    if v is None:
        return None
    if type(v) is not list:
        raise _wrong(path, "must be a list of strings")
    out = []
    for item in v:
        if type(item) is not str:
            raise _wrong(path, "must be a list of strings")
        item = item.strip()
        if len(item) > MAX_ID_CHARS:
            raise _wrong(path, f"has an entry longer than {MAX_ID_CHARS} characters")
        if item:
            out.append(item.upper())
    return tuple(out) if out else None


def _flag(v: object, path: str) -> bool:
    """A present optional boolean (absent is False, read at the call site: most records
    do not carry the field)."""
    if type(v) is not bool:
        raise _wrong(path, "must be true or false")
    return v


def _opt_pos(obj: dict, key: str) -> str | None:
    v = _opt_str(obj, key, key, MAX_ID_CHARS)
    if v is None:
        return None
    if v not in _POS:
        raise _wrong(key, "must be a two-digit place-of-service code")
    return v


def _opt_timestamp(obj: dict, key: str) -> datetime | None:
    v = obj.get(key)
    if type(v) is not str:
        if v is None:
            return None
        raise _wrong(key, "must be an RFC 3339 timestamp string")
    # Fast path for the two shapes producers send, "YYYY-MM-DDTHH:MM:SS+HH:MM" and
    # "YYYY-MM-DDTHH:MM:SSZ": a subset of _RFC3339 that needs no rewriting before
    # fromisoformat (no padding, fraction, `t`, `z` or space), so its result is the general
    # path's, without the second regex's group and rewrite checks. Anything else, including
    # a value fromisoformat or the year range rejects, takes the general path, which owns
    # the errors. (A cheaper separator-only check plus fromisoformat is NOT equivalent:
    # fromisoformat accepts e.g. "2100-12-31T23:Z\x00:59-00:00".)
    if _PLAIN_TIMESTAMP(v) is not None:
        try:
            dt = _fromisoformat(v)
        except ValueError:
            pass
        else:
            if MIN_YEAR <= dt.year <= MAX_YEAR:
                return dt
    return _timestamp(v.strip(), key)


def _timestamp(v: str, key: str) -> datetime | None:
    """The general RFC 3339 reader for a trimmed string (None when empty)."""
    if not v:
        return None
    m = _RFC3339.fullmatch(v)
    if m is None:
        raise _Reject(INVALID_TIMESTAMP,
                      f"field {key} is not an RFC 3339 timestamp with a UTC offset or Z", key)
    if v[10] != "T" or v[-1] == "z":
        v = v[:10] + "T" + v[11:-1] + v[-1].upper()
    frac = m.group(1)
    if frac is not None and len(frac) > 7:  # fromisoformat wants at most 6 digits
        start = m.start(1)
        v = v[:start + 7] + v[m.end(1):]
    try:
        dt = datetime.fromisoformat(v)
    except ValueError:
        raise _Reject(INVALID_TIMESTAMP, f"field {key} is not a valid date and time",
                      key) from None
    if not (MIN_YEAR <= dt.year <= MAX_YEAR):
        raise _Reject(INVALID_TIMESTAMP,
                      f"field {key} has a year outside {MIN_YEAR}..{MAX_YEAR}", key)
    return dt


# --- record parsing ----------------------------------------------------------------------

def _loads(raw: object) -> object:
    if type(raw) is not bytes:
        if isinstance(raw, str):
            if len(raw) > MAX_RECORD_BYTES:
                raise _Reject(TOO_LARGE, f"record is larger than {MAX_RECORD_BYTES} bytes",
                              None)
            try:
                raw = raw.encode("utf-8")
            except UnicodeEncodeError:
                raise _Reject(INVALID_ENCODING, "record text is not valid Unicode",
                              None) from None
        elif isinstance(raw, bytes | bytearray | memoryview):
            try:
                raw = bytes(raw)
            except Exception:
                raise _Reject(INVALID_JSON, "record value is not readable", None) from None
        elif raw is None:
            raise _Reject(NOT_AN_OBJECT, "record has no value", None)
        else:
            raise _Reject(INVALID_JSON, "record value is neither bytes nor text", None)
    if len(raw) > MAX_RECORD_BYTES:
        raise _Reject(TOO_LARGE, f"record is larger than {MAX_RECORD_BYTES} bytes", None)
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _Reject(INVALID_ENCODING, "record is not valid UTF-8", None) from None
    if raw.startswith(_UTF8_BOM):
        try:
            return orjson.loads(raw[3:])
        except orjson.JSONDecodeError:
            pass
    raise _Reject(INVALID_JSON, "record is not well-formed JSON", None)


def _parse_drug(obj: dict) -> Drug:
    d = obj.get("drug")
    if d is None:
        return _NO_DRUG
    if type(d) is not dict:
        raise _wrong("drug", "must be an object")
    # Positional, in Drug's field order (checked by _check_field_order): keyword matching
    # costs about as much as the validation. Each value is read in the order of the fields,
    # which is also the order in which a record with several bad fields reports the first.
    return _new_drug(
        _opt_str(d, "name", "drug.name", MAX_TEXT_CHARS),
        _opt_str(d, "ndc", "drug.ndc", MAX_ID_CHARS),
        _opt_upper(d, "hcpcs", "drug.hcpcs"),
        _opt_number(d, "dose", "drug.dose", allow_zero=False),
        _opt_enum(d, "dose_unit", "drug.dose_unit", _DOSE_UNITS, "mg, mcg, g, mL, units"),
        _opt_enum(d, "category", "drug.category", _CATEGORIES,
                  "the drug categories of the contract") or "therapeutic",
        _opt_enum(d, "container", "drug.container", _CONTAINERS,
                  ", ".join(CONTAINERS)) or "unknown",
        _opt_number(d, "wasted_amount", "drug.wasted_amount", allow_zero=True),
        _opt_str(d, "lot_number", "drug.lot_number", MAX_ID_CHARS),
    )


def _parse(raw: object, default_tz: str) -> InputRecord:
    obj = _loads(raw)
    if type(obj) is not dict:
        raise _Reject(NOT_AN_OBJECT, "record is not a JSON object", None)

    event_type = _req_str(obj, "event_type", MAX_ID_CHARS)
    if event_type not in _EVENT_TYPES:
        raise _Reject(UNKNOWN_EVENT_TYPE, "event_type is not a known event type", "event_type")
    event_id = _req_str(obj, "event_id", MAX_ID_CHARS)
    record_id = _req_str(obj, "record_id", MAX_ID_CHARS)
    patient_id = _req_str(obj, "patient_id", MAX_ID_CHARS)
    occurred_at = _opt_timestamp(obj, "occurred_at")
    if occurred_at is None:
        raise _missing("occurred_at")

    status = _opt_enum(obj, "status", "status", _STATUSES,
                       "completed, entered-in-error") or COMPLETED
    recorded_at = _opt_timestamp(obj, "recorded_at") or occurred_at
    encounter_id = _opt_str(obj, "encounter_id", "encounter_id", MAX_ID_CHARS)
    tz = own_tz = _opt_str(obj, "facility_timezone", "facility_timezone", MAX_ID_CHARS)
    if tz is None:
        tz = default_tz
        zi = normalise.zone(tz)
        if zi is None:
            raise _wrong("facility_timezone",
                         "is absent and the configured default time zone is unknown")
    else:
        zi = normalise.zone(tz)
        if zi is None:
            raise _wrong("facility_timezone", "must be a known IANA time zone name")
    # normalise.service_date(occurred_at, tz) without its cache: occurred_at is always
    # aware here and tz a known zone, and timestamps rarely repeat, so the cache's hashing
    # of an aware datetime cost more than the conversion it saved.
    service_date = occurred_at.astimezone(zi).date()
    tz_given = own_tz is not None

    # The records are built positionally (_new_*: see _constructor), in their dataclass
    # field order (checked by _check_field_order at import): keyword matching over ~20
    # fields cost more than the validation of them. Arguments are evaluated left to right,
    # so the field checks run in the same order as before and a record with several bad
    # fields reports the same one.
    if event_type == ADMINISTRATION:
        ended_at = _opt_timestamp(obj, "ended_at")
        if ended_at is not None and ended_at < occurred_at:
            raise _Reject(INVALID_TIMESTAMP, "field ended_at is before occurred_at", "ended_at")
        route = _opt_str(obj, "route", "route", MAX_ID_CHARS)
        if route is not None and normalise.normalize_route(route) is None:
            raise _wrong("route", "is not a recognised route of administration")
        return _new_administration(
            event_id, record_id, patient_id, occurred_at, recorded_at, service_date, tz,
            status, encounter_id, tz_given,
            ended_at,
            _opt_pos(obj, "place_of_service"),
            _opt_enum(obj, "payer_class", "payer_class", _PAYER_CLASSES,
                      ", ".join(PAYER_CLASSES)),
            route,
            _opt_str(obj, "site", "site", MAX_TEXT_CHARS),
            _parse_drug(obj),
            _opt_str(obj, "performer_id", "performer_id", MAX_ID_CHARS),
            _opt_upper(obj, "performer_credential", "performer_credential"),
            _opt_str(obj, "rendering_npi", "rendering_npi", MAX_ID_CHARS),
            _opt_str(obj, "supervising_npi", "supervising_npi", MAX_ID_CHARS),
            _opt_str(obj, "order_id", "order_id", MAX_ID_CHARS),
            _opt_codes(obj, "diagnosis_codes", "diagnosis_codes"),
            _opt_upper(obj, "charge_code", "charge_code"),
            _opt_codes(obj, "charge_modifiers", "charge_modifiers") or (),
            False if (flag := obj.get("in_progress")) is None else _flag(flag, "in_progress"),
        )

    if event_type == EM_SERVICE:
        separately = obj.get("separately_identifiable")
        if separately is None:
            separately = False
        elif type(separately) is not bool:
            raise _wrong("separately_identifiable", "must be true or false")
        return _new_em_service(
            event_id, record_id, patient_id, occurred_at, recorded_at, service_date, tz,
            status, encounter_id, tz_given,
            _opt_upper(obj, "code", "code"),
            _opt_codes(obj, "modifiers", "modifiers") or (),
            separately,
            _opt_pos(obj, "place_of_service"),
            _opt_enum(obj, "payer_class", "payer_class", _PAYER_CLASSES,
                      ", ".join(PAYER_CLASSES)),
            _opt_str(obj, "rendering_npi", "rendering_npi", MAX_ID_CHARS),
            _opt_codes(obj, "diagnosis_codes", "diagnosis_codes"),
            False if (flag := obj.get("in_progress")) is None else _flag(flag, "in_progress"),
        )

    if event_type == ENCOUNTER_UPDATED:
        # ehr-mapping.md §2: the encounter id is both record_id and encounter_id.
        if encounter_id is None:
            raise _missing("encounter_id")
        if encounter_id != record_id:
            raise _Reject(INCONSISTENT_FIELD,
                          "encounter_id differs from record_id on encounter.updated",
                          "encounter_id")
        ended_at = _opt_timestamp(obj, "ended_at")
        if ended_at is not None and ended_at < occurred_at:
            raise _Reject(INVALID_TIMESTAMP, "field ended_at is before occurred_at", "ended_at")
        return _new_encounter(
            event_id, record_id, patient_id, occurred_at, recorded_at, service_date, tz,
            status, encounter_id, tz_given,
            ended_at,
            _opt_pos(obj, "place_of_service"),
            _opt_enum(obj, "payer_class", "payer_class", _PAYER_CLASSES,
                      ", ".join(PAYER_CLASSES)),
            own_tz,
            _opt_str(obj, "rendering_npi", "rendering_npi", MAX_ID_CHARS),
        )

    return _new_dispense(
        event_id, record_id, patient_id, occurred_at, recorded_at, service_date, tz,
        status, encounter_id, tz_given,
        _opt_str(obj, "ndc", "ndc", MAX_ID_CHARS),
        _opt_str(obj, "drug_name", "drug_name", MAX_TEXT_CHARS),
        _opt_str(obj, "order_id", "order_id", MAX_ID_CHARS),
        _opt_number(obj, "quantity", "quantity", allow_zero=False),
        _opt_enum(obj, "quantity_unit", "quantity_unit", _QUANTITY_UNITS,
                  ", ".join(NDC_UNITS), lower=False),
        _opt_str(obj, "lot_number", "lot_number", MAX_ID_CHARS),
    )


_COMMON_FIELDS = ("event_id", "record_id", "patient_id", "occurred_at", "recorded_at",
                  "service_date", "timezone", "status", "encounter_id", "timezone_given")
_FIELD_ORDER = {
    Drug: ("name", "ndc", "hcpcs", "dose", "dose_unit", "category", "container",
           "wasted_amount", "lot_number"),
    Administration: _COMMON_FIELDS + (
        "ended_at", "place_of_service", "payer_class", "route", "site", "drug",
        "performer_id", "performer_credential", "rendering_npi", "supervising_npi",
        "order_id", "diagnosis_codes", "charge_code", "charge_modifiers", "in_progress"),
    EMService: _COMMON_FIELDS + (
        "code", "modifiers", "separately_identifiable", "place_of_service", "payer_class",
        "rendering_npi", "diagnosis_codes", "in_progress"),
    Encounter: _COMMON_FIELDS + (
        "ended_at", "place_of_service", "payer_class", "facility_timezone", "rendering_npi"),
    Dispense: _COMMON_FIELDS + (
        "ndc", "drug_name", "order_id", "quantity", "quantity_unit", "lot_number"),
}


def _check_field_order() -> None:
    """The positional constructor calls above rely on this field order: fail at import,
    not with shifted values, if records.py changes it."""
    for cls, expected in _FIELD_ORDER.items():
        actual = tuple(f.name for f in fields(cls))
        if actual != expected:
            raise RuntimeError(f"{cls.__name__} fields changed: update _parse.py "
                               f"(expected {expected}, found {actual})")


_check_field_order()


def _constructor(cls):
    """A function equal to `cls(*values)` (all fields, in order) for a frozen slots dataclass.

    The generated __init__ of a frozen dataclass assigns each field through
    object.__setattr__, ~25 calls for an Administration; setting the slots directly is the
    same assignment without the frozen-check detour. Only valid while the class has no
    __post_init__ (or other init-time work): checked here, else the class itself is used.
    """
    if hasattr(cls, "__post_init__") or any(f.init is False for f in fields(cls)):
        return cls
    setters = tuple(getattr(cls, f.name).__set__ for f in fields(cls))
    new = object.__new__

    def make(*values):
        record = new(cls)
        # Not zip(strict=True): that costs ~15 ns a field, and the call sites pass every
        # field (their order and count are checked by _check_field_order).
        for set_field, value in zip(setters, values):  # noqa: B905
            set_field(record, value)
        return record

    return make


_new_drug = _constructor(Drug)
_new_administration = _constructor(Administration)
_new_em_service = _constructor(EMService)
_new_dispense = _constructor(Dispense)
_new_encounter = _constructor(Encounter)


_EVENT_TYPES = frozenset(EHR_EVENT_TYPES)

INTERNAL_ERROR = "record could not be validated"


def parse_record(raw: bytes | str, *, default_tz: str = "UTC") -> InputRecord | DeadLetter:
    """Parse one message value into a typed record or a DeadLetter. Never raises."""
    try:
        return _parse(raw, default_tz)
    except _Reject as r:
        return r.dead_letter
    except Exception:  # defensive: a bug here must not stop the stream
        return DeadLetter(INVALID_JSON, INTERNAL_ERROR, None)
