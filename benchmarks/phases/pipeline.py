"""Phase `pipeline`: the real worker over the same pre-produced input."""

from __future__ import annotations

import math
import time
from pathlib import Path

from phases.common import (
    ALERTS,
    DEAD,
    LINES,
    Probe,
    cpu_seconds_of,
    local_broker_pids,
    metric_sum,
)
from phases.worker import WorkerGroup
from stream_app.vocabulary import INPUT_TOPICS, OUTPUT_TOPICS


async def phase_pipeline(bootstrap: str, prefix: str, n: int, workdir: Path, app_id: str,
                         quiet: float, timeout: float, profile: Path | None = None,
                         workers: int = 1, inputs: tuple[str, ...] = INPUT_TOPICS,
                         extra: list[str] | None = None) -> dict:
    """`n` messages pre-produced on the `inputs` topics (unprefixed names); `extra`:
    more worker flags (e.g. --rules-dir)."""
    w = WorkerGroup(bootstrap, app_id, prefix, "rocksdb://", workdir, workers, extra).start()
    try:
        t_start = time.monotonic()
        w.start_profile(profile)
        ready_s = await w.wait_ready()
        cpu0 = sum(cpu_seconds_of(m.pid) for m in w.members)
        brokers = local_broker_pids()
        broker0 = sum(cpu_seconds_of(pid) for pid in brokers)
        async with Probe(bootstrap) as probe:
            done = await w.wait_processed(n, [prefix + t for t in inputs], probe,
                                          [prefix + t for t in OUTPUT_TOPICS], quiet, timeout)
            # includes the quiet wait at the end (an idle worker uses ~3 % of a core)
            cpu = sum(cpu_seconds_of(m.pid) for m in w.members) - cpu0
            broker_cpu = sum(cpu_seconds_of(pid) for pid in brokers) - broker0
            w.stop_profile()
            first = await probe.edge_timestamps([f"{app_id}-patient-records"], last=False)
            last = await probe.edge_timestamps([prefix + t for t in OUTPUT_TOPICS], last=True)
            ends = await probe.end_offsets([prefix + t for t in OUTPUT_TOPICS])
        wall = time.monotonic() - t_start
    finally:
        w.stop()
    samples = done["samples"]
    seconds = (max(last) - min(first)) / 1000.0
    poll_seconds = done["last_change_poll"] - (done["first_consumed_poll"] or math.nan)
    outputs = {t: sum(v for tp, v in ends.items() if tp.topic == prefix + t) for t in OUTPUT_TOPICS}
    return {
        "seconds": seconds,
        "eps": n / seconds if seconds > 0 else 0.0,
        "poll_seconds": poll_seconds,
        "poll_eps": n / poll_seconds if poll_seconds > 0 else 0.0,
        "ready_s": ready_s,
        "wall_s": wall,
        "worker_cpu_s": cpu,
        "worker_cpu_us_per_event": cpu / n * 1e6 if n else 0.0,
        # the broker's share of the same cores (None: it runs elsewhere)
        "broker_cpu_us_per_event": broker_cpu / n * 1e6 if n and brokers else None,
        "charge_line_messages": outputs[LINES],
        "alert_messages": outputs[ALERTS],
        "dead_letter_messages": outputs[DEAD],
        "lines_emitted_metric": metric_sum(samples, "chargecap_charge_lines_emitted_total"),
        "alerts_emitted_metric": metric_sum(samples, "chargecap_alerts_emitted_total"),
        "open_patient_days": metric_sum(samples, "chargecap_open_patient_days"),
    }

