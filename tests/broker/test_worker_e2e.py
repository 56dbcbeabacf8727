"""End to end against the real broker: the worker's settled view equals replay's.

Each test runs `python -m stream_app worker` as a subprocess with its own app id and
topic prefix, produces generated input to Kafka and reads the compacted output topics.
"""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest

from stream_app.devtools.generate import generate_messages
from tests.support.worker import (
    DEAD,
    OutputReader,
    WorkerProcess,
    create_topics,
    metric_value,
    produce,
    replay_view,
    uncommitted_inputs,
)

pytestmark = pytest.mark.integration


def _input(prefix: str, records: int, seed: int):
    return generate_messages(seed, records=records, redeliver_rate=0.05, amend_rate=0.08,
                             shuffle_window=40, malformed_rate=0.0, topic_prefix=prefix)


def _assert_same_view(reader: OutputReader, expected) -> None:
    lines, alerts = reader.settled_view()
    exp_lines, exp_alerts = expected
    assert len(lines) == len(exp_lines)
    assert len(alerts) == len(exp_alerts)
    assert lines == exp_lines
    assert alerts == exp_alerts


async def test_end_to_end_equals_replay(kafka_bootstrap, unique_name, tmp_path):
    """A few thousand generated records (duplicates, amendments, out of order) give, on the
    output topics (highest revision per key), exactly replay's settled view."""
    started = time.monotonic()
    prefix = unique_name("e2e") + "."
    app_id = unique_name("e2e-app")
    messages = _input(prefix, 3000, seed=11)
    expected, res = replay_view(tmp_path, messages)
    assert expected[0] and expected[1], "the generated input should give lines and alerts"
    await create_topics(kafka_bootstrap, prefix)
    worker = WorkerProcess(tmp_path, kafka_bootstrap, app_id, prefix).start()
    reader = OutputReader(kafka_bootstrap, prefix)
    try:
        await asyncio.to_thread(worker.wait_ready)
        await reader.start()
        await produce(kafka_bootstrap, messages)
        await reader.wait_settled(timeout=150)
        _assert_same_view(reader, expected)
        assert reader.revisions_monotonic() == []
        assert not reader.messages[DEAD]
        # headers
        _p, _o, _k, value, headers = reader.messages["billing.correction-alerts"][0]
        h = dict(headers)
        assert h["content-type"] == b"application/json"
        assert h["schema"] == b"chargecap.correction-alert.v1"
        assert h["work_queue"] == orjson.loads(value)["work_queue"].encode()
        _p, _o, _k, _v, headers = reader.messages["billing.charge-lines"][0]
        assert dict(headers)["schema"] == b"chargecap.charge-line.v1"
        text = await asyncio.to_thread(worker.metrics_text)
        assert metric_value(text, "chargecap_events_consumed_total") == len(messages)
        assert metric_value(text, "chargecap_duplicate_events_total") == res.duplicates
        assert metric_value(text, "chargecap_open_patient_days") == 0
        assert metric_value(text, "chargecap_decision_latency_seconds_count") > 0
        open_risk = sum(a["revenue_at_risk"] or 0 for a in expected[1])
        assert metric_value(text, "chargecap_revenue_at_risk_dollars") == pytest.approx(
            open_risk, abs=0.05)
    finally:
        await reader.stop()
        rc = await asyncio.to_thread(worker.stop)
        print(f"e2e: {len(messages)} messages in {time.monotonic() - started:.1f}s")
    assert rc == 0, worker.tail()


async def test_sigkill_and_restart_equals_replay(kafka_bootstrap, unique_name, tmp_path):
    """SIGKILL mid-stream, restart on the same RocksDB data dir: same settled view, no key's
    revision goes backwards in topic order, every input got a decision or dead letter."""
    prefix = unique_name("kill") + "."
    app_id = unique_name("kill-app")
    messages = _input(prefix, 3000, seed=23)
    expected, _res = replay_view(tmp_path, messages)
    await create_topics(kafka_bootstrap, prefix)
    args = dict(store="rocksdb://")
    worker = WorkerProcess(tmp_path, kafka_bootstrap, app_id, prefix, **args).start()
    reader = OutputReader(kafka_bootstrap, prefix)
    try:
        await asyncio.to_thread(worker.wait_ready)
        await reader.start()
        half = len(messages) // 2
        await produce(kafka_bootstrap, messages[:half])
        producing = asyncio.ensure_future(
            produce(kafka_bootstrap, messages[half:], chunk=100, pause=0.05))
        # kill while the second half is still arriving and being processed
        await asyncio.sleep(1.0)
        await asyncio.to_thread(worker.kill)
        await producing
        worker = WorkerProcess(tmp_path, kafka_bootstrap, app_id, prefix, name="worker2",
                               **args).start()
        await asyncio.to_thread(worker.wait_ready, 90)
        await reader.wait_settled(timeout=150)
        _assert_same_view(reader, expected)
        assert reader.revisions_monotonic() == []
        assert reader.last_equals_highest()
        # every input (and every repartitioned record) was processed and committed
        inputs = [prefix + t for t in ("ehr.medication-administrations", "ehr.em-services",
                                       "pharmacy.dispenses")] + [f"{app_id}-patient-records"]
        deadline = time.monotonic() + 20
        while (gaps := await uncommitted_inputs(kafka_bootstrap, app_id, inputs)) and \
                time.monotonic() < deadline:
            await asyncio.sleep(1)
        assert gaps == {}
        text = await asyncio.to_thread(worker.metrics_text)
        print("re-emitted after restart:",
              metric_value(text, "chargecap_charge_lines_emitted_total"))
    finally:
        await reader.stop()
        await asyncio.to_thread(worker.stop)
