"""Commit an input offset only past records this worker processed, or that Kafka says are
not there.

Faust commits the first unbroken run of acknowledged offsets, with two allowances: the
offset right after the committed one may be missing (room for a transaction marker), and
any offsets its fetch loop stepped over count as done ("gaps": transaction markers,
compacted records). Both turn a record that was fetched but never processed into a
record committed past, that is, lost. That happens in rebalances: while a worker
recovers, its consumer fetches but the streams skip what arrives; the fetch loop's read
position is then reset and moved again, and the skipped records are not handed on a
second time (docs/reliability.md, "Findings").

So the commit here is strict: it walks the acknowledged offsets up from the committed
one and stops at the first hole. A hole is not guessed at: `OffsetAudit` reads the
partition from the hole on with a separate, group-less consumer. Offsets without a
record (transaction markers, compacted records) are remembered as empty and the commit
crosses them; a record that is there but was never acknowledged was missed, and the
partition is re-read from it (the records after it come again: at-least-once, never
loss).

`next_commit` is the pure decision; `StrictCommits` applies it to a consumer's
bookkeeping, which the worker's consumer (seam/consumer.py) hands over through public
methods: `acked_offsets(tp)`, `acked_index(tp)`, `committed_offset(tp)`, `assignment()`
and `seek(tp, offset)`.
"""
from __future__ import annotations

import asyncio
import bisect
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence

log = logging.getLogger(__name__)

Hole = tuple[int, int]  # [start, end): offsets with no acknowledgement


def next_commit(acked: Sequence[int], committed: int | None,
                empty: Sequence[Hole]) -> tuple[int | None, Hole | None]:
    """From sorted acknowledged offsets, the committed offset (the next one to read,
    Kafka's convention) and ranges known to hold no records: the new offset to commit
    (None: nothing to commit) and the hole that stops it (None: no hole).

    With nothing committed yet the first acknowledged offset is the start, as in Faust:
    where a new group begins reading is its `auto_offset_reset`, not ours to second-guess.
    """
    if not acked:
        return None, None
    pos = acked[0] if committed is None else committed
    start = pos
    for offset in acked:
        if offset < pos:
            continue  # acknowledged again after a re-read
        if offset > pos:
            open_from = _first_unconfirmed(pos, offset, empty)
            if open_from < offset:
                return (pos if pos > start else None), (open_from, offset)
        pos = offset + 1
    return (pos if pos > start else None), None


def _first_unconfirmed(lo: int, hi: int, empty: Sequence[Hole]) -> int:
    """The first offset in [lo, hi) not inside a range known to hold no records (hi if
    every one is); `empty` is sorted."""
    for a, b in empty:
        if a <= lo < b:
            lo = b
        if lo >= hi:
            return hi
    return lo


def confirmed_empty(start: int, scanned_to: int, present: Sequence[int]) -> list[Hole]:
    """The ranges in [start, scanned_to) holding none of the `present` record offsets."""
    ranges: list[Hole] = []
    pos = start
    for offset in present:
        if offset > pos:
            ranges.append((pos, offset))
        pos = max(pos, offset + 1)
    if scanned_to > pos:
        ranges.append((pos, scanned_to))
    return ranges


class StrictCommits:
    """The commit decision of one consumer (`bind`): `new_offset(tp)` is what the
    consumer commits. A hole is resolved by `audit(tp, start, stop)`, which returns the
    record offsets Kafka holds in [start, stop) and how far it read (None: no answer):
    every range without records is remembered as empty, so one audit clears all the
    transaction markers up to `stop`; a record that is there but was never acknowledged
    is read again with `consumer.seek`."""

    RETRY_S = 2.0  # an unresolved hole is audited again at most this often

    def __init__(self,
                 audit: Callable[[object, int, int],
                                 Awaitable[tuple[list[int], int] | None]],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.consumer = None
        self.audit = audit
        self.clock = clock
        self.empty: dict[object, list[Hole]] = defaultdict(list)
        self.auditing: dict[object, float] = {}  # tp -> when its audit started
        self.tasks: set[asyncio.Task] = set()
        self.rereads = 0
        self.holes_confirmed = 0

    def bind(self, consumer) -> StrictCommits:
        self.consumer = consumer
        return self

    def new_offset(self, tp) -> int | None:
        c = self.consumer
        acked = c.acked_offsets(tp)
        if not acked:
            return None
        acked.sort()
        committed = c.committed_offset(tp)
        empty = self.empty[tp]
        new, hole = next_commit(acked, committed, empty)
        if hole is not None:
            self._audit_later(tp, hole[0], acked[-1] + 1)
        if new is None:
            return None
        k = bisect.bisect_left(acked, new)
        c.acked_index(tp).difference_update(acked[:k])
        del acked[:k]
        empty[:] = [(a, b) for a, b in empty if b > new]
        return new

    def _audit_later(self, tp, start: int, stop: int) -> None:
        now = self.clock()
        started = self.auditing.get(tp)
        if started is not None and now - started < self.RETRY_S:
            return
        self.auditing[tp] = now
        task = asyncio.get_running_loop().create_task(self._resolve(tp, start, stop))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _resolve(self, tp, start: int, stop: int) -> None:
        try:
            answer = await self.audit(tp, start, stop)
            if answer is None:
                return
            present, scanned_to = answer
            empty = self.empty[tp]
            empty.extend(confirmed_empty(start, scanned_to, present))
            empty.sort()
            acked = self.consumer.acked_index(tp)
            committed = self.consumer.committed_offset(tp)
            missed = [o for o in present
                      if o not in acked and (committed is None or o >= committed)]
            if not missed:
                self.holes_confirmed += 1
                return
            if tp not in self.consumer.assignment():
                return  # no longer ours; its new owner starts from the committed offset
            self.rereads += 1
            log.warning("re-reading %s[%d] from offset %d: %d record(s) there were fetched "
                        "but never processed", tp.topic, tp.partition, missed[0], len(missed))
            await self.consumer.seek(tp, missed[0])
        except Exception as exc:  # the next commit tries again
            log.warning("could not check offsets %d-%d of %s[%d] (%s); the commit waits",
                        start, stop, tp.topic, tp.partition, type(exc).__name__)
        finally:
            self.auditing.pop(tp, None)


class OffsetAudit:
    """The record offsets Kafka holds in [start, stop) of a partition, read by a
    short-lived, group-less aiokafka consumer (holes are rare, so nothing is kept
    open between audits)."""

    def __init__(self, bootstrap: str, isolation_level: str = "read_uncommitted",
                 timeout_s: float = 5.0, max_records: int = 100_000,
                 **client_kwargs) -> None:
        self.bootstrap = bootstrap
        self.isolation_level = isolation_level
        self.timeout_s = timeout_s
        self.max_records = max_records
        self.client_kwargs = client_kwargs

    async def __call__(self, tp, start: int, stop: int) -> tuple[list[int], int] | None:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False,
            auto_offset_reset="earliest", isolation_level=self.isolation_level,
            **self.client_kwargs)
        await consumer.start()
        try:
            ktp = TopicPartition(tp.topic, tp.partition)
            consumer.assign([ktp])
            consumer.seek(ktp, start)
            present: list[int] = []
            deadline = time.monotonic() + self.timeout_s
            while time.monotonic() < deadline and len(present) < self.max_records:
                got = await consumer.getmany(ktp, timeout_ms=500)
                present.extend(r.offset for r in got.get(ktp, ()) if r.offset < stop)
                # the position passes markers and compacted offsets as well as records
                if await consumer.position(ktp) >= stop:
                    return present, stop
            return None if not present else (present, present[-1] + 1)
        finally:
            await consumer.stop()
