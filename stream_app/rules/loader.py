"""Reads the rule data: the effective-dated CSV tables and derivation.json (contract.md §4).

`load_rules(rules_dir)` is the one way rule data enters the program. Every file is read
from the package through importlib.resources, unless the operator's directory holds a
file of the same name, which then replaces the packaged one entirely (no row merging).
Each file is validated cell by cell into the typed rows of stream_app/engine/ruledata.py;
the first problem raises `RuleDataError` as 'FILE:LINE:COLUMN: message' (LINE physical,
1-based). The engine receives the loaded `RuleSet` and never reads a file itself.

A new table: its row dataclass in engine/ruledata.py, a row parser below and one
`TableSpec` in `TABLES`; then its index and look-up in `RuleSet`.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, is_dataclass
from datetime import date
from importlib import resources
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from stream_app import vocabulary as V
from stream_app.engine import ndc_to_11
from stream_app.engine.ruledata import (
    ADDON_SET,
    AddonCodeRow,
    AspPaymentLimitRow,
    CodeSetRow,
    Derivation,
    FacilityPosRow,
    FeeRow,
    FrequencyLimitRow,
    HcpcsUnitRow,
    MueRow,
    NcciPtpRow,
    NdcCrosswalkRow,
    OppsAddendumBRow,
    PayerPriceFactorRow,
    PayerProfileRow,
    PfsGpciRow,
    PfsRvuRow,
    ReasonCodeRow,
    RuleDataError,
    RuleRow,
    RuleSet,
    Table,
    UnitConversion,
)

log = logging.getLogger(__name__)

DERIVATION_FILE = "derivation.json"

_PAYER_CLASSES = frozenset(V.PAYER_CLASSES)
_SEVERITIES = frozenset(V.SEVERITIES)
_WORK_QUEUES = frozenset(V.WORK_QUEUES)
_BILLING_UNITS = frozenset(V.DOSE_UNITS)
_DISTINCT_MODIFIERS = frozenset({"59", "XE", "XS", "XP", "XU"})

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
        return self.choice(column, _PAYER_CLASSES)

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

    def common(self) -> dict[str, Any]:
        """The fields every RuleRow has: the source line, and effective_from /
        effective_to (None = open) with the range validated."""
        start = self.iso_date("effective_from") if "effective_from" in self.columns else None
        end = self.iso_date("effective_to") if "effective_to" in self.columns else None
        if start and end and end < start:
            raise self.err("effective_to", f"effective_to {end} is before effective_from {start}")
        return {"line": self.line, "effective_from": start, "effective_to": end}


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


# ------------------------------------------------------------------ row parsers
# Each turns one validated CSV row into its typed row; cells are checked in column order
# and the date range last, so the first bad cell of a row is the one reported.


def _reason_code(row: _Row) -> ReasonCodeRow:
    code = row.text("reason_code")
    if not re.fullmatch(r"[A-Z][A-Z0-9_]*", code):
        raise row.err("reason_code", f"malformed reason code {code!r}")
    carc = row.get("carc").upper() or None
    if carc and not _CARC_RE.fullmatch(carc):
        raise row.err("carc", f"malformed CARC {carc!r} (expected e.g. CO-16)")
    rarc = row.get("rarc").upper() or None
    if rarc and not _RARC_RE.fullmatch(rarc):
        raise row.err("rarc", f"malformed RARC {rarc!r} (expected e.g. M119)")
    return ReasonCodeRow(
        reason_code=code,
        severity=row.choice("severity", _SEVERITIES),
        work_queue=row.choice("work_queue", _WORK_QUEUES),
        carc=carc,
        rarc=rarc,
        risk_weight=float(row.number("risk_weight", maximum=1.0)),
        **row.common(),
    )


def _code_set(row: _Row) -> CodeSetRow:
    name = row.text("set_name")
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise row.err("set_name", f"malformed set name {name!r} (lower_snake_case)")
    if name == ADDON_SET:
        raise row.err("set_name", f"set {ADDON_SET!r} is derived from addon_codes.csv")
    common = row.common()
    return CodeSetRow(set_name=name, codes=tuple(_expand(row)), **common)


def _addon_code(row: _Row) -> AddonCodeRow:
    addon, primary = row.code("addon_code", _HCPCS_RE), row.code("primary_code", _HCPCS_RE)
    if addon == primary:
        raise row.err("primary_code", f"{addon} cannot be its own primary")
    return AddonCodeRow(addon_code=addon, primary_code=primary, **row.common())


def _mue(row: _Row) -> MueRow:
    code = row.code("code", _HCPCS_RE)
    value = int(row.number("value", integer=True))
    raw_mai = row.text("mai")
    m = _MAI_RE.match(raw_mai)
    if not m:
        raise row.err("mai", f"unknown MUE adjudication indicator {raw_mai!r} (1, 2 or 3)")
    return MueRow(code=code, value=value, mai=int(m.group(1)), **row.common())


def _facility_pos(row: _Row) -> FacilityPosRow:
    payer = row.payer_class()
    pos = row.text("pos")
    if not _POS_RE.fullmatch(pos):
        raise row.err("pos", f"place of service {pos!r} is not 2 digits")
    return FacilityPosRow(payer_class=payer, pos=pos, **row.common())


def _fee(row: _Row) -> FeeRow:
    payer, code = row.payer_class(), row.code("code", _HCPCS_RE)
    return FeeRow(payer_class=payer, code=code, amount=float(row.number("amount")),
                  **row.common())


def _hcpcs_unit(row: _Row) -> HcpcsUnitRow:
    hcpcs = row.code("hcpcs", _HCPCS_RE)
    amount = row.number("billing_unit_amount", positive=True, required=False)
    unit = row.get("billing_unit")
    if (amount is None) != (not unit):
        column = "billing_unit" if amount is not None else "billing_unit_amount"
        raise row.err(column, "billing_unit_amount and billing_unit are both set or both "
                              "empty (empty = no billing unit, e.g. J3490)")
    if unit:
        unit = row.choice("billing_unit", _BILLING_UNITS)
    return HcpcsUnitRow(hcpcs=hcpcs, description=row.get("description"),
                        billing_unit_amount=float(amount) if unit else None,
                        billing_unit=unit or None, **row.common())


def _ndc_crosswalk(row: _Row) -> NdcCrosswalkRow:
    hcpcs = row.code("hcpcs", _HCPCS_RE)
    raw = row.text("ndc")
    ndc = ndc_to_11(raw)
    if ndc is None:
        raise row.err("ndc", f"NDC {raw!r} is not 5-4-2 / 4-4-2 / 5-3-2 / 5-4-1 or 11 digits")
    for column in ("pkg_size", "pkg_qty"):
        row.number(column, required=False)
    billunits = row.number("billunits", required=False)
    row.number("billunitspkg", required=False)
    return NdcCrosswalkRow(ndc11=ndc, hcpcs=hcpcs,
                           billunits=float(billunits) if billunits else None, **row.common())


def _frequency_limit(row: _Row) -> FrequencyLimitRow:
    return FrequencyLimitRow(
        payer_class=row.payer_class(),
        code=row.code("code", _HCPCS_RE),
        max_services=int(row.number("max_services", integer=True)),
        period_days=int(row.number("period_days", integer=True, positive=True)),
        severity=row.choice("severity", _SEVERITIES),
        **row.common(),
    )


def _payer_profile(row: _Row) -> PayerProfileRow:
    return PayerProfileRow(
        payer_class=row.payer_class(),
        distinct_modifier=row.choice("distinct_modifier", _DISTINCT_MODIFIERS),
        bundle_99211=row.boolean("bundle_99211"),
        jz_jw_required_from=row.iso_date("jz_jw_required_from"),
        **row.common(),
    )


# The tables `chargecap rules import` writes (docs/rule-data.md "Tables written"); the
# loader reads what the engine uses and checks the rest of each row's shape.
_PTP_INDICATORS = frozenset({"0", "1", "9"})
_MAC_RE = re.compile(r"\d{5}")
_LOCALITY_RE = re.compile(r"\d{2}")
_MODIFIER_RE = re.compile(r"[A-Z0-9]{2}")


def _asp_payment_limit(row: _Row) -> AspPaymentLimitRow:
    hcpcs = row.code("hcpcs", _HCPCS_RE)
    dosage = row.get("dosage")
    limit = float(row.number("payment_limit"))
    row.number("coinsurance_percent", required=False, maximum=100.0)
    return AspPaymentLimitRow(hcpcs=hcpcs, dosage=dosage, payment_limit=limit, **row.common())


def _pfs_total(row: _Row, total: str, na: str) -> float | None:
    """A setting's total RVUs: empty exactly when the NA indicator is true."""
    not_payable = row.boolean(na)
    value = row.number(total, required=not not_payable)
    if not_payable and value is not None:
        raise row.err(total, f"a total with {na} = true (NA: not payable in that setting)")
    return None if not_payable else float(value)


def _pfs_rvu(row: _Row) -> PfsRvuRow:
    code = row.code("code", _HCPCS_RE)
    modifier = row.get("modifier").upper()
    if modifier and not _MODIFIER_RE.fullmatch(modifier):
        raise row.err("modifier", f"malformed modifier {modifier!r}")
    status = row.code("status", re.compile(r"[A-Z]"))
    work = float(row.number("work_rvu"))
    nonfacility_pe = row.number("nonfacility_pe_rvu", required=False)
    facility_pe = row.number("facility_pe_rvu", required=False)
    mp = float(row.number("mp_rvu"))
    nonfacility = _pfs_total(row, "nonfacility_total", "nonfacility_na")
    facility = _pfs_total(row, "facility_total", "facility_na")
    cf = float(row.number("conversion_factor", positive=True))
    return PfsRvuRow(code=code, modifier=modifier, status=status, work_rvu=work,
                     nonfacility_pe_rvu=nonfacility_pe, facility_pe_rvu=facility_pe, mp_rvu=mp,
                     nonfacility_total=nonfacility, facility_total=facility,
                     conversion_factor=cf, **row.common())


def _pfs_gpci(row: _Row) -> PfsGpciRow:
    mac = row.text("mac")
    if not _MAC_RE.fullmatch(mac):
        raise row.err("mac", f"MAC {mac!r} is not 5 digits")
    locality = row.text("locality")
    if not _LOCALITY_RE.fullmatch(locality):
        raise row.err("locality", f"locality {locality!r} is not 2 digits")
    return PfsGpciRow(mac=mac, locality=locality, locality_name=row.get("locality_name"),
                      pw_gpci=float(row.number("pw_gpci", positive=True)),
                      pe_gpci=float(row.number("pe_gpci", positive=True)),
                      mp_gpci=float(row.number("mp_gpci", positive=True)), **row.common())


def _opps_addendum_b(row: _Row) -> OppsAddendumBRow:
    hcpcs = row.code("hcpcs", _HCPCS_RE)
    si = row.code("status_indicator", re.compile(r"[A-Z][A-Z0-9]?"))
    apc = row.get("apc")
    if apc and not re.fullmatch(r"\d{4}", apc):
        raise row.err("apc", f"APC {apc!r} is not 4 digits")
    for column in ("relative_weight", "national_unadjusted_copayment",
                   "minimum_unadjusted_copayment"):
        row.number(column, required=False)
    rate = row.number("payment_rate", required=False)
    return OppsAddendumBRow(hcpcs=hcpcs, status_indicator=si, apc=apc,
                            payment_rate=None if rate is None else float(rate), **row.common())


def _ncci_ptp(row: _Row) -> NcciPtpRow:
    column1, column2 = row.code("column1", _HCPCS_RE), row.code("column2", _HCPCS_RE)
    if column1 == column2:
        raise row.err("column2", f"{column1} cannot be edited against itself")
    row.iso_date("deletion_date")
    indicator = row.choice("modifier_indicator", _PTP_INDICATORS)
    return NcciPtpRow(column1=column1, column2=column2, modifier_indicator=int(indicator),
                      **row.common())


def _payer_price_factor(row: _Row) -> PayerPriceFactorRow:
    payer = row.payer_class()
    if payer == V.PAYER_CLASSES[0]:
        raise row.err("payer_class", "medicare is the base of the factors (always 1)")
    return PayerPriceFactorRow(
        payer_class=payer,
        professional_factor=float(row.number("professional_factor", positive=True)),
        drug_factor=float(row.number("drug_factor", positive=True)),
        **row.common(),
    )


@dataclass(frozen=True, slots=True)
class TableSpec:
    """How one rule file is read: its columns and the parser that makes its typed rows."""

    row_type: type[RuleRow]
    layout: _Layout
    parse: Callable[[_Row], RuleRow]
    # Read only when the operator's directory has it (CMS data written by `chargecap rules
    # import`); absent, the table is empty and the rules that use it fall back or skip.
    imported: bool = False


TABLES: dict[str, TableSpec] = {
    "reason_codes.csv": TableSpec(ReasonCodeRow, _Layout(
        ("reason_code", "severity", "work_queue", "carc", "rarc", "risk_weight")), _reason_code),
    "code_sets.csv": TableSpec(CodeSetRow, _Layout(("set_name", "code"), ("code_to", "source")),
                               _code_set),
    "addon_codes.csv": TableSpec(AddonCodeRow, _Layout(("addon_code", "primary_code")),
                                 _addon_code),
    "mue.csv": TableSpec(MueRow, _MUE_LAYOUT, _mue),
    "facility_pos.csv": TableSpec(FacilityPosRow, _Layout(("payer_class", "pos")), _facility_pos),
    "fee_schedule.csv": TableSpec(FeeRow, _Layout(("payer_class", "code", "amount")), _fee),
    "hcpcs_units.csv": TableSpec(HcpcsUnitRow, _Layout(
        ("hcpcs", "description", "billing_unit_amount", "billing_unit")), _hcpcs_unit),
    "ndc_hcpcs_crosswalk.csv": TableSpec(NdcCrosswalkRow, _XWALK_LAYOUT, _ndc_crosswalk),
    "frequency_limits.csv": TableSpec(FrequencyLimitRow, _Layout(
        ("payer_class", "code", "max_services", "period_days", "severity"),
        may_be_empty_file=True), _frequency_limit),
    "payer_profiles.csv": TableSpec(PayerProfileRow, _Layout(
        ("payer_class", "distinct_modifier", "bundle_99211", "jz_jw_required_from")),
        _payer_profile),
    "payer_price_factors.csv": TableSpec(PayerPriceFactorRow, _Layout(
        ("payer_class", "professional_factor", "drug_factor")), _payer_price_factor),
    "asp_payment_limits.csv": TableSpec(AspPaymentLimitRow, _Layout(
        ("hcpcs", "payment_limit"), ("short_description", "dosage", "coinsurance_percent",
                                     "source")), _asp_payment_limit, imported=True),
    "pfs_rvu.csv": TableSpec(PfsRvuRow, _Layout(
        ("code", "modifier", "status", "work_rvu", "mp_rvu", "nonfacility_total",
         "nonfacility_na", "facility_total", "facility_na", "conversion_factor"),
        ("description", "nonfacility_pe_rvu", "facility_pe_rvu", "pctc", "global_days",
         "source")), _pfs_rvu, imported=True),
    "pfs_gpci.csv": TableSpec(PfsGpciRow, _Layout(
        ("mac", "locality", "pw_gpci", "pe_gpci", "mp_gpci"),
        ("state", "locality_name", "source")), _pfs_gpci, imported=True),
    "opps_addendum_b.csv": TableSpec(OppsAddendumBRow, _Layout(
        ("hcpcs", "status_indicator", "apc", "payment_rate"),
        ("short_descriptor", "relative_weight", "national_unadjusted_copayment",
         "minimum_unadjusted_copayment", "source")), _opps_addendum_b, imported=True),
    "ncci_ptp.csv": TableSpec(NcciPtpRow, _Layout(
        ("column1", "column2", "modifier_indicator"),
        ("deletion_date", "pre_1996", "rationale", "source")), _ncci_ptp, imported=True),
}

#: Every CSV rule file, in load order.
RULE_FILES = tuple(TABLES)


# ------------------------------------------------------------------ reading files


def _read_source(directory: Path | None, name: str) -> tuple[str, bytes]:
    """The operator's file of that name if there is one, else the packaged file."""
    if directory is not None:
        candidate = directory / name
        if candidate.is_file():
            return str(candidate), candidate.read_bytes()
    packaged = resources.files("stream_app.rules") / name
    try:
        return str(packaged), packaged.read_bytes()
    except FileNotFoundError:
        raise RuleDataError(str(packaged), 0, 0, "packaged rule file is missing") from None


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



# ------------------------------------------------------------------ derivation.json


def _json_line(text: str, key: str) -> int:
    """Line of the first occurrence of the key in the file (1 when absent)."""
    return next((n for n, ln in enumerate(text.splitlines(), 1) if f'"{key}"' in ln), 1)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value >= 0


def _typed(label: str, text: str, value: Any, want: Any, path: str) -> Any:
    """`value` from the JSON checked against the annotation `want` and converted. A
    dataclass takes an object with exactly its fields (keys starting with '_' are comments),
    a UnitConversion the pair [unit, number], a Mapping an object of any keys."""

    def bad(message: str) -> RuleDataError:
        leaf = path.rsplit(".", 1)[-1]
        return RuleDataError(label, _json_line(text, leaf), path, f"{path!r} must be {message}")

    def child(name: str) -> str:
        return f"{path}.{name}" if path else name

    if want is UnitConversion:
        if not (isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)
                and _is_number(value[1])):
            raise bad("a pair [unit, number >= 0]")
        return UnitConversion(value[0], value[1])
    if is_dataclass(want):
        hints = get_type_hints(want)
        names = [f.name for f in fields(want)]
        if not isinstance(value, dict):
            raise bad("an object with " + ", ".join(f"{n!r}" for n in names))
        for key in value:
            if not key.startswith("_") and key not in names:
                raise RuleDataError(label, _json_line(text, key), child(key),
                                    f"unknown setting {child(key)!r}")
        for name in names:
            if name not in value:
                raise RuleDataError(label, 1, child(name),
                                    f"required setting {child(name)!r} is missing")
        return want(**{n: _typed(label, text, value[n], hints[n], child(n)) for n in names})
    origin = get_origin(want)
    if origin is Mapping:
        _, item = get_args(want)
        if not isinstance(value, dict):
            raise bad("an object")
        return {k: _typed(label, text, v, item, child(k)) for k, v in value.items()}
    if origin is tuple:
        item = get_args(want)[0]
        if not isinstance(value, list):
            raise bad("a list")
        return tuple(_typed(label, text, v, item, f"{path}[{i}]") for i, v in enumerate(value))
    if want is float:
        if not _is_number(value):
            raise bad("a number >= 0")
        return value  # kept as written: 5 stays an int, so a message prints "5"
    if want is str:
        if not isinstance(value, str):
            raise bad("a string")
        return value
    raise TypeError(f"derivation.json: no reader for {want!r} at {path}")


def _derivation(label: str, data: bytes) -> Derivation:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RuleDataError(label, 1, 1, f"not UTF-8 (byte {exc.start})") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RuleDataError(label, exc.lineno, exc.colno, exc.msg) from None
    if not isinstance(raw, dict):
        raise RuleDataError(label, 1, 1, "must be a JSON object")
    # Every setting is checked here, with its type: a missing one would otherwise only
    # surface on the first record that needs it, after the worker joined its group.
    return _typed(label, text, raw, Derivation, "")


# ------------------------------------------------------------------ entry point


# CSV files of a rules directory that other loaders own and validate, so this one lets them
# be: the site configuration of the EHR adapters (ehr-mapping.md §6,
# stream_app.adapters.site.SITE_FILES; a test keeps the two lists equal).
OTHER_LOADERS_FILES = frozenset({
    "facility_timezone.csv", "location_pos.csv", "payer_class_map.csv", "code_map.csv",
    "drug_attributes.csv", "adapter_settings.csv",
})


def load_rules(rules_dir: str | Path | None = None, *, pfs_locality: str | None = None) -> RuleSet:
    """Every rule file, packaged or from the operator's directory, validated and typed.
    `pfs_locality` ('MAC-LOCALITY', e.g. '01112-05'): price PFS services with that
    locality's GPCIs (needs pfs_gpci.csv); None = national.

    Raises RuleDataError on the first problem found (file, physical line, column).
    """
    directory = Path(rules_dir) if rules_dir is not None else None
    if directory is not None:
        if not directory.is_dir():
            raise RuleDataError(str(directory), 0, 0, "rules directory does not exist")
        for path in sorted(directory.glob("*.csv"), key=lambda p: p.name):
            if path.name not in TABLES and path.name not in OTHER_LOADERS_FILES:
                raise RuleDataError(str(path), 0, 0, "unknown rule file name (expected one of "
                                    f"{', '.join(RULE_FILES)})")
    tables: dict[type[RuleRow], Table] = {}
    files: dict[str, str] = {}
    for name, spec in TABLES.items():
        if spec.imported and (directory is None or not (directory / name).is_file()):
            continue
        label, data = _read_source(directory, name)
        rows = _read_rows(label, data, spec.layout)
        tables[spec.row_type] = Table(label, tuple(spec.parse(row) for row in rows))
        files[name] = label
    label, data = _read_source(directory, DERIVATION_FILE)
    derivation = _derivation(label, data)
    files[DERIVATION_FILE] = label
    rules = RuleSet(tables, derivation, files, pfs_locality=pfs_locality)
    log.info("rule data loaded: %s", ", ".join(files.values()))
    return rules
