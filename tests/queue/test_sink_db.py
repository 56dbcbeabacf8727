"""The sink's batch writer against a real PostgreSQL: latest revision per key, never lowered;
every revision in the history; writing the same records again changes nothing; messages it
cannot use are recorded by place and reason, without their value."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from stream_app.queue.sink import Batch, RejectedMessage, alert_row, line_row, write_batch
from stream_app.vocabulary import TOPIC_CORRECTION_ALERTS
from tests.queue.service import ago, alert, charge_line, write


def dump(db) -> dict[str, list]:
    with db.admin() as conn:
        return {
            t: conn.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall()
            for t in ("alert", "alert_revision", "charge_line", "charge_line_revision")
        }


def test_a_lower_revision_never_overwrites_a_higher_one(queue_db):
    t0 = ago(hours=2)
    write(queue_db.dsn, alerts=[(alert("a1", 5, state="resolved"), t0)])
    write(queue_db.dsn, alerts=[(alert("a1", 3, state="open", dollars=99.0), ago(hours=1))])
    with queue_db.admin() as conn:
        row = conn.execute(
            "SELECT revision, state, revenue_at_risk FROM alert WHERE alert_id = 'a1'"
        ).fetchone()
        history = conn.execute(
            "SELECT revision FROM alert_revision WHERE alert_id = 'a1' ORDER BY 1"
        ).fetchall()
    assert row == (5, "resolved", 10)
    assert [r for (r,) in history] == [3, 5]  # the older revision is history, not the state


def test_within_one_batch_the_highest_revision_wins_whatever_the_order(queue_db):
    t = ago(minutes=5)
    write(
        queue_db.dsn,
        lines=[
            (charge_line("l1", 2, state="void"), t),
            (charge_line("l1", 7), t),
            (charge_line("l1", 4, state="void"), t),
        ],
    )
    with queue_db.admin() as conn:
        assert conn.execute("SELECT revision, state FROM charge_line").fetchall() == [(7, "active")]
        assert conn.execute("SELECT count(*) FROM charge_line_revision").fetchone() == (3,)


def test_resolution_time_and_first_seen_come_from_kafka_timestamps(queue_db):
    opened, resolved = ago(days=2), ago(hours=1)
    write(queue_db.dsn, alerts=[(alert("a2", 1), opened)])
    write(queue_db.dsn, alerts=[(alert("a2", 2, state="resolved"), resolved)])
    with queue_db.admin() as conn:
        first, res = conn.execute(
            "SELECT first_seen_at, resolved_at FROM alert WHERE alert_id = 'a2'"
        ).fetchone()
    assert abs((first - opened).total_seconds()) < 0.01
    assert abs((res - resolved).total_seconds()) < 0.01
    # Reopened by a later revision: no longer resolved.
    write(queue_db.dsn, alerts=[(alert("a2", 3, state="open"), ago(minutes=1))])
    with queue_db.admin() as conn:
        assert conn.execute("SELECT state, resolved_at FROM alert WHERE alert_id = 'a2'").fetchone() == (
            "open",
            None,
        )


def test_writing_the_same_records_again_changes_nothing(queue_db):
    recs_a = [
        (alert(f"a{i}", r, state="resolved" if r == 3 else "open"), ago(minutes=60 - r))
        for i in range(50)
        for r in (1, 2, 3)
    ]
    recs_l = [(charge_line(f"l{i}", r), ago(minutes=60 - r)) for i in range(50) for r in (1, 2)]
    write(queue_db.dsn, alerts=recs_a, lines=recs_l)
    before = dump(queue_db)
    write(queue_db.dsn, alerts=recs_a, lines=recs_l)
    write(queue_db.dsn, alerts=recs_a[::-1], lines=recs_l[::-1])
    assert dump(queue_db) == before
    assert len(before["alert"]) == 50 and len(before["alert_revision"]) == 150


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (None, "tombstone"),
        (
            b'{"alert_id": "a", "revision": 2, "state": "open", "reason_code": "X", "work_queue": "billing"}',
            "work_queue is not a known work queue",
        ),
        (b"{not json", "not UTF-8 JSON"),
        (b"[1, 2]", "not a JSON object"),
        (
            b'{"revision": 1, "state": "open", "reason_code": "X", "work_queue": "coding"}',  # noqa: E501
            "missing field alert_id",
        ),
        (
            b'{"alert_id": "a", "revision": "2", "state": "open", "reason_code": "X", "work_queue": "coding"}',  # noqa: E501
            "revision",
        ),
        (
            b'{"alert_id": "a", "revision": 2, "state": "closed", "reason_code": "X", "work_queue": "coding"}',  # noqa: E501
            "state",
        ),
        (
            b'{"alert_id": "a", "revision": 2, "state": "open", "reason_code": "X", "work_queue": "coding",'
            b' "service_date": "14/03/2025"}',
            "service_date",
        ),
    ],
)
def test_unusable_alert_messages_are_rejected_with_the_reason(raw, why):
    with pytest.raises(RejectedMessage, match=why):
        alert_row(raw, ago(seconds=1))


def test_rejects_are_recorded_without_their_value(queue_db):
    async def go():
        conn = await psycopg.AsyncConnection.connect(queue_db.dsn)
        try:
            await write_batch(
                conn, Batch(rejects=[(TOPIC_CORRECTION_ALERTS, 0, 17, "value is not UTF-8 JSON")])
            )
        finally:
            await conn.close()

    asyncio.run(go())
    with queue_db.admin() as conn:
        cols = [c.name for c in conn.execute("SELECT * FROM sink_reject").description]
        rows = conn.execute('SELECT topic, partition, "offset", error FROM sink_reject').fetchall()
    assert rows == [(TOPIC_CORRECTION_ALERTS, 0, 17, "value is not UTF-8 JSON")]
    assert "raw" not in cols and "value" not in cols


def test_line_row_reads_the_contract_fields():
    row = line_row(
        b'{"line_id": "l9", "revision": 3, "state": "void", "rendering_npi": "1234567893",'
        b' "source_event_ids": ["e1", "e2"], "service_date": "2025-03-14"}',
        ago(seconds=1),
    )
    assert row[0] == "l9" and row[1] == 3 and row[2] == "void" and row[7] == "1234567893"
    assert row[9] == ["e1", "e2"]
