"""Unit tests of streaming/batching.py (no broker): `send_batched` cuts record batches at
the destination topic's limit (the broker applies max.message.bytes to a whole record
batch, and a rejected batch stops the worker); `take_batches` leaves acknowledging to
the caller, so an abandoned batch is never committed. The same code runs against the
real broker in test_worker_e2e.py and tests/broker/test_faults.py."""

from __future__ import annotations

import asyncio
import random
from types import SimpleNamespace

import pytest
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from aiokafka.producer.message_accumulator import BatchBuilder

from stream_app.streaming import batching

# ---------------------------------------------------------------------- murmur2


def _signed(h: int) -> int:
    return h - (1 << 32) if h >= 1 << 31 else h


# Kafka's own test vectors for Utils.murmur2 (clients UtilsTest.testMurmur2), signed ints.
@pytest.mark.parametrize("key,java", [
    (b"21", -973932308), (b"foobar", -790332482), (b"a-little-bit-long-string", -985981536),
    (b"a-little-bit-longer-string", -1486304829),
    (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971), (b"abc", 479470107),
])
def test_murmur2_matches_the_java_client(key, java):
    assert _signed(batching.murmur2(key)) == java


def test_murmur2_matches_aiokafka_on_every_length():
    # Every tail length (0-3 bytes after the last full word) and every word count up to 50.
    rng = random.Random(20261127)
    for length in range(201):
        for _ in range(20):
            key = rng.randbytes(length)
            assert batching.murmur2(key) == aiokafka_murmur2(key), length


def test_a_keyed_decision_lands_where_the_java_partitioner_puts_it():
    # DefaultPartitioner: toPositive(murmur2(key)) % partitions.
    assert batching.partition_for_key(b"foobar", 3) == (-790332482 & 0x7FFFFFFF) % 3


# ---------------------------------------------------------------------- send_batched


class _Future:
    def __init__(self, offset):
        self.offset = offset


class FakeProducer:
    """What send_batched uses of aiokafka's producer; records the submitted batches."""

    def __init__(self, batch_size=16 * 1024 * 1024):
        # the two settings seam.new_batch_builder reads from aiokafka's producer
        self._message_accumulator = SimpleNamespace(_batch_size=batch_size,
                                                    _compression_type=0)
        self.batches: list[tuple[str, int, BatchBuilder]] = []
        self.next_offset: dict[tuple[str, int], int] = {}

    async def partitions_for(self, topic):
        return {0, 1, 2}

    async def send_batch(self, batch, topic, *, partition):
        self.batches.append((topic, partition, batch))
        fut = asyncio.get_running_loop().create_future()
        base = self.next_offset.get((topic, partition), 0)
        self.next_offset[(topic, partition)] = base + batch.record_count()
        fut.set_result(_Future(base))
        return fut


def _size(batch: BatchBuilder) -> int:
    return batch.size()


def test_record_batches_stay_within_the_topic_limit():
    producer = FakeProducer()
    value = b"v" * 10_000
    msgs = [("out", 1, f"k{i}".encode(), value, None) for i in range(300)]  # ~3 MB
    delivered = asyncio.run(batching.send_batched(producer, msgs, {"out": 1_000_000}))
    sizes = [_size(b) for _t, _p, b in producer.batches]
    assert len(sizes) >= 3
    assert max(sizes) <= 1_000_000
    assert sum(b.record_count() for *_, b in producer.batches) == 300
    assert [(d.topic, d.partition, d.last_offset) for d in delivered] == [("out", 1, 299)]


def test_without_a_limit_the_kafka_default_applies():
    producer = FakeProducer()
    msgs = [("t", 0, None, b"v" * 10_000, None) for _ in range(200)]  # ~2 MB
    asyncio.run(batching.send_batched(producer, msgs))
    assert max(_size(b) for *_, b in producer.batches) <= batching.DEFAULT_BATCH_LIMIT


def test_the_producer_batch_size_still_caps_a_larger_topic_limit():
    producer = FakeProducer(batch_size=200_000)
    msgs = [("t", 0, None, b"v" * 10_000, None) for _ in range(100)]
    asyncio.run(batching.send_batched(producer, msgs, {"t": 16 * 1024 * 1024}))
    assert max(_size(b) for *_, b in producer.batches) <= 200_000


# ---------------------------------------------------------------------- take_batches


class FaustLikeStream:
    """`take_events` as Faust writes it: the events of a batch are acked in a `finally`
    after the yield, so also when the consumer abandons the batch."""

    def __init__(self, batches):
        self.batches = batches
        self.acked: list = []

    async def ack(self, event) -> bool:
        self.acked.append(event)
        return True

    async def take_events(self, max_size, within):
        for b in self.batches:
            try:
                yield list(b)
            finally:
                for e in b:
                    await self.ack(e)


def test_an_abandoned_batch_is_not_acknowledged():
    """A worker stopping mid-batch closes the generator; with Faust's take_events the
    unprocessed batch was acked, hence committed (docs/reliability.md)."""
    stream = FaustLikeStream([[1, 2, 3], [4]])

    async def run():
        gen = batching.take_batches(stream, 100, 0.02)
        first = await gen.__anext__()
        await gen.aclose()  # cancelled before the batch was durable
        return first

    assert asyncio.run(run()) == [1, 2, 3]
    assert stream.acked == []


def test_completed_batches_are_acked_once_by_ack_batch():
    stream = FaustLikeStream([[1, 2], [3]])

    async def run():
        async for events in batching.take_batches(stream, 100, 0.02):
            await batching.ack_batch(stream, events)

    asyncio.run(run())
    assert stream.acked == [1, 2, 3]
