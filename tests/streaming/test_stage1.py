"""Stage 1's routing without a broker (stage1.route): valid records go, byte for byte, to
the repartition partition of their patient; invalid ones become dead letters naming where
they were read (contract.md §3)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import orjson

from stream_app.streaming import codecs, stage1
from stream_app.vocabulary import (
    DEAD,
    INPUT_TOPICS,
    INVALID_JSON,
    PROCESSING_ERROR,
    TOO_LARGE,
    TOPIC_DISPENSES,
    TOPIC_EM_SERVICES,
    TOPIC_MEDICATION_ADMINISTRATIONS,
)

EXAMPLE = Path(__file__).resolve().parents[2].parent / "shared/spec/examples/office-visit.ndjson"
ORIGIN_OF = {name: i for i, name in enumerate(INPUT_TOPICS)}
TOPIC_OF = {"drug.dispensed": TOPIC_DISPENSES, "medication.administered":
            TOPIC_MEDICATION_ADMINISTRATIONS, "em.service": TOPIC_EM_SERVICES}


def _msg(value, topic=TOPIC_MEDICATION_ADMINISTRATIONS, partition=0, offset=0, key=None,
         timestamp=1_741_961_000.5):
    return SimpleNamespace(topic=topic, partition=partition, offset=offset, key=key,
                           value=value, timestamp=timestamp)


def _example_messages():
    lines = EXAMPLE.read_bytes().splitlines()
    return [_msg(raw, topic=TOPIC_OF[orjson.loads(raw)["event_type"]], partition=i % 2,
                 offset=10 + i, key=b"P100") for i, raw in enumerate(lines)]


def _route(messages, partitions=6, max_bytes=1_048_576):
    return stage1.route(messages, origin_of=ORIGIN_OF, partitions=partitions,
                        max_message_bytes=max_bytes, timezone="UTC", clock=lambda: 99.0)


def test_a_patients_records_go_unchanged_to_its_partition_in_one_bundle():
    messages = _example_messages()
    routed = _route(messages)
    assert routed.dead_letters == []
    assert [p for p, _ in routed.bundles] == [codecs.partition_for(b"P100", 6)]
    frames = list(codecs.iter_bundle(routed.bundles[0][1]))
    assert [(f[0], f[1], f[2], f[3], bytes(f[4])) for f in frames] == [
        (ORIGIN_OF[m.topic], 1_741_961_000_500, m.partition, m.offset, m.value)
        for m in messages]
    assert routed.consumed == {TOPIC_DISPENSES: 1, TOPIC_MEDICATION_ADMINISTRATIONS: 1,
                               TOPIC_EM_SERVICES: 1}


def test_patients_of_different_partitions_get_one_bundle_each_in_partition_order():
    raw = EXAMPLE.read_bytes().splitlines()[1]
    patients = [f"P{i}" for i in range(40)]
    messages = [_msg(raw.replace(b'"P100"', f'"{p}"'.encode()), offset=i)
                for i, p in enumerate(patients)]
    routed = _route(messages, partitions=4)
    expected = sorted({codecs.partition_for(p.encode(), 4) for p in patients})
    assert [p for p, _ in routed.bundles] == expected
    for p, bundle in routed.bundles:
        for frame in codecs.iter_bundle(bundle):
            pid = orjson.loads(frame[4])["patient_id"]
            assert codecs.partition_for(pid.encode(), 4) == p


def test_invalid_records_become_dead_letters_naming_where_they_were_read():
    good = _example_messages()[1]
    bad = _msg(b'{"event_type": ', topic=TOPIC_EM_SERVICES, partition=2, offset=41,
               key=b"k-1")
    routed = _route([good, bad])
    assert len(routed.bundles) == 1
    [dead] = routed.dead_letters
    assert dead.kind == DEAD
    body = orjson.loads(dead.value)
    assert body["error_code"] == INVALID_JSON
    assert (body["topic"], body["partition"], body["offset"], body["key"]) == (
        TOPIC_EM_SERVICES, 2, 41, "k-1")
    assert body["raw"] == '{"event_type": '


def test_a_value_over_the_limit_is_too_large_without_being_parsed(monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("a too-large value must not be parsed")

    monkeypatch.setattr(stage1, "parse_record", never)
    routed = _route([_msg(b"x" * 101)], max_bytes=100)
    assert routed.bundles == []
    [dead] = routed.dead_letters
    assert orjson.loads(dead.value)["error_code"] == TOO_LARGE


def test_a_parser_failure_is_a_dead_letter_not_a_stopped_worker(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("parser bug")

    monkeypatch.setattr(stage1, "parse_record", broken)
    routed = _route(_example_messages())
    assert routed.bundles == []
    assert [orjson.loads(d.value)["error_code"] for d in routed.dead_letters] == \
        [PROCESSING_ERROR] * 3


def test_a_message_without_a_value_is_a_dead_letter():
    routed = _route([_msg(None, offset=5)])
    [dead] = routed.dead_letters
    body = orjson.loads(dead.value)
    assert body["raw"] == "" and body["offset"] == 5
