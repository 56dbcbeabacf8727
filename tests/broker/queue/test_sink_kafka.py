"""The sink against real Kafka and PostgreSQL: the database's latest state per key equals
the compacted topics' last message per key, also after a SIGKILL mid-stream and a restart
(no revision ever lowered), and replaying the topics from offset 0 changes nothing.

Alerts and charge lines are produced directly (several revisions per key, states changing
along the way) as the worker would produce them: keyed by their id, revisions rising."""

from __future__ import annotations

import asyncio
import random
import threading

import orjson
import psycopg
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from stream_app.vocabulary import (
    PAYER_CLASSES,
    REASON_CODES,
    TOPIC_CHARGE_LINES,
    TOPIC_CORRECTION_ALERTS,
    WORK_QUEUES,
)
from tests.broker.queue.support import db_dump, db_latest, last_per_key, produce, wait_until
from tests.queue.service import QueueService, alert, charge_line

pytestmark = pytest.mark.integration

N_ALERTS = 4000
N_LINES = 6000


def _messages(prefix: str, seed: int = 7) -> list[tuple[str, bytes, bytes]]:
    rng = random.Random(seed)
    per_key = []
    for i in range(N_ALERTS):
        aid = f"{seed}a{i:06d}"
        revs = sorted(rng.sample(range(1, 20), rng.randint(1, 4)))
        per_key.append(
            [
                (
                    prefix + TOPIC_CORRECTION_ALERTS,
                    aid,
                    orjson.dumps(
                        alert(
                            aid,
                            r,
                            state=rng.choice(["open", "open", "resolved"]),
                            queue=rng.choice(WORK_QUEUES),
                            reason=rng.choice(REASON_CODES),
                            payer=rng.choice(PAYER_CLASSES),
                            dollars=round(rng.uniform(0, 400), 2),
                            sources=(f"ev-{i}",),
                        )
                    ),
                )
                for r in revs
            ]
        )
    for i in range(N_LINES):
        lid = f"{seed}l{i:06d}"
        revs = sorted(rng.sample(range(1, 20), rng.randint(1, 3)))
        per_key.append(
            [
                (
                    prefix + TOPIC_CHARGE_LINES,
                    lid,
                    orjson.dumps(
                        charge_line(
                            lid,
                            r,
                            state=rng.choice(["active", "void"]),
                            payer=rng.choice(PAYER_CLASSES),
                            sources=(f"ev-{i}",),
                        )
                    ),
                )
                for r in revs
            ]
        )
    # Interleave keys the way a worker's output interleaves them, each key's revisions in order.
    out = []
    queues = [list(x) for x in per_key]
    while queues:
        j = rng.randrange(len(queues))
        t, k, v = queues[j].pop(0)
        out.append((t, k.encode(), v))
        if not queues[j]:
            queues[j] = queues[-1]
            queues.pop()
    return out


class RevisionWatch(threading.Thread):
    """Snapshots the database's revisions while the sink runs; records any that went down."""

    def __init__(self, db):
        super().__init__(daemon=True)
        self.db = db
        self.seen: dict[str, int] = {}
        self.lowered: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        with psycopg.connect(self.db.admin_dsn, autocommit=True) as conn:
            while not self.stop.is_set():
                for table, key in (("alert", "alert_id"), ("charge_line", "line_id")):
                    for k, rev in conn.execute(f"SELECT {key}, revision FROM {table}"):
                        if rev < self.seen.get(k, 0):
                            self.lowered.append(f"{k}: {self.seen[k]} -> {rev}")
                        self.seen[k] = rev
                self.stop.wait(0.2)


def sink(tmp_path, db, bootstrap, prefix, group, name):
    return QueueService(
        tmp_path,
        db,
        command="sink",
        name=name,
        extra=["--broker", f"kafka://{bootstrap}", "--topic-prefix", prefix, "--sink-group", group],
    ).start()


def rows_written(svc) -> float:
    try:
        text = requests.get(svc.url("/metrics"), timeout=2).text
    except requests.RequestException:
        return 0.0
    return sum(
        float(x.rsplit(" ", 1)[1])
        for x in text.splitlines()
        if x.startswith("chargecap_queue_sink_upserts_total{")
    )


def sink_lag(svc) -> dict[tuple[str, str], float]:
    try:
        text = requests.get(svc.url("/metrics"), timeout=2).text
    except requests.RequestException:
        return {}
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "chargecap_queue_sink_lag_messages":
                out[(s.labels["topic"], s.labels["partition"])] = s.value
    return out


def count(db, table) -> int:
    with psycopg.connect(db.admin_dsn) as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


async def test_db_equals_topics_after_sigkill_and_after_a_replay(
    kafka_bootstrap, kafka_topics, queue_db, tmp_path, unique_name
):
    prefix = kafka_topics
    messages = _messages(prefix)
    producing = asyncio.create_task(produce(kafka_bootstrap, messages, chunk=1000, pause=0.15))
    watch = RevisionWatch(queue_db)
    watch.start()
    group = unique_name("sink")
    first = sink(tmp_path, queue_db, kafka_bootstrap, prefix, group, "sink-1")
    try:
        # SIGKILL mid-stream: some of the stream written, not all of it produced yet.
        await asyncio.to_thread(
            wait_until,
            lambda: count(queue_db, "alert_revision") > 2000,
            120,
            "the sink to write part of the stream",
        )
        assert not producing.done(), "the stream should still be being produced"
        first.kill()
    finally:
        first.stop()
    await producing
    second = sink(tmp_path, queue_db, kafka_bootstrap, prefix, group, "sink-2")
    try:
        alerts = await last_per_key(kafka_bootstrap, prefix + TOPIC_CORRECTION_ALERTS, "alert_id")
        lines = await last_per_key(kafka_bootstrap, prefix + TOPIC_CHARGE_LINES, "line_id")
        assert len(alerts) == N_ALERTS and len(lines) == N_LINES
        await asyncio.to_thread(
            wait_until,
            lambda: (
                db_latest(queue_db, "alert", "alert_id") == alerts
                and db_latest(queue_db, "charge_line", "line_id") == lines
            ),
            120,
            "the database to equal the topics",
        )
        # Caught up: the sink's own lag gauge says so for every partition of both topics.
        lag = await asyncio.to_thread(
            wait_until,
            lambda: (lambda v: v if len(v) == 6 and not any(v.values()) else None)(sink_lag(second)),
            30,
            "the sink's lag gauge to read 0",
        )
        assert set(lag) == {
            (prefix + t, str(p)) for t in (TOPIC_CORRECTION_ALERTS, TOPIC_CHARGE_LINES) for p in range(3)
        }
    finally:
        second.stop()
        watch.stop.set()
        watch.join(10)
    assert watch.lowered == []
    # Every revision of the topics is in the history, nothing else.
    with psycopg.connect(queue_db.admin_dsn) as conn:
        history = {(k, r) for k, r in conn.execute("SELECT alert_id, revision FROM alert_revision")}
        history |= {(k, r) for k, r in conn.execute("SELECT line_id, revision FROM charge_line_revision")}
    assert history == {(k.decode(), orjson.loads(v)["revision"]) for _, k, v in messages}

    # A replay of both topics from offset 0 (a new consumer group) into the used database.
    before = db_dump(queue_db)
    replay = sink(tmp_path, queue_db, kafka_bootstrap, prefix, unique_name("replay"), "sink-replay")
    try:
        await asyncio.to_thread(replay.wait_ready)
        await asyncio.to_thread(
            wait_until, lambda: rows_written(replay) >= len(messages), 120, "the replay to read every message"
        )
    finally:
        replay.stop()
    assert db_dump(queue_db) == before
