"""`make bench-report` (also run by `make bench`): a 30-day audit report over 1,000,000
charge lines, timed as a user runs it (`python -m stream_app report … --replay-dir`).

The replay directory is built from a real replay: the generator's realistic mix over 60
service days (seed 7) goes through the engine once, then its charge lines and alerts are
copied with fresh keys (line, alert, patient and encounter ids suffixed per copy) until the
30-day period holds `--lines` lines; the 30 days before it hold as many again, so the
previous-period figures have the same volume to read. Timed: the whole command, process
start to exit, HTML only and then with `--pdf`. No threshold enforced here: the goal (under
60 s) is stated in docs/performance.md with the measured figure.

Prints a human table, then a last line of JSON. Ids are never printed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parents[1]
START = date(2025, 1, 1)


def _base(seed: int, patients: int, days: int) -> tuple[list[dict], list[dict]]:
    from stream_app.config import Settings
    from stream_app.devtools.generate import generate_stream
    from stream_app.replay import replay
    from stream_app.runtime import build_engine

    stream = generate_stream(seed, patients=patients, days=days, start_date=START)
    with tempfile.NamedTemporaryFile("wb", suffix=".ndjson", delete=False) as fh:
        for line in stream.iter_ndjson():
            fh.write(line + b"\n")
        path = fh.name
    try:
        res = replay([path], build_engine(Settings()))
    finally:
        os.unlink(path)
    return list(res.lines.values()), list(res.alerts.values())


def _write(directory: Path, lines: list[dict], alerts: list[dict], copies: int) -> tuple[int, int]:
    directory.mkdir(parents=True, exist_ok=True)
    dumps = orjson.dumps
    n_lines = n_alerts = 0
    with open(directory / "charge_lines.ndjson", "wb") as fl, \
            open(directory / "alerts.ndjson", "wb") as fa:
        for k in range(copies):
            tag = f"{k:04x}"
            buf = []
            for ln in lines:
                c = dict(ln)
                c["line_id"] = ln["line_id"] + tag
                c["patient_id"] = f"{ln['patient_id']}-{tag}"
                if ln.get("encounter_id"):
                    c["encounter_id"] = f"{ln['encounter_id']}-{tag}"
                buf.append(dumps(c))
            fl.write(b"\n".join(buf) + b"\n")
            n_lines += len(buf)
            buf = []
            for a in alerts:
                c = dict(a)
                c["alert_id"] = a["alert_id"] + tag
                c["patient_id"] = f"{a['patient_id']}-{tag}"
                if a.get("encounter_id"):
                    c["encounter_id"] = f"{a['encounter_id']}-{tag}"
                if a.get("line_id"):
                    c["line_id"] = a["line_id"] + tag
                c["lines"] = [{**x, "line_id": x["line_id"] + tag} for x in a.get("lines") or []]
                buf.append(dumps(c))
            if buf:
                fa.write(b"\n".join(buf) + b"\n")
            n_alerts += len(buf)
    (directory / "dead_letters.ndjson").write_bytes(b"")
    return n_lines, n_alerts


def _timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"report_bench: the report failed: {done.stderr.strip()[-400:]}")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=1_000_000, help="charge lines in the 30-day period")
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--patients", type=int, default=600, help="patients of the base replay")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--keep", type=Path, default=None, help="write the data here and keep it")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    lines, alerts = _base(args.seed, args.patients, 2 * args.days)
    first = START + timedelta(days=args.days)
    last = first + timedelta(days=args.days - 1)
    in_period = sum(1 for ln in lines if first.isoformat() <= ln["service_date"] <= last.isoformat())
    copies = max(1, math.ceil(args.lines / max(1, in_period)))
    base_seconds = time.perf_counter() - t0

    with tempfile.TemporaryDirectory(prefix="chargecap-report-bench-") as tmp:
        data = args.keep or Path(tmp) / "replay"
        t1 = time.perf_counter()
        n_lines, n_alerts = _write(data, lines, alerts, copies)
        write_seconds = time.perf_counter() - t1
        size_mb = sum(p.stat().st_size for p in data.iterdir()) / 1e6
        report = [sys.executable, "-m", "stream_app", "report", "--from", first.isoformat(),
                  "--to", last.isoformat(), "--replay-dir", str(data),
                  "--out", str(Path(tmp) / "report.html")]
        html_seconds = _timed(report)
        pdf_seconds = _timed([*report, "--pdf", str(Path(tmp) / "report.pdf")])

    result = {
        "lines_in_period": in_period * copies, "lines_total": n_lines, "alerts_total": n_alerts,
        "input_mb": round(size_mb, 1), "copies": copies, "base_seconds": round(base_seconds, 1),
        "write_seconds": round(write_seconds, 1), "report_html_seconds": round(html_seconds, 1),
        "report_html_pdf_seconds": round(pdf_seconds, 1), "goal_seconds": 60,
        "cpus": os.cpu_count(),
    }
    print(f"{'lines in the 30-day period':34} {result['lines_in_period']:>12,}")
    print(f"{'lines / alerts in the files':34} {n_lines:>12,} / {n_alerts:,} ({size_mb:,.0f} MB)")
    print(f"{'report (HTML)':34} {html_seconds:>11.1f} s")
    print(f"{'report (HTML + PDF)':34} {pdf_seconds:>11.1f} s")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
