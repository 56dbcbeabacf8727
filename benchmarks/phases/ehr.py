"""Phases `fhir` and `hl7v2`: the cost of EHR-format input (issues 18, 19).

The bench's generated stream is written as FHIR R4 Bundles or HL7 v2 messages
(`generate --format`, stream_app/devtools/generate/formats.py; the few records a format
cannot carry stay canonical), then:

* **adapter**: the adapter alone, in process, over every EHR message of the stream (best
  of 3 passes) → µs per message, and for FHIR per resource (Bundle entries);
* **pipeline**: the real worker over the same messages pre-produced on fresh topics, timed
  as the canonical `pipeline` phase (first repartition write → last output) → events/s
  counted in the stream's records (the unit of `pipeline_eps`: one FHIR Bundle or one
  RAS/RDS/DFT message per record; the visits' ADT^A04 messages come on top), and the
  ratio to the canonical `pipeline_eps` of the same run.
"""

from __future__ import annotations

import time
from pathlib import Path

import orjson

from phases.common import log, prefixed, produce_all, wait_topics
from phases.pipeline import phase_pipeline
from stream_app.devtools.generate.formats import FHIR, encode_messages
from stream_app.devtools.generate.hl7v2 import write_site
from stream_app.topics import apply_topics
from stream_app.vocabulary import OUTPUT_TOPICS, TOPIC_FHIR, TOPIC_HL7V2, WORKER_INPUT_TOPICS


def adapter_cost(values: list[bytes], fmt: str, site_dir: Path) -> dict:
    from stream_app.adapters import fhir, hl7v2
    from stream_app.adapters.site import load_site_config
    from stream_app.rules import load_rules

    site = load_site_config(site_dir)
    rules = load_rules(None)
    if fmt == FHIR:
        def adapt(v):
            return fhir.adapt(v, site, default_tz="UTC")
        resources = sum(len(orjson.loads(v).get("entry") or ()) for v in values)
    else:
        def adapt(v):
            return hl7v2.adapt(v, site, default_tz="UTC", rules=rules)
        resources = len(values)
    best = float("inf")
    records = dead = 0
    for _ in range(3):
        t0 = time.perf_counter()
        records = dead = 0
        for v in values:
            out = adapt(v)
            records += len(out.records)
            dead += len(out.dead_letters)
        best = min(best, time.perf_counter() - t0)
    n = len(values)
    return {"messages": n, "resources": resources, "records": records, "dead_letters": dead,
            "us_per_message": best / n * 1e6 if n else 0.0,
            "us_per_resource": best / resources * 1e6 if resources else 0.0}


async def phase_ehr(bootstrap: str, prefix: str, stream, fmt: str, workdir: Path, app_id: str,
                    quiet: float, timeout: float, workers: int = 1) -> dict:
    site_dir = write_site(workdir / f"site-{fmt}")
    t = time.perf_counter()
    messages = encode_messages(stream, fmt)
    encode_s = time.perf_counter() - t
    topic = TOPIC_FHIR if fmt == FHIR else TOPIC_HL7V2
    values = [v for tp, _k, v in messages if tp == topic]
    cost = adapter_cost(values, fmt, site_dir)
    log(f"{fmt} adapter: {cost['us_per_message']:,.0f} µs per message, "
        f"{cost['us_per_resource']:,.0f} µs per resource ({cost['messages']} messages)")
    await apply_topics(bootstrap, prefix)
    await wait_topics(bootstrap, [prefix + t for t in WORKER_INPUT_TOPICS + OUTPUT_TOPICS])
    produce_s = await produce_all(prefixed(messages, prefix), bootstrap)
    pipe = await phase_pipeline(bootstrap, prefix, len(messages), workdir, app_id, quiet,
                                timeout, workers=workers, inputs=WORKER_INPUT_TOPICS,
                                extra=["--rules-dir", str(site_dir)])
    records = sum(1 for _ in stream.iter_plan())
    seconds = pipe["seconds"]
    return {**pipe, "adapter": cost, "input_messages": len(messages),
            "ehr_messages": len(values), "stream_records": records,
            "input_bytes": sum(len(v) for _t, _k, v in messages),
            "eps": records / seconds if seconds > 0 else 0.0,
            "encode_s": encode_s, "produce_s": produce_s}
