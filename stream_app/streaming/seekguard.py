"""Make Faust's seeks and its fetch loop take turns.

Faust's fetch loop (`Consumer._drain_messages`) walks each fetched batch record by record,
recording the last offset it handed on (`_read_offset`) and dropping any record below it
as already read. A seek (`perform_seek`, run by table recovery and by the fetch loop
itself while the flow is paused; `seek`, used by commits.py to re-read a missed record)
resets that read offset. If the seek lands while the loop is half-way through a batch
fetched *before* it, the rest of the batch moves the read offset past the seek position
again, and the records the seek was meant to fetch again are dropped as already read.
Traced in the join/leave rebalance test: a recovering worker reset partition offsets
mid-batch, and the following batch began five offsets further on.

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
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger(__name__)


class SeekGuard:
    """Wraps one Faust consumer's `getmany`, `perform_seek` and `seek`."""

    def __init__(self, consumer: Any) -> None:
        self.consumer = consumer
        self.lock = asyncio.Lock()
        self._getmany = consumer.getmany
        self._perform_seek = consumer.perform_seek
        self._seek = consumer.seek

    def install(self) -> SeekGuard:
        c = self.consumer
        # Instance attributes shadow the methods: Faust looks them up on `self` each call
        # (and the fetch loop binds `self.getmany` when it starts, after this runs).
        c.getmany = self.getmany
        c.perform_seek = self.perform_seek
        c.seek = self.seek
        return self

    async def getmany(self, timeout: float):
        held = False
        try:
            async for tp, message in self._getmany(timeout=timeout):
                if not held:
                    await self.lock.acquire()
                    held = True
                yield tp, message
        finally:
            if held:
                self.lock.release()

    async def perform_seek(self) -> None:
        async with self.lock:
            return await self._perform_seek()

    async def seek(self, partition, offset: int) -> None:
        async with self.lock:
            return await self._seek(partition, offset)


def guard_seeks(consumer: Any) -> SeekGuard:
    return SeekGuard(consumer).install()
