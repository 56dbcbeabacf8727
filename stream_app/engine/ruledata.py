"""Effective-dated rule data (contract.md §4): API the rules are written against.

The data lives in CSV files in `stream_app/rules/` (or an operator's directory). Every
row has `effective_from` / `effective_to` (ISO dates, inclusive; empty = open); the row in
force on the service date applies. `RuleSet.load()` validates every file at start-up and
raises `RuleDataError` naming file, line and column.

Operator directory: a file present there (same file name) replaces the packaged one;
missing files fall back to the packaged data. See docs/rule-data.md and
stream_app/rules/README.md for every file, its columns and its sources.
"""

from __future__ import annotations

import csv
import io
import logging
import re
from bisect import bisect_right
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from datetime import date
from importlib import resources
from pathlib import Path
from typing import Any


class RuleDataError(ValueError):
    """A malformed rule file. str() is 'FILE:LINE:COLUMN: message'."""

    def __init__(self, file: str, line: int, column: int | str, message: str):
        self.file, self.line, self.column, self.message = file, line, column, message
        super().__init__(f"{file}:{line}:{column}: {message}")


@dataclass(frozen=True, slots=True)
class ReasonInfo:
    reason_code: str
    severity: str  # "block" | "warn" (default; MUE/FREQUENCY_LIMIT override per row)
    work_queue: str  # coding | clinical_documentation | pharmacy | facility_billing | compliance
    carc: str | None  # e.g. "CO-97"
    rarc: str | None  # e.g. "M119"
    risk_weight: float  # 0..1, for denial_risk = 1 - prod(1 - weight)


@dataclass(frozen=True, slots=True)
class Mue:
    value: int
    mai: int  # 1 line edit, 2 date-of-service policy, 3 date-of-service clinical


@dataclass(frozen=True, slots=True)
class BillingUnit:
    hcpcs: str
    amount: float  # one billing unit = amount x unit
    unit: str  # mg | mcg | g | mL | units
    description: str


@dataclass(frozen=True, slots=True)
class FrequencyLimit:
    payer_class: str
    code: str  # CPT/HCPCS code the limit counts (admin code or drug J-code)
    max_services: int
    period_days: int
    severity: str  # warn | block


@dataclass(frozen=True, slots=True)
class PayerProfile:
    payer_class: str
    distinct_modifier: str  # "59" or XE/XS/XP/XU
    bundle_99211: bool  # EM_99211_SAME_DAY applies to this payer class
    jz_jw_required_from: date | None  # JW/JZ policy start (Medicare: 2023-07-01), None = never


# --------------------------------------------------------------------------------------
# Implementation
# --------------------------------------------------------------------------------------

log = logging.getLogger(__name__)

PAYER_CLASSES = frozenset({"medicare", "medicaid", "commercial", "workers_comp", "self_pay"})
SEVERITIES = frozenset({"block", "warn"})
WORK_QUEUES = frozenset(
    {"coding", "clinical_documentation", "pharmacy", "facility_billing", "compliance"}
)
BILLING_UNITS = frozenset({"mg", "mcg", "g", "mL", "units"})
DISTINCT_MODIFIERS = frozenset({"59", "XE", "XS", "XP", "XU"})

#: Every reason code of contract.md §3; reason_codes.csv must define each of them.
REQUIRED_REASON_CODES = (
    "WRONG_ADMIN_CODE", "NOT_SEPARATELY_BILLABLE", "NON_INJECTION_ROUTE", "FACILITY_SETTING",
    "EM_99211_SAME_DAY", "EM_MISSING_MODIFIER_25", "EM_NOT_SEPARATELY_IDENTIFIABLE",
    "MODIFIER_NOT_ALLOWED", "MISSING_NDC", "INVALID_NDC", "NDC_MISMATCH",
    "MISSING_DOCUMENTATION", "MISSING_DIAGNOSIS", "INVALID_DIAGNOSIS_CODE", "INVALID_NPI",
    "MISSING_SUPERVISION", "DUPLICATE_SERVICE", "MUE_EXCEEDED", "FREQUENCY_LIMIT",
    "WASTE_MODIFIER_MISSING", "DRUG_UNITS_UNKNOWN", "ADDON_WITHOUT_PRIMARY", "FACILITY_ONLY_CODE",
)

#: Code sets the engine relies on; code_sets.csv must define each (at least one row).
REQUIRED_CODE_SETS = (
    "em", "injection_day", "facility_restricted_admin", "admin", "initial_iv", "facility_only",
    "vaccine_admin", "distinct_modifiers", "x_modifiers", "supervision_exempt_credentials",
)
#: Virtual code set: the add-on codes of addon_codes.csv in force on the date.
ADDON_SET = "addon"

RULE_FILES = (
    "reason_codes.csv", "code_sets.csv", "addon_codes.csv", "mue.csv", "facility_pos.csv",
    "fee_schedule.csv", "hcpcs_units.csv", "ndc_hcpcs_crosswalk.csv", "frequency_limits.csv",
    "payer_profiles.csv",
)

_MIN = date.min.toordinal()
_MAX = date.max.toordinal()
_EFFECTIVE = ("effective_from", "effective_to")
_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
_CODE_RE = re.compile(r"[A-Z0-9]{1,8}")
_HCPCS_RE = re.compile(r"[A-Z0-9]\d{4}|\d{4}[A-Z0-9]")
_POS_RE = re.compile(r"\d{2}")
_CARC_RE = re.compile(r"(CO|PR|OA|PI|CR)-[A-Z0-9]{1,4}")
_RARC_RE = re.compile(r"[A-Z]{1,2}\d{1,4}")
_MAI_RE = re.compile(r"([123])(?!\d)")
_MAX_RANGE = 10_000


def _ws(text: str) -> str:
    """Header cell normalised for CMS layouts: whitespace/line breaks collapsed, casefolded."""
    return " ".join(text.split()).casefold()


def _packaged_dir():
    return resources.files("stream_app.rules")


@dataclass(slots=True)
class _Row:
    file: str
    line: int
    cells: dict[str, str]  # canonical column name -> stripped cell text ("" when empty)
    columns: frozenset[str]  # canonical columns present in the file

    def err(self, column: int | str, message: str) -> RuleDataError:
        return RuleDataError(self.file, self.line, column, message)

    def get(self, column: str) -> str:
        return self.cells.get(column, "")

    def text(self, column: str) -> str:
        value = self.get(column)
        if not value:
            raise self.err(column, "value required")
        return value

    def code(self, column: str, pattern: re.Pattern[str] = _CODE_RE) -> str:
        value = self.text(column).upper()
        if not pattern.fullmatch(value):
            raise self.err(column, f"malformed code {value!r}")
        return value

    def number(self, column: str, *, integer: bool = False, positive: bool = False,
               maximum: float | None = None, required: bool = True) -> float | None:
        raw = self.get(column)
        if not raw:
            if required:
                raise self.err(column, "value required")
            return None
        try:
            value: float = int(raw) if integer else float(raw)
        except ValueError:
            kind = "an integer" if integer else "a number"
            raise self.err(column, f"{raw!r} is not {kind}") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise self.err(column, f"{raw!r} is not a finite number")
        if value < 0:
            raise self.err(column, f"negative value {raw!r}")
        if positive and value == 0:
            raise self.err(column, "value must be greater than 0")
        if maximum is not None and value > maximum:
            raise self.err(column, f"value {raw!r} exceeds {maximum:g}")
        return value

    def choice(self, column: str, allowed: frozenset[str]) -> str:
        value = self.text(column)
        if value not in allowed:
            raise self.err(column, f"unknown value {value!r} (allowed: {', '.join(sorted(allowed))})")
        return value

    def payer_class(self, column: str = "payer_class") -> str:
        return self.choice(column, PAYER_CLASSES)

    def iso_date(self, column: str) -> date | None:
        raw = self.get(column)
        if not raw:
            return None
        if not _DATE_RE.fullmatch(raw):
            raise self.err(column, f"{raw!r} is not an ISO date (YYYY-MM-DD)")
        try:
            return date.fromisoformat(raw)
        except ValueError:
            raise self.err(column, f"{raw!r} is not a valid date") from None

    def boolean(self, column: str) -> bool:
        raw = self.text(column).lower()
        if raw not in ("true", "false"):
            raise self.err(column, f"{raw!r} is not true/false")
        return raw == "true"

    def span(self) -> tuple[int, int]:
        """(from, to) as ordinals, open ends as _MIN/_MAX; validates the range."""
        start = self.iso_date("effective_from") if "effective_from" in self.columns else None
        end = self.iso_date("effective_to") if "effective_to" in self.columns else None
        if start and end and end < start:
            raise self.err("effective_to", f"effective_to {end} is before effective_from {start}")
        return (start.toordinal() if start else _MIN, end.toordinal() if end else _MAX)


@dataclass(frozen=True, slots=True)
class _Layout:
    """How a file's columns are named and found."""

    required: tuple[str, ...]
    optional: tuple[str, ...] = ("source",)
    effective_required: bool = True
    # CMS layouts: header row located by a cell naming the key column; header cells
    # normalised with _ws() and mapped to canonical names by `aliases`.
    cms: bool = False
    aliases: tuple[tuple[re.Pattern[str], str], ...] = ()
    may_be_empty_file: bool = False

    def canonical(self, header: str) -> str | None:
        if not self.cms:
            return header.strip()
        normal = _ws(header)
        for pattern, name in self.aliases:
            if pattern.fullmatch(normal):
                return name
        return None if normal else ""


_MUE_LAYOUT = _Layout(
    required=("code", "value", "mai"),
    optional=("rationale", "source", *_EFFECTIVE),
    effective_required=False,
    cms=True,
    aliases=(
        (re.compile(r"hcpcs\s*/\s*cpt code|hcpcs(/cpt)?( code)?|cpt code"), "code"),
        (re.compile(r"practitioner services mue values?"), "value"),
        (re.compile(r"mue adjudication indicator|mai"), "mai"),
        (re.compile(r"mue rationale"), "rationale"),
        (re.compile(r"effective_from"), "effective_from"),
        (re.compile(r"effective_to"), "effective_to"),
        (re.compile(r"source"), "source"),
    ),
)

_XWALK_LAYOUT = _Layout(
    required=("hcpcs", "ndc"),
    optional=("short_description", "labeler", "drug_name", "dosage", "pkg_size", "pkg_qty",
              "billunits", "billunitspkg", "source", *_EFFECTIVE),
    effective_required=False,
    cms=True,
    aliases=(
        (re.compile(r"_\d{4}_code|hcpcs( code)?"), "hcpcs"),
        (re.compile(r"ndc2|ndc|ndc11"), "ndc"),
        (re.compile(r"short description"), "short_description"),
        (re.compile(r"labeler name"), "labeler"),
        (re.compile(r"drug name"), "drug_name"),
        (re.compile(r"hcpcs dosage"), "dosage"),
        (re.compile(r"pkg size"), "pkg_size"),
        (re.compile(r"pkg qty"), "pkg_qty"),
        (re.compile(r"billunits"), "billunits"),
        (re.compile(r"billunitspkg"), "billunitspkg"),
        (re.compile(r"effective_from"), "effective_from"),
        (re.compile(r"effective_to"), "effective_to"),
        (re.compile(r"source"), "source"),
    ),
)

_LAYOUTS: dict[str, _Layout] = {
    "reason_codes.csv": _Layout(
        ("reason_code", "severity", "work_queue", "carc", "rarc", "risk_weight")),
    "code_sets.csv": _Layout(("set_name", "code"), ("code_to", "source")),
    "addon_codes.csv": _Layout(("addon_code", "primary_code")),
    "mue.csv": _MUE_LAYOUT,
    "facility_pos.csv": _Layout(("payer_class", "pos")),
    "fee_schedule.csv": _Layout(("payer_class", "code", "amount")),
    "hcpcs_units.csv": _Layout(
        ("hcpcs", "description", "billing_unit_amount", "billing_unit")),
    "ndc_hcpcs_crosswalk.csv": _XWALK_LAYOUT,
    "frequency_limits.csv": _Layout(
        ("payer_class", "code", "max_services", "period_days", "severity"),
        may_be_empty_file=True),
    "payer_profiles.csv": _Layout(
        ("payer_class", "distinct_modifier", "bundle_99211", "jz_jw_required_from")),
}


def _decode(data: bytes) -> str:
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    return data.decode("latin-1")


def _read_rows(label: str, data: bytes, layout: _Layout) -> list[_Row]:
    """Parse one CSV file into rows, validating its header. Line numbers are physical."""
    text = _decode(data)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header: list[str | None] | None = None
    header_line = 0
    rows: list[_Row] = []
    columns: frozenset[str] = frozenset()
    prev_end = 0
    try:
        for cells in reader:
            line = prev_end + 1
            prev_end = reader.line_num
            if not any(c.strip() for c in cells):
                continue  # blank line
            if header is None:
                if layout.cms:
                    mapped = [layout.canonical(c) for c in cells]
                    key = layout.required[0]
                    if key not in mapped:
                        continue  # preamble (copyright / title lines) before the header row
                else:
                    mapped = [layout.canonical(c) for c in cells]
                header, header_line = mapped, line
                columns = _check_header(label, line, cells, header, layout)
                continue
            rows.append(_row(label, line, cells, header, columns))
    except csv.Error as exc:
        raise RuleDataError(label, prev_end + 1, 1, f"CSV syntax error: {exc}") from None
    if header is None:
        if layout.may_be_empty_file and not text.strip():
            return []
        what = f"a header row naming {layout.required[0]!r}" if layout.cms else "a header row"
        raise RuleDataError(label, max(header_line, 1), 1, f"no header row found (expected {what})")
    return rows


def _check_header(label: str, line: int, raw: list[str], header: list[str | None],
                  layout: _Layout) -> frozenset[str]:
    allowed = set(layout.required) | set(layout.optional)
    if layout.effective_required:
        allowed |= set(_EFFECTIVE)
    seen: set[str] = set()
    for index, (name, original) in enumerate(zip(header, raw, strict=True), start=1):
        if name == "":
            continue  # an unnamed (empty) header cell: its cells must stay empty
        if name is None or name not in allowed:
            raise RuleDataError(label, line, original.strip() or index,
                                f"unknown column {original.strip()!r}")
        if name in seen:
            raise RuleDataError(label, line, original.strip(), f"duplicate column {name!r}")
        seen.add(name)
    needed = list(layout.required) + (list(_EFFECTIVE) if layout.effective_required else [])
    for name in needed:
        if name not in seen:
            raise RuleDataError(label, line, name, f"missing column {name!r}")
    return frozenset(seen)


def _row(label: str, line: int, cells: list[str], header: list[str | None],
         columns: frozenset[str]) -> _Row:
    values: dict[str, str] = {}
    for index, cell in enumerate(cells):
        value = cell.strip()
        if index >= len(header):
            if value:
                raise RuleDataError(label, line, index + 1,
                                    f"extra cell {value!r} beyond the {len(header)} header columns")
            continue
        name = header[index]
        if not name:
            if value:
                raise RuleDataError(label, line, index + 1, "value in a column without a header")
            continue
        values[name] = value
    if len(cells) < len(header):
        missing = [n for n in header[len(cells):] if n]
        if missing:
            raise RuleDataError(label, line, missing[0],
                                f"row has {len(cells)} cells, header has {len(header)}")
    return _Row(label, line, values, columns)


def _ndc11(raw: str) -> str | None:
    """11-digit NDC from 5-4-2 / 4-4-2 / 5-3-2 / 5-4-1 hyphenated forms or 11 plain digits."""
    parts = raw.split("-")
    if len(parts) == 1:
        return raw if len(raw) == 11 and raw.isdigit() else None
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        return None
    lengths = tuple(len(p) for p in parts)
    if lengths == (5, 4, 2):
        return "".join(parts)
    if lengths == (4, 4, 2):
        return "0" + "".join(parts)
    if lengths == (5, 3, 2):
        return parts[0] + "0" + parts[1] + parts[2]
    if lengths == (5, 4, 1):
        return parts[0] + parts[1] + "0" + parts[2]
    return None


def _expand(row: _Row) -> list[str]:
    """code_sets.csv: `code` alone, or the inclusive range `code`..`code_to`."""
    first = row.code("code")
    last_raw = row.get("code_to")
    if not last_raw:
        return [first]
    last = row.code("code_to")
    m1 = re.fullmatch(r"(\D*)(\d+)", first)
    m2 = re.fullmatch(r"(\D*)(\d+)", last)
    if not (m1 and m2) or m1.group(1) != m2.group(1) or len(first) != len(last):
        raise row.err("code_to", f"range {first}..{last} needs codes of one shape ending in digits")
    start, stop = int(m1.group(2)), int(m2.group(2))
    if stop < start:
        raise row.err("code_to", f"range end {last} is before its start {first}")
    if stop - start >= _MAX_RANGE:
        raise row.err("code_to", f"range {first}..{last} is too large")
    width = len(m1.group(2))
    return [f"{m1.group(1)}{n:0{width}d}" for n in range(start, stop + 1)]


@dataclass(slots=True)
class _Entry:
    start: int
    end: int
    value: Any
    line: int


class _Dated:
    """Single-valued effective-dated table: key -> non-overlapping entries."""

    __slots__ = ("_entries", "_index", "label", "what")

    def __init__(self, label: str, what: str):
        self.label, self.what = label, what
        self._entries: dict[Hashable, list[_Entry]] = {}
        self._index: dict[Hashable, tuple[list[int], list[_Entry]]] = {}

    def add(self, key: Hashable, span: tuple[int, int], value: Any, line: int) -> None:
        self._entries.setdefault(key, []).append(_Entry(span[0], span[1], value, line))

    def freeze(self, tolerate_equal: bool = False) -> None:
        for key, entries in self._entries.items():
            entries.sort(key=lambda e: (e.start, e.line))
            kept: list[_Entry] = []
            for entry in entries:
                if kept and entry.start <= kept[-1].end:
                    other = kept[-1]
                    if tolerate_equal and (other.start, other.end, other.value) == (
                            entry.start, entry.end, entry.value):
                        continue  # exact duplicate row (seen in CMS files): harmless
                    later, earlier = (entry, other) if entry.line > other.line else (other, entry)
                    raise RuleDataError(
                        self.label, later.line, "effective_from",
                        f"effective range overlaps line {earlier.line} for the same "
                        f"{self.what} {_fmt_key(key)} (two rows in force on "
                        f"{date.fromordinal(max(entry.start, other.start))})")
                kept.append(entry)
            self._index[key] = ([e.start for e in kept], kept)
        self._entries = {}

    def get(self, key: Hashable, on: int) -> Any:
        found = self._index.get(key)
        if found is None:
            return None
        starts, entries = found
        i = bisect_right(starts, on) - 1
        if i >= 0 and on <= entries[i].end:
            return entries[i].value
        return None

    def keys(self) -> Iterable[Hashable]:
        return self._index.keys()

    def entries(self, key: Hashable) -> list[_Entry]:
        found = self._index.get(key)
        return found[1] if found else []


def _fmt_key(key: Hashable) -> str:
    return "/".join(map(str, key)) if isinstance(key, tuple) else str(key)


class _Timeline:
    """Collection-valued: group -> piecewise-constant frozenset (or tuple) over dates."""

    __slots__ = ("_index", "_empty")

    def __init__(self, groups: dict[Hashable, list[tuple[int, int, Any]]], as_tuple: bool = False,
                 sort_key: Callable[[Any], Any] | None = None):
        self._empty: frozenset | tuple = () if as_tuple else frozenset()
        self._index: dict[Hashable, tuple[list[int], list[Any]]] = {}
        for group, items in groups.items():
            bounds = {_MIN}
            for start, end, _ in items:
                bounds.add(start)
                if end < _MAX:
                    bounds.add(end + 1)
            starts = sorted(bounds)
            values = []
            for s in starts:
                members = [v for a, b, v in items if a <= s <= b]
                if as_tuple:
                    values.append(tuple(sorted(members, key=sort_key)))
                else:
                    values.append(frozenset(members))
            self._index[group] = (starts, values)

    def get(self, group: Hashable, on: int) -> Any:
        found = self._index.get(group)
        if found is None:
            return self._empty
        starts, values = found
        return values[bisect_right(starts, on) - 1]

    def __contains__(self, group: Hashable) -> bool:
        return group in self._index


def _read_source(directory: Path | None, name: str) -> tuple[str, bytes]:
    if directory is not None:
        candidate = directory / name
        if candidate.is_file():
            return str(candidate), candidate.read_bytes()
    packaged = _packaged_dir() / name
    try:
        return str(packaged), packaged.read_bytes()
    except FileNotFoundError:
        raise RuleDataError(str(packaged), 0, 0, "packaged rule file is missing") from None


def _build_reasons(label: str, rows: list[_Row]) -> _Dated:
    table = _Dated(label, "reason_code")
    for row in rows:
        code = row.text("reason_code")
        if not re.fullmatch(r"[A-Z][A-Z0-9_]*", code):
            raise row.err("reason_code", f"malformed reason code {code!r}")
        carc = row.get("carc").upper() or None
        if carc and not _CARC_RE.fullmatch(carc):
            raise row.err("carc", f"malformed CARC {carc!r} (expected e.g. CO-16)")
        rarc = row.get("rarc").upper() or None
        if rarc and not _RARC_RE.fullmatch(rarc):
            raise row.err("rarc", f"malformed RARC {rarc!r} (expected e.g. M119)")
        info = ReasonInfo(
            reason_code=code,
            severity=row.choice("severity", SEVERITIES),
            work_queue=row.choice("work_queue", WORK_QUEUES),
            carc=carc,
            rarc=rarc,
            risk_weight=float(row.number("risk_weight", maximum=1.0)),
        )
        table.add(code, row.span(), info, row.line)
    table.freeze()
    missing = [c for c in REQUIRED_REASON_CODES if not table.entries(c)]
    if missing:
        raise RuleDataError(label, 1, "reason_code",
                            f"no row for reason code(s) {', '.join(missing)} (contract.md §3)")
    return table


def _build_code_sets(label: str, rows: list[_Row]) -> _Timeline:
    table = _Dated(label, "set_name/code")
    for row in rows:
        name = row.text("set_name")
        if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
            raise row.err("set_name", f"malformed set name {name!r} (lower_snake_case)")
        if name == ADDON_SET:
            raise row.err("set_name", f"set {ADDON_SET!r} is derived from addon_codes.csv")
        span = row.span()
        for code in _expand(row):
            table.add((name, code), span, code, row.line)
    table.freeze()
    groups: dict[Hashable, list[tuple[int, int, Any]]] = {}
    for key in table.keys():
        for e in table.entries(key):
            groups.setdefault(key[0], []).append((e.start, e.end, e.value))
    missing = [n for n in REQUIRED_CODE_SETS if n not in groups]
    if missing:
        raise RuleDataError(label, 1, "set_name", f"no row for code set(s) {', '.join(missing)}")
    return _Timeline(groups)


def _build_addons(label: str, rows: list[_Row]) -> tuple[_Timeline, _Timeline]:
    table = _Dated(label, "addon_code/primary_code")
    for row in rows:
        addon, primary = row.code("addon_code", _HCPCS_RE), row.code("primary_code", _HCPCS_RE)
        if addon == primary:
            raise row.err("primary_code", f"{addon} cannot be its own primary")
        table.add((addon, primary), row.span(), primary, row.line)
    table.freeze()
    primaries: dict[Hashable, list[tuple[int, int, Any]]] = {}
    addons: list[tuple[int, int, Any]] = []
    for key in table.keys():
        for e in table.entries(key):
            primaries.setdefault(key[0], []).append((e.start, e.end, e.value))
            addons.append((e.start, e.end, key[0]))
    return _Timeline(primaries), _Timeline({ADDON_SET: addons})


def _build_mue(label: str, rows: list[_Row]) -> _Dated:
    table = _Dated(label, "HCPCS/CPT code")
    for row in rows:
        code = row.code("code", _HCPCS_RE)
        value = int(row.number("value", integer=True))
        raw_mai = row.text("mai")
        m = _MAI_RE.match(raw_mai)
        if not m:
            raise row.err("mai", f"unknown MUE adjudication indicator {raw_mai!r} (1, 2 or 3)")
        table.add(code, row.span(), Mue(value, int(m.group(1))), row.line)
    table.freeze(tolerate_equal=True)
    return table


def _build_facility_pos(label: str, rows: list[_Row]) -> _Timeline:
    table = _Dated(label, "payer_class/pos")
    for row in rows:
        payer = row.payer_class()
        pos = row.text("pos")
        if not _POS_RE.fullmatch(pos):
            raise row.err("pos", f"place of service {pos!r} is not 2 digits")
        table.add((payer, pos), row.span(), pos, row.line)
    table.freeze()
    groups: dict[Hashable, list[tuple[int, int, Any]]] = {}
    for key in table.keys():
        for e in table.entries(key):
            groups.setdefault(key[0], []).append((e.start, e.end, e.value))
    return _Timeline(groups)


def _build_fees(label: str, rows: list[_Row]) -> _Dated:
    table = _Dated(label, "payer_class/code")
    for row in rows:
        key = (row.payer_class(), row.code("code", _HCPCS_RE))
        table.add(key, row.span(), float(row.number("amount")), row.line)
    table.freeze()
    return table


def _build_units(label: str, rows: list[_Row]) -> _Dated:
    table = _Dated(label, "hcpcs")
    for row in rows:
        hcpcs = row.code("hcpcs", _HCPCS_RE)
        amount = row.number("billing_unit_amount", positive=True, required=False)
        unit = row.get("billing_unit")
        if (amount is None) != (not unit):
            column = "billing_unit" if amount is not None else "billing_unit_amount"
            raise row.err(column, "billing_unit_amount and billing_unit are both set or both "
                                  "empty (empty = no billing unit, e.g. J3490)")
        value = None
        if unit:
            unit = row.choice("billing_unit", BILLING_UNITS)
            value = BillingUnit(hcpcs, float(amount), unit, row.get("description"))
        table.add(hcpcs, row.span(), value, row.line)
    table.freeze()
    return table


def _build_crosswalk(label: str, rows: list[_Row]) -> _Timeline:
    table = _Dated(label, "NDC/HCPCS")
    for row in rows:
        hcpcs = row.code("hcpcs", _HCPCS_RE)
        raw = row.text("ndc")
        ndc = _ndc11(raw)
        if ndc is None:
            raise row.err("ndc", f"NDC {raw!r} is not 5-4-2 / 4-4-2 / 5-3-2 / 5-4-1 or 11 digits")
        for column in ("pkg_size", "pkg_qty", "billunits", "billunitspkg"):
            row.number(column, required=False)
        table.add((ndc, hcpcs), row.span(), hcpcs, row.line)
    table.freeze(tolerate_equal=True)
    groups: dict[Hashable, list[tuple[int, int, Any]]] = {}
    for key in table.keys():
        for e in table.entries(key):
            groups.setdefault(key[0], []).append((e.start, e.end, e.value))
    return _Timeline(groups, as_tuple=True)


def _build_frequency(label: str, rows: list[_Row]) -> _Timeline:
    table = _Dated(label, "payer_class/code/period_days")
    for row in rows:
        limit = FrequencyLimit(
            payer_class=row.payer_class(),
            code=row.code("code", _HCPCS_RE),
            max_services=int(row.number("max_services", integer=True)),
            period_days=int(row.number("period_days", integer=True, positive=True)),
            severity=row.choice("severity", SEVERITIES),
        )
        table.add((limit.payer_class, limit.code, limit.period_days), row.span(), limit, row.line)
    table.freeze()
    groups: dict[Hashable, list[tuple[int, int, Any]]] = {}
    for key in table.keys():
        for e in table.entries(key):
            groups.setdefault(key[0], []).append((e.start, e.end, e.value))
    return _Timeline(groups, as_tuple=True,
                     sort_key=lambda f: (f.code, f.period_days, f.max_services))


def _build_profiles(label: str, rows: list[_Row]) -> _Dated:
    table = _Dated(label, "payer_class")
    for row in rows:
        payer = row.payer_class()
        profile = PayerProfile(
            payer_class=payer,
            distinct_modifier=row.choice("distinct_modifier", DISTINCT_MODIFIERS),
            bundle_99211=row.boolean("bundle_99211"),
            jz_jw_required_from=row.iso_date("jz_jw_required_from"),
        )
        table.add(payer, row.span(), profile, row.line)
    table.freeze()
    return table


def _load_tables(directory: Path | None) -> dict[str, tuple[str, list[_Row]]]:
    if directory is not None:
        if not directory.is_dir():
            raise RuleDataError(str(directory), 0, 0, "rules directory does not exist")
        for path in sorted(directory.glob("*.csv"), key=lambda p: p.name):
            if path.name not in _LAYOUTS:
                raise RuleDataError(str(path), 0, 0, "unknown rule file name (expected one of "
                                    f"{', '.join(RULE_FILES)})")
    tables = {}
    for name in RULE_FILES:
        label, data = _read_source(directory, name)
        tables[name] = (label, _read_rows(label, data, _LAYOUTS[name]))
    return tables


class RuleSet:
    """All rule tables, loaded and validated. Look-ups take the service date."""

    def __init__(self, tables: dict[str, tuple[str, list[_Row]]]):
        """Build from parsed tables (use `RuleSet.load`)."""
        self.files: dict[str, str] = {name: label for name, (label, _) in tables.items()}
        lab = self.files
        self._reasons = _build_reasons(lab["reason_codes.csv"], tables["reason_codes.csv"][1])
        self._code_sets = _build_code_sets(lab["code_sets.csv"], tables["code_sets.csv"][1])
        self._addon_primaries, self._addon_set = _build_addons(
            lab["addon_codes.csv"], tables["addon_codes.csv"][1])
        self._mue = _build_mue(lab["mue.csv"], tables["mue.csv"][1])
        self._facility_pos = _build_facility_pos(
            lab["facility_pos.csv"], tables["facility_pos.csv"][1])
        self._fees = _build_fees(lab["fee_schedule.csv"], tables["fee_schedule.csv"][1])
        self._units = _build_units(lab["hcpcs_units.csv"], tables["hcpcs_units.csv"][1])
        self._crosswalk = _build_crosswalk(
            lab["ndc_hcpcs_crosswalk.csv"], tables["ndc_hcpcs_crosswalk.csv"][1])
        self._frequency = _build_frequency(
            lab["frequency_limits.csv"], tables["frequency_limits.csv"][1])
        self._profiles = _build_profiles(lab["payer_profiles.csv"], tables["payer_profiles.csv"][1])
        self._reason_cache: dict[tuple[str, int], ReasonInfo] = {}

    @classmethod
    def load(cls, directory: str | Path | None = None) -> RuleSet:
        """Packaged rule files, or an operator directory whose files replace the packaged
        ones by file name (missing files fall back to the packaged data).

        Raises RuleDataError on the first problem found (file, physical line, column).
        """
        rules = cls(_load_tables(Path(directory) if directory is not None else None))
        log.info("rule data loaded: %s", ", ".join(rules.files.values()))
        return rules

    # code sets: names such as "em", "injection_day", "facility_restricted_admin",
    # "addon", "initial_iv", "vaccine_admin" ... (see rules/code_sets.csv)
    def code_set(self, name: str, on: date) -> frozenset[str]:
        """Members of a named code set on the date. "addon" is derived from
        addon_codes.csv. Unknown set name: KeyError (a typo must not read as 'empty')."""
        if name == ADDON_SET:
            return self._addon_set.get(ADDON_SET, on.toordinal())
        if name not in self._code_sets:
            raise KeyError(f"unknown code set {name!r}")
        return self._code_sets.get(name, on.toordinal())

    def addon_primaries(self, addon_code: str, on: date) -> frozenset[str]:
        """Primary codes that satisfy an add-on code; empty set when not an add-on."""
        return self._addon_primaries.get(addon_code.strip().upper(), on.toordinal())

    def reason(self, reason_code: str) -> ReasonInfo:
        """The reason-code row in force today (reasons do not depend on the service date).

        If no row is in force today the latest row that started before today is used, else
        the earliest row. Unknown reason code: KeyError.
        """
        today = date.today().toordinal()
        key = (reason_code, today)
        info = self._reason_cache.get(key)
        if info is None:
            info = self.reason_on(reason_code, date.fromordinal(today))
            self._reason_cache[key] = info
        return info

    def reason_on(self, reason_code: str, on: date) -> ReasonInfo:
        """Reason-code row for an explicit date (same fallback as `reason`)."""
        entries = self._reasons.entries(reason_code)
        if not entries:
            raise KeyError(f"unknown reason code {reason_code!r}")
        day = on.toordinal()
        best = entries[0]
        for entry in entries:
            if entry.start <= day:
                best = entry
                if day <= entry.end:
                    break
        return best.value

    def reason_codes(self) -> frozenset[str]:
        """Every reason code the rule data defines."""
        return frozenset(self._reasons.keys())

    def mue(self, code: str, on: date) -> Mue | None:
        return self._mue.get(code.strip().upper(), on.toordinal())

    def facility_pos(self, payer_class: str, on: date) -> frozenset[str]:
        """Facility POS codes for the payer class; an unknown payer class gets Medicare's
        (CMS) set."""
        payer = payer_class if payer_class in self._facility_pos else "medicare"
        return self._facility_pos.get(payer, on.toordinal())

    def fee(self, code: str, payer_class: str, on: date) -> float | None:
        """Expected payment per unit of code for the payer class, None when unknown."""
        return self._fees.get((payer_class, code.strip().upper()), on.toordinal())

    def billing_unit(self, hcpcs: str, on: date) -> BillingUnit | None:
        """None when the code is unknown or has no billing unit (e.g. J3490 unclassified)."""
        return self._units.get(hcpcs.strip().upper(), on.toordinal())

    def hcpcs_for_ndc(self, ndc11: str, on: date) -> str | None:
        """NDC -> HCPCS crosswalk (CMS ASP NDC-HCPCS crosswalk layout).

        When the crosswalk maps the NDC to several codes on the date (e.g. one
        methylprednisolone acetate NDC under J1020/J1030/J1040) the lowest code is returned;
        `hcpcs_candidates_for_ndc` gives them all.
        """
        found = self._crosswalk.get(ndc11.replace("-", ""), on.toordinal())
        return found[0] if found else None

    def hcpcs_candidates_for_ndc(self, ndc11: str, on: date) -> tuple[str, ...]:
        """Every HCPCS code the crosswalk maps the NDC to on the date, sorted."""
        return self._crosswalk.get(ndc11.replace("-", ""), on.toordinal())

    def frequency_limits(self, payer_class: str, on: date) -> tuple[FrequencyLimit, ...]:
        """Limits in force for the payer class, sorted by (code, period_days)."""
        return self._frequency.get(payer_class, on.toordinal())

    def payer_profile(self, payer_class: str, on: date) -> PayerProfile:
        """Unknown payer class (or none in force): conservative default (59, True, None)."""
        profile = self._profiles.get(payer_class, on.toordinal())
        if profile is None:
            return PayerProfile(payer_class, "59", True, None)
        return profile
