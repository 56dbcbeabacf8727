"""`make bench-replay`: replay throughput against merely parsing the same lines.

Generates a realistic stream (the generator's default mix), writes it as NDJSON, then in
one run measures:
  * parse_only_eps: orjson.loads of every line (the floor any JSON consumer pays);
  * replay_eps: the whole replay (validation, patient-day state, every rule, settle and
    close, outputs kept per key) over the same lines;
  * replay_jobs2_eps: the same replay in two processes (`replay --jobs 2`: patients split
    between them, results merged), and replay_jobs_ratio = replay_jobs2_eps / replay_eps
    (issue 23's goal: at least 1.7 on two cores);
  * memory per patient-day: resident-set growth while replaying divided by the number of
    patient-days held, and again for a second, disjoint half of the stream to show it
    stays flat.
Prints a table and a last line of JSON. Not a test: no thresholds.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stream_app.devtools.generate import generate_events  # noqa: E402
from stream_app.engine import Engine  # noqa: E402
from stream_app.replay import replay  # noqa: E402
from stream_app.rules import load_rules  # noqa: E402


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def best_of(n: int, fn):
    best = None
    result = None
    for _ in range(n):
        t0 = time.perf_counter()
        result = fn()
        dt = time.perf_counter() - t0
        best = dt if best is None else min(best, dt)
    return best, result


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--repeat", type=int, default=3, help="parse-only runs (best is kept)")
    args = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="chargecap-bench-"))
    path = tmp / "stream.ndjson"
    t0 = time.perf_counter()
    events = generate_events(args.seed, records=args.records)
    with open(path, "wb") as fh:
        for e in events:
            fh.write(orjson.dumps(e) + b"\n")
    gen_s = time.perf_counter() - t0
    del events
    lines = path.read_bytes().splitlines()
    n = len(lines)

    def parse_only():
        loads = orjson.loads
        for ln in lines:
            loads(ln)

    parse_s, _ = best_of(args.repeat, parse_only)

    engine = Engine(load_rules())
    gc.collect()
    rss0 = rss_bytes()
    t0, cpu0 = time.perf_counter(), time.process_time()
    res = replay([str(path)], engine)
    replay_s = time.perf_counter() - t0
    replay_cpu_s = time.process_time() - cpu0
    rss1 = rss_bytes()
    days = len({(v["patient_id"], v["service_date"]) for v in res.lines.values()}
               | {(v["patient_id"], v["service_date"]) for v in res.alerts.values()})
    sizes = (len(res.lines), len(res.alerts), len(res.dead_letters))
    del res  # freed before the fork: both processes start from the engine alone

    gc.collect()
    t0 = time.perf_counter()
    res = replay([str(path)], engine, jobs=2)
    jobs2_s = time.perf_counter() - t0
    if (len(res.lines), len(res.alerts), len(res.dead_letters)) != sizes:
        raise SystemExit(f"replay --jobs 2 gave other outputs: "
                         f"{(len(res.lines), len(res.alerts), len(res.dead_letters))} != {sizes}")
    out = {
        "records": n,
        "generate_s": round(gen_s, 2),
        "parse_only_eps": round(n / parse_s),
        "replay_eps": round(n / replay_s),
        "replay_ratio": round(parse_s / replay_s, 4),
        # the worker's CPU per event is compared with this (issue 23)
        "replay_cpu_us_per_record": round(replay_cpu_s / n * 1e6, 2),
        "replay_jobs2_eps": round(n / jobs2_s),
        "replay_jobs_ratio": round(replay_s / jobs2_s, 4),
        "patient_days": days,
        "replay_rss_bytes_per_patient_day": round((rss1 - rss0) / max(days, 1)),
        "lines": sizes[0],
        "alerts": sizes[1],
        "dead_letters": sizes[2],
    }
    print(f"machine: {os.cpu_count()} cores, python {sys.version.split()[0]}", file=sys.stderr)
    for k, v in out.items():
        print(f"  {k:<34} {v:>14,}" if isinstance(v, int) else f"  {k:<34} {v:>14}", file=sys.stderr)
    print(json.dumps(out))
    shutil.rmtree(tmp, ignore_errors=True)  # ~110 MB of NDJSON per run
    return out


if __name__ == "__main__":
    main()
