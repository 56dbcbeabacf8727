"""Stage 1: parse every input message once, dead-letter the invalid ones and route the
valid ones to the repartition partition of their patient.

`route` is the whole decision, without Kafka: messages in (anything with Faust's
message fields), dead letters and one or more repartition bundles per partition out.
The *original bytes* of a valid record are forwarded, keyed by nothing and placed by
`codecs.partition_for(patient_id)`, so a patient's records meet in one partition whatever
the input keys and partition counts; one bundle per partition and batch spares stage 2
Faust's per-message cost (codecs.encode_bundle).

A message of an EHR-format topic (`adapters`: topic -> adapter, ehr-mapping.md §1) is
first adapted in-process: one FHIR resource or Bundle, or one HL7 v2 message, becomes
0..n canonical records, each serialised and then checked by the same parser as a
canonical input, and forwarded like one (framed with the message's partition and offset);
the adapter's refusals become dead letters of that message. All of a message's records
leave in the same batch as the message, so its offset is committed only once every one of
them is forwarded.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial

import orjson

from stream_app.adapters import Adapted
from stream_app.engine import DeadLetter, parse_record
from stream_app.streaming import codecs
from stream_app.streaming.codecs import Output
from stream_app.streaming.deadletters import dead_letter_output
from stream_app.vocabulary import (
    NOT_SENDER_ERRORS,
    PROCESSING_ERROR,
    TOO_LARGE,
    TOPIC_FHIR,
    TOPIC_HL7V2,
)

log = logging.getLogger(__name__)


@dataclass
class Routed:
    """What one stage-1 batch sends."""

    dead_letters: list[Output] = field(default_factory=list)
    # (repartition partition, bundle value), partitions in ascending order
    bundles: list[tuple[int, bytes]] = field(default_factory=list)
    consumed: dict[str, int] = field(default_factory=dict)  # input topic -> messages
    # (input topic, error code) -> dead letters: sender errors and everything else ...
    dead_lettered: dict[tuple[str, str], int] = field(default_factory=dict)
    # ... and refusals of EHR input that carries nothing billable (NOT_SENDER_ERRORS)
    not_billable: dict[tuple[str, str], int] = field(default_factory=dict)
    records: int = 0  # records forwarded


# One input unit (the message value) -> canonical records and refusals (stream_app.adapters).
Adapter = Callable[[bytes], Adapted]


def ehr_adapters(topic_name: Callable[[str], str], site, rules, timezone: str) -> dict[str, Adapter]:
    """The adapter of each EHR-format topic, by configured name (`topic_name`: the
    settings' prefixing): `site` the SiteConfig loaded at start-up, `rules` the engine's
    RuleSet (its E/M code set tells E/M charges apart in DFT messages), `timezone` the
    configured zone (the facility zone of last resort)."""
    from stream_app.adapters import fhir, hl7v2

    return {topic_name(TOPIC_FHIR): partial(fhir.adapt, site=site, default_tz=timezone),
            topic_name(TOPIC_HL7V2): partial(hl7v2.adapt, site=site, default_tz=timezone,
                                             rules=rules)}


def route(messages: Iterable, *, origin_of: Mapping[str, int], partitions: int,
          max_message_bytes: int, timezone: str,
          adapters: Mapping[str, Adapter] | None = None,
          clock: Callable[[], float] = time.time) -> Routed:
    """Route a batch of input messages (`topic`, `partition`, `offset`, `key`, `value`,
    `timestamp` in seconds). A value over `max_message_bytes` is a TOO_LARGE dead letter
    without being parsed or adapted; a parser or adapter failure is a PROCESSING_ERROR
    dead letter, never a stopped worker. Messages of a topic in `adapters` are adapted
    first (module docstring)."""
    routed = Routed()
    dead = routed.dead_letters
    consumed: dict[str, int] = defaultdict(int)
    # valid records per repartition partition: (origin, ts_ms, partition, offset, raw)
    by_part: dict[int, list[tuple]] = defaultdict(list)
    partition_for = codecs.partition_for
    origin = origin_of.get
    adapter_of = (adapters or {}).get

    def refuse(dl, raw: bytes, msg) -> None:
        dead.append(dead_letter_output(dl, raw=raw, topic=msg.topic, partition=msg.partition,
                                       offset=msg.offset, key=msg.key))

    for msg in messages:
        topic = msg.topic
        consumed[topic] += 1
        value = msg.value
        if value is None:
            value = b""
        if len(value) > max_message_bytes:
            refuse(DeadLetter(TOO_LARGE, f"value larger than {max_message_bytes} bytes", None),
                   value, msg)
            continue
        adapter = adapter_of(topic)
        if adapter is not None:
            forwards = _adapted(adapter, value, msg, timezone, refuse)
        else:
            try:
                rec = parse_record(value, default_tz=timezone)
            except Exception:  # the parser must never stop the worker
                log.exception("parser failed on a message of %s", topic)
                rec = DeadLetter(PROCESSING_ERROR, "parser failed", None)
            if isinstance(rec, DeadLetter):
                refuse(rec, value, msg)
                continue
            forwards = ((rec, value),)
        if not forwards:
            continue
        ts_ms = int((msg.timestamp or clock()) * 1000)
        o = origin(topic, 0)
        for rec, raw in forwards:
            by_part[partition_for(rec.patient_id.encode("utf-8"), partitions)].append(
                (o, ts_ms, msg.partition, msg.offset, raw))
            routed.records += 1
    routed.consumed = dict(consumed)
    dead_lettered: dict[tuple[str, str], int] = defaultdict(int)
    not_billable: dict[tuple[str, str], int] = defaultdict(int)
    for out in dead:
        code = out.record["dl"].error_code
        counts = not_billable if code in NOT_SENDER_ERRORS else dead_lettered
        counts[(out.record["topic"], code)] += 1
    routed.dead_lettered = dict(dead_lettered)
    routed.not_billable = dict(not_billable)
    routed.bundles = [(p, bundle) for p, frames in sorted(by_part.items())
                      for bundle in codecs.encode_bundle(frames)]
    return routed


def _adapted(adapter: Adapter, value: bytes, msg, timezone: str, refuse) -> list[tuple]:
    """(record, canonical bytes) of each record the adapter makes of one message; its
    refusals, and records the parser refuses, are dead letters of the message."""
    try:
        adapted = adapter(value)
    except Exception:  # adapters never raise by design; a bug must not stop the worker
        log.exception("adapter failed on a message of %s", msg.topic)
        refuse(DeadLetter(PROCESSING_ERROR, "adapter failed", None), value, msg)
        return []
    for dl in adapted.dead_letters:
        # `field` is the FHIR path or HL7 position, `raw` the unit or refused entry
        refuse(dl, dl.raw, msg)
    forwards = []
    for i, record in enumerate(adapted.records):
        try:
            raw = orjson.dumps(record)
            rec = parse_record(raw, default_tz=timezone)
        except Exception:
            log.exception("adapted record %d of a message of %s could not be checked", i,
                          msg.topic)
            rec = DeadLetter(PROCESSING_ERROR, f"adapted record {i} could not be checked", None)
        if isinstance(rec, DeadLetter):
            # The adapter made a record the contract refuses: keep the unit it came from.
            refuse(DeadLetter(rec.error_code, f"adapted record {i}: {rec.error}", rec.field),
                   value, msg)
            continue
        forwards.append((rec, raw))
    return forwards
