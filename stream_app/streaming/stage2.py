"""Stage 2's batch, without Kafka: decode the repartition messages, decide with the engine
(through processor.Stage2), encode the decisions. The caller (app.py) writes the
changelog and produces what `Stage2Batches.decide` returns.

An engine failure never stops the worker: the partition is retried one patient at a time
and the records of the patient(s) that fail become PROCESSING_ERROR dead letters, their
state unchanged.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from stream_app.engine import DeadLetter, parse_record
from stream_app.streaming import codecs
from stream_app.streaming.codecs import Output
from stream_app.streaming.deadletters import dead_letter_output
from stream_app.streaming.processor import Decided, Item, Stage2, TableAccess, patient_key
from stream_app.vocabulary import PROCESSING_ERROR

log = logging.getLogger(__name__)

# (partition, one of its events, changelog list) -> the partition's table access
TableFor = Callable[[int, object, list], TableAccess]


@dataclass
class Decoded:
    """The repartition messages of a batch, by partition and patient."""

    groups: dict[int, dict[bytes, list[Item]]] = field(default_factory=dict)
    ticks: set[int] = field(default_factory=set)
    first_event: dict[int, object] = field(default_factory=dict)  # partition -> an event
    dead_letters: list[Output] = field(default_factory=list)


@dataclass
class Batch:
    """What a batch writes and produces, in that order."""

    changelog: list = field(default_factory=list)  # table writes (topic, p, key, value, h)
    outputs: list[Output] = field(default_factory=list)  # charge lines and alerts
    dead_letters: list[Output] = field(default_factory=list)
    touched: list[int] = field(default_factory=list)  # partitions processed
    batch_us: int = 0


class Stage2Batches:
    def __init__(self, stage2: Stage2, *, input_topics: Sequence[str], timezone: str,
                 metrics=None, clock: Callable[[], float] = time.time) -> None:
        self.stage2 = stage2
        self.input_topics = tuple(input_topics)
        self.timezone = timezone
        self.metrics = metrics
        self.clock = clock

    # ------------------------------------------------------------------ decode

    def decode(self, events: Iterable) -> Decoded:
        tz = self.timezone
        d = Decoded()
        groups: dict[int, dict[bytes, list[Item]]] = defaultdict(lambda: defaultdict(list))
        for ev in events:
            msg = ev.message
            p = msg.partition
            if p not in d.first_event:
                d.first_event[p] = ev
            kind = codecs.parse_headers(msg.headers).get(codecs.H_KIND)
            if kind == codecs.TICK:
                d.ticks.add(p)
                continue
            if kind != codecs.BUNDLE:
                dl = DeadLetter(PROCESSING_ERROR, "unknown message on the repartition topic",
                                None)
                d.dead_letters.append(self.dead_letter(dl, msg.value or b"", (-1, -1), -1))
                continue
            part_groups = groups[p]
            for origin, ts_ms, src_part, src_offset, value in self._frames(msg.value or b"",
                                                                           d.dead_letters):
                rec = parse_record(value, default_tz=tz)
                if isinstance(rec, DeadLetter):  # stage 1 accepted it; should not happen
                    d.dead_letters.append(self.dead_letter(rec, value, (src_part, src_offset),
                                                           origin))
                    continue
                part_groups[patient_key(rec.patient_id)].append(
                    Item(rec, origin, ts_ms / 1000.0, value, (src_part, src_offset)))
        d.groups = {p: dict(g) for p, g in groups.items()}
        return d

    def _frames(self, value: bytes, dead: list[Output]) -> list[tuple]:
        """The records of a bundle; a damaged bundle (never written by stage 1) keeps the
        records before the damage and dead-letters the rest of its bytes."""
        frames: list[tuple] = []
        try:
            for frame in codecs.iter_bundle(value):
                frames.append(frame)
        except ValueError as exc:
            log.error("damaged bundle on the repartition topic (%s)", exc)
            done = sum(codecs.FRAME_SIZE + len(f[4]) for f in frames)
            dl = DeadLetter(PROCESSING_ERROR, "damaged repartition bundle", None)
            dead.append(self.dead_letter(dl, value[done:], (-1, -1), -1))
        return frames

    def dead_letter(self, rec: DeadLetter, value: bytes, source: tuple[int, int],
                    origin: int) -> Output:
        topic = self.input_topics[origin] if 0 <= origin < len(self.input_topics) else "unknown"
        if self.metrics is not None:
            self.metrics.dead_lettered(topic, rec.error_code)
        return dead_letter_output(rec, raw=value, topic=topic, partition=source[0],
                                  offset=source[1], key=None)

    # ------------------------------------------------------------------ decide + encode

    def decide(self, events: Iterable, owned: set[int] | None, table_for: TableFor) -> Batch:
        """Decode, decide and encode one batch. `owned`: the partitions this worker is
        assigned now (None: unknown, process all)."""
        d = self.decode(events)
        stage2 = self.stage2
        batch = Batch(dead_letters=d.dead_letters, batch_us=stage2.batch_us())
        now = self.clock()
        decided: list[Decided] = []
        # A partition revoked after its events were fetched now belongs to another worker,
        # which recovers its state from the changelog and processes these events again
        # (their offsets were not committed by us). Writing its state here would race that
        # recovery with a stale value, so such partitions are left alone. (Processing is
        # synchronous from here to the changelog write: no revocation can interleave.)
        for p in d.first_event:
            if owned is not None and p not in owned:
                stage2.revoke(p)
            else:
                batch.touched.append(p)
        for p in batch.touched:
            access = table_for(p, d.first_event[p], batch.changelog)
            groups = d.groups.get(p, {})
            tick = p in d.ticks
            try:
                stage2.process_partition(p, access, groups, tick, batch.batch_us, now, decided)
            except Exception as exc:
                self._isolate(exc, p, access, groups, tick, batch, now, decided)
        batch.outputs = codecs.encode_decisions(decided)
        return batch

    def _isolate(self, exc, p: int, access: TableAccess, groups: dict[bytes, list[Item]],
                 tick: bool, batch: Batch, now: float, decided: list[Decided]) -> None:
        """Retry the partition one patient at a time and dead-letter the records of the
        patient(s) the engine fails on (their state unchanged: processor.Stage2 takes a
        state out of its cache while the engine works on it and writes only on success).
        """
        log.error("engine failed on a batch of partition %d (%s); isolating", p,
                  type(exc).__name__)
        stage2 = self.stage2
        for key, items in groups.items():
            try:
                stage2.process_partition(p, access, {key: items}, False, batch.batch_us, now,
                                         decided)
            except Exception as exc2:
                log.error("engine failed on %d record(s) of one patient (%s); dead-lettered",
                          len(items), type(exc2).__name__)
                for it in items:
                    dl = DeadLetter(PROCESSING_ERROR, f"engine error {type(exc2).__name__}",
                                    None)
                    batch.dead_letters.append(self.dead_letter(dl, it.raw, it.source,
                                                               it.origin))
        if tick:
            try:
                stage2.process_partition(p, access, {}, True, batch.batch_us, now, decided)
            except Exception as exc3:
                log.error("timed work failed on partition %d (%s)", p, type(exc3).__name__)
