"""The worker on the real Kafka, scraped by a real Prometheus (issue 5, "Done when").

One scenario per module (fixture `live`): a generated stream of about 3000 records with
redeliveries, amendments and about 3 % malformed messages is produced, in chunks over
several seconds, to the input topics of a worker subprocess (its own app id and topic
prefix, memory store, settle 1 s, close at once, metrics on 127.0.0.1:<free port>). A
Prometheus server (the Debian package; `deploy/prometheus/ensure-prometheus.sh` installs
it when absent, the tests skip with its reason only when it cannot) scrapes the worker
every second and loads `deploy/prometheus/alerts.yml`. The tests then ask Prometheus's
HTTP API and compare with what was fed and with `python -m stream_app replay` over the
same input.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections import Counter
from dataclasses import dataclass, field

import pytest
import yaml

from stream_app.devtools.generate import generate_stream
from stream_app.metrics import PAYER_CLASSES
from stream_app.topics import apply_topics
from tests.support.dashboard import parse_expr, targets
from tests.support.kafka import delete_topics_with_prefix, make_unique_name
from tests.support.prometheus import (
    ALERTS_YML,
    EXPECTED_ALERTS,
    Prometheus,
    ensure_prometheus,
    exposition_families,
    exposition_series,
)
from tests.support.worker import WorkerProcess as Worker
from tests.support.worker import message_counts, produce, run_replay, wait_until

pytestmark = pytest.mark.integration

SEED = 20250310
RECORDS = 3000
MALFORMED_RATE = 0.03
# Grafana's variables, as the dashboard would substitute them for a short time range.
GRAFANA_SUBST = (
    (re.compile(r"\$__rate_interval\b"), "1m"),
    (re.compile(r"\$__interval\b"), "1s"),
    (re.compile(r"\$__range\b"), "5m"),
    (re.compile(r"\$\{__[a-z_]+\}"), "1m"),
)
RISK_TOLERANCE = 0.01  # USD, float rounding of a sum over many alerts


def payer_label(value) -> str:
    v = str(value or "").lower()
    return v if v in PAYER_CLASSES else "unknown"


@dataclass
class Live:
    prefix: str
    worker: Worker
    prom: Prometheus
    messages: list
    per_topic: dict[str, int]
    malformed_per_topic: dict[str, int]
    open_alerts: list[dict]
    duplicates: int | None
    rate_while_feeding: list[float] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def expected_risk(self) -> float:
        return sum(a.get("revenue_at_risk") or 0.0 for a in self.open_alerts)

    def expected_risk_by(self, key) -> dict[str, float]:
        out: dict[str, float] = {}
        for a in self.open_alerts:
            k = key(a)
            out[k] = out.get(k, 0.0) + (a.get("revenue_at_risk") or 0.0)
        return out


@pytest.fixture(scope="module")
async def live(kafka_bootstrap, kafka_broker_url, tmp_path_factory):
    binary, why = ensure_prometheus()
    if binary is None:
        pytest.skip(f"Prometheus is not installed and cannot be installed here: {why}")
    started = time.monotonic()
    tmp = tmp_path_factory.mktemp("prom-live")
    prefix = make_unique_name("obs") + "."
    stream = generate_stream(SEED, records=RECORDS, malformed_rate=MALFORMED_RATE,
                             amend_rate=0.08, redeliver_rate=0.03, topic_prefix=prefix)
    labeled = list(stream.iter_labeled_messages())
    messages = [(t, k, v) for t, k, v, _bad in labeled]
    malformed_per_topic = dict(Counter(t for t, _k, _v, bad in labeled if bad is not None))
    assert sum(malformed_per_topic.values()) == len(stream.malformed) > 0
    alerts, replay_log = await asyncio.to_thread(run_replay, tmp, messages)
    m = re.search(r"(\d+) redelivered", replay_log)
    open_alerts = [a for a in alerts if a["state"] == "open"]
    assert open_alerts, "the generated input should leave open alerts"

    await apply_topics(kafka_bootstrap, prefix)
    worker = Worker(tmp, kafka_broker_url, f"{prefix}app", prefix)
    prom = None
    try:
        worker.start()
        await asyncio.to_thread(worker.wait_ready, 90)
        prom = Prometheus(tmp, [f"127.0.0.1:{worker.port}"], rule_files=[ALERTS_YML],
                          binary=binary).start()
        await asyncio.to_thread(wait_until, prom.targets_up, 30, "the worker target to be up")
        state = Live(prefix, worker, prom, messages, message_counts(messages),
                     malformed_per_topic, open_alerts, int(m.group(1)) if m else None)
        state.timings["setup"] = time.monotonic() - started

        # Feed for several seconds (a chunk every 0.5 s) and watch the rate meanwhile.
        feeding = asyncio.ensure_future(produce(kafka_bootstrap, messages, chunk=200, pause=0.5))
        while not feeding.done():
            await asyncio.sleep(1.0)
            if feeding.done():
                break
            rate = await asyncio.to_thread(
                prom.value, "sum(rate(chargecap_events_consumed_total[1m]))")
            state.rate_while_feeding.append(rate if rate is not None else float("nan"))
        await feeding
        state.timings["fed"] = time.monotonic() - started

        total = len(messages)
        await asyncio.to_thread(
            wait_until, lambda: prom.value("sum(chargecap_events_consumed_total)") == total,
            90, f"Prometheus to see all {total} messages consumed",
            detail=lambda: f"seen {prom.value('sum(chargecap_events_consumed_total)')}\n"
                           f"{worker.tail()}")
        state.timings["consumed"] = time.monotonic() - started

        # Every day closed: no open patient-day, and the gauge scraped after that.
        def closed() -> bool:
            return (prom.value("sum(chargecap_open_patient_days)") == 0
                    and prom.value("sum(chargecap_events_consumed_total)") == total)

        await asyncio.to_thread(wait_until, closed, 90, "every patient-day to close",
                                detail=worker.tail)
        await asyncio.sleep(3)  # a few more scrapes of the settled state
        state.timings["closed"] = time.monotonic() - started
        print(f"\nrevenue at risk expected {state.expected_risk:.2f}; rate samples while feeding "
              f"{state.rate_while_feeding}; timings {state.timings}")
        yield state
    finally:
        if prom is not None:
            prom.stop()
        rc = await asyncio.to_thread(worker.stop)
        print(f"\nprometheus live scenario: {len(messages)} messages "
              f"({sum(malformed_per_topic.values())} malformed), {len(open_alerts)} open alerts "
              f"(replay), worker exit {rc}, {time.monotonic() - started:.1f}s")
        await delete_topics_with_prefix(kafka_bootstrap, prefix)


async def test_every_message_consumed_in_total_and_per_topic(live: Live):
    total = await asyncio.to_thread(live.prom.value, "sum(chargecap_events_consumed_total)")
    assert total == len(live.messages)
    per_topic = await asyncio.to_thread(
        live.prom.by, "sum by (topic) (chargecap_events_consumed_total)", "topic")
    # the worker labels with the configured (prefixed) topic names; other known topics
    # (its repartition topic) are pre-initialised at 0
    assert {t: v for t, v in per_topic.items() if v} == live.per_topic
    assert all(t.startswith(live.prefix) for t in per_topic), per_topic
    assert set(live.per_topic) == {live.prefix + t for t in (
        "ehr.medication-administrations", "ehr.em-services", "pharmacy.dispenses")}


async def test_rate_is_positive_while_feeding(live: Live):
    seen = [r for r in live.rate_while_feeding if not math.isnan(r)]
    assert seen, f"no rate sample taken while feeding ({live.timings})"
    assert max(seen) > 0, f"rate stayed 0 while feeding: {live.rate_while_feeding}"
    # and within the minute after, the 1m rate still shows the traffic
    now = await asyncio.to_thread(live.prom.value, "sum(rate(chargecap_events_consumed_total[1m]))")
    assert now is not None and now > 0


async def test_dead_letters_equal_the_malformed_messages(live: Live):
    total = await asyncio.to_thread(live.prom.value, "sum(chargecap_events_dead_lettered_total)")
    assert total == sum(live.malformed_per_topic.values())
    per_topic = await asyncio.to_thread(
        live.prom.by, "sum by (topic) (chargecap_events_dead_lettered_total)", "topic")
    assert {t: v for t, v in per_topic.items() if v} == live.malformed_per_topic
    codes = await asyncio.to_thread(
        live.prom.by, "sum by (error_code) (chargecap_events_dead_lettered_total)", "error_code")
    assert codes.get("other", 0) == 0, codes  # every malformed kind has its contract code


async def test_duplicates_equal_replay(live: Live):
    assert live.duplicates is not None, "replay's summary names no redelivered count"
    dup = await asyncio.to_thread(live.prom.value, "sum(chargecap_duplicate_events_total)")
    assert dup == live.duplicates


async def test_revenue_at_risk_equals_replay_open_alerts(live: Live):
    prom = live.prom
    total = await asyncio.to_thread(prom.value, "sum(chargecap_revenue_at_risk_dollars)")
    assert total == pytest.approx(live.expected_risk, abs=RISK_TOLERANCE), (
        f"Prometheus {total} vs replay {live.expected_risk} over {len(live.open_alerts)} open alerts")

    by_payer = await asyncio.to_thread(
        prom.by, "sum by (payer_class) (chargecap_revenue_at_risk_dollars)", "payer_class")
    expected = live.expected_risk_by(lambda a: payer_label(a.get("payer_class")))
    assert len(expected) > 1, "the input should put revenue at risk in several payer classes"
    for payer in set(by_payer) | set(expected):
        assert by_payer.get(payer, 0.0) == pytest.approx(expected.get(payer, 0.0),
                                                         abs=RISK_TOLERANCE), payer

    by_reason = await asyncio.to_thread(
        prom.by, "sum by (reason_code) (chargecap_revenue_at_risk_dollars)", "reason_code")
    expected = live.expected_risk_by(lambda a: a["reason_code"])
    for reason in set(by_reason) | set(expected):
        assert by_reason.get(reason, 0.0) == pytest.approx(expected.get(reason, 0.0),
                                                           abs=RISK_TOLERANCE), reason


async def test_open_patient_days_zero_after_close(live: Live):
    assert await asyncio.to_thread(live.prom.value, "chargecap_open_patient_days") == 0
    # ... and it was not always 0: the days were open while the stream was fed
    peak = await asyncio.to_thread(live.prom.value, "max_over_time(chargecap_open_patient_days[5m])")
    assert peak is not None and peak > 0


async def test_alerting_rules_load_and_evaluate(live: Live):
    names = {r["alert"] for g in yaml.safe_load(ALERTS_YML.read_text())["groups"]
             for r in g["rules"] if "alert" in r}
    assert names == EXPECTED_ALERTS

    def loaded() -> dict[str, dict]:
        groups = live.prom.api("rules")["groups"]
        rules = {r["name"]: r for g in groups for r in g["rules"] if r["type"] == "alerting"}
        return rules if set(rules) == names and all(r["health"] == "ok" for r in rules.values()) \
            else {}

    rules = await asyncio.to_thread(
        wait_until, loaded, 20, "the five alerting rules to be evaluated with health ok",
        detail=lambda: str(live.prom.api("rules")))
    assert all(not r.get("lastError") for r in rules.values())
    # loaded from the repository's file, not a copy
    files = {g["file"] for g in live.prom.api("rules")["groups"]}
    assert files == {str(ALERTS_YML)}
    # with a healthy worker, the worker-down alert is not pending or firing
    assert rules["ChargecapWorkerDown"]["state"] == "inactive"


def _grafana_to_promql(expr: str) -> str:
    for pattern, value in GRAFANA_SUBST:
        expr = pattern.sub(value, expr)
    return expr


# Series that exist only while brokers fail (tests/broker/cluster produces them): a healthy
# run leaves their panel empty, as it should.
FAILOVER_ONLY = {"chargecap_broker_errors_total"}


async def test_dashboard_queries_against_the_live_worker_and_prometheus(live: Live):
    """Every PromQL expression of the Grafana dashboard names series the running worker
    really exposes, and Prometheus evaluates it without error (and with data)."""
    text = await asyncio.to_thread(live.worker.metrics_text)
    # every family the worker declares, with or without samples yet (a healthy worker has
    # no broker-error or not-billable series until one happens)
    live_names = exposition_families(text)
    # the work-queue panels read the queue service's own /metrics, not the worker's
    # (tests/broker/queue_pages checks them against a live queue service)
    exprs = [(title, t) for title, t in targets()
             if not all(n.startswith("chargecap_queue_") for n in parse_expr(t["expr"])["metrics"])]
    assert exprs
    empty = []
    for title, t in exprs:
        names = parse_expr(t["expr"])["metrics"]
        missing = names - live_names
        assert not missing, f"{title}: {sorted(missing)} not in the live worker's /metrics"
        promql = _grafana_to_promql(t["expr"])
        result = await asyncio.to_thread(live.prom.query, promql)  # raises on any error
        if not result:  # e.g. lag series are re-created after a rebalance: look again
            try:
                await asyncio.to_thread(wait_until, lambda e=promql: live.prom.query(e), 10,
                                        f"data for {promql}")
            except AssertionError:
                if not names <= FAILOVER_ONLY:
                    empty.append(f"{title}: {promql}")
    # every panel shows something after this run (pre-initialised series count as data)
    assert not empty, "queries without data:\n" + "\n".join(empty)


def test_live_exposition_covers_the_contract(live: Live):
    """The twelve metrics of contract.md §7, with their labels, on the live /metrics."""
    text = live.worker.metrics_text()
    labels: dict[str, set[str]] = {}
    for name, lbls, _v in exposition_series(text):
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        labels.setdefault(base, set()).update(k for k in lbls if k != "le")
    expected = {
        "chargecap_events_consumed_total": {"topic"},
        "chargecap_events_dead_lettered_total": {"topic", "error_code"},
        "chargecap_duplicate_events_total": {"topic"},
        "chargecap_late_events_total": {"topic"},
        "chargecap_charge_lines_emitted_total": {"code_family", "state"},
        "chargecap_alerts_emitted_total": {"reason_code", "severity", "work_queue", "state"},
        "chargecap_denial_risk": {"payer_class"},
        "chargecap_expected_reimbursement_dollars_total": {"payer_class"},
        "chargecap_revenue_at_risk_dollars": {"payer_class", "reason_code"},
        "chargecap_decision_latency_seconds": {"outcome"},
        "chargecap_open_patient_days": set(),
        "chargecap_consumer_lag_messages": {"topic", "partition"},
        # extension (docs/observability.md): pre-created per EHR topic and not-billable code
        "chargecap_events_not_billable_total": {"topic", "error_code"},
    }
    assert labels == expected

