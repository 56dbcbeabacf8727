"""The practical limit of this machine for a Python Kafka hop (`raw_passthrough_eps`).

A plain aiokafka consumer → `orjson.loads` → aiokafka producer loop, the least any Python
consumer of these topics can do: no framework, no state, no per-message await on the
producer. It reads every partition of the input topics from the beginning (manual
assignment, no consumer group: nothing to join, nothing to commit), parses each value,
re-keys it by `patient_id` (as the worker's first stage does) and sends the original bytes
to one output topic. Per `getmany` batch the delivery futures are gathered once.

Time is measured from the first non-empty `getmany` to the acknowledgement of the last
output, so connection set-up and metadata look-ups are excluded (as they are for the
worker, whose clock starts at its first repartitioned message).

Usable alone: `python benchmarks/raw_passthrough.py --broker 127.0.0.1:9092 --topics a,b,c
--out t --expect N`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition


async def run_raw_passthrough(
    bootstrap: str,
    topics: list[str],
    out_topic: str,
    expect: int,
    *,
    max_records: int = 5000,
    linger_ms: int = 5,
    timeout_s: float = 600.0,
) -> dict:
    """Moves `expect` messages from `topics` to `out_topic`; returns counts and timings."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=8 * 1024 * 1024,
        client_id="chargecap-bench-raw",
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=linger_ms,
        max_batch_size=512 * 1024,
        max_request_size=16 * 1024 * 1024,
        client_id="chargecap-bench-raw",
    )
    await consumer.start()
    await producer.start()
    try:
        tps = []
        for topic in topics:
            parts = await _partitions(consumer, topic)
            tps.extend(TopicPartition(topic, p) for p in sorted(parts))
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        # Warm the producer's metadata for the output topic outside the timed window.
        await producer.client._wait_on_metadata(out_topic)  # noqa: SLF001
        loads = orjson.loads
        send = producer.send
        consumed = produced = parse_errors = batches = 0
        t_first = None
        deadline = time.monotonic() + timeout_s
        while consumed < expect:
            if time.monotonic() > deadline:
                raise TimeoutError(f"raw passthrough: {consumed}/{expect} consumed before timeout")
            records = await consumer.getmany(timeout_ms=200, max_records=max_records)
            if not records:
                continue
            if t_first is None:
                t_first = time.perf_counter()
            batches += 1
            futures = []
            for msgs in records.values():
                for msg in msgs:
                    consumed += 1
                    try:
                        pid = loads(msg.value)["patient_id"]
                        key = pid.encode() if isinstance(pid, str) else msg.key
                    except (ValueError, TypeError, KeyError):
                        parse_errors += 1
                        key = msg.key
                    futures.append(await send(out_topic, value=msg.value, key=key))
            await asyncio.gather(*futures)
            produced += len(futures)
        t_last = time.perf_counter()
    finally:
        await consumer.stop()
        await producer.stop()
    seconds = t_last - t_first
    return {
        "consumed": consumed,
        "produced": produced,
        "parse_errors": parse_errors,
        "batches": batches,
        "seconds": seconds,
        "eps": consumed / seconds if seconds > 0 else 0.0,
    }


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    for _ in range(50):
        parts = consumer.partitions_for_topic(topic)
        if parts:
            return parts
        await consumer._client.force_metadata_update()  # noqa: SLF001
        await asyncio.sleep(0.1)
    raise RuntimeError(f"topic {topic} has no partitions (does it exist?)")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--broker", default="127.0.0.1:9092")
    ap.add_argument("--topics", required=True, help="comma-separated input topics")
    ap.add_argument("--out", required=True, help="output topic (must exist)")
    ap.add_argument("--expect", type=int, required=True, help="messages to move")
    ap.add_argument("--max-records", type=int, default=5000)
    args = ap.parse_args(argv)
    res = asyncio.run(run_raw_passthrough(args.broker.split("://")[-1], args.topics.split(","),
                                          args.out, args.expect, max_records=args.max_records))
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
