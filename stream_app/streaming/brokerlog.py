"""Quiet failover: the Kafka client's expected, retried broker errors as one WARNING per
broker and episode, a closing WARNING with counts, and a metric.

When a broker of a replicated cluster dies, aiokafka logs at ERROR every time it retries
it: `Failed fetch messages from 3: NodeNotReadyError` every 100 ms, `Unable connect to
node with id 3`, ... ~85 lines for a failover the cluster handles by design, enough to
page an on-call engineer for nothing. The client retries these itself; what an operator
needs is to know that it happened, to which broker, for how long, and to be alerted when
it does not end (deploy/prometheus/alerts.yml, ChargecapBrokerErrorsPersist).

`BrokerErrorLog` is a logging filter on the aiokafka loggers. A record it recognises (by
its message template, below) is counted in `chargecap_broker_errors_total{broker, kind}`;
the first of an episode for that broker passes, rewritten to WARNING; the rest are
dropped. When no such error has come for that broker for `quiet_after` seconds the episode
is over and one WARNING says how long it lasted and how many errors of each kind were
dropped. Anything else the client logs passes unchanged (an error that is *not* one of
these is still an ERROR).

Labels carry a broker node id (or host:port of a bootstrap server) and an error kind from
a fixed set, never message contents.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("stream_app.brokerlog")

# Error kinds (metric label values, metrics.BROKER_ERROR_KINDS); an exception type not
# listed counts as "other".
KINDS: dict[str, str] = {
    "NodeNotReadyError": "node_not_ready",
    "KafkaConnectionError": "connection",
    "ConnectionError": "connection",
    "ConnectionRefusedError": "connection",
    "ConnectionResetError": "connection",
    "OSError": "connection",
    "TimeoutError": "timeout",
    "RequestTimedOutError": "timeout",
    "KafkaTimeoutError": "timeout",
    "NotLeaderForPartitionError": "not_leader",
    "LeaderNotAvailableError": "not_leader",
    "NotEnoughReplicasError": "not_enough_replicas",
    "NotEnoughReplicasAfterAppendError": "not_enough_replicas",
    "NotCoordinatorForGroupError": "coordinator",
    "GroupCoordinatorNotAvailableError": "coordinator",
    "CoordinatorNotAvailableError": "coordinator",
    "CoordinatorLoadInProgressError": "coordinator",
}
OTHER = "other"
COORDINATOR = "coordinator"  # broker label of group-coordinator errors (node not named)
UNNAMED = "unnamed"  # broker label of produce errors (node not named)
MAX_BROKERS = 64  # distinct broker label values before new ones count as "other"


def _node(args) -> str:
    return str(args[0])


def _host_port(args) -> str:
    return f"{args[0]}:{args[1]}"


def _coordinator(_args) -> str:
    return COORDINATOR


def _unnamed(_args) -> str:
    return UNNAMED


# aiokafka message templates (the record's `msg`, before formatting) of errors it retries
# by itself, and how to find the broker in their arguments. The error is their last
# argument. Templates of aiokafka 0.14 (consumer/fetcher.py, client.py, producer/sender.py,
# consumer/group_coordinator.py).
RETRIED: dict[str, Callable] = {
    "Failed fetch messages from %s: %s": _node,
    "Failed fetch offsets from %s: %s": _node,
    "Unable connect to node with id %s: %s": _node,
    "Error sending %s to node %s [%s] -- marking coordinator dead": lambda a: str(a[1]),
    'Unable connect to "%s:%s": %s': _host_port,
    "Got error produce response: %s": _unnamed,
    "Got error produce response on topic-partition %s, retrying. Error: %s": _unnamed,
    "Heartbeat send request failed: %s. Will retry.": _coordinator,
    "Group Coordinator Request failed: %s": _coordinator,
    "FindCoordinator Request failed: %s": _coordinator,
}


@dataclass
class Episode:
    started: float
    last: float
    counts: Counter = field(default_factory=Counter)


class BrokerErrorLog(logging.Filter):
    """The filter (see the module docstring). `count(broker, kind)` is called for every
    recognised error (the metric); `clock` is monotonic seconds."""

    def __init__(self, count: Callable[[str, str], None] | None = None,
                 quiet_after: float = 3.0, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.count = count
        self.quiet_after = quiet_after
        self.clock = clock
        self.episodes: dict[str, Episode] = {}
        self.brokers: set[str] = set()
        self.lock = threading.Lock()

    def _broker_label(self, broker: str) -> str:
        if broker in self.brokers:
            return broker
        if len(self.brokers) >= MAX_BROKERS:
            return OTHER
        self.brokers.add(broker)
        return broker

    def filter(self, record: logging.LogRecord) -> bool:
        where = RETRIED.get(record.msg) if isinstance(record.msg, str) else None
        if where is None or not record.args or not isinstance(record.args, tuple):
            return True
        try:
            broker = where(record.args)
        except IndexError:
            return True
        err = record.args[-1]
        name = err.__name__ if isinstance(err, type) else type(err).__name__
        kind = KINDS.get(name, OTHER)
        if kind == OTHER and isinstance(err, ConnectionError | TimeoutError):
            kind = "connection" if isinstance(err, ConnectionError) else "timeout"
        with self.lock:
            broker = self._broker_label(broker)
            if self.count is not None:
                try:
                    self.count(broker, kind)
                except Exception:  # noqa: BLE001 - a metric must never break logging
                    pass
            if kind == OTHER:
                return True  # not an error the client is known to retry: as logged
            now = self.clock()
            ep = self.episodes.get(broker)
            if ep is not None:
                ep.last = now
                ep.counts[name] += 1
                return False
            self.episodes[broker] = ep = Episode(now, now)
            ep.counts[name] += 1
        # The first error of an episode: one WARNING that says it is being retried.
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.msg = (f"{record.msg} (retrying; further such errors for broker {broker} are "
                      "counted until they stop)")
        return True

    def close_quiet(self) -> list[tuple[str, Episode]]:
        """End the episodes without an error for `quiet_after` seconds, logging one WARNING
        each; returns them."""
        now = self.clock()
        with self.lock:
            done = [(b, ep) for b, ep in self.episodes.items()
                    if now - ep.last >= self.quiet_after]
            for b, _ep in done:
                del self.episodes[b]
        for broker, ep in done:
            total = sum(ep.counts.values())
            kinds = ", ".join(f"{k} {n}" for k, n in ep.counts.most_common())
            log.warning("broker %s: retried client errors stopped after %.1f s (%d in all, the "
                        "first one logged: %s)", broker, ep.last - ep.started, total, kinds)
        return done


class _Closer(threading.Thread):
    """Ends quiet episodes once a second (a thread: independent of the event loop, which
    is the thing that may be held up during a failover)."""

    def __init__(self, flt: BrokerErrorLog, interval: float = 1.0):
        super().__init__(name="chargecap-brokerlog", daemon=True)
        self.flt, self.interval = flt, interval
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                self.flt.close_quiet()
            except Exception:  # noqa: BLE001 - logging must not kill the thread
                pass


AIOKAFKA_LOGGERS = ("aiokafka", "aiokafka.client", "aiokafka.conn", "aiokafka.cluster",
                    "aiokafka.consumer.fetcher", "aiokafka.consumer.group_coordinator",
                    "aiokafka.consumer.consumer", "aiokafka.producer.sender",
                    "aiokafka.producer.producer")


def install(metrics=None, quiet_after: float = 3.0) -> BrokerErrorLog:
    """Put the filter first on every aiokafka logger (a logger's filters only see the
    records logged on that very logger, not those of its children) and start the thread
    that ends episodes. `metrics`: a stream_app.metrics.Metrics (or None)."""
    flt = BrokerErrorLog(metrics.broker_error if metrics is not None else None, quiet_after)
    names = set(AIOKAFKA_LOGGERS) | {n for n in logging.root.manager.loggerDict
                                     if n == "aiokafka" or n.startswith("aiokafka.")}
    for name in sorted(names):
        logger = logging.getLogger(name)
        logger.filters.insert(0, flt)
    _Closer(flt).start()
    return flt
