"""Malformed HL7 never makes the adapter raise: every input yields records or dead letters
(ehr-mapping.md §1 "nothing is dropped silently"), never an internal error, and every
record it does yield is a canonical record the engine's parser accepts."""

from __future__ import annotations

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream_app.adapters.hl7v2 import INTERNAL_ERROR, adapt
from stream_app.engine import DeadLetter, parse_record
from stream_app.vocabulary import (
    ADAPTER_DEAD_LETTER_CODES,
    DEAD_LETTER_CODES,
    ENCOUNTER_UPDATED,
)
from tests.adapters.hl7v2.helpers import EXAMPLES, SAMPLES, example_site

SITE = example_site()
VISIT = [line.rstrip(b"\r\n") + b"\r" for line in
         (EXAMPLES / "office-visit.hl7").read_bytes().split(b"\n") if line.strip()]
SAMPLE_BYTES = [p.read_bytes() for p in sorted(SAMPLES.glob("*.hl7"))]
BASES = VISIT + SAMPLE_BYTES
CODES = set(ADAPTER_DEAD_LETTER_CODES) | set(DEAD_LETTER_CODES)
HARD = ("event_type", "event_id", "record_id", "patient_id", "occurred_at")


def check(raw: bytes) -> None:
    out = adapt(raw, SITE, default_tz="America/Chicago")
    assert out.records or out.dead_letters
    for dead in out.dead_letters:
        assert dead.error_code in CODES
        assert INTERNAL_ERROR not in dead.error, dead
        assert isinstance(dead.raw, bytes) and (dead.raw or not raw)
    for rec in out.records:
        assert all(rec.get(k) for k in HARD), rec
        # Absent, never null or empty (ehr-mapping §1: omit what the input does not state).
        for key, value in [*rec.items(), *rec.get("drug", {}).items()]:
            assert value is not None and value != "" and value != [], (key, rec)
        encoded = orjson.dumps(rec)
        if rec["event_type"] != ENCOUNTER_UPDATED:
            parsed = parse_record(encoded, default_tz="UTC")
            assert not isinstance(parsed, DeadLetter), (parsed, rec)


@st.composite
def mutated(draw) -> bytes:
    base = draw(st.sampled_from(BASES))
    kind = draw(st.sampled_from(["truncate", "insert", "delimiters", "drop_segment",
                                 "unknown_segment", "message_type", "big_field", "mllp",
                                 "splice", "field_noise"]))
    if kind == "truncate":
        return base[:draw(st.integers(0, len(base)))]
    if kind == "insert":
        at = draw(st.integers(0, len(base)))
        return base[:at] + draw(st.binary(min_size=1, max_size=40)) + base[at:]
    if kind == "delimiters":
        chars = draw(st.binary(min_size=0, max_size=6))
        return base[:3] + chars + base[8:]
    segments = base.replace(b"\n", b"\r").split(b"\r")
    if kind == "drop_segment":
        i = draw(st.integers(0, len(segments) - 1))
        return b"\r".join(segments[:i] + segments[i + 1:])
    if kind == "unknown_segment":
        i = draw(st.integers(1, len(segments)))
        name = draw(st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=3, max_size=3))
        body = draw(st.binary(max_size=60)).replace(b"\r", b"").replace(b"\n", b"")
        return b"\r".join(segments[:i] + [name.encode() + b"|" + body] + segments[i:])
    if kind == "message_type":
        kind_event = draw(st.sampled_from([b"ADT^A28", b"ORU^R01", b"ZZZ^Z99", b"RAS", b"^O17",
                                           b"", b"ADT^A04^^^^", b"VXU^V04~RAS^O17"]))
        parts = segments[0].split(b"|")
        if len(parts) > 8:
            parts[8] = kind_event
        return b"\r".join([b"|".join(parts)] + segments[1:])
    if kind == "big_field":
        i = draw(st.integers(0, len(segments) - 1))
        return b"\r".join(segments[:i] + [segments[i] + b"|" + b"X" * 1_048_576 + b"^&~X"] + segments[i + 1:])
    if kind == "mllp":
        cuts = sorted(draw(st.lists(st.integers(0, len(base)), max_size=4)))
        out, last = [], 0
        for cut in cuts:
            out.append(base[last:cut])
            last = cut
        out.append(base[last:])
        return b"".join(b"\x0b" + piece + draw(st.sampled_from([b"\x1c\r", b"\x1c", b""]))
                        for piece in out)
    if kind == "splice":
        other = draw(st.sampled_from(BASES))
        return base[:draw(st.integers(0, len(base)))] + other[draw(st.integers(0, len(other))):]
    # field_noise: one field of one segment replaced by arbitrary text with delimiters.
    i = draw(st.integers(0, len(segments) - 1))
    parts = segments[i].split(b"|")
    j = draw(st.integers(1, max(1, len(parts) - 1))) if len(parts) > 1 else 0
    noise = draw(st.text(alphabet=st.sampled_from(list("09AZaz^~&\\|.+-\" FHXNR")), max_size=30))
    if j:
        parts[j] = noise.encode()
    return b"\r".join(segments[:i] + [b"|".join(parts)] + segments[i + 1:])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_messages(raw):
    check(raw)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000))
def test_arbitrary_bytes(raw):
    check(raw)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_after_an_msh(raw):
    check(b"MSH|^~\\&|" + raw)


def test_one_megabyte_field():
    big = VISIT[3].replace(b"|LT4471|", b"|" + b"L" * 1_048_576 + b"|")
    out = adapt(big, SITE)
    assert len(out.records) == 1 and len(out.records[0]["drug"]["lot_number"]) == 1_048_576
