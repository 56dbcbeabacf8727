"""The Faust application of the worker (contract.md §1, §3; docs/streaming.md).

Two agents and two timers:

* **stage 1** (`chargecap-stage1`) reads the three input topics in batches, parses each
  message once, sends invalid ones to the dead-letter topic and forwards the *original
  bytes* of valid ones to the internal repartition topic `{app_id}-patient-records`,
  keyed by `patient_id` with an explicit partition (`codecs.partition_for`), so a
  patient's records meet in one partition whatever the input keys and partition counts.
* **stage 2** (`chargecap-stage2`, `concurrency=1`) reads the repartition topic in batches,
  groups the records by partition and patient, runs the engine against the patient's
  state in the Faust table `patient-state` (changelog `{app_id}-patient-state-changelog`,
  co-partitioned with the repartition topic), writes the table, waits until the
  changelog writes are acknowledged, and only then produces the batch's charge lines and
  alerts (crash safety, docs/streaming.md).
* the **tick timer** sends a tick message to every partition of the repartition topic;
  stage 2 runs the due settle/close/retention work and pending re-emission of the
  partition when its tick arrives (tables are only ever written by the agent owning the
  partition).
* the **lag timer** updates `chargecap_consumer_lag_messages`.

Nothing here awaits a single message's delivery: sends are collected and awaited once per
batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import defaultdict
from dataclasses import dataclass

import faust
from faust.streams import _current_event
from faust.types import TP

from stream_app.config import (
    INPUT_TOPICS,
    TOPIC_CHARGE_LINES,
    TOPIC_CORRECTION_ALERTS,
    TOPIC_DEAD_LETTERS,
    Settings,
    faust_broker_url,
)
from stream_app.engine import DeadLetter, parse_record
from stream_app.streaming import codecs, fastpath
from stream_app.streaming.batching import (
    DEFAULT_BATCH_LIMIT,
    ack_batch,
    send_batched,
    take_batches,
)
from stream_app.streaming.commits import OffsetAudit, StrictCommits
from stream_app.streaming.fetchpace import FetchPace, pace_fetches
from stream_app.streaming.processor import (
    MARKER_PREFIX,
    Item,
    Output,
    Stage2,
    TableAccess,
    dead_letter_output,
    patient_key,
    truncated_dead_letter,
)
from stream_app.streaming.seekguard import guard_seeks
from stream_app.streaming.statestore import changelog_is_the_wal, partition_db
from stream_app.vocabulary import TOO_LARGE

log = logging.getLogger(__name__)

PROCESSING_ERROR = "PROCESSING_ERROR"


@dataclass(frozen=True)
class StreamOptions:
    """Worker tuning that is not part of contract.md §6 (flags in worker.py)."""

    partitions: int = 6  # repartition topic and table changelog
    batch_size: int = 2000  # max messages per stage-1 batch
    # Stage 2 reads bundles (one per repartition partition and stage-1 batch: ~330
    # records each under backlog), so its batches and its stream queue are bounded in
    # bundles, ~2,000 records per batch as before bundles. Larger batches and 4 MB
    # fetches were faster but cost 400-900 B of resident memory per open patient-day
    # (docs/performance.md, "Session 5").
    stage2_batch_bundles: int = 6
    stage2_queue_bundles: int = 16
    batch_within: float = 0.02  # seconds a stage waits to fill a batch
    session_timeout: float = 30.0
    heartbeat_interval: float = 3.0
    rebalance_timeout: float = 60.0
    producer_linger: float = 0.005
    max_request_size: int = 16 * 1024 * 1024
    max_batch_bytes: int = 4 * 1024 * 1024
    # Faust pauses the input partitions at 80 % of this many buffered messages; at 4,096
    # a backlog kept pausing and resuming them (one Faust agent doing the raw loop's work
    # moved 7.4k events/s at 4,096, 14.7k at 20,000; the pipeline +13 %). The buffer is
    # empty, and its memory handed back (memtrim.py), once the backlog is worked off.
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
    """The Faust app with everything the worker's consumption and production rely on (no
    agents yet); benchmarks/faust_passthrough.py measures Faust's ceiling with it."""
    app = build_faust_app(settings, opts)
    # Rebalances must not lose input: seeks wait for the batch in hand, and a commit
    # crosses only processed records or holes Kafka confirms (commits.py).
    guard_seeks(app.consumer)
    commits = StrictCommits(
        app.consumer,
        OffsetAudit(settings.bootstrap_servers, client_id=f"{settings.app_id}-audit",
                    **settings.aiokafka_security_kwargs()),
    ).install()
    make_producer_idempotent(app)
    pace_fetches(app, FetchPace(opts.fetch_min_bytes, opts.fetch_max_wait))
    fastpath.install(app)
    return app, commits


def make_producer_idempotent(app: faust.App) -> None:
    """acks=all and an idempotent producer without Faust's exactly_once mode: a produce
    retried after a broker or network failure can then not write a message twice (a
    duplicate would carry an equal, not a higher, revision)."""
    app.producer._settings_extra = lambda: {"acks": "all", "enable_idempotence": True}  # noqa: SLF001


def internal_topic_names(settings: Settings) -> tuple[str, str]:
    """(repartition topic, table changelog topic) of an app id."""
    return f"{settings.app_id}-patient-records", f"{settings.app_id}-patient-state-changelog"


async def ensure_internal_topics(settings: Settings, opts: StreamOptions,
                                 timeout: float = 30.0) -> None:
    """Create the internal topics before Faust subscribes, and wait until the broker's
    metadata lists them: a topic Faust creates itself at start-up may be missing from the
    first metadata it subscribes with ("Ignoring missing topic"), and the worker would
    then never be assigned its partitions until the next metadata refresh."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    repartition, changelog = internal_topic_names(settings)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers,
                                client_id=f"{settings.app_id}-setup",
                                **settings.aiokafka_security_kwargs())
    await admin.start()
    try:
        wanted = {
            repartition: {"cleanup.policy": "delete", "retention.ms": str(7 * 86400 * 1000),
                          "max.message.bytes": str(opts.max_request_size)},
            changelog: {"cleanup.policy": "compact",
                        "max.message.bytes": str(opts.max_request_size)},
        }
        existing = set(await admin.list_topics())
        new = [NewTopic(name, opts.partitions, opts.replication_factor, topic_configs=cfg)
               for name, cfg in wanted.items() if name not in existing]
        if new:
            try:
                await admin.create_topics(new)
            except TopicAlreadyExistsError:
                pass
        deadline = time.monotonic() + timeout
        while True:
            described = await admin.describe_topics(list(wanted))
            ok = all(d.get("error_code", 0) == 0 and len(d.get("partitions", ())) > 0
                     for d in described)
            if ok:
                for d in described:
                    if len(d["partitions"]) != opts.partitions:
                        raise RuntimeError(
                            f"internal topic {d['topic']} has {len(d['partitions'])} "
                            f"partitions, the worker is configured for {opts.partitions}")
                return
            if time.monotonic() > deadline:
                raise RuntimeError("internal topics did not appear in the broker metadata")
            await asyncio.sleep(0.2)
    finally:
        await admin.close()


RECORD_OVERHEAD = 4096  # key, headers and record framing around a dead letter's value


async def output_limits(settings: Settings) -> dict[str, int]:
    """The largest record batch each output topic accepts (its max.message.bytes, else
    the broker's default), read at start-up. Produced batches are cut below it and dead
    letters above it are truncated *before* sending: a rejected batch would stop the
    worker (and break the idempotent producer's sequence numbers)."""
    from aiokafka.admin import AIOKafkaAdminClient

    from stream_app.topics import _describe_configs

    names = [settings.topic(t) for t in (TOPIC_CHARGE_LINES, TOPIC_CORRECTION_ALERTS,
                                         TOPIC_DEAD_LETTERS)]
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers,
                                client_id=f"{settings.app_id}-setup",
                                **settings.aiokafka_security_kwargs())
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        present = [n for n in names if n in existing]
        configs = await _describe_configs(admin, present) if present else {}
        limits = {}
        for name in names:
            value = configs.get(name, {}).get("max.message.bytes", (None, 0))[0]
            limits[name] = int(value) if value else DEFAULT_BATCH_LIMIT
        return limits
    finally:
        await admin.close()


def _too_large(exc: BaseException) -> bool:
    text = f"{type(exc).__name__} {exc}"
    return "TooLarge" in text or "too large" in text.lower()


class _PartitionTable(TableAccess):
    """Table access for one partition from inside stage 2.

    The store (RocksDB keeps one database per partition) and the changelog both take the
    partition from Faust's *current event*; a batch mixes partitions, so the current event
    is set to one of this partition's events before every access. Changelog messages are
    collected and produced for the whole batch at once (`_write_changelog`), which waits
    for their acknowledgement before the batch's outputs are produced.
    """

    __slots__ = ("table", "partition", "event", "changelog", "topic", "db")

    def __init__(self, table, partition: int, event, changelog: list, db=None):
        self.table, self.partition, self.event, self.changelog = table, partition, event, changelog
        self.topic = table.changelog_topic_name
        self.db = db  # the partition's RocksDB database, used directly (statestore.py)

    def activate(self) -> None:
        _current_event.set(weakref.ref(self.event))

    def get(self, key: bytes) -> bytes | None:
        if self.db is not None:
            return self.db.get(key)
        self.activate()
        try:
            return self.table.data[key]
        except KeyError:
            return None

    def set(self, key: bytes, value: bytes) -> None:
        if self.db is not None:
            self.db.put(key, value)
        else:
            self.activate()
            self.table.data[key] = value
        self.changelog.append((self.topic, self.partition, key, value, None))

    def delete(self, key: bytes) -> None:
        if self.db is not None:
            self.db.delete(key)
        else:
            self.activate()
            try:
                del self.table.data[key]
            except KeyError:
                pass
        self.changelog.append((self.topic, self.partition, key, None, None))


class ChargecapStreams:
    """The worker's Faust app, agents, table and timers around one engine."""

    def __init__(self, settings: Settings, engine, state_cls, metrics=None,
                 opts: StreamOptions | None = None):
        self.settings = settings
        self.opts = opts = opts or StreamOptions()
        self.engine = engine
        self.metrics = metrics
        self.app, self.commits = build_worker_app(settings, opts)
        app = self.app
        self.input_names = tuple(settings.topic(t) for t in INPUT_TOPICS)
        self.origin_of = {name: i for i, name in enumerate(self.input_names)}
        self.lines_topic = settings.topic(TOPIC_CHARGE_LINES)
        self.alerts_topic = settings.topic(TOPIC_CORRECTION_ALERTS)
        self.dead_topic = settings.topic(TOPIC_DEAD_LETTERS)
        self.repartition_name = f"{settings.app_id}-patient-records"
        self.recovered = False
        self.stopping = False
        self.stage2 = Stage2(engine, state_cls, metrics=metrics, input_topics=self.input_names,
                             cache_size=opts.state_cache)

        raw = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw",
               "value_serializer": "raw"}
        self.input_topic = app.topic(*self.input_names, **raw)
        self.repartition = app.topic(
            self.repartition_name, partitions=opts.partitions, internal=True,
            retention=7 * 86400.0, deleting=True, maxsize=opts.stage2_queue_bundles, **raw,
        )
        self.table = app.Table(
            "patient-state", partitions=opts.partitions, key_type=bytes, value_type=bytes,
            schema=faust.Schema(**raw), recovery_buffer_size=10000,
            options=ROCKSDB_OPTIONS if str(settings.store).startswith("rocksdb") else None,
        )
        self.table.on_recover(self._on_recover)
        changelog_is_the_wal(self.table.data)
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
        self.dead_letter_limit = limits.get(self.dead_topic, DEFAULT_BATCH_LIMIT)
        internal = self.opts.max_request_size
        self.batch_limits = {**limits, self.repartition_name: internal,
                             self.table.changelog_topic_name: internal}

    def ready(self) -> bool:
        """/healthz: partitions assigned and table recovery done, not rebalancing."""
        app = self.app
        return self.recovered and not self.stopping and not app.rebalancing

    # ------------------------------------------------------------------ stage 1

    async def _stage1(self, stream):
        await self._run_stage(stream, "stage 1", self._stage1_batch, self.opts.batch_size)

    async def _run_stage(self, stream, where: str, process, batch_size: int) -> None:
        """Take batches, process each, and only then ack it (its offsets may be committed)."""
        async for events in take_batches(stream, batch_size, self.opts.batch_within):
            try:
                await process(events)
            except Exception as exc:
                await self._fatal(where, exc)
            await ack_batch(stream, events)

    async def _stage1_batch(self, events) -> None:
        metrics = self.metrics
        tz = self.settings.timezone
        limit = self.settings.max_message_bytes
        n_parts = self.opts.partitions
        repartition = self.repartition_name
        sends: list[tuple] = []  # dead letters: (topic, key, value, partition, headers, Output)
        # valid records per repartition partition: (origin, ts_ms, partition, offset, raw)
        by_part: dict[int, list[tuple]] = defaultdict(list)
        partition_for = codecs.partition_for
        origin_of = self.origin_of.get
        consumed: dict[str, int] = defaultdict(int)
        for ev in events:
            msg = ev.message
            topic = msg.topic
            consumed[topic] += 1
            value = msg.value
            if value is None:
                value = b""
            if len(value) > limit:
                rec = DeadLetter(TOO_LARGE, f"value larger than {limit} bytes", None)
            else:
                try:
                    rec = parse_record(value, default_tz=tz)
                except Exception:  # noqa: BLE001 - the parser must never stop the worker
                    log.exception("parser failed on a message of %s", topic)
                    rec = DeadLetter(PROCESSING_ERROR, "parser failed", None)
            if isinstance(rec, DeadLetter):
                out = dead_letter_output(rec, raw=value, topic=topic, partition=msg.partition,
                                         offset=msg.offset, key=msg.key)
                sends.append((self.dead_topic, out.key, out.value, None, out.headers, out))
                if metrics is not None:
                    metrics.dead_lettered(topic, rec.error_code)
                continue
            ts_ms = int((msg.timestamp or time.time()) * 1000)
            by_part[partition_for(rec.patient_id.encode("utf-8"), n_parts)].append(
                (origin_of(topic, 0), ts_ms, msg.partition, msg.offset, value))
        if metrics is not None:
            for topic, n in consumed.items():
                metrics.consumed(topic, n)
        # One bundle per repartition partition: stage 2 then pays Faust's per-message cost
        # once per bundle, not once per record (codecs.encode_bundle).
        forwards = [(repartition, p, None, bundle, codecs.BUNDLE_HEADERS)
                    for p, frames in sorted(by_part.items())
                    for bundle in codecs.encode_bundle(frames)]
        await asyncio.gather(self._send_all(sends),
                             send_batched(self._kafka(), forwards, self.batch_limits))

    def _kafka(self):
        """The aiokafka producer under Faust's (batched sends go to it directly)."""
        return self.app.producer._ensure_producer()  # noqa: SLF001 - no public accessor

    async def _send_all(self, sends: list[tuple]) -> None:
        """Send everything, then wait once for all acknowledgements.

        A dead letter the topic refuses as too large is sent again with `raw` truncated
        (codecs.dead_letter_value); any other failure raises, which stops the worker
        before the batch's input offsets are committed (at-least-once)."""
        if not sends:
            return
        send = self.app.producer.send
        futures = []
        limit = self.dead_letter_limit - RECORD_OVERHEAD
        for topic, key, value, partition, headers, dead in sends:
            if dead is not None and len(value) > limit:
                log.warning("dead letter larger than the topic accepts; sending it with raw "
                            "truncated")
                t = truncated_dead_letter(dead)
                topic, key, value, headers = self.dead_topic, t.key, t.value, t.headers
            try:
                futures.append(await send(topic, key, value, partition, None, headers))
            except Exception as exc:
                if dead is None or not _too_large(exc):
                    raise
                futures.append(await self._send_truncated(dead))
        results = await asyncio.gather(*futures, return_exceptions=True)
        retry = []
        for (_t, _k, _v, _p, _h, dead), res in zip(sends, results, strict=True):
            if isinstance(res, BaseException):
                if dead is None or not _too_large(res):
                    raise res
                retry.append(await self._send_truncated(dead))
        if retry:
            await asyncio.gather(*retry)

    async def _send_truncated(self, dead: Output):
        log.warning("dead letter larger than the topic accepts; sending it with raw truncated")
        t = truncated_dead_letter(dead)
        return await self.app.producer.send(self.dead_topic, t.key, t.value, None, None,
                                            t.headers)

    # ------------------------------------------------------------------ stage 2

    async def _stage2(self, stream):
        await self._run_stage(stream, "stage 2", self._stage2_batch,
                              self.opts.stage2_batch_bundles)

    async def _fatal(self, where: str, exc: BaseException) -> None:
        """A batch could not be completed (e.g. Kafka refused a write): stop the worker
        rather than go on past it. Its input offsets are not committed, so a restarted
        worker processes the batch again (at-least-once)."""
        log.critical("%s batch failed (%s); stopping the worker", where, type(exc).__name__)
        self.stopping = True
        await self.app.crash(exc)
        raise exc

    async def _stage2_batch(self, events) -> None:
        tz = self.settings.timezone
        outputs: list[Output] = []
        groups: dict[int, dict[bytes, list[Item]]] = defaultdict(lambda: defaultdict(list))
        ticks: set[int] = set()
        ctx: dict[int, object] = {}
        for ev in events:
            msg = ev.message
            p = msg.partition
            if p not in ctx:
                ctx[p] = ev
            hs = codecs.parse_headers(msg.headers)
            kind = hs.get(codecs.H_KIND)
            if kind == codecs.TICK:
                ticks.add(p)
                continue
            if kind == codecs.BUNDLE:
                frames = self._bundle_frames(msg.value or b"", outputs)
            else:  # a single-record message of an earlier version
                frames = ((int(hs.get(codecs.H_ORIGIN, b"0")), int(hs.get(codecs.H_TS, b"0")),
                           int(hs.get(codecs.H_PART, b"-1")), int(hs.get(codecs.H_OFFSET, b"-1")),
                           msg.value or b""),)
            part_groups = groups[p]
            for origin, ts_ms, src_part, src_offset, value in frames:
                rec = parse_record(value, default_tz=tz)
                if isinstance(rec, DeadLetter):  # stage 1 accepted it; should not happen
                    outputs.append(self._dead_from_repartition(rec, value,
                                                               (src_part, src_offset), origin))
                    continue
                part_groups[patient_key(rec.patient_id)].append(
                    Item(rec, origin, ts_ms / 1000.0, value, (src_part, src_offset)))

        batch_us = self.stage2.batch_us()
        now = time.time()
        changelog: list = []
        # A partition revoked after its events were fetched now belongs to another worker,
        # which recovers its state from the changelog and processes these events again
        # (their offsets were not committed by us). Writing its state here would race that
        # recovery with a stale value, so such partitions are left alone. (Processing is
        # synchronous from here to the changelog write: no revocation can interleave.)
        owned = self._owned_partitions()
        touched = [p for p in ctx if owned is None or p in owned]
        for p in ctx:
            if p not in touched:
                outputs = [o for o in outputs if o.partition != p]
                self.stage2.revoke(p)
        for p in touched:
            access = _PartitionTable(self.table, p, ctx[p], changelog,
                                     partition_db(self.table.data, p))
            try:
                self.stage2.process_partition(p, access, groups.get(p, {}), p in ticks,
                                              batch_us, now, outputs)
            except Exception as exc:  # noqa: BLE001
                self._on_engine_error(exc, p, access, groups.get(p, {}), ticks, batch_us,
                                      now, outputs)
        # Crash safety: the state that produced these outputs must be durable first.
        await self._write_changelog(changelog)
        await self._produce(outputs)
        self.stage2.outputs_acked(touched, batch_us)

    async def _write_changelog(self, changelog: list) -> None:
        """Produce the batch's table writes and wait for them; then record the persisted
        changelog offsets in the store, as Faust's own changelog callback does, so a
        restarted worker reads only the changelog past what its local store holds."""
        if not changelog:
            return
        store = self.table.data
        for d in await send_batched(self._kafka(), changelog, self.batch_limits):
            store.set_persisted_offset(TP(d.topic, d.partition), d.last_offset)

    def _on_engine_error(self, exc, p, access, groups, ticks, batch_us, now, outputs) -> None:
        """An engine failure must not stop the worker: retry the partition one patient at
        a time and dead-letter the records of the patient(s) that fail (state unchanged)."""
        log.error("engine failed on a batch of partition %d (%s); isolating", p,
                  type(exc).__name__)
        for key, items in groups.items():
            try:
                self.stage2.process_partition(p, access, {key: items}, False, batch_us, now,
                                              outputs)
            except Exception as exc2:  # noqa: BLE001
                log.error("engine failed on %d record(s) of one patient (%s); dead-lettered",
                          len(items), type(exc2).__name__)
                for it in items:
                    dl = DeadLetter(PROCESSING_ERROR, f"engine error {type(exc2).__name__}", None)
                    outputs.append(self._dead_from_repartition(dl, it.raw, it.source,
                                                               it.origin))
        if p in ticks:
            try:
                self.stage2.process_partition(p, access, {}, True, batch_us, now, outputs)
            except Exception as exc3:  # noqa: BLE001
                log.error("timed work failed on partition %d (%s)", p, type(exc3).__name__)

    def _bundle_frames(self, value: bytes, outputs: list[Output]) -> list[tuple]:
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
            outputs.append(self._dead_from_repartition(dl, value[done:], (-1, -1), -1))
        return frames

    def _dead_from_repartition(self, rec: DeadLetter, value: bytes, source: tuple[int, int],
                               origin: int) -> Output:
        topic = self.input_names[origin] if 0 <= origin < 3 else "unknown"
        if self.metrics is not None:
            self.metrics.dead_lettered(topic, rec.error_code)
        return dead_letter_output(rec, raw=value, topic=topic, partition=source[0],
                                  offset=source[1], key=None)

    async def _produce(self, outputs: list[Output]) -> None:
        if not outputs:
            return
        topics = {"line": self.lines_topic, "alert": self.alerts_topic}
        decisions = [(topics[o.kind], None, o.key, o.value, o.headers)
                     for o in outputs if o.kind != "dead"]
        dead = [(self.dead_topic, o.key, o.value, None, o.headers, o)
                for o in outputs if o.kind == "dead"]
        await asyncio.gather(send_batched(self._kafka(), decisions, self.batch_limits), self._send_all(dead))
        m = self.metrics
        if m is None:
            return
        t = time.time()
        for o in outputs:
            if o.kind == "line":
                m.record_line(o.record, count_value=o.count_value)
                if o.input_ts:
                    m.observe_latency("charge_line", t - o.input_ts)
            elif o.kind == "alert":
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
        except Exception:  # noqa: BLE001
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
        except Exception:  # noqa: BLE001 - not started yet
            return
        committed = getattr(consumer, "_committed_offset", {})
        for tp in assignment:
            if tp.topic not in self.origin_of and tp.topic != self.repartition_name:
                continue
            try:
                hw = consumer.highwater(tp)
            except Exception:  # noqa: BLE001
                continue
            if hw is None:
                continue
            c = committed.get(tp)
            m.set_consumer_lag(tp.topic, tp.partition, hw - (c or 0))
