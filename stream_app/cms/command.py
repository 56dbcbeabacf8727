"""`chargecap rules import FILE… --into DIR [--strict] [--effective-from D --effective-to D]`.

Exit status: 0 imported; 1 imported but `--strict` and rows were set aside; 2 nothing
written (a file not recognised, without an effective period, unreadable; bad options).
"""

from __future__ import annotations

import argparse
import sys
from datetime import date
from pathlib import Path

from stream_app.cms.importer import import_files
from stream_app.cms.reading import CmsFileError

EXIT_SET_ASIDE = 1
EXIT_NOT_IMPORTED = 2


def _iso_date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="rules_command", metavar="SUBCOMMAND")
    sub.required = True
    imp = sub.add_parser(
        "import", help="import CMS quarterly files into a rules directory",
        description="Recognise each CMS file by its content, set aside unusable rows, merge "
                    "the rest into DIR's effective-dated tables and print what changed.")
    imp.add_argument("files", nargs="+", type=Path, metavar="FILE",
                     help="CMS files (CSV / tab-separated text) or directories of them")
    imp.add_argument("--into", required=True, type=Path, metavar="DIR",
                     help="rules directory to write (what --rules-dir / CHARGECAP_RULES_DIR "
                          "reads); created if missing")
    imp.add_argument("--strict", action="store_true",
                     help="exit 1 when any row was set aside (the tables are still written)")
    imp.add_argument("--effective-from", type=_iso_date, metavar="YYYY-MM-DD",
                     help="first day for files that state no period (MUE) or only a year "
                          "(OPPS Addendum B of one quarter)")
    imp.add_argument("--effective-to", type=_iso_date, metavar="YYYY-MM-DD",
                     help="last day (inclusive), with --effective-from")


def run(args: argparse.Namespace) -> int:
    try:
        report = import_files(list(args.files), args.into, args.effective_from,
                              args.effective_to)
    except CmsFileError as exc:
        print(f"chargecap rules import: {exc} (nothing written)", file=sys.stderr)
        return EXIT_NOT_IMPORTED
    print(report.text())
    if args.strict and report.set_aside:
        print(f"chargecap rules import: --strict: {report.set_aside} row(s) set aside",
              file=sys.stderr)
        return EXIT_SET_ASIDE
    return 0
