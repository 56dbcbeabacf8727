"""`rules import`: CMS files in, effective-dated rule tables and a report out.

Every file is read and checked before anything is written: a file that cannot be
imported as a whole (unreadable, header not recognised, no effective period) fails the
import naming it and leaves the rules directory as it was. A row that cannot be used is
set aside (file, line, column, reason) and the rest of the file imports.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path

from stream_app.cms.kinds import HEADER_SEARCH_ROWS, KINDS, Kind, NotApplicable, Row, SetAside
from stream_app.cms.reading import CmsFileError, RawRow, read_rows, stated_period
from stream_app.cms.tables import (
    EFFECTIVE_FROM,
    EFFECTIVE_TO,
    REPORT_FILE,
    SOURCE,
    TABLES,
    Table,
    merge_file_dated,
    merge_row_dated,
    periods,
    read_table,
    span,
    write_table,
)

#: File name endings looked at when a directory is given.
IMPORTABLE_SUFFIXES = (".csv", ".txt", ".tsv")
_SHOWN = 5  # set-aside rows and changes shown per file in the printed report


@dataclass(frozen=True, slots=True)
class SetAsideRow:
    line: int
    column: str
    reason: str
    code: str  # the row's code cell as written (e.g. J7331), to find the row by eye


@dataclass
class FileResult:
    path: Path
    kind: Kind
    encoding: str
    header_line: int
    period: tuple[date, date] | None = None
    period_source: str = ""  # "stated in the file" | "year of the file" | "command line" | ...
    rows_read: int = 0
    rows: list[dict[str, str]] = field(default_factory=list)
    set_aside: list[SetAsideRow] = field(default_factory=list)
    not_applicable: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0  # exact repeats of an earlier row of the same file
    note_lines: int = 0  # title / footnote lines among the data rows
    notes: list[str] = field(default_factory=list)
    changes: dict | None = None

    def as_json(self) -> dict:
        return {
            "file": str(self.path),
            "kind": self.kind.name,
            "title": self.kind.title,
            "table": self.kind.table or None,
            "encoding": self.encoding,
            "header_line": self.header_line,
            "effective_from": self.period[0].isoformat() if self.period else None,
            "effective_to": self.period[1].isoformat() if self.period else None,
            "period_source": self.period_source,
            "rows_read": self.rows_read,
            "imported": len(self.rows),
            "set_aside": len(self.set_aside),
            "set_aside_rows": [
                {"line": r.line, "column": r.column, "reason": r.reason, "code": r.code}
                for r in self.set_aside],
            "not_applicable": dict(self.not_applicable),
            "duplicates": self.duplicates,
            "note_lines": self.note_lines,
            "notes": self.notes,
            "changes": self.changes,
        }


@dataclass
class ImportReport:
    into: Path
    files: list[FileResult]
    coverage: dict[str, list[tuple[str, str]]]  # table -> effective periods present
    seconds: float

    @property
    def set_aside(self) -> int:
        return sum(len(f.set_aside) for f in self.files)

    def as_json(self) -> dict:
        return {
            "imported_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "into": str(self.into),
            "seconds": round(self.seconds, 3),
            "set_aside": self.set_aside,
            "files": [f.as_json() for f in self.files],
            "coverage": {t: [{"effective_from": a, "effective_to": b} for a, b in spans]
                         for t, spans in self.coverage.items()},
        }

    def text(self) -> str:
        return render(self)


# --------------------------------------------------------------------------------------
# Reading one file
# --------------------------------------------------------------------------------------

def _recognise(path: Path, rows: list[RawRow]) -> tuple[Kind, int, list[tuple[str, str]]]:
    for index in range(min(len(rows), HEADER_SEARCH_ROWS)):
        for kind in KINDS:
            mapped = kind.match_header(rows, index)
            if mapped is not None:
                return kind, index, mapped
    known = "; ".join(k.title for k in KINDS)
    raise CmsFileError(path, f"header not recognised in the first {HEADER_SEARCH_ROWS} rows: "
                             f"not a CMS file this importer knows ({known})")


def _year_period(kind: Kind, text: str) -> int | None:
    folded = text.casefold()
    for pattern in kind.year_patterns:
        m = re.search(pattern, folded)
        if m:
            return int(m.group(1))
    return None


def _period(path: Path, kind: Kind, text: str, flags: tuple[date, date] | None,
            notes: list[str]) -> tuple[tuple[date, date] | None, str]:
    if not kind.table:
        return None, "not imported"
    if kind.dated_by == "rows":
        return None, "dates of each row"
    stated = stated_period(text)
    if stated:
        if flags and flags != stated:
            notes.append(f"--effective-from/--effective-to ignored: the file states "
                         f"{stated[0]} – {stated[1]}")
        return stated, "stated in the file"
    year = _year_period(kind, text)
    if year is not None:
        whole = (date(year, 1, 1), date(year, 12, 31))
        if flags is None:
            return whole, f"year {year} of the file"
        if not (whole[0] <= flags[0] and flags[1] <= whole[1]):
            raise CmsFileError(path, f"the file is for {year}; --effective-from/--effective-to "
                                     f"{flags[0]} – {flags[1]} fall outside it")
        return flags, f"command line (within the file's year {year})"
    if flags is not None:
        return flags, "command line"
    raise CmsFileError(path, f"{kind.title}: the file states no effective period; give "
                             "--effective-from and --effective-to")


def read_file(path: Path, flags: tuple[date, date] | None = None) -> FileResult:
    rows, encoding = read_rows(path)
    kind, index, mapped = _recognise(path, rows)
    result = FileResult(path, kind, encoding, header_line=rows[index].line)
    above = " ".join(" ".join(r.cells) for r in rows[:index + 1])
    result.period, result.period_source = _period(path, kind, above, flags, result.notes)
    if not kind.table:
        result.notes.append("recognised; not imported (informational file)")
        return result
    table = TABLES[kind.table]
    headers = {c: h for c, h in mapped if c}
    positions = [(i, c) for i, (c, _) in enumerate(mapped) if c]
    header_cells = tuple(rows[index].cells)
    code_column = kind.code_column
    seen: dict[tuple[str, ...], list[tuple[int, dict[str, str]]]] = {}
    for raw in rows[index + 1:]:
        if raw.cells == header_cells:
            continue  # the header repeated (page breaks in some CMS exports)
        filled = [c for c in raw.cells if c]
        if len(filled) == 1 and (" " in filled[0] or len(filled[0]) > 8):
            result.note_lines += 1  # a footnote such as "MAC Assignments as of …"
            continue
        result.rows_read += 1
        cells: dict[str, str] = {}
        for i, canonical in positions:
            if canonical not in cells:
                cells[canonical] = raw.cells[i] if i < len(raw.cells) else ""
        row = Row(raw.line, cells, headers)
        try:
            out = kind.parse(row)
        except SetAside as problem:
            result.set_aside.append(SetAsideRow(raw.line, problem.column, problem.reason,
                                                cells.get(code_column, "")))
            continue
        except NotApplicable as why:
            result.not_applicable[str(why)] += 1
            continue
        except (ValueError, ArithmeticError) as exc:
            # A value the checks above did not foresee: still one row, never the file.
            result.set_aside.append(SetAsideRow(raw.line, "?", f"unreadable row: {exc}",
                                                cells.get(code_column, "")))
            continue
        if result.period is not None:
            out[EFFECTIVE_FROM] = result.period[0].isoformat()
            out[EFFECTIVE_TO] = result.period[1].isoformat()
        key = tuple(out[k] for k in table.key)
        earlier = _overlapping(seen.get(key, ()), out)
        if earlier is not None:
            if earlier[1] == out:
                result.duplicates += 1
            else:
                result.set_aside.append(SetAsideRow(
                    raw.line, headers.get(table.key[0], table.key[0]),
                    f"same {'/'.join(table.key)} as line {earlier[0]}, in force on the same "
                    "dates, with other values", cells.get(code_column, "")))
            continue
        seen.setdefault(key, []).append((raw.line, dict(out)))
        out[SOURCE] = f"{path.name}:{raw.line}"
        result.rows.append(out)
    return result


def _overlapping(earlier: Iterable[tuple[int, dict[str, str]]], row: dict[str, str]
                 ) -> tuple[int, dict[str, str]] | None:
    """The first earlier (line, row) of the same key in force on a day `row` is."""
    a, b = span(row)
    for line, other in earlier:
        c, d = span(other)
        if a <= d and c <= b:
            return line, other
    return None


# --------------------------------------------------------------------------------------
# What changed
# --------------------------------------------------------------------------------------

def _in_force(rows: list[dict[str, str]], day: date) -> list[dict[str, str]]:
    out = []
    for row in rows:
        a, b = span(row)
        if a <= day <= b:
            out.append(row)
    return out


def _baseline(rows: list[dict[str, str]], start: date) -> tuple[list[dict[str, str]], str]:
    """The rows already in the table for the same period (a re-import), else those of
    the latest period before it; with a label for the report."""
    if not rows:
        return [], ""
    current = _in_force(rows, start)
    if current:
        return current, f"rows in force on {start} already in the table"
    ends = [span(r)[1] for r in rows if span(r)[1] < start]
    if not ends:
        return [], ""
    day = max(ends)
    return _in_force(rows, day), f"rows in force on {day} (the period before)"


def _changes(table: Table, before: list[dict[str, str]], after: list[dict[str, str]],
             label: str) -> dict:
    if not label:
        return {"compared_with": None}
    codes_before = {r[table.code] for r in before}
    codes_after = {r[table.code] for r in after}
    old = {tuple(r[k] for k in table.key): r for r in before}
    changed = []
    for row in after:
        key = tuple(row[k] for k in table.key)
        previous = old.get(key)
        if previous is None:
            continue
        for column in table.compared:
            if not _same(previous.get(column, ""), row.get(column, "")):
                changed.append({"key": "/".join(key), "column": column,
                                "from": previous.get(column, ""), "to": row.get(column, "")})
    out: dict = {
        "compared_with": label,
        "codes_added": sorted(codes_after - codes_before),
        "codes_removed": sorted(codes_before - codes_after),
        "values_changed": changed,
    }
    if table.file == "ndc_hcpcs_crosswalk.csv":
        out["ndcs_moved"] = _ndcs_moved(before, after)
    return out


def _same(a: str, b: str) -> bool:
    """Equal text, or equal numbers written differently ("1" and "1.0")."""
    if a == b:
        return True
    try:
        return Decimal(a) == Decimal(b)
    except InvalidOperation:
        return False


def _ndcs_moved(before: list[dict[str, str]], after: list[dict[str, str]]) -> list[dict]:
    old: dict[str, set[str]] = defaultdict(set)
    new: dict[str, set[str]] = defaultdict(set)
    for row in before:
        old[row["ndc"]].add(row["hcpcs"])
    for row in after:
        new[row["ndc"]].add(row["hcpcs"])
    return [{"ndc": ndc, "from": sorted(old[ndc]), "to": sorted(new[ndc])}
            for ndc in sorted(old.keys() & new.keys()) if old[ndc] != new[ndc]]


def _row_dated_changes(table: Table, existing: list[dict[str, str]],
                       new: list[dict[str, str]]) -> dict:
    def key(row):
        return (*(row[k] for k in table.key), row.get(EFFECTIVE_FROM, ""))

    def content(row):
        return {k: v for k, v in row.items() if k != SOURCE}

    old = {key(r): r for r in existing}
    added = [r for r in new if key(r) not in old]
    changed = [r for r in new if key(r) in old and content(old[key(r)]) != content(r)]
    values = [{"key": "/".join(key(r)[:-1]), "column": column,
               "from": old[key(r)].get(column, ""), "to": r.get(column, "")}
              for r in changed for column in (*table.compared, EFFECTIVE_TO)
              if not _same(old[key(r)].get(column, ""), r.get(column, ""))]
    return {"compared_with": "rows already in the table" if existing else None,
            "rows_added": len(added), "rows_changed": len(changed),
            "codes_added": sorted({r[table.code] for r in added}
                                  - {r[table.code] for r in existing}),
            "codes_removed": [], "values_changed": values}


# --------------------------------------------------------------------------------------
# The import
# --------------------------------------------------------------------------------------

def expand(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir()
                                if p.is_file() and p.suffix.lower() in IMPORTABLE_SUFFIXES))
        elif path.is_file():
            files.append(path)
        else:
            raise CmsFileError(path, "no such file or directory")
    if not files:
        raise CmsFileError(", ".join(map(str, paths)), "no CMS files to import")
    return files


def _check_overlaps(results: list[FileResult]) -> None:
    by_table: dict[str, list[FileResult]] = defaultdict(list)
    for result in results:
        if result.period is not None and result.kind.table:
            by_table[result.kind.table].append(result)
    for group in by_table.values():
        group.sort(key=lambda r: r.period)
        for a, b in zip(group, group[1:], strict=False):
            if b.period[0] <= a.period[1]:
                raise CmsFileError(b.path, f"its period {b.period[0]} – {b.period[1]} overlaps "
                                           f"{a.path} ({a.period[0]} – {a.period[1]}) for the "
                                           f"same table {a.kind.table}: import one of them")


def import_files(paths: list[Path], into: Path, effective_from: date | None = None,
                 effective_to: date | None = None) -> ImportReport:
    """Reads every file, merges it into the tables of `into`, writes the tables and
    `import-report.json`. Raises CmsFileError (nothing written) for a file that cannot
    be imported as a whole."""
    began = time.perf_counter()
    if (effective_from is None) != (effective_to is None):
        raise CmsFileError("--effective-from/--effective-to", "give both or neither")
    flags = (effective_from, effective_to) if effective_from and effective_to else None
    if flags and flags[1] < flags[0]:
        raise CmsFileError("--effective-to", f"{flags[1]} is before --effective-from {flags[0]}")
    if into.exists() and not into.is_dir():
        raise CmsFileError(into, "is not a directory")
    results = [read_file(path, flags) for path in expand(paths)]
    _check_overlaps(results)
    touched = [t for name, t in TABLES.items() if any(r.kind.table == name for r in results)]
    # Every existing table is read before anything is written, so a table that cannot be
    # merged stops the import with the directory unchanged.
    existing = {t.file: read_table(into, t) for t in touched} if into.is_dir() else {}
    into.mkdir(parents=True, exist_ok=True)
    coverage: dict[str, list[tuple[str, str]]] = {}
    for table in touched:
        name = table.file
        mine = [r for r in results if r.kind.table == name]
        current = existing.get(name, [])
        mine.sort(key=lambda r: (r.period or (date.min, date.min), str(r.path)))
        for result in mine:
            if table.dated_by == "rows":
                result.changes = _row_dated_changes(table, current, result.rows)
                current = merge_row_dated(current, result.rows, table)
            else:
                start, end = result.period
                before, label = _baseline(current, start)
                result.changes = _changes(table, before, result.rows, label)
                current = merge_file_dated(current, result.rows, start, end)
        write_table(into, table, current)
        if table.dated_by == "file":
            coverage[name] = [("" if a == date.min else a.isoformat(),
                               "" if b == date.max else b.isoformat())
                              for a, b in periods(current)]
    report = ImportReport(into, results, coverage, time.perf_counter() - began)
    (into / REPORT_FILE).write_text(json.dumps(report.as_json(), indent=1) + "\n",
                                    encoding="utf-8")
    return report


# --------------------------------------------------------------------------------------
# The printed report
# --------------------------------------------------------------------------------------

def _list(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" … (+{len(items) - limit})" if len(items) > limit else "")


def _gaps(spans: list[tuple[str, str]]) -> list[str]:
    out = []
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        if not end or not start:
            continue
        a, b = date.fromisoformat(end), date.fromisoformat(start)
        if (b - a).days > 1:
            out.append(f"{date.fromordinal(a.toordinal() + 1)} – "
                       f"{date.fromordinal(b.toordinal() - 1)}")
    return out


def render(report: ImportReport) -> str:
    lines: list[str] = []
    for f in report.files:
        target = f"→ {f.kind.table}" if f.kind.table else "(recognised, not imported)"
        lines.append(f"{f.path}: {f.kind.title} {target}")
        if not f.kind.table:
            continue
        period = (f"{f.period[0]} – {f.period[1]}" if f.period else "per row")
        lines.append(f"  effective {period} ({f.period_source}); {f.encoding}; "
                     f"header at line {f.header_line}")
        extra = []
        if f.duplicates:
            extra.append(f"exact duplicates dropped {f.duplicates}")
        if sum(f.not_applicable.values()):
            extra.append("not applicable " + ", ".join(
                f"{n} ({why})" for why, n in f.not_applicable.items()))
        if f.note_lines:
            extra.append(f"note lines {f.note_lines}")
        lines.append(f"  rows read {f.rows_read}, imported {len(f.rows)}, "
                     f"set aside {len(f.set_aside)}" + "".join(f"; {e}" for e in extra))
        if f.set_aside:
            by_column = Counter(r.column for r in f.set_aside)
            lines.append("  set aside by column: " + ", ".join(
                f"{column} {n}" for column, n in by_column.most_common()))
            for r in f.set_aside[:_SHOWN]:
                lines.append(f"    line {r.line} ({r.code or '-'}), {r.column}: {r.reason}")
            if len(f.set_aside) > _SHOWN:
                lines.append(f"    … {len(f.set_aside) - _SHOWN} more in {REPORT_FILE}")
        for note in f.notes:
            lines.append(f"  note: {note}")
        lines.extend(_render_changes(f))
    for table, spans in report.coverage.items():
        gaps = _gaps(spans)
        covered = ", ".join(f"{a or '…'} – {b or '…'}" for a, b in spans)
        lines.append(f"{table}: periods {covered}"
                     + (f"; NO DATA {', '.join(gaps)}" if gaps else ""))
    lines.append(f"written to {report.into} ({REPORT_FILE} for machines) in "
                 f"{report.seconds:.2f} s; rows set aside: {report.set_aside}")
    return "\n".join(lines)


def _render_changes(f: FileResult) -> list[str]:
    c = f.changes or {}
    if not c.get("compared_with"):
        return ["  changes: first import of this table (nothing to compare)"]
    out = [f"  changes against {c['compared_with']}:"]
    if "rows_added" in c:
        out.append(f"    rows added {c['rows_added']}, rows changed {c['rows_changed']}")
    out.append(f"    codes added {len(c['codes_added'])}"
               + (f" ({_list(c['codes_added'])})" if c["codes_added"] else "")
               + f", removed {len(c['codes_removed'])}"
               + (f" ({_list(c['codes_removed'])})" if c["codes_removed"] else ""))
    by_column: dict[str, list[dict]] = defaultdict(list)
    for change in c["values_changed"]:
        by_column[change["column"]].append(change)
    for column, changes in by_column.items():
        examples = [f"{x['key']} {x['from'] or '∅'} → {x['to'] or '∅'}" for x in changes]
        out.append(f"    {column.replace('_', ' ')} changed {len(changes)} ({_list(examples, 4)})")
    if "ndcs_moved" in c:
        moved = [f"{m['ndc']} {'/'.join(m['from'])} → {'/'.join(m['to'])}"
                 for m in c["ndcs_moved"]]
        out.append(f"    NDCs moved between codes {len(moved)}"
                   + (f" ({_list(moved, 4)})" if moved else ""))
    return out
