"""Phase `memory`: resident-set growth of a worker per open patient-day."""

from __future__ import annotations

import asyncio
from pathlib import Path

from phases.common import SEED, Probe, metric_sum, prefixed, produce_all, rss_of, wait_topics
from phases.worker import Worker
from stream_app.devtools.generate import generate_stream
from stream_app.engine import DeadLetter, parse_record
from stream_app.topics import apply_topics
from stream_app.vocabulary import INPUT_TOPICS, OUTPUT_TOPICS


def memory_messages(open_days: int, have: list) -> tuple[list, int]:
    """A prefix of the realistic stream holding exactly `open_days` distinct patient-days."""
    def take(messages):
        days: set = set()
        for i, (_t, _k, v) in enumerate(messages):
            rec = parse_record(v)
            if isinstance(rec, DeadLetter):
                continue
            day = (rec.patient_id, getattr(rec, "service_date", None))
            if day not in days:
                if len(days) == open_days:
                    return messages[:i], len(days)
                days.add(day)
        return None, len(days)

    got, _ = take(have)
    if got is not None:
        return got, open_days
    # about three records per patient-day in the default mix; a different seed, more records
    stream = generate_stream(SEED + 1, records=int(open_days * 3.4) + 100)
    got, count = take(stream.messages)
    if got is None:
        return stream.messages, count
    return got, open_days


async def phase_memory(bootstrap: str, prefix: str, messages, open_days: int, store: str,
                       workdir: Path, app_id: str, quiet: float) -> dict:
    await apply_topics(bootstrap, prefix)
    await wait_topics(bootstrap, [prefix + t for t in INPUT_TOPICS + OUTPUT_TOPICS])
    w = Worker(bootstrap, app_id, prefix, store, workdir).start()
    try:
        await w.wait_ready()
        await asyncio.sleep(quiet / 1.5)
        rss0 = rss_of(w.pid)
        await produce_all(prefixed(messages, prefix), bootstrap)
        async with Probe(bootstrap) as probe:
            done = await w.wait_processed(len(messages), [prefix + t for t in INPUT_TOPICS],
                                          probe, [prefix + t for t in OUTPUT_TOPICS], quiet,
                                          900)
        await asyncio.sleep(quiet / 1.5)
        samples = await asyncio.to_thread(w.scrape)
        rss1 = rss_of(w.pid)
    finally:
        w.stop()
    days_open = metric_sum(samples or done["samples"], "chargecap_open_patient_days")
    return {
        "store": store,
        "records": len(messages),
        "open_patient_days": int(days_open),
        "expected_open_patient_days": open_days,
        "rss_idle_bytes": rss0,
        "rss_loaded_bytes": rss1,
        "bytes_per_open_patient_day": (rss1 - rss0) / days_open if days_open else float("nan"),
    }

