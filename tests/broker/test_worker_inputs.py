"""Input handling against the real broker: arbitrary keys and partition counts, malformed
messages."""

from __future__ import annotations

import asyncio
import base64
import random

import orjson
import pytest

from stream_app.devtools.generate import generate_messages
from tests.support.worker import (
    DEAD,
    OutputReader,
    WorkerProcess,
    create_topics,
    metric_value,
    produce,
    replay_view,
)

pytestmark = pytest.mark.integration

ADMIN = "ehr.medication-administrations"
EM = "ehr.em-services"
DISP = "pharmacy.dispenses"


async def test_non_patient_keys_and_partition_counts_still_join(kafka_bootstrap, unique_name,
                                                                tmp_path):
    """Input topics with 1, 3 and 5 partitions, keyed by random strings, record ids or
    nothing: records of one patient still meet (same settled view as replay)."""
    prefix = unique_name("keys") + "."
    app_id = unique_name("keys-app")
    rng = random.Random(5)
    messages = []
    for topic, _key, value in generate_messages(31, records=1500, topic_prefix=prefix):
        rec = orjson.loads(value)
        key = rng.choice([None, f"k{rng.randrange(10**9)}", rec.get("record_id")])
        messages.append((topic, key, value))
    expected, _ = replay_view(tmp_path, messages)
    await create_topics(kafka_bootstrap, prefix, partitions={ADMIN: 5, EM: 1, DISP: 3})
    worker = WorkerProcess(tmp_path, kafka_bootstrap, app_id, prefix).start()
    reader = OutputReader(kafka_bootstrap, prefix)
    try:
        await asyncio.to_thread(worker.wait_ready)
        await reader.start()
        await produce(kafka_bootstrap, messages)
        await reader.wait_settled(timeout=120)
        assert reader.settled_view() == expected
        assert not reader.messages[DEAD]
    finally:
        await reader.stop()
        await asyncio.to_thread(worker.stop)


def _malformed(prefix: str) -> list[tuple[str, bytes | None, bytes]]:
    em = {"event_type": "em.service", "event_id": "bad-1", "record_id": "r-bad",
          "patient_id": "PX", "occurred_at": "2025-03-14T09:00:00-05:00", "code": "99213"}
    missing = dict(em)
    del missing["patient_id"]
    wrong = dict(em, event_id=12345)
    big = b'{"event_type":"em.service","pad":"' + b"a" * 1_000_000 + b'"}'
    return [
        (prefix + EM, b"k-json", b'{"event_type": "em.service", '),  # bad JSON
        (prefix + EM, None, b"[1, 2, 3]"),  # not an object
        (prefix + EM, b"k-missing", orjson.dumps(missing)),  # missing patient_id
        (prefix + EM, b"k-type", orjson.dumps(wrong)),  # wrong type
        (prefix + DISP, b"\xff\xfe-key", bytes(range(256)) * 4),  # binary garbage
        (prefix + ADMIN, b"k-big", big),  # ~1 MB
        (prefix + EM, b"k-unknown", orjson.dumps(dict(em, event_type="lab.result"))),
        (prefix + EM, b"k-ts", orjson.dumps(dict(em, event_id="bad-2", occurred_at="yesterday"))),
    ]


async def test_malformed_messages_become_dead_letters(kafka_bootstrap, unique_name, tmp_path):
    """Bad JSON, missing ids, wrong types, binary garbage and a 1 MB value land in dead
    letters with topic/partition/offset and the original bytes; the worker keeps going."""
    prefix = unique_name("bad") + "."
    app_id = unique_name("bad-app")
    bad = _malformed(prefix)
    valid = generate_messages(41, records=300, topic_prefix=prefix)
    await create_topics(kafka_bootstrap, prefix)
    worker = WorkerProcess(tmp_path, kafka_bootstrap, app_id, prefix).start()
    reader = OutputReader(kafka_bootstrap, prefix)
    try:
        await asyncio.to_thread(worker.wait_ready)
        await reader.start()
        metas = await produce(kafka_bootstrap, bad, max_request_size=4 * 1024 * 1024,
                              chunk=1)
        await produce(kafka_bootstrap, valid)
        n_bad = len(bad)
        await reader.wait_settled(timeout=120, dead_letters=n_bad)
        expected, _ = replay_view(tmp_path, valid)
        assert reader.settled_view() == expected  # the valid stream was fully processed
        dead = [orjson.loads(v) for _p, _o, _k, v, _h in reader.messages[DEAD]]
        assert len(dead) == n_bad
        by_offset = {(d["topic"], d["partition"], d["offset"]): d for d in dead}
        for (topic, key, value), meta in zip(bad, metas, strict=True):
            d = by_offset[(topic, meta.partition, meta.offset)]
            assert d["error_code"] in {"INVALID_JSON", "NOT_AN_OBJECT", "MISSING_FIELD",
                                       "WRONG_TYPE", "INVALID_TIMESTAMP",
                                       "UNKNOWN_EVENT_TYPE", "TOO_LARGE", "INVALID_ENCODING"}
            if "raw_base64" in d:
                assert base64.b64decode(d["raw_base64"]) == value
            else:
                assert d["raw"].encode() == value
            if key is not None and "key_base64" not in d:
                assert d["key"].encode() == key
        codes = {d["error_code"] for d in dead}
        assert {"INVALID_JSON", "MISSING_FIELD", "WRONG_TYPE", "TOO_LARGE"} <= codes
        text = await asyncio.to_thread(worker.metrics_text)
        assert metric_value(text, "chargecap_events_dead_lettered_total") == n_bad
        assert worker.proc.poll() is None
    finally:
        await reader.stop()
        await asyncio.to_thread(worker.stop)
