"""`chargecap report --dsn`: the work queue's PostgreSQL gives the same figures as the
replay directory it was filled from, plus what only the queue knows (resolution times).

The queue's database is filled by the queue's own sink code (`alert_row`, `line_row`,
`write_batch`) from the replay files, as if the sink had consumed them from Kafka: every
alert opens at a known time, and a chosen set of them gets a later `resolved` revision at
a known time. Expected figures are the plain-Python recount of those same messages
(tests/report/dataset.py) and the durations the test chose.

Needs the work-queue service (stream_app.queue, issue 20) and its PostgreSQL fixture
(tests/queue/pg.py: reuses a server on PG_PORT or starts deploy/postgres-local/pg.sh).
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from stream_app.queue.sink import Batch, alert_row, line_row, write_batch  # noqa: E402
from tests.queue.pg import create_queue_db, drop_queue_db, pg_server  # noqa: E402,F401
from tests.report import dataset  # noqa: E402
from tests.report.html_tables import tables  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
PERIOD = dataset.PERIOD
OPENED_AT = datetime(2025, 3, 20, 8, 0, tzinfo=UTC)


def _resolve_plan(alerts: list[dict]) -> dict[str, float]:
    """alert_id -> hours to resolution, for every third open alert (deterministic)."""
    chosen = sorted(a["alert_id"] for a in alerts if a["state"] == "open")[::3]
    return {aid: 1.5 + (i % 17) * 2.25 for i, aid in enumerate(chosen)}


def _fill(db, replay_dir: Path, plan: dict[str, float]) -> Path:
    """Writes the replay files through the sink; returns a replay dir of the same messages."""
    lines = [orjson.loads(x) for x in open(replay_dir / "charge_lines.ndjson", "rb")]
    alerts = [orjson.loads(x) for x in open(replay_dir / "alerts.ndjson", "rb")]
    batch = Batch()
    for ln in lines:
        batch.lines.append(line_row(orjson.dumps(ln), OPENED_AT))
    final_alerts = []
    for a in alerts:
        batch.alerts.append(alert_row(orjson.dumps(a), OPENED_AT))
        if a["alert_id"] in plan:
            a = {**a, "state": "resolved", "revision": a["revision"] + 1}
            ts = OPENED_AT + timedelta(hours=plan[a["alert_id"]])
            batch.alerts.append(alert_row(orjson.dumps(a), ts))
        final_alerts.append(a)

    async def write() -> None:
        import psycopg

        async with await psycopg.AsyncConnection.connect(db.admin_dsn) as conn:
            # the sink applies one batch per poll; history rows of one key in one batch
            # are fine, the latest-state upsert takes the highest revision
            opened = Batch(lines=batch.lines, alerts=[r for r in batch.alerts if r[2] == "open"])
            resolved = Batch(alerts=[r for r in batch.alerts if r[2] == "resolved"])
            await write_batch(conn, opened)
            await write_batch(conn, resolved)

    asyncio.run(write())
    mirror = replay_dir.parent / "as-in-the-queue"
    mirror.mkdir(exist_ok=True)
    (mirror / "charge_lines.ndjson").write_bytes((replay_dir / "charge_lines.ndjson").read_bytes())
    (mirror / "alerts.ndjson").write_bytes(b"".join(orjson.dumps(a) + b"\n" for a in final_alerts))
    return mirror


@pytest.fixture(scope="module")
def queue_report(pg_server, report_dataset, tmp_path_factory):  # noqa: F811
    db = create_queue_db(*pg_server)
    try:
        alerts = [orjson.loads(x) for x in open(report_dataset.replay_dir / "alerts.ndjson", "rb")]
        plan = _resolve_plan(alerts)
        mirror = _fill(db, report_dataset.replay_dir, plan)
        out = tmp_path_factory.mktemp("report-pg") / "report.html"
        first, last = PERIOD
        done = subprocess.run(
            [sys.executable, "-m", "stream_app", "report", "--from", str(first), "--to", str(last),
             "--dsn", db.dsn, "--out", str(out)],
            capture_output=True, text=True, timeout=600, cwd=REPO, check=False)
        assert done.returncode == 0, done.stderr
        yield tables(out.read_text(encoding="utf-8")), dataset.OutputCounts(mirror), plan, alerts
    finally:
        drop_queue_db(db)


def _approx(row):
    return [pytest.approx(x, abs=0.0005) if isinstance(x, float) else x for x in row]


def test_postgres_summary_and_audit_tables_match_the_recount(queue_report):
    shown, counts, plan, _ = queue_report
    assert {r[0]: r[1:] for r in shown["summary"]} == {
        p: _approx(list(v)) for p, v in counts.summary(PERIOD).items()}
    assert sum(r[5] for r in shown["summary"] if r[0] == "all") > 0  # resolved alerts exist
    for key, expected, width in (("by_reason", counts.by_reason(PERIOD), 2),
                                 ("by_queue", counts.by_queue(PERIOD), 1),
                                 ("by_carc", counts.by_carc(PERIOD), 1),
                                 ("ndc", counts.ndc(PERIOD), 1),
                                 ("jwjz", counts.jwjz(PERIOD), 1),
                                 ("modifiers", counts.modifiers(PERIOD), 1),
                                 ("duplicates", counts.duplicates(PERIOD), 1),
                                 ("documentation", counts.documentation(PERIOD), 1),
                                 ("em99211", counts.em99211(PERIOD), 1)):
        got = {tuple(r[:width]) if width > 1 else r[0]: r[width:] for r in shown[key]}
        assert got == {k: _approx(list(v)) for k, v in expected.items()}, key
    assert shown["top_npis"] == [_approx(list(r)) for r in counts.top_npis(PERIOD)]
    assert shown["top_drugs"] == [_approx(list(r)) for r in counts.top_drugs(PERIOD)]


def _quantile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (PostgreSQL's percentile_cont)."""
    s = sorted(values)
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def test_postgres_time_to_resolution_per_queue(queue_report):
    shown, _, plan, alerts = queue_report
    per_queue: dict[str, list[float]] = {}
    for a in alerts:
        if a["alert_id"] in plan and PERIOD[0].isoformat() <= a["service_date"] <= PERIOD[1].isoformat():
            per_queue.setdefault(a["work_queue"], []).append(plan[a["alert_id"]])
    got = {r[0]: r[1:] for r in shown["resolution"]}
    assert set(per_queue) <= set(got)
    for q, hours in per_queue.items():
        n, with_times, median, p90 = got[q]
        assert n == with_times == len(hours)
        assert median == pytest.approx(statistics.median(hours), abs=0.0501)  # shown to 0.1 h
        assert p90 == pytest.approx(_quantile(hours, 0.9), abs=0.0501)
