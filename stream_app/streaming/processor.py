"""Stage 2 of the worker, without Kafka: per-partition patient state in, decisions out.

`Stage2` holds everything the worker keeps in memory next to the Faust table:

* a due index per partition (heap of `(due, key)` with lazy deletion) so that ticks run
  `engine.advance` only for the patients whose settle/close/retention time has come;
* the queue of recovered patients still to re-emit (or, when their outputs are known to
  have been delivered, to re-count into the revenue-at-risk gauge);
* the open patient-day count per partition;
* the per-partition "outputs acknowledged up to" watermark written as a marker key.

Table access goes through a `TableAccess` given per partition by the Faust layer
(table.py); this module computes the writes and the decisions (`Decided`), which the
caller encodes (codecs.encode_decisions) and produces *after* the table writes'
changelog messages are acknowledged (see docs/streaming.md "crash safety").

Table keys: `b"p" + patient_id` (state), `b"m" + partition` (marker; value = the
`written_us` of the last batch whose outputs were all acknowledged).
"""

from __future__ import annotations

import heapq
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from stream_app.engine import Decision
from stream_app.streaming import codecs
from stream_app.vocabulary import LINE

log = logging.getLogger(__name__)

PATIENT_PREFIX = b"p"
MARKER_PREFIX = b"m"


def patient_key(patient_id: str) -> bytes:
    return PATIENT_PREFIX + patient_id.encode("utf-8")


def marker_key(partition: int) -> bytes:
    return MARKER_PREFIX + str(partition).encode()


@dataclass(slots=True)
class Decided:
    """One decision of the engine, with what the shell needs to produce and measure it."""

    decision: Decision
    input_ts: float | None  # seconds; for decision latency (None: timed work)
    partition: int  # repartition partition (the metrics' group)
    count_value: bool = True  # False for re-emissions after recovery


@dataclass(slots=True)
class Item:
    """One record from the repartition topic, already parsed."""

    record: object  # InputRecord
    origin: int  # index into the input topics
    ts: float  # input Kafka timestamp (s)
    raw: bytes = b""  # original value (for a dead letter if the engine fails on it)
    source: tuple[int, int] = (-1, -1)  # origin partition and offset (for that dead letter)


@dataclass(slots=True)
class PartitionIndex:
    heap: list = field(default_factory=list)  # (due, key)
    due: dict = field(default_factory=dict)  # key -> due (current)
    pending: deque = field(default_factory=deque)  # (key, reemit: bool)
    open_days: int = 0
    marker: int = 0  # outputs acknowledged up to this written_us
    marker_written: int = 0  # value of the marker key in the table


class TableAccess:
    """What stage 2 needs from the table for one partition (Faust layer implements)."""

    def get(self, key: bytes) -> bytes | None:  # pragma: no cover - interface
        raise NotImplementedError

    def set(self, key: bytes, value: bytes) -> None:  # pragma: no cover
        raise NotImplementedError

    def delete(self, key: bytes) -> None:  # pragma: no cover
        raise NotImplementedError


class Stage2:
    def __init__(
        self,
        engine,
        state_cls,
        *,
        metrics=None,
        input_topics: tuple[str, ...] = ("", "", ""),
        max_due_per_tick: int = 2000,
        max_pending_per_tick: int = 2000,
        clock: Callable[[], float] = time.time,
        cache_size: int = 512,
    ):
        self.engine = engine
        self.state_cls = state_cls
        self.metrics = metrics
        self.input_topics = input_topics
        self.max_due_per_tick = max_due_per_tick
        self.max_pending_per_tick = max_pending_per_tick
        self.clock = clock
        self.parts: dict[int, PartitionIndex] = {}
        self._last_us = 0
        # Decoded states of recently touched patients (LRU, bounded; a decoded state is
        # ~10x its encoded size, so the bound is small): the table stays the
        # truth (every change is written to it); the cache only spares decoding. An entry
        # is taken out while the engine works on it, so a failure never leaves a
        # half-updated state behind; rebalances clear it.
        self.cache_size = cache_size
        self._cache: dict[bytes, tuple[object, int]] = {}

    # ------------------------------------------------------------------ clock

    def batch_us(self) -> int:
        """Strictly increasing wall-clock microseconds (rev_floor and written_us)."""
        us = time.time_ns() // 1000
        if us <= self._last_us:
            us = self._last_us + 1
        self._last_us = us
        return us

    def part(self, partition: int) -> PartitionIndex:
        p = self.parts.get(partition)
        if p is None:
            p = self.parts[partition] = PartitionIndex()
        return p

    # ------------------------------------------------------------------ recovery

    def rebuild(self, partition: int, items: Iterable[tuple[bytes, bytes]]) -> None:
        """Rebuild one partition's in-memory index from its table contents."""
        self._cache.clear()
        old = self.parts.pop(partition, None)
        if old is not None and self.metrics is not None:
            self.metrics.add_open_patient_days(-old.open_days)
        p = self.part(partition)
        rows = []
        for key, value in items:
            if key[:1] == MARKER_PREFIX:
                p.marker = p.marker_written = int(value)
            elif key[:1] == PATIENT_PREFIX and value:
                rows.append((key, value))
        for key, value in rows:
            due, written, open_days = codecs.decode_state_header(value)
            p.open_days += open_days
            if due is not None:
                p.due[key] = due
                p.heap.append((due, key))
            # states written after the last acknowledged batch may have lost outputs
            p.pending.append((key, written > p.marker))
        heapq.heapify(p.heap)
        if self.metrics is not None:
            self.metrics.add_open_patient_days(p.open_days)
        n_re = sum(1 for _, r in p.pending if r)
        log.info(
            "partition %d recovered: %d patients, %d to re-emit, %d open patient-days",
            partition, len(rows), n_re, p.open_days,
        )

    def revoke(self, partition: int) -> None:
        self._cache.clear()
        p = self.parts.pop(partition, None)
        if p is not None and self.metrics is not None:
            self.metrics.add_open_patient_days(-p.open_days)
            self.metrics.forget_group(partition)

    def pending_work(self) -> int:
        return sum(len(p.pending) for p in self.parts.values())

    # ------------------------------------------------------------------ processing

    def process_partition(
        self,
        partition: int,
        table: TableAccess,
        groups: dict[bytes, list[Item]],
        tick: bool,
        batch_us: int,
        now: float,
        out: list[Decided],
    ) -> None:
        """Ingest the partition's records (grouped by patient key), then, on a tick, run
        due timed work and pending re-emission. Appends outputs; writes the table."""
        p = self.part(partition)
        if p.marker > p.marker_written:
            table.set(marker_key(partition), str(p.marker).encode())
            p.marker_written = p.marker
        engine = self.engine
        for key, items in groups.items():
            state, old_open = self._take(table, key)
            records = [it.record for it in items]
            state, outcome = engine.ingest(state, records, now, batch_us)
            self._count_inputs(items, outcome)
            ts = min(it.ts for it in items)
            self._store(p, table, key, state, old_open, batch_us)
            self._decisions(outcome.decisions, ts, partition, out, count_value=True)
        if tick:
            self._run_due(p, partition, table, batch_us, now, out)
            self._run_pending(p, partition, table, batch_us, now, out)

    def outputs_acked(self, partitions: Iterable[int], batch_us: int) -> None:
        """Every output of the batch `batch_us` was acknowledged by Kafka."""
        for partition in partitions:
            p = self.parts.get(partition)
            if p is not None and batch_us > p.marker:
                p.marker = batch_us

    # ------------------------------------------------------------------ internals

    def _take(self, table: TableAccess, key: bytes):
        """(state or None, open days stored) for a patient key: from the cache (removing
        it there until `_store` puts the new state back) or decoded from the table."""
        cached = self._cache.pop(key, None)
        if cached is not None:
            return cached
        return self._load(table.get(key))

    def _load(self, raw: bytes | None):
        if raw is None:
            return None, 0
        _due, _written, open_days = codecs.decode_state_header(raw)
        return self.state_cls.from_bytes(bytes(codecs.state_payload(raw)),
                                         codecs.state_version(raw)), open_days

    def _store(self, p: PartitionIndex, table: TableAccess, key: bytes, state, old_open: int,
               batch_us: int) -> None:
        if state is None:
            table.delete(key)
            p.due.pop(key, None)
            new_open = 0
        else:
            due = self.engine.next_due(state)
            new_open = state.open_days
            table.set(key, codecs.encode_state(due, batch_us, new_open, state.to_bytes()))
            cache = self._cache
            cache[key] = (state, new_open)
            if len(cache) > self.cache_size:
                del cache[next(iter(cache))]
            if due is None:
                p.due.pop(key, None)
            elif p.due.get(key) != due:
                p.due[key] = due
                heapq.heappush(p.heap, (due, key))
                if len(p.heap) > 2 * len(p.due) + 1024:  # drop stale entries (lazy deletion)
                    p.heap = [(d, k) for k, d in p.due.items()]
                    heapq.heapify(p.heap)
        delta = new_open - old_open
        if delta:
            p.open_days += delta
            if self.metrics is not None:
                self.metrics.add_open_patient_days(delta)

    def _run_due(self, p: PartitionIndex, partition: int, table: TableAccess, batch_us: int,
                 now: float, out: list[Decided]) -> None:
        heap = p.heap
        done = 0
        seen: set[bytes] = set()
        while heap and heap[0][0] <= now and done < self.max_due_per_tick:
            due, key = heapq.heappop(heap)
            if p.due.get(key) != due or key in seen:
                continue  # stale heap entry
            seen.add(key)
            p.due.pop(key, None)
            state, old_open = self._take(table, key)
            if state is None:
                continue
            alert_ids = ([k for ds in state.days.values() for k, em in ds.emitted.items()
                          if em.kind != LINE] if self.metrics is not None else ())
            state, outcome = self.engine.advance(state, now, batch_us)
            self._store(p, table, key, state, old_open, batch_us)
            self._decisions(outcome.decisions, None, partition, out, count_value=True)
            if state is None and self.metrics is not None:
                # the patient's state is gone: stop counting its open alerts
                for aid in alert_ids:
                    self.metrics.forget_alert(aid)
            done += 1

    def _run_pending(self, p: PartitionIndex, partition: int, table: TableAccess, batch_us: int,
                     now: float, out: list[Decided]) -> None:
        n = 0
        while p.pending and n < self.max_pending_per_tick:
            key, reemit = p.pending.popleft()
            state, old_open = self._take(table, key)
            if state is None:
                continue
            n += 1
            if reemit:
                state, outcome = self.engine.reemit(state, now, batch_us)
                self._store(p, table, key, state, old_open, batch_us)
                self._decisions(outcome.decisions, None, partition, out, count_value=False)
            elif self.metrics is not None:
                # outputs were delivered before; only re-count open alerts in the gauge
                _s, outcome = self.engine.reemit(state, now, batch_us)
                for d in outcome.decisions:
                    if d.kind != LINE:
                        self._track_alert(d.value, partition)

    def _track_alert(self, value: dict, partition: int) -> None:
        aid = value.get("alert_id")
        if isinstance(aid, str):
            self.metrics.track_alert(
                aid,
                state=value.get("state"),
                payer_class=value.get("payer_class"),
                reason_code=value.get("reason_code"),
                dollars=value.get("revenue_at_risk"),
                group=partition,
            )

    def _decisions(self, decisions, ts: float | None, partition: int, out: list[Decided],
                   count_value: bool) -> None:
        out.extend(Decided(d, ts, partition, count_value) for d in decisions)

    def _count_inputs(self, items: list[Item], outcome) -> None:
        m = self.metrics
        if m is None or not (outcome.duplicates or outcome.late):
            return
        # The engine reports totals per call; attribute them to the origin topic (exact
        # when the patient's records in this batch came from one topic, else the first).
        topic = self.input_topics[items[0].origin] if items else ""
        if outcome.duplicates:
            m.duplicate(topic, outcome.duplicates)
        if outcome.late:
            m.late(topic, outcome.late)
