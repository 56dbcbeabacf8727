"""Static checks of the Grafana dashboard and its provisioning.

Every PromQL expression of deploy/grafana/dashboards/chargecap.json must refer only to
series that `stream_app.metrics.Metrics` really exports (names taken from the exposition
of an exercised instance, not from a hand-written list), with label names and matcher
values those series carry. The check against a live worker's /metrics comes with the
integration test.
"""

from __future__ import annotations

import re

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from stream_app.metrics import Metrics
from tests.support.dashboard import GRAFANA, all_panels, dashboard, parse_expr, targets

CONTRACT_METRICS = {
    "chargecap_events_consumed_total",
    "chargecap_events_dead_lettered_total",
    "chargecap_duplicate_events_total",
    "chargecap_late_events_total",
    "chargecap_charge_lines_emitted_total",
    "chargecap_alerts_emitted_total",
    "chargecap_denial_risk",
    "chargecap_expected_reimbursement_dollars_total",
    "chargecap_revenue_at_risk_dollars",
    "chargecap_decision_latency_seconds",
    "chargecap_open_patient_days",
    "chargecap_consumer_lag_messages",
    # extensions beyond contract.md §7 (docs/observability.md)
    "chargecap_broker_errors_total",
    "chargecap_events_not_billable_total",
}

# The work-queue service's own /metrics (stream_app/queue/metrics.py), on the same dashboard.
QUEUE_METRICS = {
    "chargecap_queue_open_items",
    "chargecap_queue_oldest_open_item_age_seconds",
    "chargecap_queue_oldest_item_age_limit_seconds",
    "chargecap_queue_open_revenue_at_risk_dollars",
    "chargecap_queue_sink_upserts_total",
    "chargecap_queue_sink_rejected_total",
    "chargecap_queue_sink_lag_messages",
}

def test_parse_expr_reader():
    got = parse_expr(
        'histogram_quantile(0.99, sum by (le, outcome) (rate(foo_bucket{a="x", b=~"y|z"}'
        "[$__rate_interval]))) / on(a) group_left(b) bar_total > 1e3 and baz offset 5m"
    )
    assert got["metrics"] == {"foo_bucket", "bar_total", "baz"}
    assert set(got["matchers"]) == {("a", "=", "x"), ("b", "=~", "y|z")}
    assert got["grouping"] == {"le", "outcome", "a", "b"}


@pytest.fixture(scope="module")
def exported() -> dict[str, dict[str, set[str]]]:
    """series name -> {label name -> values seen}, from an exercised Metrics instance."""
    m = Metrics()
    t = "ehr.medication-administrations"
    m.consumed(t, 3)
    m.dead_lettered(t, "INVALID_JSON")
    m.not_billable("ehr.hl7v2", "HL7_UNSUPPORTED_MESSAGE")
    m.duplicate(t)
    m.late(t)
    m.line_emitted("96372", "active")
    m.alert_emitted("MISSING_NDC", "block", "pharmacy", "open")
    m.observe_line("medicare", 0.3, 14.5)
    m.track_alert("a", state="open", payer_class="medicare", reason_code="MISSING_NDC", dollars=9)
    m.observe_latency("charge_line", 0.05)
    m.set_open_patient_days(2)
    m.set_consumer_lag(t, 0, 4)
    m.broker_error("1", "node_not_ready")
    from stream_app.queue.metrics import QueueMetrics

    q = QueueMetrics()
    q.set_queue_stats([("coding", "new", 3)], {"coding": 60.0}, {"coding": 14.5})
    q.set_age_limits({"coding": 3600.0})
    q.sink_upserts.labels("billing.correction-alerts").inc()
    q.sink_rejected.labels("billing.charge-lines", "tombstone").inc()
    q.sink_lag.labels("billing.correction-alerts", "0").set(2)
    series: dict[str, dict[str, set[str]]] = {}
    for fam in [*text_string_to_metric_families(m.exposition().decode()),
                *text_string_to_metric_families(q.exposition().decode())]:
        for s in fam.samples:
            labels = series.setdefault(s.name, {})
            for k, v in s.labels.items():
                labels.setdefault(k, set()).add(v)
    return series


def test_exported_series_are_the_contract_metrics(exported):
    base = {re.sub(r"_(bucket|sum|count)$", "", n) for n in exported}
    assert base == CONTRACT_METRICS | QUEUE_METRICS


def test_every_expression_uses_only_exported_series(exported):
    assert targets(), "dashboard has no queries"
    for title, t in targets():
        parsed = parse_expr(t["expr"])
        assert parsed["metrics"], f"{title}: no metric in {t['expr']!r}"
        for name in parsed["metrics"]:
            assert name in exported, f"{title}: {name!r} is not exported by stream_app.metrics"


def test_labels_and_matcher_values_exist_on_the_series(exported):
    for title, t in targets():
        parsed = parse_expr(t["expr"])
        label_values: dict[str, set[str]] = {}
        for name in parsed["metrics"]:
            for k, vals in exported[name].items():
                label_values.setdefault(k, set()).update(vals)
        for label in parsed["grouping"]:
            assert label in label_values, f"{title}: grouping label {label!r} not on the series"
        for label, op, val in parsed["matchers"]:
            assert label in label_values, f"{title}: matcher label {label!r} not on the series"
            if op == "=":
                assert val in label_values[label] or val in _bounded(label), (
                    f"{title}: {label}={val!r} is never exported"
                )


def _bounded(label: str) -> set[str]:
    from stream_app import metrics as M

    return {
        "state": set(M.LINE_STATES) | set(M.ALERT_STATES),
        "severity": set(M.SEVERITIES),
        "work_queue": set(M.WORK_QUEUES),
        "payer_class": set(M.PAYER_CLASSES),
        "reason_code": set(M.REASON_CODES),
        "outcome": set(M.OUTCOMES),
        "error_code": set(M.ERROR_CODES),
        "code_family": set(M.CODE_FAMILIES),
    }.get(label, set())


def test_legends_only_use_grouped_labels():
    for title, t in targets():
        legend = t.get("legendFormat", "")
        used = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", legend))
        assert used <= parse_expr(t["expr"])["grouping"], f"{title}: legend {legend!r}"


def test_every_contract_metric_is_on_the_dashboard():
    used = set()
    for _, t in targets():
        used |= {re.sub(r"_(bucket|sum|count)$", "", n) for n in parse_expr(t["expr"])["metrics"]}
    # The sink's rejects are a log-and-table matter, not a dashboard series.
    assert used == CONTRACT_METRICS | QUEUE_METRICS - {"chargecap_queue_sink_rejected_total"}


def test_dashboard_structure():
    d = dashboard()
    assert d["uid"] == "chargecap"
    assert d.get("id") is None  # provisioned dashboards must not pin an id
    panels = all_panels(d)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    occupied = set()
    for p in panels:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        cells = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & occupied, f"panel {p['title']!r} overlaps another"
        occupied |= cells
        if p["type"] != "row":
            assert p["datasource"] == {"type": "prometheus", "uid": "prometheus"}, p["title"]
            for t in p["targets"]:
                assert t["datasource"]["uid"] == "prometheus"
    titles = {p["title"] for p in panels}
    for wanted in (
        "Events in per topic",
        "Decisions per second",
        "Alerts opened by reason",
        "Alerts by work queue",
        "Denial-risk distribution",
        "Open revenue at risk by payer class",
        "Open revenue at risk by reason",
        "Decision latency p50 / p99",
        "Consumer lag by topic",
        "Dead letters by error code",
        "Open patient-days",
        "Expected reimbursement rate",
    ):
        assert wanted in titles


def test_provisioning_files():
    ds = yaml.safe_load((GRAFANA / "provisioning/datasources/datasource.yml").read_text())
    (src,) = ds["datasources"]
    assert (src["type"], src["uid"], src["url"]) == (
        "prometheus",
        "prometheus",
        "http://prometheus:9090",
    )
    prov = yaml.safe_load((GRAFANA / "provisioning/dashboards/dashboards.yml").read_text())
    (provider,) = prov["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
