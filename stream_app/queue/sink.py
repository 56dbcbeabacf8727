"""The sink: billing.correction-alerts and billing.charge-lines into PostgreSQL.

Its own consumer group, aiokafka directly. Each poll's records are written in one
transaction: COPY into a temporary staging table, then every revision into the history
(``ON CONFLICT DO NOTHING``) and the highest revision per key into the latest-state table
with an upsert whose ``WHERE current.revision < new.revision`` never lowers a revision.
Kafka offsets are committed only after that transaction commits. A crash between the two
re-delivers records that are already written, and writing them again changes nothing;
so does a replay of the topics from offset 0. Timestamps stored are the Kafka message
timestamps, not the sink's clock, for the same reason.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson
import psycopg
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import CommitFailedError, KafkaError

from stream_app.config import Settings
from stream_app.queue.metrics import QueueMetrics
from stream_app.queue.schema import check_schema
from stream_app.vocabulary import (
    ALERT_STATES,
    LINE_STATES,
    TOPIC_CHARGE_LINES,
    TOPIC_CORRECTION_ALERTS,
    WORK_QUEUES,
)

log = logging.getLogger(__name__)

MAX_RECORDS_PER_BATCH = 5000

_STAGE_ALERT = """
CREATE TEMP TABLE IF NOT EXISTS stage_alert (
  alert_id text, revision bigint, state text, final boolean, reason_code text, severity text,
  work_queue text, payer_class text, service_date date, code text, line_id text,
  revenue_at_risk numeric, source_event_ids text[], payload jsonb, kafka_ts timestamptz
) ON COMMIT DELETE ROWS
"""
_STAGE_LINE = """
CREATE TEMP TABLE IF NOT EXISTS stage_line (
  line_id text, revision bigint, state text, final boolean, payer_class text, service_date date,
  code text, rendering_npi text, expected_reimbursement numeric, source_event_ids text[],
  payload jsonb, kafka_ts timestamptz
) ON COMMIT DELETE ROWS
"""
_ALERT_COLS = (
    "alert_id",
    "revision",
    "state",
    "final",
    "reason_code",
    "severity",
    "work_queue",
    "payer_class",
    "service_date",
    "code",
    "line_id",
    "revenue_at_risk",
    "source_event_ids",
    "payload",
    "kafka_ts",
)
_LINE_COLS = (
    "line_id",
    "revision",
    "state",
    "final",
    "payer_class",
    "service_date",
    "code",
    "rendering_npi",
    "expected_reimbursement",
    "source_event_ids",
    "payload",
    "kafka_ts",
)

_APPLY_ALERTS = """
INSERT INTO alert_revision (alert_id, revision, state, payload, kafka_ts)
SELECT alert_id, revision, state, payload, kafka_ts FROM stage_alert
ON CONFLICT DO NOTHING;

INSERT INTO alert AS cur (alert_id, revision, state, final, reason_code, severity, work_queue,
  payer_class, service_date, code, line_id, revenue_at_risk, source_event_ids, payload,
  first_seen_at, updated_at, resolved_at)
SELECT DISTINCT ON (alert_id) alert_id, revision, state, final, reason_code, severity, work_queue,
  payer_class, service_date, code, line_id, revenue_at_risk, source_event_ids, payload,
  min(kafka_ts) OVER (PARTITION BY alert_id), kafka_ts,
  CASE WHEN state = 'resolved' THEN kafka_ts END
FROM stage_alert
ORDER BY alert_id, revision DESC
ON CONFLICT (alert_id) DO UPDATE SET
  revision = EXCLUDED.revision, state = EXCLUDED.state, final = EXCLUDED.final,
  reason_code = EXCLUDED.reason_code, severity = EXCLUDED.severity,
  work_queue = EXCLUDED.work_queue, payer_class = EXCLUDED.payer_class,
  service_date = EXCLUDED.service_date, code = EXCLUDED.code, line_id = EXCLUDED.line_id,
  revenue_at_risk = EXCLUDED.revenue_at_risk, source_event_ids = EXCLUDED.source_event_ids,
  payload = EXCLUDED.payload, updated_at = EXCLUDED.updated_at,
  first_seen_at = LEAST(cur.first_seen_at, EXCLUDED.first_seen_at),
  resolved_at = CASE WHEN EXCLUDED.state = 'resolved'
                     THEN COALESCE(cur.resolved_at, EXCLUDED.updated_at) END
WHERE cur.revision < EXCLUDED.revision;
"""

_APPLY_LINES = """
INSERT INTO charge_line_revision (line_id, revision, state, payload, kafka_ts)
SELECT line_id, revision, state, payload, kafka_ts FROM stage_line
ON CONFLICT DO NOTHING;

INSERT INTO charge_line AS cur (line_id, revision, state, final, payer_class, service_date, code,
  rendering_npi, expected_reimbursement, source_event_ids, payload, first_seen_at, updated_at)
SELECT DISTINCT ON (line_id) line_id, revision, state, final, payer_class, service_date, code,
  rendering_npi, expected_reimbursement, source_event_ids, payload,
  min(kafka_ts) OVER (PARTITION BY line_id), kafka_ts
FROM stage_line
ORDER BY line_id, revision DESC
ON CONFLICT (line_id) DO UPDATE SET
  revision = EXCLUDED.revision, state = EXCLUDED.state, final = EXCLUDED.final,
  payer_class = EXCLUDED.payer_class, service_date = EXCLUDED.service_date, code = EXCLUDED.code,
  rendering_npi = EXCLUDED.rendering_npi, expected_reimbursement = EXCLUDED.expected_reimbursement,
  source_event_ids = EXCLUDED.source_event_ids, payload = EXCLUDED.payload,
  updated_at = EXCLUDED.updated_at, first_seen_at = LEAST(cur.first_seen_at, EXCLUDED.first_seen_at)
WHERE cur.revision < EXCLUDED.revision;
"""


class RejectedMessage(ValueError):
    """A message the sink cannot store; the text says what is wrong (never the value)."""


def _text(value: dict, name: str, *, required: bool = False) -> str | None:
    v = value.get(name)
    if v is None:
        if required:
            raise RejectedMessage(f"missing field {name}")
        return None
    if not isinstance(v, str):
        raise RejectedMessage(f"field {name} is not a string")
    return v


def _number(value: dict, name: str) -> float | None:
    v = value.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise RejectedMessage(f"field {name} is not a number")
    return v


def _date(value: dict, name: str) -> str | None:
    v = _text(value, name)
    if v is None:
        return None
    try:
        datetime.strptime(v, "%Y-%m-%d")
    except ValueError as exc:
        raise RejectedMessage(f"field {name} is not a YYYY-MM-DD date") from exc
    return v


def _revision(value: dict) -> int:
    v = value.get("revision")
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise RejectedMessage("field revision is not a non-negative integer")
    return v


def _ids(value: dict) -> list[str]:
    v = value.get("source_event_ids") or []
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise RejectedMessage("field source_event_ids is not a list of strings")
    return v


def _state(value: dict, allowed: tuple[str, ...]) -> str:
    v = _text(value, "state", required=True)
    if v not in allowed:
        raise RejectedMessage(f"field state is not one of {', '.join(allowed)}")
    return v


def _queue(value: dict) -> str:
    v = _text(value, "work_queue", required=True)
    if v not in WORK_QUEUES:
        # No user could ever see it: kept as a reject, visible in sink_reject and the metrics.
        raise RejectedMessage("field work_queue is not a known work queue")
    return v


def _decode(raw: bytes | None) -> tuple[dict, str]:
    if raw is None:
        raise RejectedMessage("tombstone (null value)")
    try:
        text = raw.decode("utf-8")
        value = orjson.loads(raw)
    except (UnicodeDecodeError, orjson.JSONDecodeError) as exc:
        raise RejectedMessage("value is not UTF-8 JSON") from exc
    if not isinstance(value, dict):
        raise RejectedMessage("value is not a JSON object")
    if "\\u0000" in text:
        raise RejectedMessage("value holds a NUL character (PostgreSQL jsonb refuses it)")
    return value, text


def alert_row(raw: bytes | None, ts: datetime) -> tuple:
    value, text = _decode(raw)
    return (
        _text(value, "alert_id", required=True),
        _revision(value),
        _state(value, ALERT_STATES),
        bool(value.get("final", False)),
        _text(value, "reason_code", required=True),
        _text(value, "severity"),
        _queue(value),
        _text(value, "payer_class"),
        _date(value, "service_date"),
        _text(value, "code"),
        _text(value, "line_id"),
        _number(value, "revenue_at_risk") or 0,
        _ids(value),
        text,
        ts,
    )


def line_row(raw: bytes | None, ts: datetime) -> tuple:
    value, text = _decode(raw)
    return (
        _text(value, "line_id", required=True),
        _revision(value),
        _state(value, LINE_STATES),
        bool(value.get("final", False)),
        _text(value, "payer_class"),
        _date(value, "service_date"),
        _text(value, "code"),
        _text(value, "rendering_npi"),
        _number(value, "expected_reimbursement"),
        _ids(value),
        text,
        ts,
    )


def _kafka_ts(ms: int | None) -> datetime:
    # A record without a timestamp (-1) gets the epoch: deterministic on every replay.
    return datetime.fromtimestamp(max(ms or 0, 0) / 1000, tz=UTC)


@dataclass
class Batch:
    alerts: list[tuple] = field(default_factory=list)
    lines: list[tuple] = field(default_factory=list)
    rejects: list[tuple[str, int, int, str]] = field(default_factory=list)


async def write_batch(conn: psycopg.AsyncConnection, batch: Batch) -> None:
    """Writes one batch in one transaction (the caller commits offsets after it returns)."""
    async with conn.transaction():
        async with conn.cursor() as cur:
            if batch.alerts:
                await cur.execute(_STAGE_ALERT)
                async with cur.copy(f"COPY stage_alert ({', '.join(_ALERT_COLS)}) FROM STDIN") as copy:
                    for row in batch.alerts:
                        await copy.write_row(row)
                await cur.execute(_APPLY_ALERTS)
            if batch.lines:
                await cur.execute(_STAGE_LINE)
                async with cur.copy(f"COPY stage_line ({', '.join(_LINE_COLS)}) FROM STDIN") as copy:
                    for row in batch.lines:
                        await copy.write_row(row)
                await cur.execute(_APPLY_LINES)
            if batch.rejects:
                await cur.executemany(
                    'INSERT INTO sink_reject (topic, partition, "offset", error) VALUES (%s, %s, %s, %s) '
                    "ON CONFLICT DO NOTHING",
                    batch.rejects,
                )


class Sink:
    def __init__(
        self,
        settings: Settings,
        dsn: str,
        group: str,
        metrics: QueueMetrics,
        *,
        max_records: int = MAX_RECORDS_PER_BATCH,
    ):
        self.settings = settings
        self.dsn = dsn
        self.group = group
        self.metrics = metrics
        self.max_records = max_records
        self.alerts_topic = settings.topic(TOPIC_CORRECTION_ALERTS)
        self.lines_topic = settings.topic(TOPIC_CHARGE_LINES)
        self._stopping = asyncio.Event()
        self.written = 0

    def stop(self) -> None:
        self._stopping.set()

    def _parse(self, records) -> Batch:
        batch = Batch()
        for rec in records:
            ts = _kafka_ts(rec.timestamp)
            try:
                if rec.topic == self.alerts_topic:
                    batch.alerts.append(alert_row(rec.value, ts))
                else:
                    batch.lines.append(line_row(rec.value, ts))
            except RejectedMessage as exc:
                # Where and why, never the value: it may hold PHI.
                log.warning("sink: rejected %s[%d]@%d: %s", rec.topic, rec.partition, rec.offset, exc)
                self.metrics.sink_rejected.labels(rec.topic, str(exc).split(" (")[0][:60]).inc()
                batch.rejects.append((rec.topic, rec.partition, rec.offset, str(exc)))
        return batch

    async def _update_lag(self, consumer: AIOKafkaConsumer) -> None:
        for tp in consumer.assignment():
            # read_committed: the last stable offset is the end the sink can reach.
            end = consumer.last_stable_offset(tp)
            if end is None:
                end = consumer.highwater(tp)
            if end is None:
                continue
            try:
                pos = await consumer.position(tp)
            except KafkaError:
                continue
            self.metrics.sink_lag.labels(tp.topic, str(tp.partition)).set(max(end - pos, 0))

    async def run(self) -> None:
        conn = await psycopg.AsyncConnection.connect(self.dsn)
        try:
            await check_schema(conn)
            consumer = AIOKafkaConsumer(
                self.alerts_topic,
                self.lines_topic,
                bootstrap_servers=self.settings.bootstrap_servers,
                group_id=self.group,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                isolation_level="read_committed",
                max_poll_records=self.max_records,
                fetch_max_bytes=16 * 1024 * 1024,
                max_partition_fetch_bytes=4 * 1024 * 1024,
                **self.settings.aiokafka_security_kwargs(),
            )
            await consumer.start()
            log.info("sink: consuming %s, %s as group %s", self.alerts_topic, self.lines_topic, self.group)
            try:
                await self._loop(consumer, conn)
            finally:
                await consumer.stop()
        finally:
            await conn.close()

    async def _loop(self, consumer: AIOKafkaConsumer, conn: psycopg.AsyncConnection) -> None:
        while not self._stopping.is_set():
            fetched = await consumer.getmany(timeout_ms=500, max_records=self.max_records)
            await self._update_lag(consumer)
            if not fetched:
                continue
            records = [r for recs in fetched.values() for r in recs]
            batch = self._parse(records)
            started = time.perf_counter()
            await write_batch(conn, batch)
            offsets = {tp: recs[-1].offset + 1 for tp, recs in fetched.items() if recs}
            try:
                await consumer.commit(offsets)
            except (CommitFailedError, KafkaError) as exc:
                # A rebalance took the partitions: their new owner re-reads these records and
                # writing them again changes nothing.
                log.warning("sink: offset commit failed (%s); records will be re-read", type(exc).__name__)
            n_alerts, n_lines = len(batch.alerts), len(batch.lines)
            if n_alerts:
                self.metrics.sink_upserts.labels(self.alerts_topic).inc(n_alerts)
            if n_lines:
                self.metrics.sink_upserts.labels(self.lines_topic).inc(n_lines)
            self.written += n_alerts + n_lines
            log.debug(
                "sink: wrote %d alerts, %d lines in %.3fs", n_alerts, n_lines, time.perf_counter() - started
            )
            await self._update_lag(consumer)
