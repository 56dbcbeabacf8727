"""The generated stream in an EHR format (`generate --format`, ehr-mapping.md §1):
`canonical` (the records as they are), `fhir` (fhir.py: one Bundle per record on
`ehr.fhir`) or `hl7v2` (hl7v2.py: one message per Kafka record on `ehr.hl7v2`, each
visit's ADT^A04 before its first record). A record the format cannot carry stays
canonical on its canonical topic (the module docstrings say which); malformed messages
stay on the topic they were planned for. Send order, keys and redeliveries are kept:
a redelivered record is the same bytes again.
"""

from __future__ import annotations

import orjson

from stream_app.devtools.generate.fhir import Visits, fhir_message
from stream_app.devtools.generate.hl7v2 import Hl7Encoder
from stream_app.devtools.generate.stream import GeneratedStream, Message
from stream_app.vocabulary import TOPIC_FHIR, TOPIC_HL7V2

CANONICAL, FHIR, HL7V2 = "canonical", "fhir", "hl7v2"
FORMATS = (CANONICAL, FHIR, HL7V2)


def encode_messages(stream: GeneratedStream, fmt: str, topic_prefix: str = "",
                    rules=None, malformed: bool = True) -> list[Message]:
    """(topic, key, value) in send order for `fmt` (`rules`: the RuleSet the HL7 v2
    encoder takes the E/M code set from; default the packaged one). `malformed`: keep the
    malformed messages (False: leave them out, as an NDJSON file without them)."""
    if fmt == CANONICAL:
        return stream.messages if malformed else [
            (t, k, v) for t, k, v, bad in stream.iter_labeled_messages() if bad is None]
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    records = [p for _, _, p in stream.iter_plan() if type(p) is not bytes]
    dumps = orjson.dumps
    out: list[Message] = []
    if fmt == FHIR:
        visits = Visits(records)
        topic = topic_prefix + TOPIC_FHIR
        for canonical_topic, key, payload in stream.iter_plan():
            if type(payload) is bytes:
                if malformed:
                    out.append((canonical_topic, key, payload))
                continue
            value = fhir_message(payload, visits)
            out.append((canonical_topic, key, dumps(payload)) if value is None
                       else (topic, key, value))
        return out
    encoder = Hl7Encoder(records, rules)
    topic = topic_prefix + TOPIC_HL7V2
    sent: dict[str, list[bytes]] = {}  # event_id -> messages (a redelivery sends them again)
    for canonical_topic, key, payload in stream.iter_plan():
        if type(payload) is bytes:
            if malformed:
                out.append((canonical_topic, key, payload))
            continue
        event_id = payload.get("event_id")
        messages = sent.get(event_id)
        if messages is None:
            messages = encoder.messages(payload)
            if messages is not None:
                # the visit's ADT goes once, before its first record; a redelivery repeats
                # only the record's own message
                sent[event_id] = messages[-1:]
        if messages is None:
            out.append((canonical_topic, key, dumps(payload)))
        else:
            out.extend((topic, key, m) for m in messages)
    return out
