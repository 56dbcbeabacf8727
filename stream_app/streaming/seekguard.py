"""Make Faust's seeks and its fetch loop take turns.

Faust's fetch loop (`Consumer._drain_messages`) walks each fetched batch record by record,
recording the last offset it handed on (`_read_offset`) and dropping any record below it
as already read. A seek (`perform_seek`, run by table recovery and by the fetch loop
itself while the flow is paused; `seek`, used by commits.py to re-read a missed record)
resets that read offset. If the seek lands while the loop is half-way through a batch
fetched *before* it, the rest of the batch moves the read offset past the seek position
again, and the records the seek was meant to fetch again are dropped as already read.
The join/leave rebalance test (tests/reliability) catches it: a recovering worker resets
partition offsets mid-batch, and the following batch begins further on.

The guard: a lock held by the fetch loop from the first record of a batch to the end of
it, and taken by every seek of stream partitions. Seeks wait at most one batch; the fetch
loop waits at most one seek. (A batch fetched across a seek is still handed on: dropping
it was tried, and lost records, because the consumer's position had already moved past
them. commits.py notices the hole such a batch leaves and has the records read again.)
Changelog seeks (`seek_wait`, table recovery) are left alone: recovery drains those
records itself, so holding them behind the fetch loop could deadlock it.

This narrows the ways a record can be fetched and not processed; it does not close them
all (records fetched while recovery makes streams skip them are another). What makes
sure none is ever *committed* past is commits.py.

`SeekGuarded` is a mixin over a Faust consumer class (seam/consumer.py puts it in front of
Faust's aiokafka consumer); it uses only the consumer's public methods.
"""
from __future__ import annotations

import asyncio
from typing import Any


class SeekGuarded:
    """Mixin: `getmany` holds `seek_lock` from the first record of a batch to its end;
    `perform_seek` and `seek` take it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seek_lock = asyncio.Lock()

    async def getmany(self, timeout: float):
        held = False
        lock = self.seek_lock
        try:
            async for tp, message in super().getmany(timeout=timeout):
                if not held:
                    await lock.acquire()
                    held = True
                yield tp, message
        finally:
            if held:
                lock.release()

    async def perform_seek(self) -> None:
        async with self.seek_lock:
            return await super().perform_seek()

    async def seek(self, partition, offset: int) -> None:
        async with self.seek_lock:
            return await super().seek(partition, offset)
