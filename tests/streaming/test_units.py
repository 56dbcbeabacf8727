"""Unit tests of the streaming plumbing (no broker): codecs, dead letters, app config,
stage 1 routing, stage 2 core and batch (engine failures included), start-up failure on
bad rule data."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from stream_app.config import Settings
from stream_app.engine import DeadLetter, Decision, Outcome
from stream_app.streaming import codecs
from stream_app.streaming.deadletters import (
    RECORD_OVERHEAD,
    dead_letter_output,
    fit_dead_letter,
    truncated_dead_letter,
)
from stream_app.streaming.processor import (
    Item,
    Stage2,
    TableAccess,
    marker_key,
    patient_key,
)
from stream_app.vocabulary import TOO_LARGE

REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------- codecs


def test_state_header_round_trip():
    v = codecs.encode_state(123.5, 42, 3, b"payload")
    assert codecs.decode_state_header(v) == (123.5, 42, 3)
    assert bytes(codecs.state_payload(v)) == b"payload"
    assert codecs.decode_state_header(codecs.encode_state(None, 1, 0, b""))[0] is None


def test_partition_is_stable_and_in_range():
    keys = [f"P{i}".encode() for i in range(1000)]
    parts = [codecs.partition_for(k, 6) for k in keys]
    assert set(parts) == set(range(6))
    assert parts == [codecs.partition_for(k, 6) for k in keys]


def test_dead_letter_keeps_original_bytes():
    raw = b"\xff\xfe not utf-8"
    d = orjson.loads(codecs.dead_letter_value(
        error_code="INVALID_ENCODING", error="e", field=None, raw=raw, topic="t",
        partition=1, offset=7, key=b"\x80k"))
    assert base64.b64decode(d["raw_base64"]) == raw
    assert base64.b64decode(d["key_base64"]) == b"\x80k"
    assert (d["topic"], d["partition"], d["offset"]) == ("t", 1, 7)
    d = orjson.loads(codecs.dead_letter_value(
        error_code="INVALID_JSON", error="e", field=None, raw=b"{x", topic="t",
        partition=0, offset=0, key=None))
    assert d["raw"] == "{x" and "raw_base64" not in d and d["key"] is None


def test_truncated_dead_letter_says_so():
    out = dead_letter_output(DeadLetter("TOO_LARGE", "big", None), raw=b"a" * 600_000,
                             topic="t", partition=0, offset=1, key=b"k")
    t = orjson.loads(truncated_dead_letter(out).value)
    assert t["raw_truncated"] is True and t["raw_size"] == 600_000
    assert len(t["raw"]) < 600_000


def test_a_dead_letter_is_truncated_only_when_the_topic_would_refuse_it():
    out = dead_letter_output(DeadLetter(TOO_LARGE, "big", None), raw=b"a" * 600_000,
                             topic="t", partition=0, offset=1, key=b"k")
    assert fit_dead_letter(out, 1_000_000) is out
    fitted = orjson.loads(fit_dead_letter(out, 600_000).value)
    assert fitted["raw_truncated"] is True and fitted["raw_size"] == 600_000
    # the limit counts the record's framing as well as its value
    assert fit_dead_letter(out, len(out.value) + RECORD_OVERHEAD) is out
    assert fit_dead_letter(out, len(out.value) + RECORD_OVERHEAD - 1) is not out


# ---------------------------------------------------------------------- Faust app config


def test_security_settings_reach_the_faust_app(tmp_path):
    import faust

    from stream_app.streaming.app import StreamOptions, build_faust_app

    settings = Settings(
        broker="kafka://h1:9093,h2:9093", app_id="cfgtest", security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-512", sasl_username="svc", sasl_password="s3cret",
        store="memory://", data_dir=tmp_path,
    )
    app = build_faust_app(settings, StreamOptions(session_timeout=7, rebalance_timeout=8))
    creds = app.conf.broker_credentials
    assert isinstance(creds, faust.SASLCredentials)
    assert creds.username == "svc" and creds.password == "s3cret"
    assert creds.mechanism.value == "SCRAM-SHA-512"
    assert [u.host for u in app.conf.broker] == ["h1", "h2"]
    assert app.conf.web_enabled is False
    assert app.conf.table_standby_replicas == 0
    assert app.conf.broker_session_timeout == 7
    assert app.conf.broker_rebalance_timeout == 8
    assert str(app.conf.store) == "memory:"


def test_ssl_settings_reach_the_faust_app(tmp_path):
    import faust

    from stream_app.streaming.app import StreamOptions, build_faust_app

    settings = Settings(security_protocol="SSL", store="memory://", data_dir=tmp_path)
    app = build_faust_app(settings, StreamOptions())
    assert isinstance(app.conf.broker_credentials, faust.SSLCredentials)
    assert app.conf.broker_credentials.context is not None


# ---------------------------------------------------------------------- stage 2 core


class _Rec:
    def __init__(self, pid, eid):
        self.patient_id, self.event_id = pid, eid


class _State:
    def __init__(self, pid, events=(), due=None):
        self.pid, self.events, self.due = pid, list(events), due

    @property
    def open_days(self):
        return 1 if self.due is not None else 0

    def to_bytes(self):
        return orjson.dumps([self.pid, self.events, self.due])

    @classmethod
    def from_bytes(cls, b, layout=None):
        return cls(*orjson.loads(b))


class _StandInEngine:
    """Same method names as the real engine; one line per event, closes at `due`."""

    def __init__(self):
        self.calls = []

    def ingest(self, state, records, now, rev_floor):
        state = state or _State(records[0].patient_id)
        out = Outcome()
        for r in records:
            if r.event_id in state.events:
                out.duplicates += 1
                continue
            state.events.append(r.event_id)
            out.decisions.append(Decision("line", f"L-{r.event_id}",
                                          {"line_id": f"L-{r.event_id}", "revision": rev_floor,
                                           "state": "active", "final": False}))
        state.due = now + 1
        return state, out

    def advance(self, state, now, rev_floor):
        self.calls.append(("advance", state.pid))
        out = Outcome(closed_days=1)
        for e in state.events:
            out.decisions.append(Decision("line", f"L-{e}", {"line_id": f"L-{e}", "revision":
                                                             rev_floor, "final": True}))
        state.due = None
        return state, out

    def reemit(self, state, now, rev_floor):
        self.calls.append(("reemit", state.pid))
        return state, Outcome(decisions=[Decision("line", f"L-{e}", {"revision": rev_floor})
                                         for e in state.events])

    @staticmethod
    def next_due(state):
        return state.due


class _DictTable(TableAccess):
    def __init__(self):
        self.data = {}

    def get(self, key):
        return self.data.get(key)

    def set(self, key, value):
        self.data[key] = value

    def delete(self, key):
        self.data.pop(key, None)


def test_stage2_ingest_due_work_and_recovery():
    eng = _StandInEngine()
    s2 = Stage2(eng, _State)
    table = _DictTable()
    out = []
    items = [Item(_Rec("P1", "e1"), 0, 1.0), Item(_Rec("P1", "e2"), 1, 1.0),
             Item(_Rec("P1", "e1"), 0, 1.0)]
    us = s2.batch_us()
    s2.process_partition(0, table, {patient_key("P1"): items}, False, us, 100.0, out)
    assert [o.decision.key for o in out] == ["L-e1", "L-e2"]
    assert codecs.decode_state_header(table.data[patient_key("P1")])[0] == 101.0
    assert s2.parts[0].open_days == 1
    # a tick before the due time does nothing, after it runs advance once
    out.clear()
    s2.process_partition(0, table, {}, True, s2.batch_us(), 100.5, out)
    assert out == []
    s2.process_partition(0, table, {}, True, s2.batch_us(), 101.5, out)
    assert [o.decision.value["final"] for o in out] == [True, True]
    assert s2.parts[0].open_days == 0
    # outputs acknowledged -> marker written on the next batch of the partition
    s2.outputs_acked([0], us)
    out.clear()
    s2.process_partition(0, table, {}, True, s2.batch_us(), 102.0, out)
    assert int(table.data[marker_key(0)]) == us
    # recovery: a state written after the marker is re-emitted, older ones are not
    us2 = s2.batch_us()
    s2.process_partition(0, table, {patient_key("P2"): [Item(_Rec("P2", "x"), 0, 1.0)]},
                         False, us2, 103.0, [])
    fresh = Stage2(eng, _State)
    fresh.rebuild(0, table.data.items())
    pend = dict(fresh.parts[0].pending)
    assert pend == {patient_key("P1"): True, patient_key("P2"): True} or \
        pend[patient_key("P2")] is True
    out.clear()
    fresh.process_partition(0, table, {}, True, fresh.batch_us(), 103.0, out)
    assert ("reemit", "P2") in eng.calls
    assert all(o.count_value is False for o in out)


def test_batch_us_strictly_increases():
    s2 = Stage2(_StandInEngine(), _State)
    vals = [s2.batch_us() for _ in range(1000)]
    assert all(b > a for a, b in zip(vals, vals[1:], strict=False))


# ---------------------------------------------------------------------- start-up


def test_bad_rule_data_fails_start_up_cleanly(tmp_path):
    rules = tmp_path / "rules"
    rules.mkdir()
    src = REPO / "stream_app" / "rules"
    for f in src.iterdir():
        if f.suffix in (".csv", ".json"):
            (rules / f.name).write_bytes(f.read_bytes())
    mue = rules / "mue.csv"
    lines = mue.read_text().splitlines()
    lines[1] = lines[1].replace(",", ",not-a-number,", 1)
    mue.write_text("\n".join(lines) + "\n")
    proc = subprocess.run(
        [sys.executable, "-m", "stream_app", "worker", "--rules-dir", str(rules),
         "--broker", "kafka://127.0.0.1:1", "--store", "memory://",
         "--metrics-addr", "127.0.0.1:0"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "mue.csv:2:" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("flag", ["--partitions", "--batch-size", "--fetch-min-bytes",
                                  "--fetch-max-wait", "--stream-buffer",
                                  "--stage2-batch-bundles", "--stage2-queue-bundles"])
def test_tuning_flags_validated(flag):
    import argparse

    from stream_app.config import ConfigError
    from stream_app.streaming.worker import add_arguments, stream_options

    p = argparse.ArgumentParser()
    add_arguments(p)
    with pytest.raises(ConfigError):
        stream_options(p.parse_args([flag, "0"]), environ={})
    assert stream_options(p.parse_args([flag, "3"]), environ={}) is not None


@pytest.mark.parametrize("flag,name", [("--state-cache", "state_cache"),
                                       ("--malloc-trim-interval", "malloc_trim_interval")])
def test_tuning_flags_where_zero_means_off(flag, name):
    import argparse

    from stream_app.config import ConfigError
    from stream_app.streaming.worker import add_arguments, stream_options

    p = argparse.ArgumentParser()
    add_arguments(p)
    assert getattr(stream_options(p.parse_args([flag, "0"]), environ={}), name) == 0
    with pytest.raises(ConfigError):
        stream_options(p.parse_args([flag, "-1"]), environ={})


def test_kafka_client_log_flood_is_rate_limited():
    import logging

    from stream_app.streaming.logfilter import RateLimitFilter

    t = [0.0]
    flt = RateLimitFilter(interval=10.0, clock=lambda: t[0])

    def rec(msg="Unable connect to node %s", level=logging.ERROR):
        return logging.LogRecord("aiokafka.conn", level, __file__, 1, msg, ("x",), None)

    assert flt.filter(rec())  # the first one passes
    assert not any(flt.filter(rec()) for _ in range(500))  # the flood is held back
    assert flt.filter(rec("another problem"))  # a different template passes
    assert flt.filter(rec(level=logging.INFO))  # below WARNING is never limited
    t[0] = 10.0
    r = rec()
    assert flt.filter(r) and "500 similar messages suppressed" in r.msg
