"""Batches in, batches out: consumption without early acknowledgement, and one record
batch per topic-partition.

`take_batches` is Faust's `Stream.take_events` without its acknowledgements. Faust acks
the events of a batch in a `finally` block: when a worker stops (SIGTERM) or an agent is
cancelled while a batch is still being processed, Faust closes the generator, the
unprocessed batch is acked, and the consumer's final commit skips it: those inputs were
lost (docs/reliability.md). Here only the caller acks (`ack_batch`), after the batch is
durable.

aiokafka's `send()` costs a coroutine, a future and an accumulator look-up per message;
at stage 2's output rates that per-message overhead, not Kafka, was the limit
(docs/performance.md). `send_batched` groups messages by (topic, partition), fills
aiokafka `BatchBuilder`s (the C record-batch builder) and submits each with
`send_batch`, then waits once for every acknowledgement.

Keyed messages without an explicit partition go where the Java/aiokafka default
partitioner would put them (murmur2 of the key), so a key always lands on the same
partition whichever path produced it.
"""

from __future__ import annotations

import asyncio
import itertools
import struct
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from aiokafka.errors import MessageSizeTooLargeError

from stream_app.streaming.seam import new_batch_builder, replace


@dataclass(frozen=True, slots=True)
class Delivered:
    topic: str
    partition: int
    last_offset: int  # offset of the last message of this topic-partition in the call


_round_robin = itertools.count()


def partition_for_key(key: bytes | None, partitions: int) -> int:
    if key is None:
        return next(_round_robin) % partitions
    return (murmur2(key) & 0x7FFFFFFF) % partitions


_M = 0x5BD1E995  # Kafka's murmur2 mixing constant (seed 0x9747B28C, shifts 24, 13, 15)
_WORDS: dict[int, struct.Struct] = {}  # little-endian u32 words of a key, by word count


def murmur2(key: bytes) -> int:
    """Kafka's murmur2 (Java `Utils.murmur2`, unsigned), as aiokafka.partitioner.murmur2
    computes it, faster: the key's 4-byte words are unpacked in one C call instead of
    byte by byte. One is computed per decision sent; tests/streaming/test_batching.py
    checks it against aiokafka's on every length up to 200 bytes."""
    length = len(key)
    words = _WORDS.get(length >> 2)
    if words is None:
        words = _WORDS[length >> 2] = struct.Struct(f"<{length >> 2}I")
    h = 0x9747B28C ^ length
    for k in words.unpack_from(key):
        k = (k * _M) & 0xFFFFFFFF
        k = ((k ^ (k >> 24)) * _M) & 0xFFFFFFFF
        h = ((h * _M) & 0xFFFFFFFF) ^ k
    tail = length & 3
    if tail:
        at = length - tail
        if tail == 3:
            h ^= key[at + 2] << 16
        if tail >= 2:
            h ^= key[at + 1] << 8
        h = ((h ^ key[at]) * _M) & 0xFFFFFFFF
    h = ((h ^ (h >> 13)) * _M) & 0xFFFFFFFF
    return h ^ (h >> 15)


async def take_batches(stream, max_size: int, within: float):
    """Faust's `stream.take_events(max_size, within)` without its acknowledgements: the
    caller acks each batch with `ack_batch` once it is durable. Faust's own acks come from
    a `finally` block, so a batch abandoned mid-way (worker stopping, agent cancelled)
    was acked, and committed, unprocessed. Shadowing the stream's `ack` with a no-op
    leaves Faust's batching (timer, buffer, rebalance hand-off) as it is. Events the
    stream skips (flow stopped, stale generation) are not acked at all (`take_events`
    turns the stream's own acks off); commits.py sees to it that their offsets are not
    committed past."""
    async def _deferred(event) -> bool:
        return False

    replace(stream, "ack", _deferred)
    async for events in stream.take_events(max_size, within):
        yield events


async def ack_batch(stream, events) -> None:
    """Acknowledge a completed batch: only now may its offsets be committed."""
    ack = type(stream).ack  # the real Stream.ack, not take_batches' no-op
    for ev in events:
        await ack(stream, ev)


DEFAULT_BATCH_LIMIT = 1_000_000  # Kafka's default message.max.bytes, rounded down


async def send_batched(producer, messages: Sequence[tuple[str, int | None, bytes | None,
                                                          bytes | None, list | None]],
                       limits: Mapping[str, int] | None = None) -> list[Delivered]:
    """Send (topic, partition | None, key, value, headers) messages; return once all are
    acknowledged. Each record batch stays within its topic's `limits` entry (default
    1,000,000 bytes). Raises the first delivery error (the caller stops the batch:
    at-least-once).
    """
    limits = limits or {}
    if not messages:
        return []
    counts: dict[str, int] = {}
    by_tp: dict[tuple[str, int], list] = defaultdict(list)
    for topic, partition, key, value, headers in messages:
        if partition is None:
            n = counts.get(topic)
            if n is None:
                n = counts[topic] = len(await producer.partitions_for(topic))
            partition = partition_for_key(key, n)
        by_tp[(topic, partition)].append((key, value, headers))

    pending: list[tuple[str, int, int, asyncio.Future]] = []
    for (topic, partition), msgs in by_tp.items():
        limit = limits.get(topic, DEFAULT_BATCH_LIMIT)
        batch = new_batch_builder(producer, limit)
        count = 0
        for key, value, headers in msgs:
            if batch.append(timestamp=None, key=key, value=value, headers=headers or []) is None:
                if count == 0:
                    raise MessageSizeTooLargeError(f"a message for {topic} exceeds the batch size")
                batch.close()
                pending.append((topic, partition, count,
                                await producer.send_batch(batch, topic, partition=partition)))
                batch, count = new_batch_builder(producer, limit), 0
                if batch.append(timestamp=None, key=key, value=value, headers=headers or []) is None:
                    raise MessageSizeTooLargeError(f"a message for {topic} exceeds the batch size")
            count += 1
        batch.close()
        pending.append((topic, partition, count,
                        await producer.send_batch(batch, topic, partition=partition)))
    results = await asyncio.gather(*(f for *_, f in pending))
    last: dict[tuple[str, int], int] = {}
    for (topic, partition, count, _f), meta in zip(pending, results, strict=True):
        last[(topic, partition)] = meta.offset + count - 1
    return [Delivered(t, p, off) for (t, p), off in last.items()]
