"""Fault tests against the real broker (issue 7; method and counts in docs/reliability.md).

Each test runs `python -m stream_app worker` as a subprocess (the streaming harness's
`WorkerProcess`) with its own app id and topic prefix, produces input while the worker
runs, injects one kind of fault, and compares the settled view of the compacted output
topics (highest revision per key) with `replay`'s for the same input.

1. worker crash: three seeded SIGKILLs, restarts on the same RocksDB data dir;
2. broker restart: a private broker (own port) stopped and started under the worker;
3. rebalance: a second worker joins mid-stream and leaves with SIGTERM;
4. poison input: thousands of hypothesis-drawn malformed/adversarial records;
5. bad rule data: the worker refuses to start and touches nothing on the broker.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from stream_app.devtools.generate import generate_stream
from tests.support.faults import (
    INPUT_TOPICS,
    Feeder,
    PrivateBroker,
    assert_all_committed,
    assert_audit,
    assert_same_view,
    fault_stream,
    output_counts,
    record_result,
    revision_faults,
    rss_mb,
)
from tests.support.worker import (
    ALERTS,
    DEAD,
    LINES,
    REPO,
    OutputReader,
    WorkerProcess,
    create_topics,
    free_port,
    metric_value,
    replay_view,
)

pytestmark = pytest.mark.integration

ROCKS = {"store": "rocksdb://"}


# ----------------------------------------------------------------------------- helpers


# ----------------------------------------------------------------------------- 1. crash


async def test_worker_sigkill_three_times(kafka_bootstrap, unique_name, tmp_path):
    """Three SIGKILLs at seeded random moments while input is being produced; each time the
    worker restarts on the same RocksDB data dir and app id. Settled view = replay's,
    revisions never go backwards, every input got a decision or a dead letter, every input
    offset is committed in the end."""
    started = time.monotonic()
    rng = random.Random(20250307)
    prefix = unique_name("rel-kill") + "."
    app_id = unique_name("rel-kill-app")
    messages = fault_stream(prefix, seed=71)
    expected, res = replay_view(tmp_path, messages)
    assert expected[0] and expected[1]
    await create_topics(kafka_bootstrap, prefix)
    worker = WorkerProcess(tmp_path, kafka_bootstrap, app_id, prefix, name="w0", **ROCKS).start()
    reader = OutputReader(kafka_bootstrap, prefix)
    feeder = Feeder(kafka_bootstrap, messages, chunk=40, pause=0.35)
    kills, restarts = [], []
    try:
        await asyncio.to_thread(worker.wait_ready, 90)
        await reader.start()
        feeder.start()
        for i in range(3):
            delay = rng.uniform(0.5, 5.0)
            await asyncio.sleep(delay)
            kills.append({"after_ready_s": round(delay, 2), "produced": feeder.sent})
            await asyncio.to_thread(worker.kill)
            await asyncio.to_thread(worker.stop)
            t = time.monotonic()
            worker = WorkerProcess(tmp_path, kafka_bootstrap, app_id, prefix, name=f"w{i + 1}",
                                   **ROCKS).start()
            await asyncio.to_thread(worker.wait_ready, 120)
            restarts.append(round(time.monotonic() - t, 1))
        await feeder.wait()
        await reader.wait_settled(timeout=150)
        view = assert_same_view(reader, expected)
        assert revision_faults(reader) == []
        assert reader.last_equals_highest()
        aud = assert_audit(messages, feeder.metas, reader, res)
        await assert_all_committed(kafka_bootstrap, prefix, app_id)
        assert worker.proc.poll() is None
    finally:
        await reader.stop()
        rc = await asyncio.to_thread(worker.stop)
    assert rc == 0, worker.tail()
    record_result("worker_crash", {
        "messages": len(messages), "kills": kills, "restart_to_ready_s": restarts,
        **view, **aud, **output_counts(reader), "runtime_s": round(time.monotonic() - started, 1)})


# ----------------------------------------------------------------------------- 2. broker


async def test_broker_restart(unique_name, tmp_path):
    """A private broker is stopped mid-stream (data folder kept) and started again a few
    seconds later; the same worker process reconnects by itself and the settled view equals
    replay's."""
    started = time.monotonic()
    broker = PrivateBroker()
    prefix = unique_name("rel-brk") + "."
    app_id = unique_name("rel-brk-app")
    messages = fault_stream(prefix, seed=72, records=2500)
    expected, res = replay_view(tmp_path, messages)
    worker = reader = None
    timings = {}
    try:
        timings["broker_up_s"] = round(broker.up(), 1)
        bs = broker.bootstrap
        await create_topics(bs, prefix)
        worker = WorkerProcess(tmp_path, bs, app_id, prefix, **ROCKS).start()
        await asyncio.to_thread(worker.wait_ready, 90)
        pid = worker.proc.pid
        reader = OutputReader(bs, prefix)
        await reader.start()
        # input keeps arriving while the broker goes away: the feeder's sends wait for it
        # (idempotent producer, 60 s request timeout) and the worker is mid-batch
        feeder = Feeder(bs, messages, chunk=50, pause=0.2).start()
        await asyncio.sleep(4)
        timings["produced_at_down"] = feeder.sent
        timings["broker_down_s"] = round(await asyncio.to_thread(broker.down), 1)
        await asyncio.sleep(5)
        assert worker.proc.poll() is None, "worker stopped while the broker was down:\n" + \
            worker.tail()
        timings["broker_restart_s"] = round(await asyncio.to_thread(broker.up), 1)
        t = time.monotonic()
        await feeder.wait()
        await reader.wait_settled(timeout=180)
        timings["settled_after_restart_s"] = round(time.monotonic() - t, 1)
        assert worker.proc.poll() is None and worker.proc.pid == pid, worker.tail()
        assert await asyncio.to_thread(worker.ready)
        view = assert_same_view(reader, expected)
        assert revision_faults(reader) == []
        aud = assert_audit(messages, feeder.metas, reader, res)
        await assert_all_committed(bs, prefix, app_id)
    finally:
        if reader is not None:
            await reader.stop()
        rc = await asyncio.to_thread(worker.stop) if worker is not None else 0
        await asyncio.to_thread(broker.remove)
    assert rc == 0, worker.tail()
    record_result("broker_restart", {
        "messages": len(messages), "broker_port": broker.port, **timings, **view, **aud,
        **output_counts(reader), "runtime_s": round(time.monotonic() - started, 1)})


# ----------------------------------------------------------------------------- 3. rebalance


async def test_second_worker_joins_and_leaves(kafka_bootstrap, unique_name, tmp_path):
    """Worker B (same app id, its own data dir) joins mid-stream, takes partitions (table
    state recovered from the changelog), processes input, and leaves with SIGTERM; A takes
    the partitions back, again by changelog recovery. Settled view = replay's, no revision
    goes backwards."""
    started = time.monotonic()
    prefix = unique_name("rel-reb") + "."
    app_id = unique_name("rel-reb-app")
    messages = fault_stream(prefix, seed=73)
    expected, res = replay_view(tmp_path, messages)
    await create_topics(kafka_bootstrap, prefix)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = WorkerProcess(tmp_path / "a", kafka_bootstrap, app_id, prefix, name="a", **ROCKS).start()
    b = WorkerProcess(tmp_path / "b", kafka_bootstrap, app_id, prefix, name="b", **ROCKS)
    reader = OutputReader(kafka_bootstrap, prefix)
    feeder = Feeder(kafka_bootstrap, messages, chunk=40, pause=0.4)
    info = {}
    rc_b = None
    try:
        await asyncio.to_thread(a.wait_ready, 90)
        await reader.start()
        feeder.start()
        await asyncio.sleep(3)
        info["b_joined_at_produced"] = feeder.sent
        b.start()
        t = time.monotonic()
        await asyncio.to_thread(b.wait_ready, 120)
        info["b_ready_s"] = round(time.monotonic() - t, 1)
        deadline = time.monotonic() + 30
        consumed_b = 0.0
        while time.monotonic() < deadline:
            text = await asyncio.to_thread(b.metrics_text)
            consumed_b = metric_value(text, "chargecap_events_consumed_total")
            if consumed_b > 200 and feeder.sent > info["b_joined_at_produced"] + 800:
                break
            await asyncio.sleep(0.5)
        info["b_consumed"] = consumed_b
        assert consumed_b > 0, "worker B was never given work:\n" + b.tail()
        info["b_left_at_produced"] = feeder.sent
        rc_b = await asyncio.to_thread(b.stop)
        assert rc_b == 0, b.tail()
        await feeder.wait()
        await reader.wait_settled(timeout=150)
        assert a.proc.poll() is None
        view = assert_same_view(reader, expected)
        assert revision_faults(reader) == []
        assert reader.last_equals_highest()
        aud = assert_audit(messages, feeder.metas, reader, res)
        await assert_all_committed(kafka_bootstrap, prefix, app_id)
        recov_b = [int(m) for m in re.findall(r"recovery complete: (\d+) active",
                                               b.log_path.read_text(errors="replace"))]
        info["b_active_partitions"] = recov_b
        assert any(n > 0 for n in recov_b), b.tail()
    finally:
        await reader.stop()
        if rc_b is None:
            await asyncio.to_thread(b.stop)
        rc_a = await asyncio.to_thread(a.stop)
    assert rc_a == 0, a.tail()
    record_result("rebalance", {
        "messages": len(messages), **info, **view, **aud, **output_counts(reader),
        "runtime_s": round(time.monotonic() - started, 1)})


# ----------------------------------------------------------------------------- 4. poison


def _templates() -> dict[str, dict]:
    """One valid record of each event type (from the generator), to mutate."""
    out: dict[str, dict] = {}
    for rec in generate_stream(5, records=60, error_rate=0.0).events:
        out.setdefault(rec["event_type"], rec)
    assert len(out) == 3
    return out


TEMPLATES = _templates()
_SCALARS = (st.none() | st.booleans() | st.integers(-(2 ** 70), 2 ** 70)
            | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=24))
JSON_VALUES = st.recursive(
    _SCALARS, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c,
                                                                  max_size=4),
    max_leaves=8)
BAD_TIMESTAMPS = st.one_of(
    st.sampled_from(["2025-03-10T10:00:00", "2025-03-10 10:00", "9999-12-31T23:59:59+00:00",
                     "0001-01-01T00:00:00+00:00", "1899-12-31T23:59:59Z",
                     "2101-01-01T00:00:00Z", "2025-02-30T10:00:00Z", "2025-03-10T24:00:01Z",
                     "2025-03-10T23:59:60Z", "2025-03-10T10:00:00+25:00", "", "now",
                     "2025-03-10T10:00:00.123456789123Z", "+002025-03-10T10:00:00Z",
                     "２０２５-03-10T10:00:00Z"]),
    st.datetimes().map(lambda d: d.isoformat()),  # naive: no offset
    st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
)
UNKNOWN_CODES = st.one_of(st.text(min_size=1, max_size=12),
                          st.sampled_from(["ZZZZZ", "99999", "J9999", "96999", "TELEPATHIC",
                                           "space", "00000-0000-00", "Mars/Olympus",
                                           "medicare ", "MEDICARE", "0", "11.0"]))
ENUM_FIELDS = ("route", "payer_class", "place_of_service", "code", "charge_code", "status",
               "facility_timezone", "event_type", "ndc", "quantity_unit",
               "drug.hcpcs", "drug.ndc", "drug.dose_unit", "drug.category", "drug.container",
               "diagnosis_codes", "modifiers", "charge_modifiers")
INVALID_UTF8 = (b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\xc0\xaf",
                b"\xe2\x82", b"\x80")


def _dumps(value) -> bytes:
    """JSON with integers of any size (orjson stops at 64 bits)."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False,
                      separators=(",", ":")).encode()


def _set(rec: dict, path: str, value) -> None:
    if "." in path:
        head, tail = path.split(".", 1)
        if not isinstance(rec.get(head), dict):
            rec[head] = {}
        rec[head][tail] = value
    else:
        rec[path] = value


def _paths(rec: dict) -> list[str]:
    return sorted(f"{k}.{k2}" if isinstance(v, dict) else k
                  for k, v in rec.items() for k2 in (v if isinstance(v, dict) else [None]))


@st.composite
def poison_record(draw, n: int) -> bytes:
    et = draw(st.sampled_from(sorted(TEMPLATES)))
    rec = orjson.loads(_dumps(TEMPLATES[et]))
    rec["event_id"] = f"pz-ev-{n}"
    rec["record_id"] = f"pz-rec-{n}"
    rec["patient_id"] = f"pz-pt-{draw(st.integers(0, 40))}"
    kind = draw(st.sampled_from(["wrong_type", "unknown", "timestamp", "drop", "utf8",
                                 "not_object", "numbers", "long_text", "extra"]))
    if kind == "wrong_type":
        for path in draw(st.lists(st.sampled_from(_paths(rec)), min_size=1, max_size=3)):
            _set(rec, path, draw(JSON_VALUES))
    elif kind == "unknown":
        for path in draw(st.lists(st.sampled_from(ENUM_FIELDS), min_size=1, max_size=3)):
            _set(rec, path, draw(UNKNOWN_CODES))
    elif kind == "timestamp":
        field = draw(st.sampled_from(["occurred_at", "recorded_at", "ended_at"]))
        rec[field] = draw(BAD_TIMESTAMPS)
    elif kind == "drop":
        for path in draw(st.lists(st.sampled_from(sorted(rec)), min_size=1, max_size=5)):
            rec.pop(path, None)
    elif kind == "utf8":
        raw = _dumps(rec)
        bad = draw(st.sampled_from(INVALID_UTF8))
        field = draw(st.sampled_from([b"pz-ev-", b"pz-rec-", b"pz-pt-"]))
        return raw.replace(field, field + bad, 1)
    elif kind == "not_object":
        return draw(st.one_of(
            st.sampled_from([b"", b"null", b"[]", b"{}", b"true", b"0", b'""', b" ", b"\x00",
                             b"{\"event_type\":", b"NaN", b"[{}]", b"\xef\xbb\xbf{}"]),
            JSON_VALUES.filter(lambda v: not isinstance(v, dict)).map(_dumps)))
    elif kind == "numbers":
        field = draw(st.sampled_from(["drug.dose", "drug.wasted_amount", "quantity",
                                      "separately_identifiable", "place_of_service"]))
        literal = draw(st.sampled_from([b"1e400", b"-1e400", b"1" + b"0" * 100, b"-0.0",
                                        b"1e-320", b"0", b"-5", b"1000000001", b"NaN",
                                        b"Infinity", b"0x10", b"1_000", b"2.5e9"]))
        _set(rec, field, "__NUM__")
        return _dumps(rec).replace(b'"__NUM__"', literal, 1)
    elif kind == "long_text":
        field = draw(st.sampled_from(["site", "drug.name", "drug_name", "encounter_id",
                                      "patient_id", "record_id", "lot_number"]))
        _set(rec, field, "x" * draw(st.sampled_from([257, 4097, 20_000])))
    else:  # extra: unknown fields (allowed and ignored), some of them nested 500 deep
        key = draw(st.text(min_size=1, max_size=10))
        rec[key] = draw(JSON_VALUES)
        if draw(st.booleans()):
            rec["deep"] = "__DEEP__"
            return _dumps(rec).replace(b'"__DEEP__"', b"[" * 500 + b"]" * 500, 1)
    return _dumps(rec)


def draw_poison(batches: int, per_batch: int) -> list[bytes]:
    """`batches` hypothesis examples of `per_batch` records each, derandomized (the same
    records every run)."""
    out: list[bytes] = []

    @settings(max_examples=batches, derandomize=True, database=None, deadline=None,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(st.data())
    def collect(data):
        # only whole batches count (an example hypothesis abandons mid-batch adds nothing)
        if len(out) >= batches * per_batch:
            return
        base = len(out)
        batch = [data.draw(poison_record(base + i)) for i in range(per_batch)]
        out.extend(batch)

    collect()
    return out


def heavy_poison(start: int) -> list[tuple[str, bytes]]:
    """The few large ones, built explicitly: (input topic, value)."""
    adm = TEMPLATES["medication.administered"]
    out: list[tuple[str, bytes]] = []
    for i in range(12):  # 500 KB strings: values over the parser's 256 KiB (TOO_LARGE)
        rec = {**adm, "event_id": f"pz-ev-{start + i}", "record_id": f"pz-big-{i}",
               "site": "s" * 500_000}
        out.append(("ehr.medication-administrations", orjson.dumps(rec)))
    deep = [b"[" * 10_000 + b"]" * 10_000, b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
            orjson.dumps({**adm, "event_id": f"pz-ev-{start + 20}"})[:-1]
            + b',"deep":' + b"[" * 10_000 + b"]" * 10_000 + b"}"]
    out += [("ehr.em-services", d) for d in deep]
    # 1 MB value: accepted by the input topic (broker default message.max.bytes 1048588),
    # under the worker's --max-message-bytes (1 MiB), over the parser's 256 KiB
    mb = orjson.dumps({**adm, "event_id": f"pz-ev-{start + 30}", "drug": {"name": "x"}})
    out.append(("ehr.medication-administrations",
                mb[:-1] + b',"pad":"' + b"p" * (1_000_000 - len(mb) - 9) + b'"}'))
    # 2 MB value: the administrations topic is created with max.message.bytes 4 MiB, so
    # it reaches the worker, which refuses it before parsing (TOO_LARGE, stage 1)
    out.append(("ehr.medication-administrations",
                mb[:-1] + b',"pad":"' + b"q" * 2_000_000 + b'"}'))
    return out


async def _wait_consumed(worker: WorkerProcess, n: int, timeout: float = 120) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = await asyncio.to_thread(worker.metrics_text)
        got = sum(metric_value(text, "chargecap_events_consumed_total", topic=t)
                  for t in worker.input_topics)
        if got >= n:
            return got
        await asyncio.sleep(0.3)
    raise AssertionError(f"worker consumed {got} of {n} input messages:\n{worker.tail()}")


async def test_poison_input(kafka_bootstrap, unique_name, tmp_path):
    """Thousands of hypothesis-drawn malformed and adversarial records, mixed with valid
    generated traffic, in three rounds: each one is a dead letter with the parser's error
    code or an accepted record whose decisions equal replay's; dead letters + accepted ==
    produced; the worker stays up and healthy; its RSS stays under 600 MiB and does not
    grow round over round."""
    started = time.monotonic()
    prefix = unique_name("rel-poison") + "."
    app_id = unique_name("rel-poison-app")
    poison = draw_poison(batches=120, per_batch=25)
    topics = [prefix + t for t in INPUT_TOPICS]
    prng = random.Random(404)
    adversarial = [(topics[prng.randrange(3)], None if prng.random() < 0.5 else b"k", v)
                   for v in poison]
    adversarial += [(prefix + t, None, v) for t, v in heavy_poison(len(poison))]
    prng.shuffle(adversarial)
    valid = fault_stream(prefix, seed=74, records=1500, malformed_rate=0.0)
    rounds = [adversarial[i::3] + valid[i * 500:(i + 1) * 500 if i < 2 else None]
              for i in range(3)]
    for r in rounds:
        prng.shuffle(r)
    messages = [m for r in rounds for m in r]
    expected, res = replay_view(tmp_path, messages)
    await create_topics(kafka_bootstrap, prefix, configs={
        "ehr.medication-administrations": {"max.message.bytes": str(4 * 1024 * 1024)}})
    worker = WorkerProcess(tmp_path, kafka_bootstrap, app_id, prefix, **ROCKS).start()
    worker.input_topics = topics
    reader = OutputReader(kafka_bootstrap, prefix)
    samples: list[float] = []
    after_round: list[float] = []
    healthy = True
    stop = asyncio.Event()

    async def sample():
        nonlocal healthy
        while not stop.is_set():
            if worker.proc.poll() is None:
                samples.append(rss_mb(worker.proc.pid))
            healthy = healthy and worker.proc.poll() is None
            await asyncio.sleep(0.5)

    sampler = None
    try:
        await asyncio.to_thread(worker.wait_ready, 90)
        await reader.start()
        sampler = asyncio.ensure_future(sample())
        rss_start = rss_mb(worker.proc.pid)
        feeder = Feeder(kafka_bootstrap, messages, chunk=200, pause=0.0,
                        max_request_size=8 * 1024 * 1024)
        sent = 0
        for r in rounds:
            await feeder.run(sent, sent + len(r))
            sent += len(r)
            await _wait_consumed(worker, sent)
            assert worker.proc.poll() is None, worker.tail()
            assert await asyncio.to_thread(worker.ready), "health endpoint not OK"
            after_round.append(round(rss_mb(worker.proc.pid), 1))
        await reader.wait_settled(timeout=150)
        stop.set()
        await sampler
        assert healthy and worker.proc.poll() is None, worker.tail()
        assert await asyncio.to_thread(worker.ready)
        view = assert_same_view(reader, expected)
        aud = assert_audit(messages, feeder.metas, reader, res)
        # dead letters (one per malformed input message) + accepted == produced
        dead = {(d["topic"], d["partition"], d["offset"]) for d in
                (orjson.loads(v) for _p, _o, _k, v, _h in reader.messages[DEAD])}
        assert len(dead) + aud["valid"] == len(messages)
        text = await asyncio.to_thread(worker.metrics_text)
        consumed = sum(metric_value(text, "chargecap_events_consumed_total", topic=t)
                       for t in topics)
        dl_metric = sum(metric_value(text, "chargecap_events_dead_lettered_total", topic=t)
                        for t in topics)
        assert consumed == len(messages)
        assert dl_metric == len(dead)
        codes: dict[str, int] = {}
        for _p, _o, _k, v, _h in reader.messages[DEAD]:
            c = orjson.loads(v)["error_code"]
            codes[c] = codes.get(c, 0) + 1
        assert max(samples) < 600, samples
        # not growing linearly: the last round adds far less than a round's share of 600
        assert after_round[2] - after_round[1] < 100, after_round
    finally:
        stop.set()
        if sampler is not None and not sampler.done():
            await sampler
        await reader.stop()
        rc = await asyncio.to_thread(worker.stop)
    assert rc == 0, worker.tail()
    record_result("poison", {
        "messages": len(messages), "adversarial": len(adversarial), "valid_generated": len(valid),
        "dead_letters": len(dead), "accepted": aud["valid"], "dead_letter_codes": codes,
        "rss_mb_start": round(rss_start, 1), "rss_mb_after_round": after_round,
        "rss_mb_max": round(max(samples), 1), **view, **aud, **output_counts(reader),
        "runtime_s": round(time.monotonic() - started, 1)})


# ----------------------------------------------------------------------------- 5. rule data


def _rules_copy(tmp_path: Path) -> Path:
    rules = tmp_path / "rules"
    shutil.copytree(REPO / "stream_app" / "rules", rules,
                    ignore=shutil.ignore_patterns("__pycache__", "*.py", "*.md"))
    return rules


def _bad_fee_date(rules: Path) -> str:
    p = rules / "fee_schedule.csv"
    lines = p.read_text().splitlines()
    cells = lines[2].split(",")
    cells[3] = "2025-02-30"  # effective_from (column 4) on line 3: not a date
    lines[2] = ",".join(cells)
    p.write_text("\n".join(lines) + "\n")
    return r"fee_schedule\.csv:3:(4|effective_from):"


def _bad_derivation_syntax(rules: Path) -> str:
    p = rules / "derivation.json"
    lines = p.read_text().splitlines()
    lines[2] = lines[2].rstrip().rstrip(",") + ",,"  # a stray comma on line 3
    p.write_text("\n".join(lines) + "\n")
    return r"derivation\.json:3:\d+:"


def _bad_derivation_shape(rules: Path) -> str:
    """Valid JSON, but a required setting is missing: must fail at start-up too, not on
    the first record (a running worker is never left half-configured)."""
    p = rules / "derivation.json"
    d = orjson.loads(p.read_bytes())
    del d["duplicate_window_minutes"]
    p.write_bytes(orjson.dumps(d, option=orjson.OPT_INDENT_2))
    return r"derivation\.json.*duplicate_window_minutes"


@pytest.mark.parametrize("breaker", [_bad_fee_date, _bad_derivation_syntax,
                                     _bad_derivation_shape],
                         ids=["fee_schedule_bad_date", "derivation_syntax",
                              "derivation_missing_key"])
async def test_bad_rule_data_refused(kafka_bootstrap, unique_name, tmp_path, breaker):
    """A malformed rule file: the worker exits non-zero within seconds, stderr names the
    file, line and column, and it never touched the broker: no consumer group, no internal
    topics, nothing on the output topics — even though input is waiting."""
    started = time.monotonic()
    prefix = unique_name("rel-rules") + "."
    app_id = unique_name("rel-rules-app")
    rules = _rules_copy(tmp_path)
    pattern = breaker(rules)
    await create_topics(kafka_bootstrap, prefix)
    msgs = fault_stream(prefix, seed=75, records=100, malformed_rate=0.05)
    await Feeder(kafka_bootstrap, msgs, chunk=200, pause=0).run()
    err = tmp_path / "stderr.txt"
    with open(err, "wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "stream_app", "worker", "--rules-dir", str(rules),
             "--broker", f"kafka://{kafka_bootstrap}", "--app-id", app_id,
             "--topic-prefix", prefix, "--store", "rocksdb://",
             "--data-dir", str(tmp_path / "data"), "--tick-seconds", "0.5",
             "--settle-seconds", "1", "--close-after-seconds", "0",
             "--metrics-addr", f"127.0.0.1:{free_port()}"],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=fh)
        try:
            await asyncio.to_thread(proc.wait, 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait, 30)
            pytest.fail("the worker started with malformed rule data and was still running "
                        f"after 30 s ({pattern!r} never reported); stderr tail:\n"
                        + err.read_text(errors="replace")[-1500:]
                        + "\n" + await _broker_traces(kafka_bootstrap, prefix, app_id))
    stderr = err.read_text(errors="replace")
    elapsed = time.monotonic() - started
    assert proc.returncode != 0, stderr[-2000:]
    assert re.search(pattern, stderr), stderr[-2000:]
    assert "Traceback" not in stderr
    assert await _broker_traces(kafka_bootstrap, prefix, app_id) == ""
    record_result(f"bad_rules_{breaker.__name__}", {
        "exit_code": proc.returncode, "runtime_s": round(elapsed, 1),
        "stderr_last_line": stderr.strip().splitlines()[-1][-200:]})


async def _broker_traces(bootstrap: str, prefix: str, app_id: str) -> str:
    """What a worker left on the broker: its consumer group, internal topics, output
    messages (by topic and dead-letter error code). Empty when nothing."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        groups = {g[0] if isinstance(g, tuple) else g.group_id
                  for g in await admin.list_consumer_groups()}
        existing = set(await admin.list_topics())
    finally:
        await admin.close()
    traces = []
    if app_id in groups:
        traces.append("consumer group joined")
    internal = sorted(t[len(app_id):] for t in existing if t.startswith(app_id))
    if internal:
        traces.append(f"internal topics created: {internal}")
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(prefix + t, p) for t in (LINES, ALERTS, DEAD) for p in range(3)]
        ends = await consumer.end_offsets(tps)
        counts: dict[str, int] = {}
        if sum(ends.values()):
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            got = 0
            deadline = time.monotonic() + 20
            while got < sum(ends.values()) and time.monotonic() < deadline:
                for tp, msgs in (await consumer.getmany(timeout_ms=500)).items():
                    for m in msgs:
                        got += 1
                        name = tp.topic[len(prefix):]
                        if name == DEAD:
                            name += ":" + orjson.loads(m.value).get("error_code", "?")
                        counts[name] = counts.get(name, 0) + 1
    finally:
        await consumer.stop()
    if counts:
        traces.append(f"output produced: {counts}")
    return "; ".join(traces)
