"""`make bench` (work queue, issue 20): how fast the sink writes, how fast the list answers.

Phases (`--only` picks some):

* **db**: the sink's batch writer (`stream_app.queue.sink.write_batch`: COPY into staging,
  history insert, upsert of the highest revision per key) into a fresh database, batches of
  5,000 records, `--records` revisions (60 % alert revisions over 40 % as many keys, 40 %
  charge-line revisions) → `sink_db_upserts_per_s`.
* **kafka**: the real sink (`chargecap queue sink`, a subprocess, its own consumer group)
  over the same records pre-produced to the output topics on the local broker; from the
  sink's first write to its last, read from its own `chargecap_queue_sink_upserts_total`
  polled every 0.1 s → `sink_kafka_upserts_per_s`. Includes Kafka fetch, JSON parsing and
  offset commits.
* **list**: `--items` open alerts (100,000) over the five work queues (coding 40 %, the
  others 15 % each) with their workflow rows for a third of them and one charge line each,
  served by `chargecap queue serve`; `--requests` signed-in GETs of a coding list page
  (50 items) per query shape, one at a time: the default (dollars at risk), by age, a
  payer-class filter, a rendering-NPI filter, page 100 → p50 / p95 per shape and
  `list_p95_ms` over all; also the queue overview and the list *page* (HTML, issue 21).

Prints a table, then one JSON line. Needs PostgreSQL (`pg.sh up`, reused when running) and,
for the kafka phase, the local broker (`kafka.sh up`, reused when running). No thresholds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import psycopg
import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from stream_app.queue.sink import Batch, alert_row, line_row, write_batch  # noqa: E402
from stream_app.vocabulary import (  # noqa: E402
    PAYER_CLASSES,
    REASON_CODES,
    TOPIC_CHARGE_LINES,
    TOPIC_CORRECTION_ALERTS,
    WORK_QUEUES,
)
from tests.queue.pg import create_queue_db, drop_queue_db  # noqa: E402
from tests.queue.service import QueueService, add_user, alert, charge_line, sign_in  # noqa: E402

PG_SH = REPO / "deploy" / "postgres-local" / "pg.sh"
KAFKA_SH = REPO / "deploy" / "kafka-local" / "kafka.sh"
QUEUE_WEIGHTS = {"coding": 0.4, **{q: 0.15 for q in WORK_QUEUES if q != "coding"}}


def log(msg: str) -> None:
    print(f"queue-bench: {msg}", file=sys.stderr, flush=True)


def run_script(args: list[str], env: dict | None = None) -> None:
    """pg.sh / kafka.sh, their output on stderr (through Python: also under pytest's capture)."""
    r = subprocess.run(args, capture_output=True, text=True, env={**os.environ, **(env or {})})
    for line in (r.stdout + r.stderr).splitlines():
        log(line)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({r.returncode})")


def ensure_pg() -> tuple[str, int]:
    port = int(os.environ.get("PG_PORT", "55432"))
    run_script(["bash", str(PG_SH), "up"], {"PG_PORT": str(port)})
    return "127.0.0.1", port


def records(n: int, seed: int = 7) -> list[tuple[str, bytes, bytes]]:
    """(topic suffix, key, value) in an order a worker could emit them: revisions rising per key."""
    rng = random.Random(seed)
    n_alert = int(n * 0.6)
    out: list[tuple[str, bytes, bytes]] = []
    alert_keys = max(1, int(n_alert * 0.4))
    line_keys = max(1, int((n - n_alert) * 0.4))
    rev: dict[str, int] = {}
    for i in range(n):
        if i < n_alert:
            k = f"a{rng.randrange(alert_keys):07d}"
            rev[k] = rev.get(k, 0) + 1
            v = alert(
                k,
                rev[k],
                state=rng.choice(["open", "open", "resolved"]),
                queue=rng.choice(WORK_QUEUES),
                reason=rng.choice(REASON_CODES),
                payer=rng.choice(PAYER_CLASSES),
                dollars=round(rng.uniform(1, 500), 2),
                sources=(f"ev-{k}",),
            )
            out.append((TOPIC_CORRECTION_ALERTS, k.encode(), orjson.dumps(v)))
        else:
            k = f"l{rng.randrange(line_keys):07d}"
            rev[k] = rev.get(k, 0) + 1
            v = charge_line(
                k,
                rev[k],
                state=rng.choice(["active", "void"]),
                payer=rng.choice(PAYER_CLASSES),
                sources=(f"ev-{k}",),
            )
            out.append((TOPIC_CHARGE_LINES, k.encode(), orjson.dumps(v)))
    rng.shuffle(out)
    # Restore per-key revision order after the shuffle (a topic keeps it per key).
    seen: dict[bytes, list[int]] = {}
    for idx, (_t, k, _v) in enumerate(out):
        seen.setdefault(k, []).append(idx)
    fixed = list(out)
    for idxs in seen.values():
        vals = sorted((out[i] for i in idxs), key=lambda r: orjson.loads(r[2])["revision"])
        for i, r in zip(idxs, vals, strict=True):
            fixed[i] = r
    return fixed


async def phase_db(db, recs) -> dict:
    conn = await psycopg.AsyncConnection.connect(db.dsn)
    ts = datetime.now(UTC)
    batches = []
    for i in range(0, len(recs), 5000):
        b = Batch()
        for t, _k, v in recs[i : i + 5000]:
            (b.alerts if t == TOPIC_CORRECTION_ALERTS else b.lines).append(
                alert_row(v, ts) if t == TOPIC_CORRECTION_ALERTS else line_row(v, ts)
            )
        batches.append(b)
    start = time.perf_counter()
    for b in batches:
        await write_batch(conn, b)
    elapsed = time.perf_counter() - start
    await conn.close()
    return {"records": len(recs), "seconds": round(elapsed, 2), "upserts_per_s": round(len(recs) / elapsed)}


def upserts(svc) -> float:
    try:
        text = requests.get(svc.url("/metrics"), timeout=2).text
    except requests.RequestException:
        return 0.0
    return sum(
        float(x.rsplit(" ", 1)[1])
        for x in text.splitlines()
        if x.startswith("chargecap_queue_sink_upserts_total{")
    )


async def phase_kafka(pg, recs, tmp: Path) -> dict:
    from aiokafka import AIOKafkaProducer

    from stream_app.topics import apply_topics

    port = os.environ.get("KAFKA_PORT", "9092")
    run_script(["bash", str(KAFKA_SH), "up"])
    bootstrap = f"127.0.0.1:{port}"
    prefix = f"qbench-{os.getpid()}-{int(time.time())}."
    await apply_topics(bootstrap, prefix)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=20, acks="all", max_batch_size=512 * 1024
    )
    await producer.start()
    try:
        for i in range(0, len(recs), 5000):
            futs = [await producer.send(prefix + t, v, key=k) for t, k, v in recs[i : i + 5000]]
            await asyncio.gather(*futs)
    finally:
        await producer.stop()
    db = create_queue_db(*pg)
    svc = QueueService(
        tmp,
        db,
        command="sink",
        name="bench-sink",
        extra=["--broker", f"kafka://{bootstrap}", "--topic-prefix", prefix, "--sink-group", prefix + "sink"],
    ).start()
    try:
        svc.wait_ready(60)
        idle_until = time.monotonic()  # the last poll that saw nothing written yet
        last = None
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            n = upserts(svc)
            now = time.monotonic()
            if n == 0:
                idle_until = now
            if n >= len(recs):
                last = (now, n)
                break
            time.sleep(0.1)
        if last is None:
            raise SystemExit(f"the sink wrote {upserts(svc)} of {len(recs)} records in 600 s")
        # From the last poll before the first write to the first poll after the last one:
        # at most 0.2 s too long.
        seconds = last[0] - idle_until
        rate = last[1] / seconds
        return {"records": len(recs), "seconds": round(seconds, 2), "upserts_per_s": round(rate)}
    finally:
        svc.stop()
        drop_queue_db(db)
        await delete_topics(bootstrap, prefix)


async def delete_topics(bootstrap: str, prefix: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if t.startswith(prefix)]
        if names:
            await admin.delete_topics(names)
    finally:
        await admin.close()


def seed_items(db, n: int, seed: int = 11) -> None:
    """n open alerts over the queues (one revision each), a workflow row for a third, a line each."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    with psycopg.connect(db.admin_dsn) as conn:
        with conn.cursor().copy(
            "COPY alert (alert_id, revision, state, reason_code, severity, work_queue, "
            "payer_class, service_date, code, line_id, revenue_at_risk, source_event_ids, "
            "payload, first_seen_at, updated_at) FROM STDIN"
        ) as cp:
            queues = list(QUEUE_WEIGHTS)
            weights = list(QUEUE_WEIGHTS.values())
            for i in range(n):
                aid = f"b{i:07d}"
                q = rng.choices(queues, weights)[0]
                a = alert(
                    aid,
                    1,
                    queue=q,
                    reason=rng.choice(REASON_CODES),
                    payer=rng.choice(PAYER_CLASSES),
                    dollars=round(rng.uniform(1, 500), 2),
                    service_date="2025-03-14",
                    line_id=f"L{aid}",
                    sources=(f"ev-{aid}",),
                )
                seen = now - timedelta(seconds=rng.uniform(0, 14 * 86400))
                cp.write_row(
                    (
                        aid,
                        1,
                        "open",
                        a["reason_code"],
                        "block",
                        q,
                        a["payer_class"],
                        "2025-03-14",
                        "99213",
                        a["line_id"],
                        a["revenue_at_risk"],
                        a["source_event_ids"],
                        orjson.dumps(a).decode(),
                        seen,
                        seen,
                    )
                )
        with conn.cursor().copy(
            "COPY charge_line (line_id, revision, state, payer_class, service_date, code, "
            "rendering_npi, expected_reimbursement, source_event_ids, payload, first_seen_at, "
            "updated_at) FROM STDIN"
        ) as cp:
            for i in range(n):
                aid = f"b{i:07d}"
                npi = f"{1000000000 + rng.randrange(500):010d}"
                ln = charge_line(f"L{aid}", npi=npi, sources=(f"ev-{aid}",))
                cp.write_row(
                    (
                        ln["line_id"],
                        1,
                        "active",
                        ln["payer_class"],
                        "2025-03-14",
                        "96372",
                        npi,
                        14.5,
                        ln["source_event_ids"],
                        orjson.dumps(ln).decode(),
                        now,
                        now,
                    )
                )
        with conn.cursor().copy(
            "COPY alert_workflow (alert_id, status, assignee, updated_by) FROM STDIN"
        ) as cp:
            for i in range(0, n, 3):
                cp.write_row(
                    (f"b{i:07d}", rng.choice(["in_progress", "waiting_clinician", "done"]), "bench", "bench")
                )
    # As autovacuum would have by then: statistics and the visibility map (index-only scans).
    with psycopg.connect(db.admin_dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p * (len(xs) - 1))))]


def phase_list(pg, n_items: int, n_requests: int, tmp: Path) -> dict:
    db = create_queue_db(*pg)
    try:
        t0 = time.perf_counter()
        seed_items(db, n_items)
        log(f"seeded {n_items:,} items in {time.perf_counter() - t0:.1f} s")
        add_user(db, "bench", ",".join(WORK_QUEUES), "bench-password-0001")
        svc = QueueService(tmp, db, name="bench-api").start().wait_ready()
        try:
            session, _ = sign_in(svc, "bench", "bench-password-0001")
            shapes = {
                "default (dollars at risk)": {},
                "by age": {"sort": "age"},
                "payer filter": {"payer_class": "medicare"},
                "rendering NPI filter": {"rendering_npi": "1000000007"},
                "page 100": {"page": "100"},
            }
            url = svc.url("/api/v1/queues/coding/items")
            out, every = {}, []
            for name, params in shapes.items():
                for _ in range(5):  # warm-up
                    session.get(url, params=params, timeout=30)
                times = []
                for _ in range(n_requests):
                    t = time.perf_counter()
                    r = session.get(url, params=params, timeout=30)
                    times.append((time.perf_counter() - t) * 1000)
                    assert r.status_code == 200, r.text
                every += times
                out[name] = {
                    "p50_ms": round(statistics.median(times), 1),
                    "p95_ms": round(pct(times, 0.95), 1),
                    "total": r.json()["total"],
                }
            times = []
            for _ in range(n_requests):
                t = time.perf_counter()
                session.get(svc.url("/api/v1/queues/coding"), timeout=30)
                times.append((time.perf_counter() - t) * 1000)
            out["overview"] = {
                "p50_ms": round(statistics.median(times), 1),
                "p95_ms": round(pct(times, 0.95), 1),
            }
            # The list page (HTML, 50 items, the same query as the API's default shape).
            page_times = []
            for i in range(n_requests + 5):
                t = time.perf_counter()
                r = session.get(svc.url("/queues/coding"), timeout=30)
                if i >= 5:
                    page_times.append((time.perf_counter() - t) * 1000)
                assert r.status_code == 200 and "data-alert-id" in r.text, r.status_code
            out["list page (HTML)"] = {
                "p50_ms": round(statistics.median(page_times), 1),
                "p95_ms": round(pct(page_times, 0.95), 1),
            }
            return {
                "items": n_items,
                "requests_per_shape": n_requests,
                "shapes": out,
                "list_p95_ms": round(pct(every, 0.95), 1),
            }
        finally:
            svc.stop()
    finally:
        drop_queue_db(db)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=100_000, help="revisions for the sink phases")
    ap.add_argument("--items", type=int, default=100_000, help="open items for the list phase")
    ap.add_argument("--requests", type=int, default=200, help="list calls per query shape")
    ap.add_argument("--only", default="db,kafka,list")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (a check that it runs)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.records, args.items, args.requests = 2000, 2000, 10
    phases = set(args.only.split(","))
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="queue-bench-"))
    pg = ensure_pg()
    result: dict = {"load_average_start": os.getloadavg()[0]}
    recs = records(args.records)
    if "db" in phases:
        db = create_queue_db(*pg)
        try:
            result["sink_db"] = asyncio.run(phase_db(db, recs))
        finally:
            drop_queue_db(db)
        log(f"sink, database path: {result['sink_db']['upserts_per_s']:,} upserts/s")
    if "kafka" in phases:
        result["sink_kafka"] = asyncio.run(phase_kafka(pg, recs, tmp))
        log(f"sink from Kafka: {result['sink_kafka']['upserts_per_s']:,} upserts/s")
    if "list" in phases:
        result["list"] = phase_list(pg, args.items, args.requests, tmp)
    result["load_average_end"] = os.getloadavg()[0]
    print("\nwork queue benchmark")
    if "sink_db" in result:
        print(
            f"  sink, database path   {result['sink_db']['upserts_per_s']:>10,} upserts/s "
            f"({result['sink_db']['records']:,} revisions)"
        )
    if "sink_kafka" in result:
        print(f"  sink, from Kafka      {result['sink_kafka']['upserts_per_s']:>10,} upserts/s")
    if "list" in result:
        for name, v in result["list"]["shapes"].items():
            print(f"  {name:<26} p50 {v['p50_ms']:>7.1f} ms   p95 {v['p95_ms']:>7.1f} ms")
        lst = result["list"]
        print(f"  list p95 (all shapes, {lst['items']:,} items)  {lst['list_p95_ms']:.1f} ms")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
