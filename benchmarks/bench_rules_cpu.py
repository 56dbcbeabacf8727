"""CPU cost of start-up and of replay per record, for one rules directory.

    python benchmarks/bench_rules_cpu.py INPUT.ndjson [--rules-dir DIR] [--records N]

Prints one JSON line: `startup_s` (wall and CPU of load_rules + Engine(...), the worker's
rule loading), `replay_cpu_s` and `cpu_us_per_record` (process CPU time of replay() over
the first N records, read from a temporary file). Run it alternately against two
checkouts (PYTHONPATH=<checkout>) to compare them on a shared machine: CPU time is less
sensitive than wall time to other processes. Not a test: no thresholds.
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
from pathlib import Path

from stream_app.engine import Engine, EngineSettings
from stream_app.replay import replay
from stream_app.rules import load_rules


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("input")
    ap.add_argument("--rules-dir", default=None)
    ap.add_argument("--records", type=int, default=100_000)
    args = ap.parse_args()
    with open(args.input, "rb") as fh:
        head = [next(fh) for _ in range(args.records)]
    with tempfile.NamedTemporaryFile(suffix=".ndjson", delete=False) as tmp:
        tmp.writelines(head)
    w0, c0 = time.perf_counter(), time.process_time()
    engine = Engine(load_rules(args.rules_dir), EngineSettings())
    w1, c1 = time.perf_counter(), time.process_time()
    gc.collect()
    c2 = time.process_time()
    replay([tmp.name], engine)
    c3 = time.process_time()
    Path(tmp.name).unlink()
    print(json.dumps({"rules_dir": args.rules_dir or "packaged", "records": args.records,
                      "startup_wall_s": round(w1 - w0, 3), "startup_cpu_s": round(c1 - c0, 3),
                      "replay_cpu_s": round(c3 - c2, 2),
                      "cpu_us_per_record": round((c3 - c2) / args.records * 1e6, 1)}))


if __name__ == "__main__":
    main()
