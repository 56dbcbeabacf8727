"""Unit tests of stream_app.metrics: contract.md §7 names, types and labels, bounded
label values, the revenue-at-risk bookkeeping, and the /metrics + /healthz server."""

from __future__ import annotations

import threading

import pytest
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from stream_app import metrics as M
from stream_app.metrics import Metrics, code_family, write_textfile

# contract.md §7, verbatim: exposed name -> (type, label names)
CONTRACT = {
    "chargecap_events_consumed_total": ("counter", {"topic"}),
    "chargecap_events_dead_lettered_total": ("counter", {"topic", "error_code"}),
    "chargecap_duplicate_events_total": ("counter", {"topic"}),
    "chargecap_late_events_total": ("counter", {"topic"}),
    "chargecap_charge_lines_emitted_total": ("counter", {"code_family", "state"}),
    "chargecap_alerts_emitted_total": (
        "counter",
        {"reason_code", "severity", "work_queue", "state"},
    ),
    "chargecap_denial_risk": ("histogram", {"payer_class"}),
    "chargecap_expected_reimbursement_dollars_total": ("counter", {"payer_class"}),
    "chargecap_revenue_at_risk_dollars": ("gauge", {"payer_class", "reason_code"}),
    "chargecap_decision_latency_seconds": ("histogram", {"outcome"}),
    "chargecap_open_patient_days": ("gauge", set()),
    "chargecap_consumer_lag_messages": ("gauge", {"topic", "partition"}),
    # extension (docs/observability.md): revenue open alerts would recover once corrected
    "chargecap_recoverable_revenue_dollars": ("gauge", {"payer_class", "reason_code"}),
}

# Beyond §7 (extensions, docs/observability.md): retried Kafka client errors
# (docs/reliability.md, "Replicated cluster").
EXTENSIONS = {
    "chargecap_broker_errors_total": ("counter", {"broker", "kind"}),
    # EHR input refused as not billable (ehr-mapping.md §5 "not a sender error")
    "chargecap_events_not_billable_total": ("counter", {"topic", "error_code"}),
}
EXPORTED = {**CONTRACT, **EXTENSIONS}

TOPICS = ("ehr.medication-administrations", "ehr.em-services", "pharmacy.dispenses")


def exercise(m: Metrics) -> None:
    """Touch every metric with plausible values."""
    for t in TOPICS:
        m.consumed(t, 5)
        m.duplicate(t)
        m.late(t, 2)
        m.set_consumer_lag(t, 0, 12)
    m.dead_lettered(TOPICS[0], "INVALID_JSON")
    m.not_billable(TOPICS[0], "HL7_UNSUPPORTED_MESSAGE")
    m.line_emitted("96372", "active")
    m.line_emitted("J0696", "void")
    m.alert_emitted("MISSING_NDC", "block", "pharmacy", "open")
    m.observe_line("medicare", 0.25, 14.5)
    m.track_alert("a1", state="open", payer_class="medicare", reason_code="MISSING_NDC", dollars=30.0)
    m.track_alert("a2", state="open", payer_class="medicare", reason_code="WASTE_UNITS_MISMATCH",
                  dollars=0.89, recoverable=0.89)
    m.observe_latency("charge_line", 0.02)
    m.observe_latency("alert", 0.5)
    m.set_open_patient_days(3)
    m.broker_error("1", "node_not_ready")


def families(m: Metrics) -> dict:
    """Parse the text exposition: {exposed name: (type, label names, samples)}."""
    out = {}
    text = m.exposition().decode()
    types = {line.split()[2]: line.split()[3] for line in text.splitlines() if line.startswith("# TYPE")}
    for fam in text_string_to_metric_families(text):
        name = fam.name + "_total" if fam.type == "counter" else fam.name
        labels = set()
        for s in fam.samples:
            labels |= set(s.labels) - {"le"}
        out[name] = (fam.type, labels, fam.samples)
        assert types[name] == fam.type, (name, types[name], fam.type)
    return out


def value(m: Metrics, sample_name: str, **labels) -> float | None:
    v = m.registry.get_sample_value(sample_name, labels)
    return v


# --------------------------------------------------------------------------- names, types


def test_every_contract_metric_with_exact_type_and_labels():
    m = Metrics()
    exercise(m)
    fams = families(m)
    assert set(fams) == set(EXPORTED), "exported families must be exactly those of §7 + extensions"
    for name, (typ, labels) in EXPORTED.items():
        got_type, got_labels, _ = fams[name]
        assert got_type == typ, name
        assert got_labels == labels, name


def test_exposition_has_no_created_series_and_type_lines_match_contract():
    m = Metrics()
    exercise(m)
    text = m.exposition().decode()
    assert "_created" not in text
    type_lines = {tuple(line.split()[2:4]) for line in text.splitlines() if line.startswith("# TYPE")}
    assert type_lines == {(n, t) for n, (t, _) in EXPORTED.items()}


def test_dedicated_registry_not_the_global_one():
    m = Metrics()
    assert m.registry is not REGISTRY
    assert REGISTRY.get_sample_value("chargecap_open_patient_days") is None
    # two instances coexist (no duplicate-registration error)
    m2 = Metrics()
    m.set_open_patient_days(4)
    assert m2.registry.get_sample_value("chargecap_open_patient_days") == 0.0


def test_constructor_accepts_a_registry():
    reg = CollectorRegistry()
    m = Metrics(registry=reg)
    m.consumed(TOPICS[0])
    assert m.registry is reg
    assert reg.get_sample_value("chargecap_events_consumed_total", {"topic": TOPICS[0]}) == 1


def test_histogram_buckets():
    m = Metrics()
    m.observe_line("medicaid", 0.0, 1)
    m.observe_latency("alert", 0.0)
    fams = families(m)
    les = {s.labels["le"] for s in fams["chargecap_denial_risk"][2] if "le" in s.labels}
    assert les == {"0.0", "0.05", "0.1", "0.2", "0.3", "0.5", "0.7", "0.9", "1.0", "+Inf"}
    les = [
        float(s.labels["le"])
        for s in fams["chargecap_decision_latency_seconds"][2]
        if "le" in s.labels and s.labels["outcome"] == "alert"
    ]
    assert min(les) == 0.001
    assert max(x for x in les if x != float("inf")) == 3600
    assert len(les) == len(M.LATENCY_BUCKETS) + 1


def test_preinitialised_children_are_zero():
    m = Metrics()
    for t in TOPICS:
        assert value(m, "chargecap_events_consumed_total", topic=t) == 0.0
    assert (
        value(
            m,
            "chargecap_alerts_emitted_total",
            reason_code="MUE_EXCEEDED",
            severity="warn",
            work_queue="coding",
            state="open",
        )
        == 0.0
    )
    assert value(m, "chargecap_open_patient_days") == 0.0


# --------------------------------------------------------------------------- bounded labels


def label_values(m: Metrics) -> set[str]:
    vals = set()
    for fam in text_string_to_metric_families(m.exposition().decode()):
        for s in fam.samples:
            vals |= {v for k, v in s.labels.items() if k != "le"}
    return vals


def test_unknown_values_map_to_unknown_or_other():
    m = Metrics(topics=TOPICS)
    m.consumed("some.random-topic", 2)
    m.dead_lettered("P12345", "P12345-not-a-code")
    m.duplicate(None)
    m.late("E99")
    m.line_emitted("J18.9", "weird")
    m.alert_emitted("J18.9", "fatal", "P1", "maybe")
    m.observe_line("P1", 0.5, 10)
    m.track_alert("x", state="open", payer_class="bogus", reason_code="I10", dollars=1)
    m.observe_latency("P1", 1)
    m.set_consumer_lag("P1", 3, 7)
    assert value(m, "chargecap_events_consumed_total", topic="other") == 2
    assert value(m, "chargecap_events_dead_lettered_total", topic="other", error_code="other") == 1
    assert value(m, "chargecap_duplicate_events_total", topic="other") == 1
    assert value(m, "chargecap_charge_lines_emitted_total", code_family="other", state="other") == 1
    assert (
        value(
            m,
            "chargecap_alerts_emitted_total",
            reason_code="other",
            severity="other",
            work_queue="other",
            state="other",
        )
        == 1
    )
    assert value(m, "chargecap_denial_risk_count", payer_class="unknown") == 1
    assert value(m, "chargecap_expected_reimbursement_dollars_total", payer_class="unknown") == 10
    assert value(m, "chargecap_revenue_at_risk_dollars", payer_class="unknown", reason_code="other") == 1
    assert value(m, "chargecap_decision_latency_seconds_count", outcome="other") == 1
    assert value(m, "chargecap_consumer_lag_messages", topic="other", partition="3") == 7
    m.broker_error("P12345 J18.9", "x")
    vals = label_values(m)
    for leaked in ("P1", "P12345", "E99", "J18.9", "I10", "some.random-topic", "bogus", "x"):
        assert leaked not in vals


def test_label_values_stay_within_the_bounded_sets():
    m = Metrics(topics=TOPICS)
    exercise(m)
    allowed = (
        set(TOPICS)
        | set(M.PAYER_CLASSES)
        | set(M.REASON_CODES)
        | set(M.WORK_QUEUES)
        | set(M.SEVERITIES)
        | set(M.LINE_STATES)
        | set(M.ALERT_STATES)
        | set(M.OUTCOMES)
        | set(M.ERROR_CODES)
        | set(M.CODE_FAMILIES)
        | set(M.BROKER_ERROR_KINDS)
        | {"unknown", "other", "0", "1"}  # "1": a broker node id
    )
    assert label_values(m) <= allowed


def test_payer_class_is_case_folded():
    m = Metrics()
    m.observe_line(" Medicare ", 0.1, 5)
    assert value(m, "chargecap_expected_reimbursement_dollars_total", payer_class="medicare") == 5


def test_configured_topics_including_prefix():
    m = Metrics(topics=["t1.ehr.em-services"])
    m.consumed("t1.ehr.em-services")
    m.consumed("ehr.em-services")
    assert value(m, "chargecap_events_consumed_total", topic="t1.ehr.em-services") == 1
    assert value(m, "chargecap_events_consumed_total", topic="other") == 1


def test_reason_table_matches_contract_and_rule_data():
    """The alert series pre-created per (reason, severity, queue) are the contract's §3
    table, and rules/reason_codes.csv routes every reason the same way."""
    import csv
    import re

    from tests.support.paths import REPO, SPEC_DIR

    def reason_table(text: str, heading: str) -> dict[str, tuple[set[str], str]]:
        section = text[text.index(heading):]
        section = section[:section.index("\n\n", section.index("| `"))]
        table: dict[str, tuple[set[str], str]] = {}
        for row in section.splitlines():
            m = re.match(r"\| `([A-Z0-9_]+)` \|.*\| ([^|]+) \| ([a-z_]+) \| [^|]+ \|$", row)
            if m:
                table[m.group(1)] = (set(re.findall(r"\b(warn|block)\b", m.group(2))),
                                     m.group(3))
        return table

    table = reason_table((SPEC_DIR / "contract.md").read_text(), "### Reason codes")
    assert len(table) == 23
    # ehr-mapping.md §2 extends the table with ENCOUNTER_CONTEXT_MISSING
    mapping = (SPEC_DIR / "ehr-mapping.md").read_text()
    section = mapping[mapping.index("| reason_code |"):]
    section = section[:section.index("\n\n")]
    for row in section.splitlines():
        m = re.match(r"\| `([A-Z0-9_]+)` \|.*\| ([^|]+) \| ([a-z_]+) \| [^|]+ \|$", row)
        if m:
            table[m.group(1)] = (set(re.findall(r"\b(warn|block)\b", m.group(2))), m.group(3))
    assert len(table) == 24
    # the extensions, documented in the contract's style in docs/rule-data.md
    extensions = reason_table((REPO / "docs" / "rule-data.md").read_text(),
                              "### Reason codes from CMS data")
    assert set(extensions) == {"WASTE_UNITS_MISMATCH", "PTP_BUNDLED", "PTP_MODIFIER_REQUIRED"}
    table.update(extensions)
    assert {r: (set(s), q) for r, (s, q) in M.REASON_CODES.items()} == table
    assert {q for _, q in M.REASON_CODES.values()} == set(M.WORK_QUEUES)
    with open(REPO / "stream_app" / "rules" / "reason_codes.csv", newline="") as f:
        for row in csv.DictReader(f):
            severities, queue = M.REASON_CODES[row["reason_code"]]
            assert row["work_queue"] == queue, row["reason_code"]
            assert row["severity"] in severities, row["reason_code"]


@pytest.mark.parametrize(
    "code, family",
    [
        ("96372", "96372"),
        ("96374", "iv_push"),
        ("96375", "iv_push"),
        ("96376", "iv_push"),
        ("96365", "infusion"),
        ("96366", "infusion"),
        ("96367", "infusion"),
        ("96373", "intra_arterial"),
        ("90471", "vaccine_admin"),
        ("90472", "vaccine_admin"),
        ("G0008", "vaccine_admin"),
        ("95115", "allergen"),
        ("95117", "allergen"),
        ("96401", "chemo_admin"),
        ("96402", "chemo_admin"),
        ("99211", "em"),
        ("99213", "em"),
        ("J0696", "drug"),
        ("j3420", "drug"),
        ("Q2035", "drug"),
        ("20610", "other"),
        ("J18.9", "other"),
        ("", "other"),
        (None, "other"),
    ],
)
def test_code_family(code, family):
    assert code_family(code) == family
    assert family in M.CODE_FAMILIES


# --------------------------------------------------------------------------- semantics


def test_counts_and_ignores_nonpositive_increments():
    m = Metrics()
    m.consumed(TOPICS[0])
    m.consumed(TOPICS[0], 4)
    m.consumed(TOPICS[0], 0)
    m.duplicate(TOPICS[0], -1)
    assert value(m, "chargecap_events_consumed_total", topic=TOPICS[0]) == 5
    assert value(m, "chargecap_duplicate_events_total", topic=TOPICS[0]) == 0


def test_observe_line_clamps_and_skips_bad_values():
    m = Metrics()
    m.observe_line("medicare", 1.7, None)
    m.observe_line("medicare", float("nan"), -3)
    m.observe_line("medicare", -0.2, 2.5)
    assert value(m, "chargecap_denial_risk_count", payer_class="medicare") == 2
    assert value(m, "chargecap_denial_risk_bucket", payer_class="medicare", le="0.0") == 1
    assert value(m, "chargecap_expected_reimbursement_dollars_total", payer_class="medicare") == 2.5


def test_latency_negative_is_zero():
    m = Metrics()
    m.observe_latency("charge_line", -2)
    assert value(m, "chargecap_decision_latency_seconds_bucket", outcome="charge_line", le="0.001")


def test_revenue_at_risk_tracking_is_idempotent_and_resolves():
    m = Metrics()

    def rar(pc="medicare", rc="MISSING_NDC"):
        return value(m, "chargecap_revenue_at_risk_dollars", payer_class=pc, reason_code=rc)

    kw = dict(payer_class="medicare", reason_code="MISSING_NDC")
    m.track_alert("a1", state="open", dollars=10.1, **kw)
    m.track_alert("a1", state="open", dollars=10.1, **kw)  # re-emission
    m.track_alert("a2", state="open", dollars=0.2, **kw, group=1)
    assert rar() == pytest.approx(10.3)
    m.track_alert("a1", state="open", dollars=12, **kw)  # amount changed
    assert rar() == pytest.approx(12.2)
    m.track_alert("a1", state="resolved", dollars=12, **kw)
    m.track_alert("a1", state="resolved", dollars=12, **kw)
    assert rar() == pytest.approx(0.2)
    m.forget_group(1)
    assert rar() == 0.0
    assert m.open_alert_count() == 0
    m.set_revenue_at_risk("commercial", "INVALID_NPI", 7)
    m.add_revenue_at_risk("commercial", "INVALID_NPI", 3)
    assert rar("commercial", "INVALID_NPI") == 10


def test_record_line_and_record_alert_helpers():
    m = Metrics()
    line = {
        "line_id": "L1",
        "state": "active",
        "final": False,
        "code": "96372",
        "payer_class": "medicare",
        "expected_reimbursement": 14.5,
        "denial_risk": 0.1,
    }
    m.record_line(line)
    m.record_line({**line, "revision": 2})  # re-emission: counted once
    m.record_line({**line, "final": True})
    assert value(m, "chargecap_charge_lines_emitted_total", code_family="96372", state="active") == 3
    assert value(m, "chargecap_expected_reimbursement_dollars_total", payer_class="medicare") == 14.5
    m.record_line({**line, "line_id": "L2"}, count_value=False)
    assert value(m, "chargecap_denial_risk_count", payer_class="medicare") == 1
    alert = {
        "alert_id": "A1",
        "state": "open",
        "reason_code": "EM_MISSING_MODIFIER_25",
        "severity": "block",
        "work_queue": "coding",
        "revenue_at_risk": 14.5,
    }
    m.record_alert(alert, payer_class="medicaid")
    labels = dict(payer_class="medicaid", reason_code="EM_MISSING_MODIFIER_25")
    assert value(m, "chargecap_revenue_at_risk_dollars", **labels) == 14.5
    m.record_alert({**alert, "state": "resolved"}, payer_class="medicaid")
    assert value(m, "chargecap_revenue_at_risk_dollars", **labels) == 0
    assert (
        value(
            m,
            "chargecap_alerts_emitted_total",
            reason_code="EM_MISSING_MODIFIER_25",
            severity="block",
            work_queue="coding",
            state="resolved",
        )
        == 1
    )


def test_patient_days_and_lag():
    m = Metrics()
    m.set_open_patient_days(5)
    m.add_open_patient_days(2)
    m.add_open_patient_days(-3)
    assert value(m, "chargecap_open_patient_days") == 4
    m.set_consumer_lag(TOPICS[1], 2, 40)
    assert value(m, "chargecap_consumer_lag_messages", topic=TOPICS[1], partition="2") == 40
    m.remove_consumer_lag(TOPICS[1], 2)
    m.remove_consumer_lag(TOPICS[1], 2)  # idempotent
    assert value(m, "chargecap_consumer_lag_messages", topic=TOPICS[1], partition="2") is None


def test_thread_safety_of_tracking():
    m = Metrics()

    def work(k):
        for i in range(500):
            aid = f"a{k}-{i}"
            m.track_alert(aid, state="open", payer_class="medicare", reason_code="INVALID_NPI", dollars=1)
            m.track_alert(aid, state="resolved", payer_class="medicare", reason_code="INVALID_NPI", dollars=1)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    labels = dict(payer_class="medicare", reason_code="INVALID_NPI")
    assert value(m, "chargecap_revenue_at_risk_dollars", **labels) == 0


# --------------------------------------------------------------------------- textfile


def test_write_textfile(tmp_path):
    m = Metrics()
    exercise(m)
    path = tmp_path / "replay.prom"
    write_textfile(m, str(path))
    text = path.read_text()
    assert 'chargecap_events_consumed_total{topic="ehr.em-services"} 5.0' in text
    assert {f.name for f in text_string_to_metric_families(text)} >= {"chargecap_denial_risk"}


def _sample(m: Metrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def test_recoverable_revenue_follows_open_alerts_and_only_recovering_reasons():
    """chargecap_recoverable_revenue_dollars: details.recoverable_revenue of the open
    alerts (WASTE_UNITS_MISMATCH: billable JW units x payment limit), no PHI labels."""
    m = Metrics()
    waste = {"alert_id": "w1", "state": "open", "reason_code": "WASTE_UNITS_MISMATCH",
             "severity": "block", "work_queue": "pharmacy", "payer_class": "medicare",
             "revenue_at_risk": 0.89, "details": {"recoverable_revenue": 0.89}}
    m.record_alert(waste)
    m.record_alert({**waste, "alert_id": "w2", "details": {"recoverable_revenue": 1.34}})
    m.record_alert({"alert_id": "n1", "state": "open", "reason_code": "MISSING_NDC",
                    "severity": "block", "work_queue": "pharmacy", "payer_class": "medicare",
                    "revenue_at_risk": 5.0, "details": {}})
    labels = {"payer_class": "medicare", "reason_code": "WASTE_UNITS_MISMATCH"}
    assert _sample(m, "chargecap_recoverable_revenue_dollars", **labels) == pytest.approx(2.23)
    # a reason that recovers nothing gets no recoverable series
    assert _sample(m, "chargecap_recoverable_revenue_dollars", payer_class="medicare",
                   reason_code="MISSING_NDC") is None
    m.record_alert({**waste, "state": "resolved"})
    assert _sample(m, "chargecap_recoverable_revenue_dollars", **labels) == pytest.approx(1.34)
    m.forget_alert("w2")
    assert _sample(m, "chargecap_recoverable_revenue_dollars", **labels) == 0.0
    text = m.exposition().decode()
    assert "w1" not in text and "w2" not in text  # alert ids are never exported
