"""Phase `latency`: a fresh worker fed at a fixed rate; output timestamp minus the
newest input timestamp among its `source_event_ids`."""

from __future__ import annotations

import asyncio
import bisect
import math
import os
import time
from pathlib import Path

import orjson
from aiokafka import AIOKafkaProducer

from phases.common import ALERTS, LINES, Probe, histogram_quantile, prefixed, wait_topics
from phases.worker import WorkerGroup
from stream_app.topics import apply_topics
from stream_app.vocabulary import INPUT_TOPICS, OUTPUT_TOPICS


async def produce_paced(messages, bootstrap: str, rate: float, seconds: float):
    """Sends at `rate` msg/s (due messages every 5 ms); returns {event_id: ts_ms}, (pid, ts)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0,
                                client_id="chargecap-bench-latency")
    await producer.start()
    n = min(len(messages), int(rate * seconds))
    sent_ts: dict[str, int] = {}
    patient_ts: list[tuple[str, int]] = []
    meta = []
    for _t, _k, v in messages[:n]:
        d = orjson.loads(v)
        meta.append((d.get("event_id"), d.get("patient_id")))
    loop = asyncio.get_running_loop()
    futures = []
    try:
        t0 = loop.time()
        i = 0
        while i < n:
            due = min(n, int((loop.time() - t0) * rate) + 1)
            while i < due:
                topic, key, value = messages[i]
                ts = int(time.time() * 1000)
                futures.append(await producer.send(topic, value=value, key=key, timestamp_ms=ts))
                eid, pid = meta[i]
                if eid is not None and eid not in sent_ts:
                    sent_ts[eid] = ts
                if pid is not None:
                    patient_ts.append((pid, ts))
                i += 1
            if len(futures) > 5000:
                await asyncio.gather(*futures)
                futures = []
            await asyncio.sleep(0.005)
        await asyncio.gather(*futures)
        elapsed = loop.time() - t0
        await producer.flush()
    finally:
        await producer.stop()
    return n, elapsed, sent_ts, patient_ts


def quantile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    idx = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[idx]


async def phase_latency(bootstrap: str, prefix: str, messages, rate: float, seconds: float,
                        workdir: Path, app_id: str, quiet: float, workers: int = 1) -> dict:
    await apply_topics(bootstrap, prefix)
    await wait_topics(bootstrap, [prefix + t for t in INPUT_TOPICS + OUTPUT_TOPICS])
    w = WorkerGroup(bootstrap, app_id, prefix, "rocksdb://", workdir, workers).start()
    try:
        await w.wait_ready()
        await asyncio.sleep(quiet / 3)
        n, elapsed, sent_ts, patient_ts = await produce_paced(
            prefixed(messages, prefix), bootstrap, rate, seconds)
        async with Probe(bootstrap) as probe:
            done = await w.wait_processed(n, [prefix + t for t in INPUT_TOPICS], probe,
                                          [prefix + t for t in OUTPUT_TOPICS], quiet, 300)
            outs = await probe.read_all([prefix + LINES, prefix + ALERTS])
    finally:
        w.stop()
    by_patient: dict[str, list[int]] = {}
    for pid, ts in patient_ts:
        by_patient.setdefault(pid, []).append(ts)
    for lst in by_patient.values():
        lst.sort()
    lat_src, lat_trigger = [], []
    # event id -> (ts of the earliest output naming it, newest send time among that
    # output's sources: when the event became decidable)
    first_decision: dict[str, tuple[int, int]] = {}
    skipped = 0
    for m in outs:
        v = orjson.loads(m.value)
        if v.get("final") or v.get("reason_code") == "MISSING_NDC":
            skipped += 1
            continue
        named = []
        for e in v.get("source_event_ids") or ():
            t = sent_ts.get(e)
            if t is not None and t <= m.timestamp:
                named.append(e)
        if not named:
            skipped += 1
            continue
        newest = max(sent_ts[e] for e in named)
        for e in named:
            if m.timestamp < first_decision.get(e, (1 << 62, 0))[0]:
                first_decision[e] = (m.timestamp, newest)
        lat_src.append((m.timestamp - newest) / 1000.0)
        lst = by_patient.get(v.get("patient_id"), [])
        j = bisect.bisect_right(lst, m.timestamp)
        if j:
            lat_trigger.append((m.timestamp - lst[j - 1]) / 1000.0)
    lat_src.sort()
    lat_trigger.sort()
    # Event to decision: each input event's first output that names it, timed from the
    # moment it became decidable: the newest send among that output's sources. A dispense
    # sent before its administration (the generator's pharmacy sends most of them ahead,
    # median ~1,900 messages) cannot be decided before the administration arrives; timing
    # it from its own send (`own_*`) charges the worker for that wait.
    lat_event = sorted((t - newest) / 1000.0 for t, newest in first_decision.values())
    lat_own = sorted((t - sent_ts[e]) / 1000.0 for e, (t, _n) in first_decision.items())
    dump = os.environ.get("BENCH_LATENCY_DUMP")
    if dump:  # (sent ms, s from decidable, s from own send, event id): latency over time
        rows = sorted((sent_ts[e], (t - n) / 1000.0, (t - sent_ts[e]) / 1000.0, e)
                      for e, (t, n) in first_decision.items())
        Path(dump).write_bytes(orjson.dumps(rows))
    samples = done["samples"]
    name = "chargecap_decision_latency_seconds"
    return {
        "sent": n,
        "offered_eps": n / elapsed if elapsed > 0 else 0.0,
        "outputs": len(lat_src),
        "outputs_skipped": skipped,
        "p50_s": quantile(lat_src, 0.50),
        "p99_s": quantile(lat_src, 0.99),
        "max_s": lat_src[-1] if lat_src else float("nan"),
        "events_decided": len(lat_event),
        "event_p50_s": quantile(lat_event, 0.50),
        "event_p99_s": quantile(lat_event, 0.99),
        "event_max_s": lat_event[-1] if lat_event else float("nan"),
        "own_p50_s": quantile(lat_own, 0.50),
        "own_p99_s": quantile(lat_own, 0.99),
        "trigger_p50_s": quantile(lat_trigger, 0.50),
        "trigger_p99_s": quantile(lat_trigger, 0.99),
        "hist_p50_s": histogram_quantile(samples, name, 0.50),
        "hist_p99_s": histogram_quantile(samples, name, 0.99),
    }

