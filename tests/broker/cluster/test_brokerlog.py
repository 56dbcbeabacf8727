"""Unit tests of the quiet-failover log filter (stream_app/streaming/brokerlog.py), with
aiokafka's own message templates and exception types (no broker needed)."""

from __future__ import annotations

import logging

from aiokafka.errors import (
    KafkaConnectionError,
    NodeNotReadyError,
    NotLeaderForPartitionError,
    UnknownError,
)

from stream_app.metrics import BROKER_ERROR_KINDS, Metrics
from stream_app.streaming.brokerlog import KINDS, RETRIED, BrokerErrorLog

FETCH = "Failed fetch messages from %s: %s"


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def record(msg, *args, level=logging.ERROR, name="aiokafka.consumer.fetcher"):
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


def test_templates_are_aiokafkas():
    """Every template is one aiokafka logs verbatim (a changed template in a new aiokafka
    version would silently bring the ERROR storm back)."""
    import ast
    import pathlib

    import aiokafka

    literals = set()  # every string constant, implicit concatenations joined (ast does)
    for path in pathlib.Path(aiokafka.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                literals.add(node.value)
    for template in RETRIED:
        assert template in literals, template


def test_one_warning_per_broker_episode_then_a_count(caplog):
    counted = []
    clock = Clock()
    flt = BrokerErrorLog(lambda b, k: counted.append((b, k)), quiet_after=3.0, clock=clock)
    first = record(FETCH, 3, KafkaConnectionError("Connection at 127.0.0.1:19094 closed"))
    assert flt.filter(first) is True
    assert first.levelno == logging.WARNING and first.levelname == "WARNING"
    passed = []
    for _ in range(85):  # every 100 ms while the leader is being replaced
        clock.t += 0.1
        passed.append(flt.filter(record(FETCH, 3, NodeNotReadyError("node 3"))))
    assert not any(passed)
    # another broker is its own episode
    assert flt.filter(record(FETCH, 2, NodeNotReadyError("node 2"))) is True
    assert counted.count(("3", "connection")) == 1
    assert counted.count(("3", "node_not_ready")) == 85
    assert flt.close_quiet() == []  # errors still coming
    clock.t += 3.0
    with caplog.at_level(logging.WARNING, logger="stream_app.brokerlog"):
        done = dict(flt.close_quiet())
    assert set(done) == {"3", "2"}
    assert done["3"].counts == {"NodeNotReadyError": 85, "KafkaConnectionError": 1}
    msgs = [r.getMessage() for r in caplog.records]
    assert any("broker 3: retried client errors stopped after 8.5 s (86 in all" in m
               for m in msgs), msgs
    assert all(r.levelno == logging.WARNING for r in caplog.records)
    # a new failure of broker 3 is a new episode: logged again
    assert flt.filter(record(FETCH, 3, NodeNotReadyError("node 3"))) is True


def test_unknown_errors_and_other_messages_pass_unchanged():
    flt = BrokerErrorLog(None, clock=Clock())
    odd = record(FETCH, 1, UnknownError("?"))
    assert flt.filter(odd) is True and odd.levelno == logging.ERROR
    again = record(FETCH, 1, UnknownError("?"))
    assert flt.filter(again) is True and again.levelno == logging.ERROR
    other = record("Unexpected error in fetcher routine")
    assert flt.filter(other) is True and other.levelno == logging.ERROR


def test_produce_retry_with_error_class_and_metric_labels():
    m = Metrics()
    flt = BrokerErrorLog(m.broker_error, clock=Clock())
    rec = record("Got error produce response on topic-partition %s, retrying. Error: %s",
                 "tp", NotLeaderForPartitionError, level=logging.WARNING,
                 name="aiokafka.producer.sender")
    assert flt.filter(rec) is True
    assert m.registry.get_sample_value(
        "chargecap_broker_errors_total", {"broker": "unnamed", "kind": "not_leader"}) == 1
    assert set(KINDS.values()) < set(BROKER_ERROR_KINDS)
    m.broker_error("1", "not a kind")
    assert m.registry.get_sample_value(
        "chargecap_broker_errors_total", {"broker": "1", "kind": "other"}) == 1
