"""Through the real worker, the real sink and the real API: a generated stream lands in
PostgreSQL exactly as the compacted topics hold it, and a correction produced to Kafka
resolves its item, which the API shows "resolved by correction" within 10 seconds."""

from __future__ import annotations

import asyncio
import time

import orjson
import psycopg
import pytest

from stream_app.vocabulary import (
    EM_MISSING_MODIFIER_25,
    TOPIC_CHARGE_LINES,
    TOPIC_CORRECTION_ALERTS,
    TOPIC_DISPENSES,
    TOPIC_EM_SERVICES,
    TOPIC_MEDICATION_ADMINISTRATIONS,
)
from tests.broker.queue.support import Worker, db_latest, last_per_key, produce, wait_until
from tests.queue.pg import REPO
from tests.queue.service import QueueService, add_user, chargecap, sign_in

EXAMPLES_DIR = REPO.parent / "shared" / "spec" / "examples"

pytestmark = pytest.mark.integration

PASSWORD = "coder-password-e2e-91"
TOPIC_OF = {
    "drug.dispensed": TOPIC_DISPENSES,
    "medication.administered": TOPIC_MEDICATION_ADMINISTRATIONS,
    "em.service": TOPIC_EM_SERVICES,
}


async def topics_view(bootstrap, prefix):
    return (
        await last_per_key(bootstrap, prefix + TOPIC_CORRECTION_ALERTS, "alert_id"),
        await last_per_key(bootstrap, prefix + TOPIC_CHARGE_LINES, "line_id"),
    )


def office_visit(patient: str, *, em_modifiers: list[str], em_event: str, recorded_at: str | None = None):
    """The spec's office visit (shared/spec/examples) for one patient; its E/M with the given modifiers."""
    out = []
    for line in (EXAMPLES_DIR / "office-visit.ndjson").read_text().splitlines():
        rec = orjson.loads(line)
        rec["patient_id"] = patient
        rec["event_id"] = f"{patient}-{rec['event_id']}"
        if "encounter_id" in rec:
            rec["encounter_id"] = f"{patient}-{rec['encounter_id']}"
        if "order_id" in rec:
            rec["order_id"] = f"{patient}-{rec['order_id']}"
        if rec["event_type"] == "em.service":
            rec["modifiers"] = em_modifiers
            rec["event_id"] = em_event
            if recorded_at:
                rec["recorded_at"] = recorded_at
        out.append(rec)
    return out


async def test_stream_to_db_and_a_correction_to_the_api(
    kafka_bootstrap, kafka_topics, queue_db, tmp_path, unique_name
):
    prefix = kafka_topics
    worker = Worker(tmp_path, kafka_bootstrap, unique_name("app"), prefix).start()
    add_user(queue_db, "coder", "coding", PASSWORD)
    service = QueueService(
        tmp_path,
        queue_db,
        command="run",
        extra=[
            "--broker",
            f"kafka://{kafka_bootstrap}",
            "--topic-prefix",
            prefix,
            "--sink-group",
            unique_name("sink"),
        ],
    ).start()
    try:
        await asyncio.to_thread(worker.wait_ready)
        await asyncio.to_thread(service.wait_ready)
        # The generator's stream, produced by its own command (duplicates, amendments,
        # out-of-order arrival).
        gen = await asyncio.to_thread(
            chargecap,
            "generate",
            "--seed",
            "11",
            "--records",
            "1200",
            "--redeliver-rate",
            "0.05",
            "--amend-rate",
            "0.08",
            "--shuffle-window",
            "40",
            "--malformed-rate",
            "0",
            "--produce",
            "--rate",
            "0",
            "--broker",
            f"kafka://{kafka_bootstrap}",
            "--topic-prefix",
            prefix,
            timeout=300,
        )
        assert gen.returncode == 0, gen.stderr

        # The worker's output stops changing, and the database holds exactly its last message per key.
        async def settled():
            first = await topics_view(kafka_bootstrap, prefix)
            await asyncio.sleep(3)
            second = await topics_view(kafka_bootstrap, prefix)
            db = (db_latest(queue_db, "alert", "alert_id"), db_latest(queue_db, "charge_line", "line_id"))
            return first == second and second[0] and db == second

        deadline = time.monotonic() + 240
        while not await settled():
            assert time.monotonic() < deadline, "the database never equalled the settled topics"

        # A visit whose E/M lacks modifier 25 on an injection day: one coding alert.
        patient = unique_name("P")
        await produce(
            kafka_bootstrap,
            [
                (prefix + TOPIC_OF[r["event_type"]], patient.encode(), orjson.dumps(r))
                for r in office_visit(patient, em_modifiers=[], em_event=f"{patient}-em1")
            ],
        )

        def the_alert():
            with psycopg.connect(queue_db.admin_dsn) as conn:
                return conn.execute(
                    "SELECT alert_id FROM alert WHERE payload->>'patient_id' = %s AND reason_code = %s "
                    "AND state = 'open'",
                    (patient, EM_MISSING_MODIFIER_25),
                ).fetchone()

        (alert_id,) = await asyncio.to_thread(wait_until, the_alert, 60, "the modifier-25 alert")
        session, _ = sign_in(service, "coder", PASSWORD)
        item = session.get(service.url(f"/api/v1/items/{alert_id}"), timeout=10).json()
        assert item["workflow"]["status"] == "new" and item["work_queue"] == "coding"
        listed = session.get(
            service.url("/api/v1/queues/coding/items"),
            params={"reason_code": EM_MISSING_MODIFIER_25, "page_size": 500},
            timeout=10,
        ).json()
        assert alert_id in [i["alert_id"] for i in listed["items"]]

        # The coder amends the E/M in the EHR: modifier 25, recorded later.
        correction = [
            r
            for r in office_visit(
                patient, em_modifiers=["25"], em_event=f"{patient}-em2", recorded_at="2025-03-14T15:00:00Z"
            )
            if r["event_type"] == "em.service"
        ]
        sent = time.monotonic()
        await produce(
            kafka_bootstrap, [(prefix + TOPIC_EM_SERVICES, patient.encode(), orjson.dumps(correction[0]))]
        )

        def resolved():
            body = session.get(service.url(f"/api/v1/items/{alert_id}"), timeout=5).json()
            return body["workflow"]["status"] == "resolved_by_correction"

        await asyncio.to_thread(
            wait_until, resolved, 10, "the API to show the item resolved by correction", 0.2
        )
        elapsed = time.monotonic() - sent
        assert elapsed <= 10
        active = session.get(
            service.url("/api/v1/queues/coding/items"),
            params={"reason_code": EM_MISSING_MODIFIER_25, "page_size": 500},
            timeout=10,
        ).json()
        assert alert_id not in [i["alert_id"] for i in active["items"]]
    finally:
        service.stop()
        worker.stop()
