"""Stage 2 of the worker without Kafka or Faust: where the pipeline's time and memory go.

Feeds the benchmark's stream (seed 7, arrival order) to `streaming.processor.Stage2` with
a dict as the table, in batches of `--batch` messages split over `--partitions`
partitions as the worker's repartitioning does, and reports:

* events/s of stage 2 alone (parse, group, engine ingest + evaluate, state encode, table
  write, output encode) per batch size, and how many patient evaluations that took;
* memory: bytes per open patient-day of the table values (encoded states), of the
  decoded-state cache, and Python heap growth overall (tracemalloc).

Not a test. `python benchmarks/stage2_offline.py --records 60000 --batch 50,500,2000`.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
import tracemalloc
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stream_app.devtools.generate import generate_stream  # noqa: E402
from stream_app.engine import (  # noqa: E402
    DeadLetter,
    Engine,
    EngineSettings,
    PatientState,
    parse_record,
)
from stream_app.rules import load_rules  # noqa: E402
from stream_app.streaming import codecs  # noqa: E402
from stream_app.streaming.processor import Item, Stage2, TableAccess, patient_key  # noqa: E402

FAR = 10**9


class DictTable(TableAccess):
    def __init__(self, data: dict):
        self.data = data

    def get(self, key):
        return self.data.get(key)

    def set(self, key, value):
        self.data[key] = value

    def delete(self, key):
        self.data.pop(key, None)


class CountingEngine:
    """Counts ingest calls (one patient evaluation each) around the real engine."""

    def __init__(self, engine):
        self._e = engine
        self.ingests = 0

    def ingest(self, *a, **kw):
        self.ingests += 1
        return self._e.ingest(*a, **kw)

    def __getattr__(self, name):
        return getattr(self._e, name)


def run(values: list[bytes], batch: int, partitions: int, cache_size: int,
        trace: bool = False) -> dict:
    engine = CountingEngine(Engine(load_rules(), EngineSettings(
        settle_seconds=FAR, close_after_seconds=FAR)))
    stage2 = Stage2(engine, PatientState, cache_size=cache_size)
    tables: dict[int, dict] = defaultdict(dict)
    outputs = 0
    gc.collect()
    if trace:
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
    t0 = time.perf_counter()
    now = time.time()
    for start in range(0, len(values), batch):
        groups: dict[int, dict[bytes, list[Item]]] = defaultdict(lambda: defaultdict(list))
        for raw in values[start:start + batch]:
            rec = parse_record(raw)
            if isinstance(rec, DeadLetter):
                continue
            key = rec.patient_id.encode()
            p = codecs.partition_for(key, partitions)
            groups[p][patient_key(rec.patient_id)].append(Item(rec, 0, now, raw))
        batch_us = stage2.batch_us()
        out: list = []
        for p, g in groups.items():
            stage2.process_partition(p, DictTable(tables[p]), g, False, batch_us, now, out)
        stage2.outputs_acked(list(groups), batch_us)
        outputs += len(codecs.encode_decisions(out))  # the messages stage 2 would produce
    seconds = time.perf_counter() - t0
    res = {
        "batch": batch,
        "events": len(values),
        "eps": round(len(values) / seconds),
        "patient_evaluations": engine.ingests,
        "evaluations_per_event": round(engine.ingests / len(values), 3),
        "outputs": outputs,
    }
    open_days = sum(p.open_days for p in stage2.parts.values())
    res["open_patient_days"] = open_days
    table_bytes = sum(len(k) + len(v) for t in tables.values() for k, v in t.items())
    res["table_value_bytes_per_open_day"] = round(table_bytes / max(open_days, 1))
    if trace:
        total = tracemalloc.get_traced_memory()[0] - base
        snap_cache = len(stage2._cache)  # noqa: SLF001
        stage2._cache.clear()  # noqa: SLF001
        gc.collect()
        without_cache = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
        res["heap_bytes_per_open_day"] = round(total / max(open_days, 1))
        res["cached_states"] = snap_cache
        res["cache_bytes_per_cached_state"] = round((total - without_cache) / max(snap_cache, 1))
        res["heap_without_cache_bytes_per_open_day"] = round(without_cache / max(open_days, 1))
    return res


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=60_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--batch", default="50,500,2000")
    ap.add_argument("--partitions", type=int, default=6)
    ap.add_argument("--cache-size", type=int, default=20000)
    ap.add_argument("--memory", action="store_true", help="also trace memory (slower)")
    args = ap.parse_args(argv)
    values = [v for _t, _k, v in generate_stream(args.seed, records=args.records).messages]
    results = []
    for b in (int(x) for x in args.batch.split(",")):
        r = run(values, b, args.partitions, args.cache_size)
        print(json.dumps(r), flush=True)
        results.append(r)
    if args.memory:
        r = run(values, 2000, args.partitions, args.cache_size, trace=True)
        print(json.dumps(r), flush=True)
        results.append(r)
    return results


if __name__ == "__main__":
    main()
