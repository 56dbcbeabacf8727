"""The real broker: a record produced with aiokafka to an input topic is consumed back."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from tests.support.kafka import broker_answers
from tests.support.paths import EXAMPLES_DIR


@pytest.mark.integration
def test_broker_answers_metadata(kafka_bootstrap):
    assert broker_answers(kafka_bootstrap)


@pytest.mark.integration
async def test_produce_consume_round_trip(kafka_bootstrap, kafka_topics):
    topic = kafka_topics + "ehr.medication-administrations"
    record = json.loads(
        next(
            line
            for line in (EXAMPLES_DIR / "office-visit.ndjson").read_text().splitlines()
            if '"medication.administered"' in line
        )
    )
    value = json.dumps(record).encode()

    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, enable_idempotence=True)
    await producer.start()
    try:
        meta = await producer.send_and_wait(topic, value, key=record["patient_id"].encode())
        # Unkeyed messages are allowed on input topics too (contract §1).
        await producer.send_and_wait(topic, b'{"event_type": "em.service"}', key=None)
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=topic + ".test",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        seen = []
        async with asyncio.timeout(30):
            while len(seen) < 2:
                batch = await consumer.getmany(timeout_ms=1000)
                for messages in batch.values():
                    seen.extend(messages)
    finally:
        await consumer.stop()
    keyed = next(m for m in seen if m.key is not None)
    assert keyed.key == record["patient_id"].encode()
    assert json.loads(keyed.value) == record
    assert (keyed.partition, keyed.offset) == (meta.partition, meta.offset)
    assert any(m.key is None for m in seen)
