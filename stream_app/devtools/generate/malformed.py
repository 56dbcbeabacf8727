"""Malformed messages (not records) and the dead-letter code a correct parser gives each."""

from __future__ import annotations

import random
from datetime import date

import orjson

from stream_app import vocabulary
from stream_app.vocabulary import ADMINISTRATION, DISPENSE, EM_SERVICE

# Malformed message kinds and the dead-letter error code a correct parser gives them.
MALFORMED_KINDS: dict[str, str] = {
    "invalid_json": vocabulary.INVALID_JSON,
    "empty_value": vocabulary.INVALID_JSON,
    "not_an_object": vocabulary.NOT_AN_OBJECT,
    "missing_field": vocabulary.MISSING_FIELD,
    "wrong_type": vocabulary.WRONG_TYPE,
    "invalid_timestamp": vocabulary.INVALID_TIMESTAMP,
    "unknown_event_type": vocabulary.UNKNOWN_EVENT_TYPE,
    "binary_garbage": vocabulary.INVALID_ENCODING,
}


def malformed_message(rng: random.Random, tag: str, n: int, start: date) -> tuple[str, bytes]:
    kinds = tuple(MALFORMED_KINDS)
    kind = kinds[rng.randrange(len(kinds))]
    base = {
        "event_type": rng.choice((ADMINISTRATION, EM_SERVICE, DISPENSE)),
        "event_id": f"ev-{tag}-bad-{n:07d}",
        "record_id": f"bad-{tag}-{n:07d}",
        "patient_id": f"pt-{tag}-bad-{n:05d}",
        "occurred_at": f"{start.isoformat()}T10:{rng.randrange(60):02d}:00-05:00",
        "place_of_service": "11",
        "payer_class": "commercial",
        "code": "99213",
    }
    if kind == "invalid_json":
        raw = orjson.dumps(base)
        cut = rng.randrange(1, len(raw) - 1)
        variant = rng.randrange(3)
        if variant == 0:
            return kind, raw[:cut]
        if variant == 1:
            return kind, raw.replace(b'":', b'"=', 1)
        return kind, b"{'event_type': 'em.service', " + raw[1:cut]
    if kind == "empty_value":
        return kind, b""
    if kind == "not_an_object":
        return kind, rng.choice((b"[1, 2, 3]", b'"medication.administered"', b"42", b"null",
                                 b"true", orjson.dumps([base])))
    if kind == "missing_field":
        drop = rng.choice(("event_type", "event_id", "record_id", "patient_id", "occurred_at"))
        base.pop(drop)
        return kind, orjson.dumps(base)
    if kind == "wrong_type":
        which = rng.randrange(4)
        if which == 0:
            base["patient_id"] = rng.randrange(10_000, 99_999)
        elif which == 1:
            base["occurred_at"] = 1741600000 + rng.randrange(86400)
        elif which == 2:
            base["event_id"] = {"id": n}
        else:
            base["record_id"] = [n]
        return kind, orjson.dumps(base)
    if kind == "invalid_timestamp":
        base["occurred_at"] = rng.choice((
            f"{start.isoformat()} 10:00", f"{start.isoformat()}T10:00:00",
            "yesterday", "2025-13-45T99:00:00Z", "10:00 AM"))
        return kind, orjson.dumps(base)
    if kind == "unknown_event_type":
        base["event_type"] = rng.choice(("medication.ordered", "lab.result", "EM.SERVICE",
                                         "drug.returned"))
        return kind, orjson.dumps(base)
    # binary garbage: not UTF-8 (0xff never appears in UTF-8), no newline bytes
    size = rng.randint(8, 512)
    body = bytes(b if b not in (0x0A, 0x0D) else 0xFF for b in rng.randbytes(size))
    return kind, b"\xff\xfe" + body
