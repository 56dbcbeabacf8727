"""Stage 1: parse every input message once, dead-letter the invalid ones and route the
valid ones to the repartition partition of their patient.

`route` is the whole decision, without Kafka: messages in (anything with Faust's
message fields), dead letters and one or more repartition bundles per partition out.
The *original bytes* of a valid record are forwarded, keyed by nothing and placed by
`codecs.partition_for(patient_id)`, so a patient's records meet in one partition whatever
the input keys and partition counts; one bundle per partition and batch spares stage 2
Faust's per-message cost (codecs.encode_bundle).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from stream_app.engine import DeadLetter, parse_record
from stream_app.streaming import codecs
from stream_app.streaming.codecs import Output
from stream_app.streaming.deadletters import dead_letter_output
from stream_app.vocabulary import PROCESSING_ERROR, TOO_LARGE

log = logging.getLogger(__name__)


@dataclass
class Routed:
    """What one stage-1 batch sends."""

    dead_letters: list[Output] = field(default_factory=list)
    # (repartition partition, bundle value), partitions in ascending order
    bundles: list[tuple[int, bytes]] = field(default_factory=list)
    consumed: dict[str, int] = field(default_factory=dict)  # input topic -> messages


def route(messages: Iterable, *, origin_of: Mapping[str, int], partitions: int,
          max_message_bytes: int, timezone: str,
          clock: Callable[[], float] = time.time) -> Routed:
    """Route a batch of input messages (`topic`, `partition`, `offset`, `key`, `value`,
    `timestamp` in seconds). A value over `max_message_bytes` is a TOO_LARGE dead letter
    without being parsed; a parser failure is a PROCESSING_ERROR dead letter, never a
    stopped worker."""
    routed = Routed()
    dead = routed.dead_letters
    consumed: dict[str, int] = defaultdict(int)
    # valid records per repartition partition: (origin, ts_ms, partition, offset, raw)
    by_part: dict[int, list[tuple]] = defaultdict(list)
    partition_for = codecs.partition_for
    origin = origin_of.get
    for msg in messages:
        topic = msg.topic
        consumed[topic] += 1
        value = msg.value
        if value is None:
            value = b""
        if len(value) > max_message_bytes:
            rec = DeadLetter(TOO_LARGE, f"value larger than {max_message_bytes} bytes", None)
        else:
            try:
                rec = parse_record(value, default_tz=timezone)
            except Exception:  # the parser must never stop the worker
                log.exception("parser failed on a message of %s", topic)
                rec = DeadLetter(PROCESSING_ERROR, "parser failed", None)
        if isinstance(rec, DeadLetter):
            dead.append(dead_letter_output(rec, raw=value, topic=topic, partition=msg.partition,
                                           offset=msg.offset, key=msg.key))
            continue
        ts_ms = int((msg.timestamp or clock()) * 1000)
        by_part[partition_for(rec.patient_id.encode("utf-8"), partitions)].append(
            (origin(topic, 0), ts_ms, msg.partition, msg.offset, value))
    routed.consumed = dict(consumed)
    routed.bundles = [(p, bundle) for p, frames in sorted(by_part.items())
                      for bundle in codecs.encode_bundle(frames)]
    return routed
