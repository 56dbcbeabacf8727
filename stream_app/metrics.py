"""Prometheus metrics of contract.md §7: the registry and the recording API.

Every metric lives on a dedicated `CollectorRegistry` owned by a `Metrics` instance (never
the process-global default registry), so tests, `replay` and the worker can each have their
own. The worker serves it over HTTP with `stream_app.metrics_server.serve()`; `replay
--metrics FILE` writes it once with `write_textfile()`.

Label values are always drawn from bounded sets (see the module constants): anything
outside a set is mapped to `unknown` (payer class) or `other` (everything else). Labels
never carry patient ids, record ids, encounter ids, line/alert ids or diagnoses; the only
free-form input that reaches a label is a topic name, and that only when it belongs to the
topic set given to the constructor.

The open revenue-at-risk gauge is maintained from the alerts themselves: `track_alert()`
remembers each open alert's contribution by `alert_id` (in memory, never as a label) so
that re-emissions are idempotent and a resolution subtracts exactly what was added.
See docs/observability.md for the semantics of every metric.
"""

from __future__ import annotations

import contextlib
import math
import re
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    write_to_textfile,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric

from stream_app.vocabulary import (
    ADAPTER_DEAD_LETTER_CODES,
    ALERT_STATES,
    DEAD_LETTER_CODES,
    INPUT_TOPICS,
    LINE_STATES,
    NOT_SENDER_ERRORS,
    OUTPUT_TOPICS,
    PAYER_CLASSES,
    REASON_ROUTING,
    SEVERITIES,
    TOPIC_FHIR,
    TOPIC_HL7V2,
    WORK_QUEUES,
)

# --------------------------------------------------------------------------- label sets

# The contract's values come from the vocabulary; OUTCOMES and CODE_FAMILIES are the
# metrics' own label sets (contract.md §7).
DEFAULT_INPUT_TOPICS: tuple[str, ...] = INPUT_TOPICS
DEFAULT_OUTPUT_TOPICS: tuple[str, ...] = OUTPUT_TOPICS
# error_code values: the contract's dead-letter codes and the EHR adapters' (ehr-mapping.md §5).
ERROR_CODES: tuple[str, ...] = (*DEAD_LETTER_CODES, *ADAPTER_DEAD_LETTER_CODES)
# reason_code -> (possible severities, work queue), contract.md §3 "Reason codes".
REASON_CODES: Mapping[str, tuple[tuple[str, ...], str]] = REASON_ROUTING
UNKNOWN = "unknown"
OTHER = "other"
OUTCOMES: tuple[str, ...] = ("charge_line", "alert")
# A broker label: a node id, host:port of a bootstrap server, or the two names brokerlog.py
# uses when the client does not say which node.
# The not-billable refusal codes each EHR format's topic can count (pre-created series).
_NOT_BILLABLE_CODES = {
    topic: tuple(c for c in NOT_SENDER_ERRORS if c.startswith(prefix))
    for topic, prefix in ((TOPIC_FHIR, "FHIR_"), (TOPIC_HL7V2, "HL7_"))
}
_BROKER_LABEL = re.compile(r"\d{1,9}|[A-Za-z0-9.-]{1,253}:\d{1,5}|coordinator|unnamed")
# Kinds of retried Kafka client errors (stream_app/streaming/brokerlog.py).
BROKER_ERROR_KINDS: tuple[str, ...] = (
    "connection", "node_not_ready", "timeout", "not_leader", "not_enough_replicas",
    "coordinator", "other",
)

CODE_FAMILIES: tuple[str, ...] = (
    "96372",
    "iv_push",
    "infusion",
    "intra_arterial",
    "vaccine_admin",
    "allergen",
    "chemo_admin",
    "em",
    "drug",
    "other",
)

DENIAL_RISK_BUCKETS: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0)
LATENCY_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1, 2.5, 5, 10, 30, 60, 300, 900, 1800, 3600,
)  # fmt: skip

_FIXED_FAMILIES: Mapping[str, str] = {
    "96372": "96372",
    "96374": "iv_push",
    "96375": "iv_push",
    "96376": "iv_push",
    "96360": "infusion",
    "96361": "infusion",
    "96365": "infusion",
    "96366": "infusion",
    "96367": "infusion",
    "96368": "infusion",
    "96369": "infusion",
    "96370": "infusion",
    "96371": "infusion",
    "96373": "intra_arterial",
    "90460": "vaccine_admin",
    "90461": "vaccine_admin",
    "90471": "vaccine_admin",
    "90472": "vaccine_admin",
    "90473": "vaccine_admin",
    "90474": "vaccine_admin",
    "G0008": "vaccine_admin",
    "G0009": "vaccine_admin",
    "G0010": "vaccine_admin",
}


def code_family(code: str | None) -> str:
    """Map a CPT/HCPCS code to its bounded `code_family` label value."""
    if not isinstance(code, str):
        return OTHER
    c = code.strip().upper()
    fam = _FIXED_FAMILIES.get(c)
    if fam is not None:
        return fam
    if len(c) == 5 and c.isdigit():
        n = int(c)
        if 95115 <= n <= 95199:
            return "allergen"
        if 96401 <= n <= 96549:
            return "chemo_admin"
        if c.startswith("99"):
            return "em"
        return OTHER
    # HCPCS level II: one letter A-V then four digits (J-codes, Q-codes, ...).
    if len(c) == 5 and "A" <= c[0] <= "V" and c[1:].isdigit():
        return "drug"
    return OTHER


def _pick(value: Any, allowed: Iterable[str], fallback: str, *, fold: bool = False) -> str:
    if not isinstance(value, str):
        return fallback
    v = value.strip()
    if fold:
        v = v.lower()
    return v if v in allowed else fallback


# --------------------------------------------------------------------------- Metrics


class Metrics:
    """All metrics of contract.md §7 on one registry, with bounded-label helpers.

    `topics`: the topic names (already prefixed, if a prefix is configured) allowed as
    `topic` label values; any other topic is reported as `other`. Defaults to the three
    input topics of contract.md §1. Pass internal topics (repartition, changelog) too if
    their lag should be reported under their own name.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        topics: Iterable[str] | None = None,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        # The metrics live on a private registry; the public one sees them through a
        # filter that drops prometheus_client's `*_created` samples (in the text format
        # they would appear as extra gauge families that contract.md §7 does not define).
        self._own = CollectorRegistry(auto_describe=True)
        self.registry.register(_WithoutCreated(self._own))
        self.topics: frozenset[str] = frozenset(DEFAULT_INPUT_TOPICS if topics is None else topics)
        r = self._own
        self.events_consumed = Counter(
            "chargecap_events_consumed_total",
            "Messages read from an input topic (including those then dead-lettered).",
            ["topic"],
            registry=r,
        )
        self.events_dead_lettered = Counter(
            "chargecap_events_dead_lettered_total",
            "Input messages sent to the dead-letter topic, by error code.",
            ["topic", "error_code"],
            registry=r,
        )
        # Extension (docs/observability.md): refusals of valid EHR input that carries
        # nothing billable (yet) -- an ADT^A31, a planned ChargeItem -- are dead letters too,
        # but not sender errors (vocabulary.NOT_SENDER_ERRORS): counted here instead of in
        # the dead-letter counter, so its rate alert keeps meaning "the sender is wrong".
        self.events_not_billable = Counter(
            "chargecap_events_not_billable_total",
            "EHR input refused as carrying nothing billable (sent to the dead-letter topic "
            "but not a sender error), by error code.",
            ["topic", "error_code"],
            registry=r,
        )
        self.duplicate_events = Counter(
            "chargecap_duplicate_events_total",
            "Redelivered input messages (event_id already processed) that were ignored.",
            ["topic"],
            registry=r,
        )
        self.late_events = Counter(
            "chargecap_late_events_total",
            "Input messages for an already closed patient-day (processed as late corrections).",
            ["topic"],
            registry=r,
        )
        self.charge_lines_emitted = Counter(
            "chargecap_charge_lines_emitted_total",
            "Charge-line messages produced, by code family and state.",
            ["code_family", "state"],
            registry=r,
        )
        self.alerts_emitted = Counter(
            "chargecap_alerts_emitted_total",
            "Correction-alert messages produced, by reason, severity, work queue and state.",
            ["reason_code", "severity", "work_queue", "state"],
            registry=r,
        )
        self.denial_risk = Histogram(
            "chargecap_denial_risk",
            "Denial risk (0-1) of charge lines as they become active.",
            ["payer_class"],
            buckets=DENIAL_RISK_BUCKETS,
            registry=r,
        )
        self.expected_reimbursement = Counter(
            "chargecap_expected_reimbursement_dollars_total",
            "Expected reimbursement (USD) of charge lines as they become active.",
            ["payer_class"],
            registry=r,
        )
        self.revenue_at_risk = Gauge(
            "chargecap_revenue_at_risk_dollars",
            "Revenue at risk (USD) of the currently open correction alerts.",
            ["payer_class", "reason_code"],
            registry=r,
        )
        # Extension (docs/rule-data.md "Rules from CMS data"): what the open alerts would
        # recover once corrected, e.g. the billable JW units of WASTE_UNITS_MISMATCH x the
        # payment limit (the alert's details.recoverable_revenue).
        self.recoverable_revenue = Gauge(
            "chargecap_recoverable_revenue_dollars",
            "Revenue (USD) the currently open correction alerts would recover once corrected.",
            ["payer_class", "reason_code"],
            registry=r,
        )
        self.decision_latency = Histogram(
            "chargecap_decision_latency_seconds",
            "Seconds from the input message's Kafka timestamp to the output's production.",
            ["outcome"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.open_patient_days = Gauge(
            "chargecap_open_patient_days",
            "Patient-days held in state that have not closed yet.",
            registry=r,
        )
        self.consumer_lag = Gauge(
            "chargecap_consumer_lag_messages",
            "End offset minus committed offset, per assigned partition.",
            ["topic", "partition"],
            registry=r,
        )
        self.broker_errors = Counter(
            "chargecap_broker_errors_total",
            "Kafka client errors the client retries by itself (a broker unreachable, a "
            "partition leader or group coordinator moving), by broker and kind.",
            ["broker", "kind"],
            registry=r,
        )

        self._lock = threading.Lock()
        # alert_id -> (labels, dollars at risk, group, dollars recoverable); never exported.
        self._open_alerts: dict[str, tuple[tuple[str, str], float, Any, float]] = {}
        # labels -> [count, total at risk, total recoverable]
        self._risk_sums: dict[tuple[str, str], list[float]] = {}
        # line_id -> True while the line is active and already counted; never exported.
        # hash() of the ids of lines currently active (ints: half the memory of the ids)
        self._active_lines: set[int] = set()
        self._preinitialise()

    # ---------------------------------------------------------------- label helpers

    def topic_label(self, topic: Any) -> str:
        return topic if isinstance(topic, str) and topic in self.topics else OTHER

    @staticmethod
    def payer_label(payer_class: Any) -> str:
        return _pick(payer_class, PAYER_CLASSES, UNKNOWN, fold=True)

    @staticmethod
    def reason_label(reason_code: Any) -> str:
        return _pick(reason_code, REASON_CODES, OTHER)

    @staticmethod
    def queue_label(work_queue: Any) -> str:
        return _pick(work_queue, WORK_QUEUES, OTHER)

    @staticmethod
    def error_label(error_code: Any) -> str:
        return _pick(error_code, ERROR_CODES, OTHER)

    def _preinitialise(self) -> None:
        """Create the zero-valued children of the known label combinations, so rate()
        and increase() see the first increment and dashboards show 0 rather than nothing."""
        for t in sorted(self.topics):
            self.events_consumed.labels(t)
            self.duplicate_events.labels(t)
            self.late_events.labels(t)
            # an EHR topic's not-billable refusals: the codes of its format
            codes = next((c for topic, c in _NOT_BILLABLE_CODES.items() if t.endswith(topic)), ())
            for code in codes:
                self.events_not_billable.labels(t, code)
        for fam in CODE_FAMILIES:
            for st in LINE_STATES:
                self.charge_lines_emitted.labels(fam, st)
        for reason, (sevs, queue) in REASON_CODES.items():
            for sev in sevs:
                for st in ALERT_STATES:
                    self.alerts_emitted.labels(reason, sev, queue, st)
        for pc in PAYER_CLASSES:
            self.denial_risk.labels(pc)
            self.expected_reimbursement.labels(pc)
        for oc in OUTCOMES:
            self.decision_latency.labels(oc)
        self.open_patient_days.set(0)

    # ---------------------------------------------------------------- input side

    def consumed(self, topic: str, n: int = 1) -> None:
        if n > 0:
            self.events_consumed.labels(self.topic_label(topic)).inc(n)

    def dead_lettered(self, topic: str, error_code: str, n: int = 1) -> None:
        if n > 0:
            self.events_dead_lettered.labels(self.topic_label(topic), self.error_label(error_code)).inc(n)

    def not_billable(self, topic: str, error_code: str, n: int = 1) -> None:
        if n > 0:
            self.events_not_billable.labels(self.topic_label(topic), self.error_label(error_code)).inc(n)

    def duplicate(self, topic: str, n: int = 1) -> None:
        if n > 0:
            self.duplicate_events.labels(self.topic_label(topic)).inc(n)

    def late(self, topic: str, n: int = 1) -> None:
        if n > 0:
            self.late_events.labels(self.topic_label(topic)).inc(n)

    # ---------------------------------------------------------------- output side

    def line_emitted(self, code: str | None, state: str, n: int = 1) -> None:
        """Count `n` charge-line messages produced (every emission, re-emissions included)."""
        if n > 0:
            self.charge_lines_emitted.labels(code_family(code), _pick(state, LINE_STATES, OTHER)).inc(n)

    def alert_emitted(self, reason_code: str, severity: str, work_queue: str, state: str, n: int = 1) -> None:
        """Count `n` correction-alert messages produced (every emission)."""
        if n > 0:
            self.alerts_emitted.labels(
                self.reason_label(reason_code),
                _pick(severity, SEVERITIES, OTHER),
                self.queue_label(work_queue),
                _pick(state, ALERT_STATES, OTHER),
            ).inc(n)

    def observe_line(
        self,
        payer_class: str | None,
        denial_risk: float | None,
        expected_reimbursement: float | None,
    ) -> None:
        """One charge line became active: its denial risk and expected reimbursement."""
        pc = self.payer_label(payer_class)
        risk = _finite(denial_risk)
        if risk is not None:
            self.denial_risk.labels(pc).observe(min(1.0, max(0.0, risk)))
        dollars = _finite(expected_reimbursement)
        if dollars is not None and dollars > 0:
            self.expected_reimbursement.labels(pc).inc(dollars)

    def observe_latency(self, outcome: str, seconds: float) -> None:
        """`outcome` is `charge_line` or `alert`; negative values (clock skew) count as 0."""
        s = _finite(seconds)
        if s is None:
            return
        self.decision_latency.labels(_pick(outcome, OUTCOMES, OTHER)).observe(max(0.0, s))

    # ---------------------------------------------------------------- revenue at risk

    def set_revenue_at_risk(self, payer_class: str | None, reason_code: str, dollars: float) -> None:
        """Set one gauge child directly (for callers that compute the totals themselves;
        do not mix with `track_alert` for the same labels)."""
        d = _finite(dollars) or 0.0
        self.revenue_at_risk.labels(self.payer_label(payer_class), self.reason_label(reason_code)).set(d)

    def add_revenue_at_risk(self, payer_class: str | None, reason_code: str, delta: float) -> None:
        d = _finite(delta)
        if d:
            self.revenue_at_risk.labels(self.payer_label(payer_class), self.reason_label(reason_code)).inc(d)

    def track_alert(
        self,
        alert_id: str,
        *,
        state: str,
        payer_class: str | None,
        reason_code: str,
        dollars: float | None,
        group: Any = None,
        recoverable: float | None = None,
    ) -> None:
        """Keep the open revenue-at-risk (and recoverable-revenue) gauges in step with one
        alert message.

        `state == "open"` sets this alert's contribution (replacing any earlier one, so
        re-emissions are idempotent); any other state removes it. `group` (e.g. the
        partition the alert's patient lives on) lets `forget_group()` drop everything of a
        revoked partition. `alert_id` is kept in memory only, never exported.
        """
        labels = (self.payer_label(payer_class), self.reason_label(reason_code))
        with self._lock:
            old = self._open_alerts.pop(alert_id, None)
            if old is not None:
                self._risk_sub(old[0], old[1], old[3])
            if state == "open":
                d = max(0.0, _finite(dollars) or 0.0)
                rec = max(0.0, _finite(recoverable) or 0.0)
                self._open_alerts[alert_id] = (labels, d, group, rec)
                self._risk_add(labels, d, rec)

    def forget_alert(self, alert_id: str) -> None:
        """Stop counting one alert (e.g. its patient-day's state was dropped)."""
        with self._lock:
            old = self._open_alerts.pop(alert_id, None)
            if old is not None:
                self._risk_sub(old[0], old[1], old[3])

    def forget_group(self, group: Any) -> None:
        """Stop counting every open alert tracked with `group` (partition revoked)."""
        with self._lock:
            for aid in [a for a, v in self._open_alerts.items() if v[2] == group]:
                labels, d, _, rec = self._open_alerts.pop(aid)
                self._risk_sub(labels, d, rec)

    def reset_revenue_at_risk(self) -> None:
        with self._lock:
            self._open_alerts.clear()
            for labels, sums in self._risk_sums.items():
                self.revenue_at_risk.labels(*labels).set(0.0)
                if sums[3]:
                    self.recoverable_revenue.labels(*labels).set(0.0)
            self._risk_sums.clear()

    def open_alert_count(self) -> int:
        return len(self._open_alerts)

    # s[3] marks labels whose recoverable gauge exists: reasons that never recover
    # anything do not get a recoverable child.
    def _risk_add(self, labels: tuple[str, str], d: float, rec: float = 0.0) -> None:
        s = self._risk_sums.setdefault(labels, [0, 0.0, 0.0, 0])
        s[0] += 1
        s[1] += d
        s[2] += rec
        self.revenue_at_risk.labels(*labels).set(round(s[1], 6))
        if rec or s[3]:
            s[3] = 1
            self.recoverable_revenue.labels(*labels).set(round(s[2], 6))

    def _risk_sub(self, labels: tuple[str, str], d: float, rec: float = 0.0) -> None:
        s = self._risk_sums.get(labels)
        if s is None:
            return
        s[0] -= 1
        s[1] -= d
        s[2] -= rec
        if s[0] <= 0:
            s[0], s[1], s[2] = 0, 0.0, 0.0
        self.revenue_at_risk.labels(*labels).set(round(max(0.0, s[1]), 6))
        if s[3]:
            self.recoverable_revenue.labels(*labels).set(round(max(0.0, s[2]), 6))

    # ---------------------------------------------------------------- whole-record helpers

    def record_line(self, line: Mapping[str, Any], *, count_value: bool = True) -> None:
        """Account for one produced charge-line message (the contract's JSON dict).

        Always counts the emission (`line_emitted`). The first time a `line_id` is seen
        `active` (or again after a `void`), its denial risk and expected reimbursement are
        observed once (`observe_line`), unless `count_value` is false (e.g. re-emission
        after recovery). A `final` or `void` message ends the in-memory tracking of the id.
        """
        state = line.get("state")
        self.line_emitted(line.get("code"), state)
        line_id = hash(line.get("line_id"))
        with self._lock:
            if state == "active":
                first = line_id not in self._active_lines
                if line.get("final"):
                    self._active_lines.discard(line_id)
                else:
                    self._active_lines.add(line_id)
            else:
                first = False
                self._active_lines.discard(line_id)
        if first and count_value:
            self.observe_line(
                line.get("payer_class"), line.get("denial_risk"), line.get("expected_reimbursement")
            )

    def record_alert(
        self, alert: Mapping[str, Any], *, payer_class: str | None = None, group: Any = None
    ) -> None:
        """Account for one produced correction-alert message (the contract's JSON dict):
        `alert_emitted` plus `track_alert` (payer class from the argument or the alert's
        optional `payer_class` field)."""
        self.alert_emitted(
            alert.get("reason_code"),
            alert.get("severity"),
            alert.get("work_queue"),
            alert.get("state"),
        )
        aid = alert.get("alert_id")
        if isinstance(aid, str):
            self.track_alert(
                aid,
                state=alert.get("state"),
                payer_class=payer_class if payer_class is not None else alert.get("payer_class"),
                reason_code=alert.get("reason_code"),
                dollars=alert.get("revenue_at_risk"),
                group=group,
                recoverable=_recoverable(alert),
            )

    # ---------------------------------------------------------------- state and lag

    def set_open_patient_days(self, n: int) -> None:
        self.open_patient_days.set(max(0, n))

    def add_open_patient_days(self, delta: int) -> None:
        if delta:
            self.open_patient_days.inc(delta)

    def set_consumer_lag(self, topic: str, partition: int, lag: int | float) -> None:
        self.consumer_lag.labels(self.topic_label(topic), str(int(partition))).set(
            max(0.0, _finite(lag) or 0.0)
        )

    def remove_consumer_lag(self, topic: str, partition: int) -> None:
        """Drop the series of a partition no longer assigned to this worker."""
        with contextlib.suppress(KeyError):
            self.consumer_lag.remove(self.topic_label(topic), str(int(partition)))

    # ---------------------------------------------------------------- broker failover

    def broker_error(self, broker: str, kind: str) -> None:
        """One retried client error (stream_app/streaming/brokerlog.py): `broker` is a node
        id, host:port, `coordinator` or `unnamed`; `kind` one of BROKER_ERROR_KINDS."""
        b = str(broker)
        if not _BROKER_LABEL.fullmatch(b):
            b = OTHER
        self.broker_errors.labels(b, _pick(kind, BROKER_ERROR_KINDS, OTHER)).inc()

    # ---------------------------------------------------------------- exposition

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format (version 0.0.4)."""
        return generate_latest(self.registry)


class _WithoutCreated:
    """Collector re-exporting another registry's families minus their `_created` samples."""

    def __init__(self, inner: CollectorRegistry) -> None:
        self._inner = inner

    def _families(self, with_samples: bool) -> Iterator[Metric]:
        for fam in self._inner.collect():
            out = Metric(fam.name, fam.documentation, fam.type, fam.unit)
            if with_samples:
                out.samples = [s for s in fam.samples if not s.name.endswith("_created")]
            yield out

    def collect(self) -> Iterator[Metric]:
        return self._families(True)

    def describe(self) -> Iterator[Metric]:
        return self._families(False)


def _recoverable(alert: Mapping[str, Any]) -> Any:
    details = alert.get("details")
    return details.get("recoverable_revenue") if isinstance(details, Mapping) else None


def _finite(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, int | float):
        return None
    f = float(x)
    return f if math.isfinite(f) else None


# --------------------------------------------------------------------------- textfile


def write_textfile(metrics: Metrics, path: str) -> None:
    """Write the registry to `path` atomically (for `replay --metrics FILE`; the format is
    what node_exporter's textfile collector reads)."""
    write_to_textfile(str(path), metrics.registry)
