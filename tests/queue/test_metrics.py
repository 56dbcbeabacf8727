"""The queue service's /metrics: items by queue and workflow status, the oldest open item's
age and its configured limit, on a real service and database; no ids in labels; and the
exposition passes `promtool check metrics`."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from stream_app.queue.metrics import QueueMetrics
from tests.queue.service import QueueService, add_user, ago, alert, sign_in, write


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def test_live_metrics_count_the_queues(queue_db, tmp_path):
    write(
        queue_db.dsn,
        alerts=[
            (alert("m1", queue="coding", dollars=10.0, sources=("ev-secret-1",)), ago(hours=5)),
            (alert("m2", queue="coding", dollars=5.5), ago(hours=1)),
            (alert("m3", queue="pharmacy", dollars=1.0), ago(days=2)),
            (alert("m4", state="resolved", queue="pharmacy"), ago(days=9)),
        ],
    )
    add_user(queue_db, "coder", "coding", "metrics-password-123")
    svc = QueueService(tmp_path, queue_db, extra=["--age-limits", "pharmacy=24"]).start().wait_ready()
    try:
        s, csrf = sign_in(svc, "coder", "metrics-password-123")
        assert (
            s.post(
                svc.url("/api/v1/items/m2/status"),
                json={"status": "done"},
                headers={"X-CSRF-Token": csrf},
                timeout=10,
            ).status_code
            == 200
        )
        text = requests.get(svc.url("/metrics"), timeout=10).text
    finally:
        svc.stop()
    got = samples(text)
    items = {k[1]: v for k, v in got.items() if k[0] == "chargecap_queue_open_items"}
    assert items[(("status", "new"), ("work_queue", "coding"))] == 1
    assert items[(("status", "done_still_failing"), ("work_queue", "coding"))] == 1
    assert items[(("status", "new"), ("work_queue", "pharmacy"))] == 1
    assert sum(items.values()) == 3  # the resolved alert is no open item
    age = {
        dict(k[1])["work_queue"]: v
        for k, v in got.items()
        if k[0] == "chargecap_queue_oldest_open_item_age_seconds"
    }
    assert 5 * 3600 - 60 < age["coding"] < 5 * 3600 + 120
    assert 2 * 86400 - 60 < age["pharmacy"] < 2 * 86400 + 120
    assert age["compliance"] == 0
    limits = {
        dict(k[1])["work_queue"]: v
        for k, v in got.items()
        if k[0] == "chargecap_queue_oldest_item_age_limit_seconds"
    }
    assert limits["pharmacy"] == 24 * 3600 and limits["coding"] == 72 * 3600
    dollars = {
        dict(k[1])["work_queue"]: v
        for k, v in got.items()
        if k[0] == "chargecap_queue_open_revenue_at_risk_dollars"
    }
    assert dollars["coding"] == pytest.approx(15.5)
    for needle in ("m1", "m2", "ev-secret-1", "P1", "E1", "coder"):
        assert f'"{needle}"' not in text


def test_exposition_passes_promtool():
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found: run deploy/prometheus/ensure-prometheus.sh", pytrace=False)
    m = QueueMetrics()
    m.set_queue_stats([("coding", "new", 2)], {"coding": 30.0}, {"coding": 9.0})
    m.sink_upserts.labels("billing.charge-lines").inc(3)
    r = subprocess.run(
        [promtool, "check", "metrics"],
        input=m.exposition().decode(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr
