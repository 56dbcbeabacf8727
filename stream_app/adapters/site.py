"""Site configuration of the EHR adapters (ehr-mapping.md §6).

Six effective-dated CSV kinds tell the FHIR and HL7 v2 adapters what an EHR's local codes
mean: facility time zones, place of service by location, payer class by coverage or plan,
code maps (route, dose unit, quantity unit, credential), drug attributes and adapter
settings. The package ships the code maps of §3.8 and the SOPT payer prefixes of §3.7
(`site_data/`); an operator's files in `CHARGECAP_RULES_DIR` are merged over them, a site
row replacing every packaged row of the same key.

Look-ups take the adapter (`source`, "fhir" or "hl7v2"): rows of that source or of "*"
apply, the exact source winning. Which key type is more specific is the adapter's order of
asking (e.g. Location id before encounter class); this module answers one key at a time.
Every file is validated at start-up: a problem raises `SiteConfigError` whose str() is
'FILE:LINE:COLUMN: message' (LINE physical and 1-based, COLUMN the header's name).
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from importlib import resources
from pathlib import Path
from zoneinfo import ZoneInfo

from stream_app.vocabulary import (
    CONTAINERS,
    DOSE_UNITS,
    DRUG_CATEGORIES,
    NDC_UNITS,
    PAYER_CLASSES,
    ROUTES,
)

SOURCES = ("fhir", "hl7v2", "*")
ANY_SOURCE = "*"
DEFAULT_FACILITY = "*"

LOCATION_KEY_TYPES = ("fhir_location_id", "fhir_location_identifier", "fhir_encounter_class",
                      "hl7_facility_poc", "hl7_facility", "hl7_patient_class")
PAYER_KEY_TYPES = ("sopt_prefix", "fhir_coverage_type", "fhir_plan", "fhir_payor_id",
                   "hl7_plan_id", "hl7_plan_type", "hl7_company_id", "hl7_financial_class")
CODE_MAPS = ("route", "dose_unit", "quantity_unit", "credential")
DRUG_KEY_TYPES = ("ndc11", "hcpcs", "rxnorm", "cvx")

# Setting name -> check of its value (None: any non-empty string).
EM_SEPARATELY_IDENTIFIABLE_SOURCES = ("explicit", "modifier_25")
SUPERVISING_NPI_FROM = ("ORC-12",)
SETTINGS = ("source_id", "patient_identifier_system", "patient_id_type", "extension_base",
            "modifier_extension_urls", "em_separately_identifiable_source",
            "obx_separately_identifiable", "obx_category", "obx_container", "obx_waste",
            "supervising_npi_from", "fhir_max_entries")

# The code_map values each map may produce; a credential maps to any upper-case code, or
# to nothing (empty value: the code is dropped with a warning, e.g. v2-0360 MA, Master of Arts).
_MAP_VALUES: dict[str, tuple[str, ...] | None] = {
    "route": ROUTES, "dose_unit": DOSE_UNITS, "quantity_unit": NDC_UNITS, "credential": None,
}

_EFFECTIVE = ("effective_from", "effective_to")


@dataclass(frozen=True, slots=True)
class _Kind:
    name: str
    columns: tuple[str, ...]     # without effective_from / effective_to

    @property
    def file_name(self) -> str:
        return f"{self.name}.csv"


KINDS = {k.name: k for k in (
    _Kind("facility_timezone", ("source", "facility_key", "timezone")),
    _Kind("location_pos", ("source", "key_type", "key", "place_of_service")),
    _Kind("payer_class_map", ("source", "key_type", "key", "payer_class")),
    _Kind("code_map", ("map", "system", "code", "value", "factor")),
    _Kind("drug_attributes", ("key_type", "key", "category", "container")),
    _Kind("adapter_settings", ("source", "setting", "value")),
)}
SITE_FILES = tuple(k.file_name for k in KINDS.values())


class SiteConfigError(ValueError):
    """A malformed site configuration file. str() is 'FILE:LINE:COLUMN: message'."""

    def __init__(self, file: str, line: int, column: int | str, message: str):
        self.file, self.line, self.column, self.message = file, line, column, message
        super().__init__(f"{file}:{line}:{column}: {message}")


@dataclass(frozen=True, slots=True)
class SiteRow:
    """One row of any of the six kinds, in one shape.

    `key_type` is the location / payer / drug key type, the code map's name, "facility"
    (facility_timezone) or "setting"; `system` is the code map's system ("" = any system);
    `value` the zone, POS, payer class, mapped code, setting value or drug category ("" =
    no opinion); `container` only for drug attributes. Dates are inclusive, None = open.
    """

    kind: str
    source: str
    key_type: str
    system: str
    key: str
    value: str
    factor: float
    container: str
    effective_from: date | None
    effective_to: date | None
    origin: str = ""             # "FILE:LINE", for messages

    @property
    def index_key(self) -> tuple[str, str, str, str, str]:
        return (self.kind, self.source, self.key_type, self.system, self.key)

    def in_force(self, on: date) -> bool:
        return ((self.effective_from is None or self.effective_from <= on)
                and (self.effective_to is None or on <= self.effective_to))


def _pick(rows: tuple[SiteRow, ...], on: date | None) -> SiteRow | None:
    if on is None:
        # Undated look-up (e.g. a record without a service date yet): the row still in
        # force, else the one that ended last.
        best = None
        for row in rows:
            if row.effective_to is None:
                return row
            if best is None or row.effective_to > best.effective_to:  # type: ignore[operator]
                best = row
        return best
    for row in rows:
        if row.in_force(on):
            return row
    return None


class SiteConfig:
    """The merged site rows with their look-ups (SITE-API.md)."""

    __slots__ = ("_index", "rows")

    def __init__(self, rows: Iterable[SiteRow] = ()) -> None:
        self.rows: tuple[SiteRow, ...] = tuple(rows)
        index: dict[tuple[str, str, str, str, str], list[SiteRow]] = {}
        for row in self.rows:
            index.setdefault(row.index_key, []).append(row)
        self._index = {k: tuple(v) for k, v in index.items()}

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_rows(cls, *, facility_timezone: Iterable[Mapping[str, str]] = (),
                  location_pos: Iterable[Mapping[str, str]] = (),
                  payer_class_map: Iterable[Mapping[str, str]] = (),
                  code_map: Iterable[Mapping[str, str]] = (),
                  drug_attributes: Iterable[Mapping[str, str]] = (),
                  adapter_settings: Iterable[Mapping[str, str]] = ()) -> SiteConfig:
        """Each argument an iterable of dicts with the CSV header's keys (strings, as read).

        Missing keys read as empty cells; errors name `<name>` and the 1-based row index.
        """
        given = {"facility_timezone": facility_timezone, "location_pos": location_pos,
                 "payer_class_map": payer_class_map, "code_map": code_map,
                 "drug_attributes": drug_attributes, "adapter_settings": adapter_settings}
        rows: list[SiteRow] = []
        for name, dicts in given.items():
            kind = KINDS[name]
            label = f"<{name}>"
            kind_rows = []
            for number, cells in enumerate(dicts, start=1):
                for column in cells:
                    if column not in kind.columns and column not in _EFFECTIVE:
                        raise SiteConfigError(label, number, column, f"unknown column {column!r}")
                values = {c: _cell(cells.get(c)) for c in (*kind.columns, *_EFFECTIVE)}
                kind_rows.append(_make_row(kind, values, label, number))
            _check_overlaps(kind_rows)
            rows.extend(kind_rows)
        return cls(rows)

    @classmethod
    def packaged(cls) -> SiteConfig:
        """The shipped rows only: every `site_data/{kind}.csv` and `site_data/{kind}.*.csv`."""
        return _packaged()

    def merged(self, site: SiteConfig) -> SiteConfig:
        """These rows with `site`'s over them: a key `site` has replaces all of ours."""
        site_keys = {row.index_key for row in site.rows}
        return SiteConfig([r for r in self.rows if r.index_key not in site_keys] + list(site.rows))

    # ------------------------------------------------------------------ look-ups

    def _find(self, kind: str, source: str, key_type: str, system: str, key: str,
              on: date | None) -> SiteRow | None:
        for src in (source, ANY_SOURCE) if source != ANY_SOURCE else (ANY_SOURCE,):
            rows = self._index.get((kind, src, key_type, system, key))
            if rows:
                row = _pick(rows, on)
                if row is not None:
                    return row
        return None

    def timezone(self, source: str, facility_key: str | None, on: date | None) -> str | None:
        """The zone of that facility key; facility_key None (or "*") = the source default.

        No fallback between keys: the adapter asks key after key in its own order.
        """
        row = self._find("facility_timezone", source, "facility", "",
                         facility_key or DEFAULT_FACILITY, on)
        return row.value if row else None

    def place_of_service(self, source: str, key_type: str, key: str,
                         on: date | None) -> str | None:
        row = self._find("location_pos", source, key_type, "", key, on)
        return row.value if row else None

    def payer_class(self, source: str, key_type: str, key: str, on: date | None) -> str | None:
        """Payer class by one key; for `sopt_prefix`, `key` is the whole SOPT code and the
        longest matching prefix row applies (§3.7)."""
        if key_type == "sopt_prefix":
            for end in range(len(key), 0, -1):
                row = self._find("payer_class_map", source, key_type, "", key[:end], on)
                if row is not None:
                    return row.value
            return None
        row = self._find("payer_class_map", source, key_type, "", key, on)
        return row.value if row else None

    def code(self, map_name: str, system: str | None, code: str,
             on: date | None) -> tuple[str, float] | None:
        """(value, factor) of a code: rows of exactly that system, then that system without
        a `|version` suffix, then rows with no system. Value "" = drop the code (credential)."""
        candidates = []
        if system:
            candidates.append(system)
            if "|" in system:
                candidates.append(system.split("|", 1)[0])
        candidates.append("")
        for sys in candidates:
            rows = self._index.get(("code_map", ANY_SOURCE, map_name, sys, code))
            if rows:
                row = _pick(rows, on)
                if row is not None:
                    return row.value, row.factor
        return None

    def drug_attributes(self, key_type: str, key: str,
                        on: date | None) -> tuple[str | None, str | None]:
        """(category, container) for an ndc11 / hcpcs / rxnorm / cvx key; None = no opinion."""
        rows = self._index.get(("drug_attributes", ANY_SOURCE, key_type, "", key))
        row = _pick(rows, on) if rows else None
        if row is None:
            return None, None
        return row.value or None, row.container or None

    def setting(self, source: str, name: str, on: date | None = None) -> str | None:
        row = self._find("adapter_settings", source, "setting", "", name, on)
        return row.value if row else None


def load_site_config(rules_dir: Path | str | None) -> SiteConfig:
    """The packaged rows merged with the site CSV files found in rules_dir (all optional;
    other files there, such as the engine's rule data, are not read). A missing directory or
    a malformed file raises SiteConfigError('FILE:LINE:COLUMN: message')."""
    base = _packaged()
    if rules_dir is None:
        return base
    directory = Path(rules_dir)
    if not directory.is_dir():
        raise SiteConfigError(str(directory), 0, 0, "site configuration directory not found")
    site_rows: list[SiteRow] = []
    for kind in KINDS.values():
        path = directory / kind.file_name
        if path.is_file():
            site_rows.extend(_read_file(str(path), path.read_bytes(), kind))
    return base.merged(SiteConfig(site_rows))


# ---------------------------------------------------------------------- reading and checks

_PACKAGED: SiteConfig | None = None


def _packaged() -> SiteConfig:
    global _PACKAGED
    if _PACKAGED is None:
        rows: list[SiteRow] = []
        folder = resources.files("stream_app.adapters.site_data")
        entries = sorted((e for e in folder.iterdir() if e.name.endswith(".csv")),
                         key=lambda e: e.name)
        for kind in KINDS.values():
            kind_rows: list[SiteRow] = []
            for entry in entries:
                if entry.name == kind.file_name or entry.name.startswith(f"{kind.name}."):
                    kind_rows.extend(_read_file(f"site_data/{entry.name}", entry.read_bytes(),
                                                kind, check_overlaps=False))
            _check_overlaps(kind_rows)
            rows.extend(kind_rows)
        _PACKAGED = SiteConfig(rows)
    return _PACKAGED


def _read_file(label: str, data: bytes, kind: _Kind, *, check_overlaps: bool = True) -> list[SiteRow]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise SiteConfigError(label, line, 1, "not UTF-8") from None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header: list[str] | None = None
    rows: list[SiteRow] = []
    prev_end = 0
    try:
        for cells in reader:
            line = prev_end + 1
            prev_end = reader.line_num
            if not any(c.strip() for c in cells):
                continue
            if header is None:
                header = [c.strip() for c in cells]
                _check_header(label, line, header, kind)
                continue
            values: dict[str, str] = {}
            for index, cell in enumerate(cells):
                if index >= len(header):
                    if cell.strip():
                        raise SiteConfigError(label, line, index + 1,
                                              f"extra cell beyond the {len(header)} header columns")
                    continue
                values[header[index]] = cell.strip()
            for column in header:
                values.setdefault(column, "")
            rows.append(_make_row(kind, values, label, line))
    except csv.Error as exc:
        raise SiteConfigError(label, prev_end + 1, 1, f"CSV syntax error: {exc}") from None
    if header is None:
        raise SiteConfigError(label, 1, 1, f"no header row (expected {','.join(kind.columns)},"
                                           "effective_from,effective_to)")
    if check_overlaps:
        _check_overlaps(rows)
    return rows


def _check_header(label: str, line: int, header: list[str], kind: _Kind) -> None:
    allowed = (*kind.columns, *_EFFECTIVE)
    seen: set[str] = set()
    for index, name in enumerate(header, start=1):
        if name not in allowed:
            raise SiteConfigError(label, line, name or index, f"unknown column {name!r}")
        if name in seen:
            raise SiteConfigError(label, line, name, f"duplicate column {name!r}")
        seen.add(name)
    for name in allowed:
        if name not in seen:
            raise SiteConfigError(label, line, name, f"missing column {name!r}")


def _cell(value: object) -> str:
    if value is None:
        return ""
    return str(value).strip()


def _date(label: str, line: int, column: str, raw: str) -> date | None:
    if not raw:
        return None
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", raw):
        raise SiteConfigError(label, line, column, "not an ISO date YYYY-MM-DD")
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise SiteConfigError(label, line, column, "not a calendar date") from None


def _required(label: str, line: int, values: Mapping[str, str], column: str) -> str:
    value = values[column]
    if not value:
        raise SiteConfigError(label, line, column, f"{column} is empty")
    return value


def _one_of(label: str, line: int, column: str, value: str, allowed: Iterable[str]) -> str:
    allowed = tuple(allowed)
    if value not in allowed:
        raise SiteConfigError(label, line, column,
                              f"{value!r} is not one of {', '.join(allowed)}")
    return value


def _valid_zone(name: str) -> bool:
    if "\x00" in name or name.startswith(("/", ".")) or ".." in name:
        return False
    try:
        ZoneInfo(name)
    except Exception:  # ZoneInfoNotFoundError, ValueError, IsADirectoryError ...
        return False
    return True


def _make_row(kind: _Kind, values: Mapping[str, str], label: str, line: int) -> SiteRow:
    start = _date(label, line, "effective_from", values["effective_from"])
    end = _date(label, line, "effective_to", values["effective_to"])
    if start is not None and end is not None and end < start:
        raise SiteConfigError(label, line, "effective_to", "effective_to is before effective_from")
    source, key_type, system, value, container, factor = ANY_SOURCE, "", "", "", "", 1.0
    name = kind.name
    if "source" in kind.columns:
        source = _one_of(label, line, "source", _required(label, line, values, "source"), SOURCES)
    if name == "facility_timezone":
        key_type = "facility"
        key = _required(label, line, values, "facility_key")
        value = _required(label, line, values, "timezone")
        if not _valid_zone(value):
            raise SiteConfigError(label, line, "timezone", f"unknown IANA time zone {value!r}")
    elif name == "location_pos":
        key_type = _one_of(label, line, "key_type", values["key_type"], LOCATION_KEY_TYPES)
        key = _required(label, line, values, "key")
        value = _required(label, line, values, "place_of_service")
        if not re.fullmatch(r"\d{2}", value):
            raise SiteConfigError(label, line, "place_of_service", "place of service is not 2 digits")
    elif name == "payer_class_map":
        key_type = _one_of(label, line, "key_type", values["key_type"], PAYER_KEY_TYPES)
        key = _required(label, line, values, "key")
        if key_type == "sopt_prefix" and not key.isdigit():
            raise SiteConfigError(label, line, "key", "a SOPT prefix is digits only")
        if key_type == "fhir_coverage_type" and "|" not in key:
            raise SiteConfigError(label, line, "key", "fhir_coverage_type key is system|code")
        value = _one_of(label, line, "payer_class", values["payer_class"], PAYER_CLASSES)
    elif name == "code_map":
        key_type = _one_of(label, line, "map", values["map"], CODE_MAPS)
        system = values["system"]
        key = _required(label, line, values, "code")
        value = values["value"]
        allowed = _MAP_VALUES[key_type]
        if allowed is None:
            if value and not re.fullmatch(r"[A-Z][A-Z0-9]{0,15}", value):
                raise SiteConfigError(label, line, "value",
                                      "a credential is upper-case letters and digits (or empty: dropped)")
        else:
            _one_of(label, line, "value", value, allowed)
        if values["factor"]:
            try:
                factor = float(values["factor"])
            except ValueError:
                raise SiteConfigError(label, line, "factor", "factor is not a number") from None
            if not math.isfinite(factor) or factor <= 0:
                raise SiteConfigError(label, line, "factor", "factor must be a positive number")
    elif name == "drug_attributes":
        key_type = _one_of(label, line, "key_type", values["key_type"], DRUG_KEY_TYPES)
        key = _required(label, line, values, "key")
        if key_type == "ndc11" and not re.fullmatch(r"\d{11}", key):
            raise SiteConfigError(label, line, "key", "an ndc11 key is 11 digits, no hyphens")
        if key_type == "hcpcs" and not re.fullmatch(r"[A-Z0-9]{5}", key):
            raise SiteConfigError(label, line, "key", "a HCPCS code is 5 upper-case letters/digits")
        value = values["category"]
        if value:
            _one_of(label, line, "category", value, DRUG_CATEGORIES)
        container = values["container"]
        if container:
            _one_of(label, line, "container", container, CONTAINERS)
    else:  # adapter_settings
        key_type = "setting"
        key = _one_of(label, line, "setting", values["setting"], SETTINGS)
        value = _required(label, line, values, "value")
        _check_setting(label, line, key, value)
    return SiteRow(name, source, key_type, system, key, value, factor, container, start, end,
                   f"{label}:{line}")


def _check_setting(label: str, line: int, name: str, value: str) -> None:
    if name == "fhir_max_entries":
        if not value.isdigit() or int(value) < 1:
            raise SiteConfigError(label, line, "value", "fhir_max_entries is a positive integer")
    elif name == "em_separately_identifiable_source":
        _one_of(label, line, "value", value, EM_SEPARATELY_IDENTIFIABLE_SOURCES)
    elif name == "supervising_npi_from":
        _one_of(label, line, "value", value, SUPERVISING_NPI_FROM)
    elif name == "source_id" and (":" in value or len(value) > 64):
        raise SiteConfigError(label, line, "value", "source_id has no ':' and at most 64 characters")


def _check_overlaps(rows: list[SiteRow]) -> None:
    """Two rows of one key in force on one date are refused (the later one is reported)."""
    by_key: dict[tuple[str, str, str, str, str], list[SiteRow]] = {}
    for row in rows:
        for other in by_key.get(row.index_key, ()):
            lo = max(row.effective_from or date.min, other.effective_from or date.min)
            hi = min(row.effective_to or date.max, other.effective_to or date.max)
            if lo <= hi:
                label, _, line = row.origin.rpartition(":")
                raise SiteConfigError(label, int(line), "effective_from",
                                      f"in force on the same dates as the row at {other.origin}")
        by_key.setdefault(row.index_key, []).append(row)
