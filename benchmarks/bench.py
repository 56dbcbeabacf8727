"""`make bench`: the worker against the physical limit on the same broker.

One run, one broker, one generated stream (the generator's realistic mix, seed 7, the
same records `bench_replay.py` replays). Phases (`--only` picks some):

* **raw**: `raw_passthrough.py` (aiokafka consumer → orjson → aiokafka producer, batched)
  over the pre-produced input → `raw_passthrough_eps`.
* **faust**: `faust_passthrough.py`, the same work in one Faust agent configured as the
  worker's first stage (its Faust app, batching, batched sends), a subprocess over the
  same input; timed from the first to the last Kafka timestamp of its output topic →
  `faust_passthrough_eps`, `faust_ratio` (= faust / raw): the most any pipeline built on
  the worker's Faust configuration could reach on this machine.
* **pipeline**: the real worker (`python -m stream_app worker`, a subprocess with its own
  app id, RocksDB store in a tmp dir) over the *same* pre-produced input. Start = the
  Kafka timestamp of the first message the worker wrote to its repartition topic (its
  first stage stamps it when it forwards its first input); end = the newest Kafka
  timestamp among the last messages of the output topics (charge lines, alerts, dead
  letters), read once the worker's metrics say every input was consumed and its output
  counters and the output topics' end offsets have been still for a quiet period.
  Settle/close are set far in the future, so every decision measured is a present-state
  one (no settle/close work in the window). → `pipeline_eps`, `pipeline_ratio`.
* **scaleout**: the pipeline again over a copy of the same input with one more worker in
  the group (two when `--workers` is 1) → `scaleout_eps`, `scaleout_ratio` (= scaleout /
  pipeline): what adding a worker buys on this machine, broker included.
* **fhir**, **hl7v2**: the same stream written as FHIR R4 Bundles / HL7 v2 messages
  (`phases/ehr.py`): the adapter's µs per resource / message in process, and the worker
  over them as in **pipeline** → `fhir_pipeline_eps`, `fhir_ratio` (= fhir / pipeline;
  goal: FHIR input costs at most a third of the throughput), `hl7v2_…`.
* **replay**: `bench_replay.main(["--records", N])` → `replay_eps`, `parse_only_eps`,
  `replay_ratio`, `replay_jobs2_eps` (`replay --jobs 2`), `replay_jobs_ratio` (= jobs 2 /
  one process).
* **latency**: a fresh worker on fresh topics; `--rate` events/s for `--latency-seconds`
  (paced every 5 ms). Latency per output = output Kafka timestamp (CreateTime, set by the
  worker's producer) − the newest input timestamp among its `source_event_ids` (the
  inputs' CreateTime set by this harness at send). Final and `MISSING_NDC` outputs are
  excluded (none happen with settle/close in the future). Also reported: the same against
  the patient's newest input sent before the output, and the quantiles of the worker's
  own `chargecap_decision_latency_seconds` histogram.
* **memory**: a fresh worker (RocksDB store in a tmp dir, settle/close in the future) fed
  records until `--open-days` distinct patient-days are open; resident-set growth of the
  worker process (/proc/<pid>/statm) from ready-and-idle to all-consumed-and-quiet,
  divided by the worker's `chargecap_open_patient_days`. Repeated with `memory://`.

Prints a human table, then a last line of JSON. No thresholds: this is a measurement.
Patient ids are never printed. This file is the driver; each phase is a module of
`benchmarks/phases/` (`common.py` and `worker.py` hold what they share).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from phases.common import (  # noqa: E402
    PHASES,
    SEED,
    delete_topics,
    ensure_broker,
    git_state,
    loadavg,
    log,
    machine_info,
    prefixed,
    produce_all,
    wait_topics,
)
from phases.ehr import phase_ehr  # noqa: E402
from phases.faust_floor import phase_faust  # noqa: E402
from phases.latency import phase_latency  # noqa: E402
from phases.memory import memory_messages, phase_memory  # noqa: E402
from phases.pipeline import phase_pipeline  # noqa: E402
from phases.raw import phase_raw  # noqa: E402
from phases.replay import phase_replay  # noqa: E402

from stream_app.devtools.generate import generate_stream  # noqa: E402
from stream_app.topics import apply_topics  # noqa: E402
from stream_app.vocabulary import INPUT_TOPICS, OUTPUT_TOPICS  # noqa: E402

# ------------------------------------------------------------------------------- main


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--broker", default=None,
                    help="host:port of a running broker (default: start/reuse the local one)")
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--latency-seconds", type=float, default=60.0)
    ap.add_argument("--rate", type=float, default=2000.0)
    ap.add_argument("--workers", type=int, default=1,
                    help="worker processes in the group for pipeline and latency (one per core)")
    ap.add_argument("--worker-flag", action="append", default=[], metavar="FLAG=VALUE",
                    help="extra worker flag for pipeline and scaleout (repeatable), "
                         "e.g. --worker-flag=--stage2-batch-bundles=24")
    ap.add_argument("--open-days", type=int, default=100_000)
    ap.add_argument("--smoke", action="store_true",
                    help="tiny sizes (every phase, well under a minute)")
    ap.add_argument("--only", default=",".join(PHASES),
                    help="comma-separated phases: " + ",".join(PHASES))
    ap.add_argument("--no-memory-compare", action="store_true",
                    help="skip the memory:// comparison run")
    ap.add_argument("--keep", action="store_true", help="keep topics and tmp dirs")
    ap.add_argument("--profile", type=Path, default=None, metavar="DIR",
                    help="py-spy the pipeline worker (collapsed stacks in DIR; slows it)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.records = min(args.records, 2000)
        args.latency_seconds = min(args.latency_seconds, 4.0)
        args.rate = min(args.rate, 200.0)
        args.open_days = min(args.open_days, 300)
    args.phases = [p.strip() for p in args.only.split(",") if p.strip()]
    bad = set(args.phases) - set(PHASES)
    if bad:
        ap.error(f"unknown phase(s) {', '.join(sorted(bad))}; known: {', '.join(PHASES)}")
    return args


async def run(args, bootstrap: str, workdir: Path) -> dict:
    run_id = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    prefixes: list[str] = []
    quiet = 1.0 if args.smoke else 3.0
    res: dict = {"records": args.records}
    durations: dict[str, float] = {}
    details: dict = {}
    try:
        t = time.perf_counter()
        stream = generate_stream(SEED, records=args.records)
        messages = stream.messages
        n = len(messages)
        res["records"] = n
        durations["generate"] = time.perf_counter() - t
        log(f"generated {n} messages in {durations['generate']:.1f} s")
        # The generated stream is millions of tracked objects that live to the end: a
        # full collection of them paused this process for 0.6-0.8 s, stalling the raw
        # loop, and the paced producer mid-run (a burst of late sends the latency figure
        # then charged to the worker). Frozen, the collector skips them.
        gc.collect()
        gc.freeze()

        if {"raw", "faust", "pipeline", "scaleout"} & set(args.phases):
            p1 = f"bench-{run_id}-in."
            prefixes.append(p1)
            t = time.perf_counter()
            await apply_topics(bootstrap, p1)
            await wait_topics(bootstrap, [p1 + t for t in INPUT_TOPICS + OUTPUT_TOPICS])
            durations["produce_input"] = await produce_all(prefixed(messages, p1), bootstrap)
            log(f"pre-produced {n} messages in {durations['produce_input']:.1f} s")
            if "raw" in args.phases:
                t = time.perf_counter()
                raw = await phase_raw(bootstrap, p1, n)
                durations["raw"] = time.perf_counter() - t
                details["raw"] = raw
                res["raw_passthrough_eps"] = round(raw["eps"])
                log(f"raw passthrough: {raw['eps']:,.0f} events/s")
            if "faust" in args.phases:
                t = time.perf_counter()
                app_id = f"bench-{run_id}-faust"
                prefixes.append(app_id)
                fp = await phase_faust(bootstrap, p1, n, workdir, app_id, quiet,
                                       timeout=max(300.0, n / 200))
                durations["faust"] = time.perf_counter() - t
                details["faust"] = fp
                res["faust_passthrough_eps"] = round(fp["eps"])
                log(f"faust passthrough: {fp['eps']:,.0f} events/s")
            if "pipeline" in args.phases:
                t = time.perf_counter()
                app_id = f"bench-{run_id}-pipe"
                prefixes.append(app_id)
                pipe = await phase_pipeline(bootstrap, p1, n, workdir, app_id, quiet,
                                            timeout=max(300.0, n / 200), profile=args.profile,
                                            workers=args.workers, extra=args.worker_flag)
                durations["pipeline"] = time.perf_counter() - t
                details["pipeline"] = pipe
                res["pipeline_eps"] = round(pipe["eps"])
                log(f"pipeline: {pipe['eps']:,.0f} events/s")
            if "scaleout" in args.phases:
                t = time.perf_counter()
                app_id = f"bench-{run_id}-scale"
                # its own copy of the input, so that its output topics hold its outputs only
                ps = f"bench-{run_id}-in2."
                prefixes += [app_id, ps]
                await apply_topics(bootstrap, ps)
                await wait_topics(bootstrap, [ps + t for t in INPUT_TOPICS + OUTPUT_TOPICS])
                await produce_all(prefixed(messages, ps), bootstrap)
                scale = await phase_pipeline(bootstrap, ps, n, workdir, app_id, quiet,
                                             timeout=max(300.0, n / 200),
                                             workers=args.workers + 1,
                                             extra=args.worker_flag)
                durations["scaleout"] = time.perf_counter() - t
                details["scaleout"] = scale
                res["scaleout_eps"] = round(scale["eps"])
                log(f"scale-out ({args.workers + 1} workers): {scale['eps']:,.0f} events/s")
        for fmt in ("fhir", "hl7v2"):
            if fmt not in args.phases:
                continue
            t = time.perf_counter()
            p = f"bench-{run_id}-{fmt}."
            app_id = f"bench-{run_id}-{fmt}"
            prefixes += [p, app_id]
            ehr = await phase_ehr(bootstrap, p, stream, fmt, workdir, app_id, quiet,
                                  timeout=max(300.0, n / 100), workers=args.workers)
            durations[fmt] = time.perf_counter() - t
            details[fmt] = ehr
            res[f"{fmt}_pipeline_eps"] = round(ehr["eps"])
            res[f"{fmt}_adapter_us_per_message"] = round(ehr["adapter"]["us_per_message"], 1)
            if fmt == "fhir":
                res["fhir_adapter_us_per_resource"] = round(ehr["adapter"]["us_per_resource"], 1)
            log(f"{fmt} pipeline: {ehr['eps']:,.0f} records/s")
        if "replay" in args.phases:
            t = time.perf_counter()
            rep = phase_replay(args.records)
            durations["replay"] = time.perf_counter() - t
            details["replay"] = rep
            for k in ("replay_eps", "parse_only_eps", "replay_ratio", "replay_jobs2_eps",
                      "replay_jobs_ratio"):
                res[k] = rep[k]
        if "latency" in args.phases:
            t = time.perf_counter()
            need = int(args.rate * args.latency_seconds)
            lat_msgs = messages
            if need > len(lat_msgs):
                lat_msgs = generate_stream(SEED, records=need + 100).messages
                gc.collect()
                gc.freeze()
            p2 = f"bench-{run_id}-lat."
            app_id = f"bench-{run_id}-lat"
            prefixes += [p2, app_id]
            lat = await phase_latency(bootstrap, p2, lat_msgs, args.rate, args.latency_seconds,
                                      workdir, app_id, quiet, workers=args.workers)
            durations["latency"] = time.perf_counter() - t
            details["latency"] = lat
            # Event to decision (the issue's figure): each input event's first decision,
            # from when the event became decidable (see phase_latency).
            # The per-output measure also charges an output re-emitted because of a
            # *later* record of the patient with its older sources' age; kept alongside.
            res["latency_p50_s"] = round(lat["event_p50_s"], 4)
            res["latency_p99_s"] = round(lat["event_p99_s"], 4)
            res["latency_output_p50_s"] = round(lat["p50_s"], 4)
            res["latency_output_p99_s"] = round(lat["p99_s"], 4)
            log(f"latency per event: p50 {lat['event_p50_s']:.3f} s, p99 "
                f"{lat['event_p99_s']:.3f} s; per output p50 {lat['p50_s']:.3f} s, "
                f"p99 {lat['p99_s']:.3f} s")
        if "memory" in args.phases:
            t = time.perf_counter()
            mem_msgs, days = memory_messages(args.open_days, messages)
            stores = ["rocksdb://"] + ([] if args.no_memory_compare else ["memory://"])
            for i, store in enumerate(stores):
                p3 = f"bench-{run_id}-mem{i}."
                app_id = f"bench-{run_id}-mem{i}"
                prefixes += [p3, app_id]
                mem = await phase_memory(bootstrap, p3, mem_msgs, days, store, workdir,
                                         app_id, quiet)
                details["memory_" + store.split(":")[0]] = mem
                log(f"memory ({store}): {mem['bytes_per_open_patient_day']:,.0f} B per "
                    f"open patient-day ({mem['open_patient_days']} open)")
            durations["memory"] = time.perf_counter() - t
            res["bytes_per_open_patient_day"] = round(
                details["memory_rocksdb"]["bytes_per_open_patient_day"])
            if "memory_memory" in details:
                res["bytes_per_open_patient_day_memory_store"] = round(
                    details["memory_memory"]["bytes_per_open_patient_day"])
    finally:
        if prefixes and not args.keep:
            with contextlib.suppress(Exception):
                deleted = await delete_topics(bootstrap, prefixes)
                log(f"deleted {deleted} benchmark topic(s)")
    if "raw_passthrough_eps" in res and "pipeline_eps" in res:
        res["pipeline_ratio"] = round(res["pipeline_eps"] / res["raw_passthrough_eps"], 4)
    for fmt in ("fhir", "hl7v2"):
        if f"{fmt}_pipeline_eps" in res and res.get("pipeline_eps"):
            res[f"{fmt}_ratio"] = round(res[f"{fmt}_pipeline_eps"] / res["pipeline_eps"], 4)
    if "raw_passthrough_eps" in res and "faust_passthrough_eps" in res:
        res["faust_ratio"] = round(res["faust_passthrough_eps"] / res["raw_passthrough_eps"], 4)
    _issue23_ratios(res, details)
    res["durations_s"] = {k: round(v, 2) for k, v in durations.items()}
    res["details"] = _rounded(details)
    return res


def _issue23_ratios(res: dict, details: dict) -> None:
    """The second pass's goals (issue 23), each a ratio of figures of this one run."""
    if res.get("faust_passthrough_eps") and "pipeline_eps" in res:
        res["pipeline_vs_faust"] = round(res["pipeline_eps"] / res["faust_passthrough_eps"], 4)
    if res.get("pipeline_eps") and "scaleout_eps" in res:
        res["scaleout_ratio"] = round(res["scaleout_eps"] / res["pipeline_eps"], 4)
    replay_us = (details.get("replay") or {}).get("replay_cpu_us_per_record")
    if replay_us and "pipeline" in details:
        res["worker_cpu_vs_replay"] = round(
            details["pipeline"]["worker_cpu_us_per_event"] / replay_us, 3)


def _rounded(obj):
    if isinstance(obj, float):
        return round(obj, 4) if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _rounded(v) for k, v in obj.items()}
    return obj


def _cpu_text(phase: dict) -> str:
    """A pipeline phase's CPU per event: the workers', and the local broker's if measured."""
    text = f"worker CPU {phase['worker_cpu_us_per_event']:,.0f} µs per event"
    if phase.get("broker_cpu_us_per_event") is not None:
        text += f", broker CPU {phase['broker_cpu_us_per_event']:,.0f} µs per event"
    return text


def print_table(res: dict) -> None:
    rows = [
        ("raw_passthrough_eps", "aiokafka consume → orjson → produce (events/s)"),
        ("faust_passthrough_eps", "one Faust agent as the worker's, orjson only (events/s)"),
        ("faust_ratio", "faust passthrough / raw: the ceiling for pipeline_ratio"),
        ("pipeline_eps", "worker, input → last output (events/s)"),
        ("pipeline_ratio", "pipeline / raw (goal ≥ 0.5)"),
        ("pipeline_vs_faust", "pipeline / faust passthrough (issue 23 goal ≥ 0.6)"),
        ("worker_cpu_vs_replay", "worker CPU per event / replay CPU per record (goal ≤ 2)"),
        ("scaleout_eps", "worker group with one more worker (events/s)"),
        ("scaleout_ratio", "one more worker / one worker (goal ≥ 1.5 for two)"),
        ("fhir_pipeline_eps", "worker on FHIR R4 Bundles, input → last output (records/s)"),
        ("fhir_ratio", "FHIR / canonical pipeline (goal ≥ 0.67)"),
        ("fhir_adapter_us_per_resource", "FHIR adapter in process (µs per resource)"),
        ("fhir_adapter_us_per_message", "FHIR adapter in process (µs per Bundle)"),
        ("hl7v2_pipeline_eps", "worker on HL7 v2 messages (records/s)"),
        ("hl7v2_ratio", "HL7 v2 / canonical pipeline"),
        ("hl7v2_adapter_us_per_message", "HL7 v2 adapter in process (µs per message)"),
        ("parse_only_eps", "orjson.loads only (events/s)"),
        ("replay_eps", "replay, in-process (events/s)"),
        ("replay_ratio", "replay / parse-only (goal ≥ 0.25)"),
        ("replay_jobs2_eps", "replay --jobs 2, in two processes (events/s)"),
        ("replay_jobs_ratio", "replay --jobs 2 / replay (issue 23 goal ≥ 1.7 on 2 cores)"),
        ("latency_p50_s", "input event (once decidable) → its first decision, p50 at --rate (s)"),
        ("latency_p99_s", "input event → its first decision, p99 (goal ≤ 0.25 s)"),
        ("latency_output_p99_s", "output → its newest source event, p99 (s)"),
        ("bytes_per_open_patient_day", "RSS growth per open patient-day, RocksDB (goal ≤ 2048)"),
        ("bytes_per_open_patient_day_memory_store", "same with memory:// store"),
    ]
    m = res["machine"]
    dirty = " + uncommitted stream_app" if res["git"]["stream_app_dirty"] else ""
    print(f"machine: {m['cores']} cores, {m['ram_bytes'] / 2**30:.1f} GiB, {m['cpu_model']}, "
          f"python {m['python']}; load avg {res['load_avg_start']} → {res['load_avg_end']}; "
          f"code {res['git']['commit']}{dirty}")
    print(f"records: {res['records']:,}")
    for key, label in rows:
        v = res.get(key)
        if v is None:
            continue
        text = f"{v:,.4f}" if isinstance(v, float) and v < 10 else f"{v:,}"
        print(f"  {key:<42} {text:>14}   {label}")
    d = res["details"]
    if "pipeline" in d:
        p = d["pipeline"]
        print(f"  pipeline by metrics polling: {p['poll_eps']:,.0f} events/s; outputs "
              f"{p['charge_line_messages']:,} lines, {p['alert_messages']:,} alerts, "
              f"{p['dead_letter_messages']:,} dead letters; worker ready in {p['ready_s']:.1f} s; "
              f"{_cpu_text(p)}")
    if "scaleout" in d:
        so = d["scaleout"]
        print(f"  scale-out (all workers): ready in {so['ready_s']:.1f} s; {_cpu_text(so)}")
    if "latency" in d:
        la = d["latency"]
        print(f"  latency: {la['outputs']:,} decisions at {la['offered_eps']:,.0f} events/s "
              f"offered; vs patient's newest input p50 {la['trigger_p50_s']} / p99 "
              f"{la['trigger_p99_s']} s; worker histogram p50 {la['hist_p50_s']} / p99 "
              f"{la['hist_p99_s']} s; max {la['max_s']} s")
        print(f"  latency per input event (its first decision, from when it was decidable): "
              f"{la['events_decided']:,} events, p50 {la['event_p50_s']} / p99 "
              f"{la['event_p99_s']} / max {la['event_max_s']} s; from its own send p50 "
              f"{la['own_p50_s']} / p99 {la['own_p99_s']} s")
    for key in ("memory_rocksdb", "memory_memory"):
        if key in d:
            mm = d[key]
            print(f"  memory {mm['store']}: {mm['open_patient_days']:,} open patient-days "
                  f"({mm['records']:,} records), RSS {mm['rss_idle_bytes'] / 2**20:.0f} → "
                  f"{mm['rss_loaded_bytes'] / 2**20:.0f} MiB")
    print("  durations (s): " + ", ".join(f"{k} {v}" for k, v in res["durations_s"].items()))


def main(argv=None) -> dict:
    args = parse_args(argv)
    t0 = time.perf_counter()
    bootstrap = ensure_broker(args.broker)
    workdir = Path(tempfile.mkdtemp(prefix="chargecap-bench-"))
    res: dict = {"machine": machine_info(), "git": git_state(), "load_avg_start": loadavg()}
    try:
        res.update(asyncio.run(run(args, bootstrap, workdir)))
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            log(f"kept {workdir}")
    res["load_avg_end"] = loadavg()
    res["smoke"] = bool(args.smoke)
    res["durations_s"]["total"] = round(time.perf_counter() - t0, 2)
    print_table(res)
    sys.stdout.flush()
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
