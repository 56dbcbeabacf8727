"""`chargecap report`: the charge-capture audit report (HTML, optionally PDF).

    chargecap report --from 2025-03-01 --to 2025-03-31 --replay-dir out/ --out audit.html
    chargecap report --from … --to … --dsn postgresql://… --out audit.html --pdf audit.pdf

Reads a replay output directory or the work queue's PostgreSQL, computes every figure in
SQL (figures.py) over one in-process DuckDB shape (sources.py), draws the charts with
matplotlib (charts.py) and writes one self-contained HTML file (render.py). Aggregates
only unless `--worklist`, which appends the open items with their ids and marks page 1
as containing PHI.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import date
from pathlib import Path

DSN_ENV = "CHARGECAP_QUEUE_DSN"


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from exc


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="first", type=_date, required=True, metavar="DATE",
                        help="first service date of the period (YYYY-MM-DD)")
    parser.add_argument("--to", dest="last", type=_date, required=True, metavar="DATE",
                        help="last service date of the period (inclusive)")
    parser.add_argument("--out", type=Path, required=True, metavar="FILE.html")
    parser.add_argument("--pdf", type=Path, default=None, metavar="FILE.pdf",
                        help="also print the report to PDF with headless Chromium")
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--replay-dir", type=Path, default=None, metavar="DIR",
                     help="output directory of `replay … --out DIR`")
    src.add_argument("--dsn", default=None,
                     help=f"work queue PostgreSQL DSN [env {DSN_ENV}] (the default source)")
    parser.add_argument("--worklist", action="store_true",
                        help="append the open items with patient/encounter/alert ids (PHI)")


def build(args: argparse.Namespace) -> tuple[str, dict]:
    """The HTML text and a few counts for the summary line."""
    from stream_app.report import charts, figures, render, sources

    period = figures.Period(args.first, args.last)
    window = sources.Window(period.previous().first, period.last)
    con = sources.new_database()
    if args.replay_dir is not None:
        sources.load_replay_dir(con, args.replay_dir, window)
        source = f"replay directory {args.replay_dir.name}"
    else:
        dsn = args.dsn or os.environ.get(DSN_ENV)
        if not dsn:
            raise sources.SourceError(f"give --replay-dir DIR or --dsn (or set {DSN_ENV})")
        sources.load_postgres(con, dsn, window)
        source = "work queue database"
    fig = figures.compute(con, period, with_worklist=args.worklist)
    html = render.render(fig, charts.charts_for(fig), source, args.worklist)
    totals = next(r for r in fig.tables["summary"].rows if r[0] == "all")
    return html, {"lines": totals[1], "alerts": totals[4]}


def run(args: argparse.Namespace) -> int:
    from stream_app.report.pdf import PdfError, print_to_pdf
    from stream_app.report.sources import SourceError

    if args.last < args.first:
        print("chargecap report: --to is before --from", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        html, counts = build(args)
    except SourceError as exc:
        print(f"chargecap report: {exc}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(html, encoding="utf-8")
    if args.pdf is not None:
        args.pdf.parent.mkdir(parents=True, exist_ok=True)
        try:
            print_to_pdf(args.out, args.pdf)
        except PdfError as exc:
            print(f"chargecap report: {exc}", file=sys.stderr)
            return 1
    print(f"report: {counts['lines']} lines, {counts['alerts']} alerts in the period; "
          f"wrote {args.out}{' and ' + str(args.pdf) if args.pdf else ''} "
          f"in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 0
