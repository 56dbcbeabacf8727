"""The tables the importer writes into the rules directory, and how a newly imported
file's rows are merged with the rows already there.

Three tables keep the layouts `load_rules()` reads today (`ndc_hcpcs_crosswalk.csv`,
`mue.csv`, `addon_codes.csv`); the others are new, for the engine's pricing and NCCI
checks. Every row carries `effective_from` / `effective_to` (ISO, inclusive, empty =
open) and `source` (file name and line it came from).

Merging, per table:
* file-dated tables: the new file's rows replace whatever was in force during the file's
  period (existing rows overlapping it are cut back to the days outside it), so importing
  the same quarter again changes nothing and a later quarter adds its own dated rows;
* row-dated tables (NCCI PTP, add-on codes): a row replaces the row with the same key and
  the same effective date.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

from stream_app.cms.reading import CmsFileError, decode, header_name

EFFECTIVE_FROM, EFFECTIVE_TO, SOURCE = "effective_from", "effective_to", "source"


@dataclass(frozen=True)
class Table:
    file: str
    columns: tuple[tuple[str, str], ...]  # (canonical name, header written)
    key: tuple[str, ...]  # canonical columns unique per date
    code: str  # canonical column reported as "codes added / removed"
    compared: tuple[str, ...]  # canonical columns whose change is reported
    dated_by: str = "file"  # "file" | "rows"

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c for c, _ in self.columns)

    def header(self, name: str) -> str:
        return dict(self.columns)[name]


def _plain(*names: str) -> tuple[tuple[str, str], ...]:
    return tuple((n, n) for n in names)


_DATES = _plain(EFFECTIVE_FROM, EFFECTIVE_TO, SOURCE)

TABLES: dict[str, Table] = {t.file: t for t in (
    Table(
        "ndc_hcpcs_crosswalk.csv",
        # The CMS layout load_rules() reads; `HCPCS Code` rather than `_2025_CODE`
        # because rows of several years share the file.
        (("hcpcs", "HCPCS Code"), ("short_description", "Short Description"),
         ("labeler", "LABELER NAME"), ("ndc", "NDC2"), ("drug_name", "Drug Name"),
         ("dosage", "HCPCS dosage"), ("pkg_size", "PKG SIZE"), ("pkg_qty", "PKG QTY"),
         ("billunits", "BILLUNITS"), ("billunitspkg", "BILLUNITSPKG"), *_DATES),
        key=("ndc", "hcpcs"), code="hcpcs",
        compared=("dosage", "pkg_size", "pkg_qty", "billunits", "billunitspkg"),
    ),
    Table(
        "asp_payment_limits.csv",
        _plain("hcpcs", "short_description", "dosage", "payment_limit",
               "coinsurance_percent", EFFECTIVE_FROM, EFFECTIVE_TO, SOURCE),
        key=("hcpcs",), code="hcpcs", compared=("dosage", "payment_limit"),
    ),
    Table(
        "pfs_rvu.csv",
        _plain("code", "modifier", "description", "status", "work_rvu",
               "nonfacility_pe_rvu", "facility_pe_rvu", "mp_rvu", "nonfacility_total",
               "nonfacility_na", "facility_total", "facility_na", "pctc", "global_days",
               "conversion_factor", EFFECTIVE_FROM, EFFECTIVE_TO, SOURCE),
        key=("code", "modifier"), code="code",
        compared=("status", "nonfacility_total", "facility_total", "conversion_factor"),
    ),
    Table(
        "pfs_gpci.csv",
        _plain("mac", "state", "locality", "locality_name", "pw_gpci", "pe_gpci", "mp_gpci",
               EFFECTIVE_FROM, EFFECTIVE_TO, SOURCE),
        key=("mac", "locality"), code="locality",
        compared=("pw_gpci", "pe_gpci", "mp_gpci"),
    ),
    Table(
        "opps_addendum_b.csv",
        _plain("hcpcs", "short_descriptor", "status_indicator", "apc", "relative_weight",
               "payment_rate", "national_unadjusted_copayment",
               "minimum_unadjusted_copayment", EFFECTIVE_FROM, EFFECTIVE_TO, SOURCE),
        key=("hcpcs",), code="hcpcs", compared=("status_indicator", "apc", "payment_rate"),
    ),
    Table(
        "mue.csv",
        # The CMS practitioner layout load_rules() reads.
        (("code", "HCPCS/CPT Code"), ("value", "Practitioner Services MUE Values"),
         ("mai", "MUE Adjudication Indicator"), ("rationale", "MUE Rationale"), *_DATES),
        key=("code",), code="code", compared=("value", "mai"),
    ),
    Table(
        "ncci_ptp.csv",
        _plain("column1", "column2", EFFECTIVE_FROM, EFFECTIVE_TO, "deletion_date",
               "modifier_indicator", "pre_1996", "rationale", SOURCE),
        key=("column1", "column2"), code="column1", compared=("modifier_indicator",),
        dated_by="rows",
    ),
    Table(
        "addon_codes.csv",
        _plain("addon_code", "primary_code", EFFECTIVE_FROM, EFFECTIVE_TO, SOURCE),
        key=("addon_code", "primary_code"), code="addon_code", compared=(), dated_by="rows",
    ),
)}

#: Every file name `rules import` may write into the rules directory.
IMPORTED_TABLES: tuple[str, ...] = tuple(TABLES)
REPORT_FILE = "import-report.json"

_OPEN_START, _OPEN_END = date.min, date.max


def span(row: dict[str, str]) -> tuple[date, date]:
    start, end = row.get(EFFECTIVE_FROM, ""), row.get(EFFECTIVE_TO, "")
    return (date.fromisoformat(start) if start else _OPEN_START,
            date.fromisoformat(end) if end else _OPEN_END)


def _iso(day: date, open_value: date) -> str:
    return "" if day == open_value else day.isoformat()


def read_table(directory: Path, table: Table) -> list[dict[str, str]]:
    """Rows of an existing table in the directory (canonical names), [] when absent.

    Header cells are matched to the table's columns case- and space-insensitively, so a
    file in the packaged layout (`_2025_CODE`…) is read too. A file lacking the key or
    compared columns, or with columns the import does not write, cannot be merged
    without losing data: an error naming it.
    """
    path = directory / table.file
    if not path.is_file():
        return []
    text, _ = decode(path.read_bytes())
    reader = csv.reader(io.StringIO(text, newline=""))
    by_header = {header_name(h): c for c, h in table.columns}
    by_header.update({header_name(c): c for c, _ in table.columns})
    if table.file == "ndc_hcpcs_crosswalk.csv":
        by_header.update({"hcpcs": "hcpcs", "ndc": "ndc", "ndc11": "ndc"})
    header: list[str] | None = None
    rows: list[dict[str, str]] = []
    for cells in reader:
        if not any(c.strip() for c in cells):
            continue
        if header is None:
            names = [header_name(c) for c in cells]
            mapped = [by_header.get(n) or ("hcpcs" if n.startswith("_") and n.endswith("_code")
                                           else "") for n in names]
            if not any(mapped):
                continue  # a preamble line of a CMS file copied in by hand
            needed = [c for c in (*table.key, *table.compared) if c not in mapped]
            unknown = [c.strip() for c, m in zip(cells, mapped, strict=True)
                       if c.strip() and not m]
            if needed or unknown:
                problem = (f"lacks column(s) {', '.join(needed)}" if needed
                           else f"has column(s) the import does not write: {', '.join(unknown)}")
                raise CmsFileError(path, f"existing table {problem}; move it aside and "
                                         "import again")
            header = mapped
            continue
        row = {c: "" for c in table.names}
        for name, cell in zip(header, cells, strict=False):
            if name:
                row[name] = cell.strip()
        rows.append(row)
    return rows


def periods(rows: Iterable[dict[str, str]]) -> list[tuple[date, date]]:
    """Distinct effective periods of the rows, sorted."""
    return sorted({span(r) for r in rows})


def merge_file_dated(existing: list[dict[str, str]], new: list[dict[str, str]],
                     start: date, end: date) -> list[dict[str, str]]:
    """Existing rows cut back to the days outside [start, end], plus the new rows."""
    kept: list[dict[str, str]] = []
    for row in existing:
        a, b = span(row)
        if b < start or a > end:
            kept.append(row)
            continue
        if a < start:
            kept.append({**row, EFFECTIVE_TO: _iso(start - timedelta(days=1), _OPEN_END)})
        if b > end:
            kept.append({**row, EFFECTIVE_FROM: _iso(end + timedelta(days=1), _OPEN_START)})
    return kept + new


def merge_row_dated(existing: list[dict[str, str]], new: list[dict[str, str]],
                    table: Table) -> list[dict[str, str]]:
    """A new row replaces the existing rows with the same key whose dates overlap it
    (CMS re-issues an edit with a deletion date, or with corrected dates)."""
    spans: dict[tuple[str, ...], list[tuple[date, date]]] = {}
    for row in new:
        spans.setdefault(tuple(row[k] for k in table.key), []).append(span(row))

    def replaced(row: dict[str, str]) -> bool:
        a, b = span(row)
        return any(a <= d and c <= b
                   for c, d in spans.get(tuple(row[k] for k in table.key), ()))

    return [r for r in existing if not replaced(r)] + new


def write_table(directory: Path, table: Table, rows: list[dict[str, str]]) -> None:
    """Sorted by key and date (the same input gives the same bytes), written to a
    temporary file and renamed over the table so a reader never sees half a file."""
    names = table.names
    ordered = sorted(rows, key=lambda r: (*(r.get(k, "") for k in table.key),
                                          span(r)[0], r.get(SOURCE, "")))
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([table.header(n) for n in names])
    for row in ordered:
        writer.writerow([row.get(n, "") for n in names])
    path = directory / table.file
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(buffer.getvalue(), encoding="utf-8")
    os.replace(temporary, path)
