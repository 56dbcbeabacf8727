"""SeekGuarded over a stand-in consumer: a seek never lands in the middle of a batch. (The
worker's consumer is SeekGuarded over Faust's, tests/streaming/test_seam.py; the
end-to-end proof is the join/leave rebalance test in tests/broker/test_faults.py
against the real broker.)"""
from __future__ import annotations

import asyncio

from stream_app.streaming.seekguard import SeekGuarded


class PlainConsumer:
    """Just the surface SeekGuarded wraps: `getmany` yields (tp, offset) from the current
    position; `perform_seek`/`seek` move the position back."""

    def __init__(self, records: int) -> None:
        self.position = 0
        self.records = records
        self.log: list[str] = []
        self.fetched = asyncio.Event()
        self.release_fetch = asyncio.Event()
        self.release_fetch.set()

    async def getmany(self, timeout: float):
        start = self.position
        batch = list(range(start, min(start + 3, self.records)))
        self.position = start + len(batch)
        self.fetched.set()
        await self.release_fetch.wait()  # the fetch returns after this
        for offset in batch:
            yield "tp", offset

    async def perform_seek(self) -> None:
        self.log.append("seek")
        self.position = 0

    async def seek(self, partition, offset: int) -> None:
        self.log.append(f"seek {offset}")
        self.position = offset


class StandInConsumer(SeekGuarded, PlainConsumer):
    pass


async def drain(consumer, delivered: list[int], per_record=None) -> None:
    """Faust's fetch loop in miniature: one `getmany` batch after another."""
    for _ in range(4):
        async for _tp, offset in consumer.getmany(timeout=1.0):
            delivered.append(offset)
            consumer.log.append(f"deliver {offset}")
            if per_record is not None:
                await per_record(offset)


async def test_a_seek_waits_for_the_batch_in_hand():
    consumer = StandInConsumer(records=3)
    delivered: list[int] = []
    in_batch = asyncio.Event()
    go_on = asyncio.Event()

    async def per_record(offset):
        if offset == 0:
            in_batch.set()
            await go_on.wait()  # the stream queue is full: the fetch loop blocks here

    loop = asyncio.create_task(drain(consumer, delivered, per_record))
    await in_batch.wait()
    seek = asyncio.create_task(consumer.seek("tp", 1))
    await asyncio.sleep(0.01)
    assert not seek.done(), "a seek must not land while a batch is half handed on"
    go_on.set()
    await seek
    await loop
    # the whole first batch went out before the seek; then the position was rewound
    assert consumer.log[:4] == ["deliver 0", "deliver 1", "deliver 2", "seek 1"]


async def test_a_seek_while_a_fetch_is_in_flight_goes_first_and_the_batch_stays_whole():
    consumer = StandInConsumer(records=3)
    consumer.release_fetch.clear()
    delivered: list[int] = []
    loop = asyncio.create_task(drain(consumer, delivered))
    await consumer.fetched.wait()  # records 0-2 fetched, not yet handed on
    seek = asyncio.create_task(consumer.perform_seek())
    await asyncio.sleep(0)
    consumer.release_fetch.set()
    await seek
    await loop
    # nothing was handed on yet, so the seek need not wait; the fetched batch then goes
    # out whole (a hole it leaves is commits.py's to find), and 0-2 come again after it
    assert consumer.log[:4] == ["seek", "deliver 0", "deliver 1", "deliver 2"]
    assert delivered == [0, 1, 2, 0, 1, 2]


async def test_without_seeks_every_record_goes_out_once_in_order():
    consumer = StandInConsumer(records=7)
    delivered: list[int] = []
    await drain(consumer, delivered)
    assert delivered == list(range(7))
    assert not consumer.seek_lock.locked()
