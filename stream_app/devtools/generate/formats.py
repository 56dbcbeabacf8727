"""The generated stream in an EHR format (`generate --format`, ehr-mapping.md §1):
`canonical` (the records as they are), `fhir` (fhir.py: one Bundle per record on
`ehr.fhir`) or `hl7v2` (hl7v2.py: one message per Kafka record on `ehr.hl7v2`, each
visit's ADT^A04 before its first record). A record the format cannot carry stays
canonical on its canonical topic (the module docstrings say which); malformed messages
stay on the topic they were planned for. Send order, keys and redeliveries are kept:
a redelivered record is the same bytes again.
"""

from __future__ import annotations

from collections.abc import Callable

import orjson

from stream_app.devtools.generate.fhir import Visits, fhir_message
from stream_app.devtools.generate.hl7v2 import Hl7Encoder
from stream_app.devtools.generate.stream import GeneratedStream, Message
from stream_app.vocabulary import TOPIC_FHIR, TOPIC_HL7V2

CANONICAL, FHIR, HL7V2 = "canonical", "fhir", "hl7v2"
FORMATS = (CANONICAL, FHIR, HL7V2)


def encode_messages(stream: GeneratedStream, fmt: str | Callable[[dict], str],
                    topic_prefix: str = "", rules=None, malformed: bool = True) -> list[Message]:
    """(topic, key, value) in send order for `fmt`, a format name or a function of the
    record choosing one per record (a mixed stream; every version of a record should get
    the same format, as the record ids differ between formats). `rules`: the RuleSet the
    HL7 v2 encoder takes the E/M code set from (default: the packaged one). `malformed`:
    keep the malformed messages (False: leave them out)."""
    choose = fmt if callable(fmt) else (lambda _rec: fmt)
    if not callable(fmt):
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
        if fmt == CANONICAL:
            return stream.messages if malformed else [
                (t, k, v) for t, k, v, bad in stream.iter_labeled_messages() if bad is None]
    records = [p for _, _, p in stream.iter_plan() if type(p) is not bytes]
    visits = Visits(records)
    hl7: Hl7Encoder | None = None
    fhir_topic, hl7_topic = topic_prefix + TOPIC_FHIR, topic_prefix + TOPIC_HL7V2
    dumps = orjson.dumps
    out: list[Message] = []
    sent: dict[str, list[bytes]] = {}  # event_id -> HL7 messages (a redelivery: the same)
    for canonical_topic, key, payload in stream.iter_plan():
        if type(payload) is bytes:
            if malformed:
                out.append((canonical_topic, key, payload))
            continue
        chosen = choose(payload)
        if chosen == FHIR:
            value = fhir_message(payload, visits)
            if value is not None:
                out.append((fhir_topic, key, value))
                continue
        elif chosen == HL7V2:
            event_id = payload.get("event_id")
            messages = sent.get(event_id)
            if messages is None:
                if hl7 is None:
                    hl7 = Hl7Encoder(records, rules)
                messages = hl7.messages(payload)
                if messages is not None:
                    # the visit's ADT goes once, before its first record; a redelivery
                    # repeats only the record's own message
                    sent[event_id] = messages[-1:]
            if messages is not None:
                out.extend((hl7_topic, key, m) for m in messages)
                continue
        elif chosen != CANONICAL:
            raise ValueError(f"unknown format {chosen!r}; known: {', '.join(FORMATS)}")
        out.append((canonical_topic, key, dumps(payload)))
    return out
