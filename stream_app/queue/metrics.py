"""The queue service's Prometheus metrics (its own registry, served on its own /metrics).

Labels are work queues, workflow statuses, topics, partitions and error kinds: never
patient, encounter, record or alert ids.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.metrics_core import Metric

from stream_app.vocabulary import WORK_QUEUES

# Workflow statuses as shown on an open alert (docs/work-queue.md "Workflow states").
OPEN_DISPLAY_STATUSES = (
    "new",
    "in_progress",
    "waiting_clinician",
    "waiting_pharmacy",
    "waiting_payer",
    "done_still_failing",
)


class QueueMetrics:
    def __init__(self) -> None:
        # Served through a filter without prometheus_client's `*_created` samples, which
        # the text format would show as extra gauge families.
        self.registry = CollectorRegistry(auto_describe=True)
        r = CollectorRegistry(auto_describe=True)
        self.registry.register(_WithoutCreated(r))
        self.items = Gauge(
            "chargecap_queue_open_items",
            "Open alerts in a work queue by workflow status",
            ["work_queue", "status"],
            registry=r,
        )
        self.oldest_age = Gauge(
            "chargecap_queue_oldest_open_item_age_seconds",
            "Age of the oldest open alert of a work queue (0 when none)",
            ["work_queue"],
            registry=r,
        )
        self.age_limit = Gauge(
            "chargecap_queue_oldest_item_age_limit_seconds",
            "Configured age above which a queue's oldest open item raises an alert",
            ["work_queue"],
            registry=r,
        )
        self.dollars = Gauge(
            "chargecap_queue_open_revenue_at_risk_dollars",
            "Revenue at risk on the open alerts of a work queue",
            ["work_queue"],
            registry=r,
        )
        self.sink_upserts = Counter(
            "chargecap_queue_sink_upserts_total",
            "Revisions the sink wrote to PostgreSQL (rate = upserts per second)",
            ["topic"],
            registry=r,
        )
        self.sink_rejected = Counter(
            "chargecap_queue_sink_rejected_total",
            "Messages the sink could not use (kept in sink_reject)",
            ["topic", "error"],
            registry=r,
        )
        self.sink_lag = Gauge(
            "chargecap_queue_sink_lag_messages",
            "Messages on a partition not yet written by the sink",
            ["topic", "partition"],
            registry=r,
        )
        for q in WORK_QUEUES:
            self.oldest_age.labels(q).set(0)
            self.dollars.labels(q).set(0)
            for s in OPEN_DISPLAY_STATUSES:
                self.items.labels(q, s).set(0)

    def set_queue_stats(
        self, rows: list[tuple[str, str, int]], oldest: dict[str, float], dollars: dict[str, float]
    ) -> None:
        counts = {(q, s): 0 for q in WORK_QUEUES for s in OPEN_DISPLAY_STATUSES}
        for q, s, n in rows:
            counts[(q, s)] = n
        for (q, s), n in counts.items():
            self.items.labels(q, s).set(n)
        for q in set(WORK_QUEUES) | set(oldest):
            self.oldest_age.labels(q).set(oldest.get(q, 0.0))
            self.dollars.labels(q).set(dollars.get(q, 0.0))

    def set_age_limits(self, limits: dict[str, float]) -> None:
        for q, seconds in limits.items():
            self.age_limit.labels(q).set(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _WithoutCreated:
    def __init__(self, inner: CollectorRegistry) -> None:
        self._inner = inner

    def collect(self) -> Iterator[Metric]:
        for fam in self._inner.collect():
            out = Metric(fam.name, fam.documentation, fam.type, fam.unit)
            out.samples = [s for s in fam.samples if not s.name.endswith("_created")]
            yield out

    def describe(self) -> Iterator[Metric]:
        for fam in self._inner.collect():
            yield Metric(fam.name, fam.documentation, fam.type, fam.unit)
