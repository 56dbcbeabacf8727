"""The worker's Faust topology (contract.md §1, §3; docs/streaming.md): the app, its topics,
table, agents and timers, around one engine.

* **stage 1** (`chargecap-stage1`, stage1.py) reads the input topics in batches (the
  canonical ones, and `ehr.fhir` / `ehr.hl7v2`, adapted in-process), sends invalid
  messages to the dead-letter topic and forwards the original bytes of valid ones (the
  canonical bytes of adapted records) to the internal repartition topic
  `{app_id}-patient-records`, bundled per partition of their patient.
* **stage 2** (`chargecap-stage2`, `concurrency=1`, stage2.py and processor.py) reads
  the repartition topic in batches, runs the engine against each patient's state in the
  Faust table `patient-state` (changelog `{app_id}-patient-state-changelog`,
  co-partitioned with the repartition topic), writes the table, waits until the
  changelog writes are acknowledged, and only then produces the batch's charge lines and
  alerts (crash safety, docs/streaming.md).
* the **tick timer** sends a tick message to every partition of the repartition topic;
  stage 2 runs the due settle/close/retention work and pending re-emission of the
  partition when its tick arrives (tables are only ever written by the agent owning the
  partition).
* the **lag timer** updates `chargecap_consumer_lag_messages`.

Nothing here awaits a single message's delivery: sends are collected and awaited once per
batch. The Kafka consumer and producer are the seam's (seam/): strict commits
(commits.py), guarded seeks, an idempotent producer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from dataclasses import dataclass

import faust
from faust.types import TP

from stream_app.config import Settings, faust_broker_url
from stream_app.streaming import codecs
from stream_app.streaming.admin import REPARTITION_RETENTION_S
from stream_app.streaming.batching import (
    DEFAULT_BATCH_LIMIT,
    ack_batch,
    send_batched,
    take_batches,
)
from stream_app.streaming.commits import OffsetAudit, StrictCommits
from stream_app.streaming.deadletters import DeadLetterSender
from stream_app.streaming.fetchpace import FetchPace
from stream_app.streaming.processor import MARKER_PREFIX, Stage2
from stream_app.streaming.seam import (
    changelog_is_the_wal,
    install_worker_transport,
    kafka_producer,
)
from stream_app.streaming.stage1 import ehr_adapters, route
from stream_app.streaming.stage2 import Batch, Stage2Batches
from stream_app.streaming.table import PartitionTable
from stream_app.vocabulary import (
    ALERT,
    LINE,
    TOPIC_CHARGE_LINES,
    TOPIC_CORRECTION_ALERTS,
    TOPIC_DEAD_LETTERS,
    WORKER_INPUT_TOPICS,
    repartition_topic,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StreamOptions:
    """Worker tuning that is not part of contract.md §6 (flags in worker.py)."""

    partitions: int = 6  # repartition topic and table changelog
    batch_size: int = 2000  # max messages per stage-1 batch
    # Stage 2 reads bundles (one per repartition partition and stage-1 batch), so its
    # batches and its stream queue are bounded in bundles, a few thousand records per
    # batch under backlog. Larger batches were faster but cost resident memory per open
    # patient-day (docs/performance.md).
    stage2_batch_bundles: int = 6
    stage2_queue_bundles: int = 16
    batch_within: float = 0.02  # seconds a stage waits to fill a batch
    session_timeout: float = 30.0
    heartbeat_interval: float = 3.0
    rebalance_timeout: float = 60.0
    producer_linger: float = 0.005
    max_request_size: int = 16 * 1024 * 1024
    max_batch_bytes: int = 4 * 1024 * 1024
    # Faust pauses the input partitions at 80 % of this many buffered messages; a small
    # buffer makes a backlog pause and resume them over and over, at a large cost in
    # throughput (docs/performance.md). The buffer is empty, and its memory handed back
    # (memtrim.py), once the backlog is worked off.
    stream_buffer_maxsize: int = 20_000
    # While records flow, fetches are held until this many bytes are ready or the wait is
    # over; after an empty fetch they are answered at the first byte (fetchpace.py).
    fetch_min_bytes: int = 16 * 1024
    fetch_max_wait: float = 0.005
    lag_interval: float = 5.0
    commit_interval: float = 1.0
    replication_factor: int = 1  # internal topics; 3 on a production cluster
    startup_timeout: float = 300.0
    state_cache: int = 512  # decoded patient states kept between batches (processor.py)
    malloc_trim_interval: float = 2.0  # memtrim.py; 0 = never


# Faust's RocksDB defaults (64 MB x 3 write buffers and a 2 GiB block cache per partition
# database) let a worker hold its whole table in memtables; patient state is read
# rarely (a patient's records arrive minutes apart) and the hot patients are in the
# decoded-state cache, so small buffers keep resident memory proportional to the work,
# not to the number of open patient-days (docs/performance.md).
ROCKSDB_OPTIONS = {
    "write_buffer_size": 2 * 1024 * 1024,
    "max_write_buffer_number": 2,
    "block_cache_size": 4 * 1024 * 1024,
    "block_cache_compressed_size": 1024 * 1024,
}


def build_faust_app(settings: Settings, opts: StreamOptions) -> faust.App:
    """The Faust app with the worker's configuration (no agents yet)."""
    return faust.App(
        settings.app_id,
        broker=faust_broker_url(settings.broker),
        broker_credentials=settings.faust_credentials(),
        store=settings.store,
        datadir=str(settings.data_dir),
        autodiscover=False,
        web_enabled=False,
        table_standby_replicas=0,
        topic_replication_factor=opts.replication_factor,
        topic_partitions=opts.partitions,
        topic_disable_leader=True,
        key_serializer="raw",
        value_serializer="raw",
        broker_session_timeout=opts.session_timeout,
        broker_heartbeat_interval=opts.heartbeat_interval,
        broker_rebalance_timeout=opts.rebalance_timeout,
        broker_commit_interval=opts.commit_interval,
        producer_linger=opts.producer_linger,
        producer_max_request_size=opts.max_request_size,
        # Stage batches are produced as one record batch per topic-partition
        # (batching.send_batched); the batch size bounds how many messages one holds.
        producer_max_batch_size=opts.max_batch_bytes,
        # Per-partition fetch buffers are resident memory under backlog; the broker still
        # returns a larger first message whole (KIP-74), so one maximal message suffices.
        consumer_max_fetch_size=settings.max_message_bytes + 64 * 1024,
        stream_buffer_maxsize=opts.stream_buffer_maxsize,
        consumer_auto_offset_reset="earliest",
    )


def build_worker_app(settings: Settings, opts: StreamOptions) -> tuple[faust.App, StrictCommits]:
    """The Faust app on the worker's transport (seam/): everything the worker's
    consumption and production rely on, no agents yet; benchmarks/faust_passthrough.py
    measures Faust's ceiling with it. Raises seam.SeamError on library versions the seam
    was not checked against."""
    app = build_faust_app(settings, opts)
    # Rebalances must not lose input: seeks wait for the batch in hand, and a commit
    # crosses only processed records or holes Kafka confirms (commits.py).
    commits = StrictCommits(
        OffsetAudit(settings.bootstrap_servers, client_id=f"{settings.app_id}-audit",
                    **settings.aiokafka_security_kwargs()))
    install_worker_transport(app, commits=commits,
                             pace=FetchPace(opts.fetch_min_bytes, opts.fetch_max_wait))
    return app, commits


class ChargecapStreams:
    """The worker's Faust app, agents, table and timers around one engine."""

    def __init__(self, settings: Settings, engine, state_cls, metrics=None,
                 opts: StreamOptions | None = None, site=None):
        """`site`: the EHR adapters' SiteConfig (stream_app.adapters.site), loaded once at
        start-up; None = the packaged rows only."""
        self.settings = settings
        self.opts = opts = opts or StreamOptions()
        self.engine = engine
        self.metrics = metrics
        self.app, self.commits = build_worker_app(settings, opts)
        app = self.app
        self.input_names = tuple(settings.topic(t) for t in WORKER_INPUT_TOPICS)
        self.origin_of = {name: i for i, name in enumerate(self.input_names)}
        if site is None:
            from stream_app.adapters.site import load_site_config

            site = load_site_config(None)
        self.adapters = ehr_adapters(settings.topic, site, engine.rules, settings.timezone)
        self.lines_topic = settings.topic(TOPIC_CHARGE_LINES)
        self.alerts_topic = settings.topic(TOPIC_CORRECTION_ALERTS)
        self.dead_topic = settings.topic(TOPIC_DEAD_LETTERS)
        self.repartition_name = repartition_topic(settings.app_id)
        self.recovered = False
        self.stopping = False
        self.stage2 = Stage2(engine, state_cls, metrics=metrics, input_topics=self.input_names,
                             cache_size=opts.state_cache)
        self.stage2_batches = Stage2Batches(self.stage2, input_topics=self.input_names,
                                            timezone=settings.timezone, metrics=metrics)

        raw = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw",
               "value_serializer": "raw"}
        self.input_topic = app.topic(*self.input_names, **raw)
        self.repartition = app.topic(
            self.repartition_name, partitions=opts.partitions, internal=True,
            retention=float(REPARTITION_RETENTION_S), deleting=True, maxsize=opts.stage2_queue_bundles, **raw,
        )
        self.table = app.Table(
            "patient-state", partitions=opts.partitions, key_type=bytes, value_type=bytes,
            schema=faust.Schema(**raw), recovery_buffer_size=10000,
            options=ROCKSDB_OPTIONS if str(settings.store).startswith("rocksdb") else None,
        )
        self.table.on_recover(self._on_recover)
        changelog_is_the_wal(self.table.data)
        self.dead_letters = DeadLetterSender(app.producer.send, self.dead_topic,
                                             DEFAULT_BATCH_LIMIT)
        # Record batch limits per topic; the outputs' are read from the broker at start-up.
        self.set_output_limits({})

        app.agent(self.input_topic, name="chargecap-stage1", concurrency=1)(self._stage1)
        app.agent(self.repartition, name="chargecap-stage2", concurrency=1)(self._stage2)
        app.timer(interval=settings.tick_seconds, name="chargecap-tick")(self._tick)
        app.timer(interval=opts.lag_interval, name="chargecap-lag")(self._update_lag)
        app.on_partitions_revoked.connect(self._on_revoked)

    # ------------------------------------------------------------------ readiness

    def set_output_limits(self, limits: dict[str, int]) -> None:
        """Record batch limits per topic (send_batched's default covers a topic not
        listed); the internal topics are created with max_request_size."""
        self.dead_letters.topic_limit = limits.get(self.dead_topic, DEFAULT_BATCH_LIMIT)
        internal = self.opts.max_request_size
        self.batch_limits = {**limits, self.repartition_name: internal,
                             self.table.changelog_topic_name: internal}

    def ready(self) -> bool:
        """/healthz: partitions assigned and table recovery done, not rebalancing."""
        app = self.app
        return self.recovered and not self.stopping and not app.rebalancing

    # ------------------------------------------------------------------ both stages

    async def _run_stage(self, stream, where: str, process, batch_size: int) -> None:
        """Take batches, process each, and only then ack it (its offsets may be committed)."""
        async for events in take_batches(stream, batch_size, self.opts.batch_within):
            try:
                await process(events)
            except Exception as exc:
                await self._fatal(where, exc)
            await ack_batch(stream, events)

    async def _fatal(self, where: str, exc: BaseException) -> None:
        """A batch could not be completed (e.g. Kafka refused a write): stop the worker
        rather than go on past it. Its input offsets are not committed, so a restarted
        worker processes the batch again (at-least-once)."""
        log.critical("%s batch failed (%s); stopping the worker", where, type(exc).__name__)
        self.stopping = True
        await self.app.crash(exc)
        raise exc

    def _kafka(self):
        """The aiokafka producer under Faust's (batched sends go to it directly)."""
        return kafka_producer(self.app)

    # ------------------------------------------------------------------ stage 1

    async def _stage1(self, stream):
        await self._run_stage(stream, "stage 1", self._stage1_batch, self.opts.batch_size)

    async def _stage1_batch(self, events) -> None:
        routed = route((ev.message for ev in events), origin_of=self.origin_of,
                       partitions=self.opts.partitions,
                       max_message_bytes=self.settings.max_message_bytes,
                       timezone=self.settings.timezone, adapters=self.adapters)
        metrics = self.metrics
        if metrics is not None:
            for (topic, code), n in routed.dead_lettered.items():
                metrics.dead_lettered(topic, code, n)
            for (topic, code), n in routed.not_billable.items():
                metrics.not_billable(topic, code, n)
            for topic, n in routed.consumed.items():
                metrics.consumed(topic, n)
        repartition = self.repartition_name
        forwards = [(repartition, p, None, bundle, codecs.BUNDLE_HEADERS)
                    for p, bundle in routed.bundles]
        await asyncio.gather(self.dead_letters.send(routed.dead_letters),
                             send_batched(self._kafka(), forwards, self.batch_limits))

    # ------------------------------------------------------------------ stage 2

    async def _stage2(self, stream):
        await self._run_stage(stream, "stage 2", self._stage2_batch,
                              self.opts.stage2_batch_bundles)

    async def _stage2_batch(self, events) -> None:
        batch = self.stage2_batches.decide(events, self._owned_partitions(), self._table_for)
        # Crash safety: the state that produced these outputs must be durable first.
        await self._write_changelog(batch.changelog)
        await self._produce(batch)
        self.stage2.outputs_acked(batch.touched, batch.batch_us)

    def _table_for(self, partition: int, event, changelog: list) -> PartitionTable:
        return PartitionTable(self.table, partition, event, changelog)

    async def _write_changelog(self, changelog: list) -> None:
        """Produce the batch's table writes and wait for them; then record the persisted
        changelog offsets in the store, as Faust's own changelog callback does, so a
        restarted worker reads only the changelog past what its local store holds."""
        if not changelog:
            return
        store = self.table.data
        for d in await send_batched(self._kafka(), changelog, self.batch_limits):
            store.set_persisted_offset(TP(d.topic, d.partition), d.last_offset)

    async def _produce(self, batch: Batch) -> None:
        outputs = batch.outputs
        topics = {LINE: self.lines_topic, ALERT: self.alerts_topic}
        decisions = [(topics[o.kind], None, o.key, o.value, o.headers) for o in outputs]
        await asyncio.gather(send_batched(self._kafka(), decisions, self.batch_limits),
                             self.dead_letters.send(batch.dead_letters))
        m = self.metrics
        if m is None:
            return
        t = time.time()
        for o in outputs:
            if o.kind == LINE:
                m.record_line(o.record, count_value=o.count_value)
                if o.input_ts:
                    m.observe_latency("charge_line", t - o.input_ts)
            else:
                m.record_alert(o.record, group=o.partition)
                if o.input_ts:
                    m.observe_latency("alert", t - o.input_ts)

    # ------------------------------------------------------------------ timers / rebalance

    async def _tick(self) -> None:
        send = self.app.producer.send
        futures = [await send(self.repartition_name, None, b"", p, None, codecs.TICK_HEADERS)
                   for p in range(self.opts.partitions)]
        await asyncio.gather(*futures)

    def _owned_partitions(self) -> set[int] | None:
        """Partitions of the repartition topic this worker is assigned now (None when the
        consumer cannot say, e.g. not started: then nothing is filtered)."""
        try:
            assignment = self.app.consumer.assignment()
        except Exception:
            return None
        return {tp.partition for tp in assignment if tp.topic == self.repartition_name}

    def _active_partitions(self) -> set[int]:
        changelog = self.table.changelog_topic_name
        return {tp.partition for tp in self.app.assignor.assigned_actives()
                if tp.topic in (self.repartition_name, changelog)}

    async def _on_recover(self) -> None:
        actives = self._active_partitions()
        for p in list(self.stage2.parts):
            if p not in actives:
                self.stage2.revoke(p)
        n = self.opts.partitions
        by_part: dict[int, list] = defaultdict(list)
        for key, value in self.table.data.items():
            if key[:1] == MARKER_PREFIX:
                p = int(key[1:])
            else:
                p = codecs.partition_for(key[1:], n)
            if p in actives:
                by_part[p].append((key, value))
        for p in sorted(actives):
            self.stage2.rebuild(p, by_part.get(p, ()))
        self.recovered = True
        log.info("recovery complete: %d active partition(s)", len(actives))

    async def _on_revoked(self, sender, revoked, **kwargs) -> None:
        for tp in revoked:
            if tp.topic == self.repartition_name:
                self.stage2.revoke(tp.partition)
            if self.metrics is not None:
                self.metrics.remove_consumer_lag(tp.topic, tp.partition)

    async def _update_lag(self) -> None:
        m = self.metrics
        if m is None:
            return
        consumer = self.app.consumer
        try:
            assignment = consumer.assignment()
        except Exception:  # not started yet
            return
        for tp in assignment:
            if tp.topic not in self.origin_of and tp.topic != self.repartition_name:
                continue
            try:
                hw = consumer.highwater(tp)
            except Exception:
                continue
            if hw is None:
                continue
            c = consumer.committed_offset(tp)
            m.set_consumer_lag(tp.topic, tp.partition, hw - (c or 0))
