"""Effective-dated rule data (contract.md §4) as the engine holds it: one typed row per
table row, indexed by key and date, and the look-ups the rules are written against.

The files themselves are read and validated cell by cell in stream_app/rules/loader.py
(`load_rules`); this module only checks what spans rows (overlapping date ranges, reason
codes and code sets the engine needs) and never reads a file. Each row keeps its source
line so an overlap can still be reported as 'FILE:LINE:COLUMN: message'.

A new table is one row dataclass here, one `TableSpec` registration in the loader, and
its index and look-up in `RuleSet`. See docs/rule-data.md.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

from stream_app.vocabulary import REASON_CODES


class RuleDataError(ValueError):
    """A malformed rule file. str() is 'FILE:LINE:COLUMN: message'."""

    def __init__(self, file: str, line: int, column: int | str, message: str):
        self.file, self.line, self.column, self.message = file, line, column, message
        super().__init__(f"{file}:{line}:{column}: {message}")


# ------------------------------------------------------------------ look-up results


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
class PfsRvu:
    """A PFS relative-value row as priced: RVU components and totals (None = NA: not
    payable to the professional in that setting)."""

    status: str
    work_rvu: float
    nonfacility_pe_rvu: float | None
    facility_pe_rvu: float | None
    mp_rvu: float
    nonfacility_total: float | None
    facility_total: float | None
    conversion_factor: float


@dataclass(frozen=True, slots=True)
class Gpci:
    mac: str
    locality: str
    pw: float
    pe: float
    mp: float


@dataclass(frozen=True, slots=True)
class OppsPayment:
    status_indicator: str
    apc: str
    payment_rate: float | None


@dataclass(frozen=True, slots=True)
class PriceFactor:
    professional_factor: float
    drug_factor: float


@dataclass(frozen=True, slots=True)
class PayerProfile:
    payer_class: str
    distinct_modifier: str  # "59" or XE/XS/XP/XU
    bundle_99211: bool  # EM_99211_SAME_DAY applies to this payer class
    jz_jw_required_from: date | None  # JW/JZ policy start (Medicare: 2023-07-01), None = never


# ------------------------------------------------------------------ table rows


@dataclass(frozen=True, slots=True, kw_only=True)
class RuleRow:
    """What every row has: its date range (inclusive, None = open) and its source line."""

    line: int
    effective_from: date | None = None
    effective_to: date | None = None

    def span(self) -> tuple[int, int]:
        return (self.effective_from.toordinal() if self.effective_from else _MIN,
                self.effective_to.toordinal() if self.effective_to else _MAX)


@dataclass(frozen=True, slots=True, kw_only=True)
class ReasonCodeRow(RuleRow):
    reason_code: str
    severity: str
    work_queue: str
    carc: str | None
    rarc: str | None
    risk_weight: float


@dataclass(frozen=True, slots=True, kw_only=True)
class CodeSetRow(RuleRow):
    set_name: str
    codes: tuple[str, ...]  # `code`, or every code of the range `code`..`code_to`


@dataclass(frozen=True, slots=True, kw_only=True)
class AddonCodeRow(RuleRow):
    addon_code: str
    primary_code: str


@dataclass(frozen=True, slots=True, kw_only=True)
class MueRow(RuleRow):
    code: str
    value: int
    mai: int


@dataclass(frozen=True, slots=True, kw_only=True)
class FacilityPosRow(RuleRow):
    payer_class: str
    pos: str


@dataclass(frozen=True, slots=True, kw_only=True)
class FeeRow(RuleRow):
    payer_class: str
    code: str
    amount: float


@dataclass(frozen=True, slots=True, kw_only=True)
class HcpcsUnitRow(RuleRow):
    hcpcs: str
    description: str
    billing_unit_amount: float | None  # both None: the code has no billing unit (J3490)
    billing_unit: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class NdcCrosswalkRow(RuleRow):
    ndc11: str
    hcpcs: str
    billunits: float | None = None  # BILLUNITS: billing units one package item holds


@dataclass(frozen=True, slots=True, kw_only=True)
class AspPaymentLimitRow(RuleRow):
    """asp_payment_limits.csv: Medicare Part B payment limit (ASP + 6 %) per billing unit."""

    hcpcs: str
    dosage: str
    payment_limit: float


@dataclass(frozen=True, slots=True, kw_only=True)
class PfsRvuRow(RuleRow):
    """pfs_rvu.csv: one PPRRVU row (national RVUs; totals None where the file says NA)."""

    code: str
    modifier: str  # "" = global service
    status: str
    work_rvu: float
    nonfacility_pe_rvu: float | None
    facility_pe_rvu: float | None
    mp_rvu: float
    nonfacility_total: float | None
    facility_total: float | None
    conversion_factor: float


@dataclass(frozen=True, slots=True, kw_only=True)
class PfsGpciRow(RuleRow):
    mac: str
    locality: str
    locality_name: str
    pw_gpci: float
    pe_gpci: float
    mp_gpci: float


@dataclass(frozen=True, slots=True, kw_only=True)
class OppsAddendumBRow(RuleRow):
    hcpcs: str
    status_indicator: str
    apc: str
    payment_rate: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class NcciPtpRow(RuleRow):
    column1: str
    column2: str
    modifier_indicator: int  # 0 never payable together, 1 with an NCCI-associated modifier, 9 no edit


@dataclass(frozen=True, slots=True, kw_only=True)
class PayerPriceFactorRow(RuleRow):
    """payer_price_factors.csv: a payer class's expected payment as a factor over Medicare's
    CMS-derived price (PFS allowance, ASP payment limit)."""

    payer_class: str
    professional_factor: float
    drug_factor: float


@dataclass(frozen=True, slots=True, kw_only=True)
class FrequencyLimitRow(RuleRow):
    payer_class: str
    code: str
    max_services: int
    period_days: int
    severity: str


@dataclass(frozen=True, slots=True, kw_only=True)
class PayerProfileRow(RuleRow):
    payer_class: str
    distinct_modifier: str
    bundle_99211: bool
    jz_jw_required_from: date | None


@dataclass(frozen=True, slots=True)
class Table:
    """One loaded table: where it came from (a path, for messages) and its rows."""

    source: str
    rows: tuple[RuleRow, ...]


# ------------------------------------------------------------------ derivation.json


@dataclass(frozen=True, slots=True)
class ScImCodes:
    """SC/IM injection code per drug category (categories coded elsewhere are absent)."""

    therapeutic: str
    prophylactic: str
    diagnostic: str
    antineoplastic: str
    hormonal_antineoplastic: str

    def for_category(self, category: str) -> str | None:
        if category == "therapeutic":
            return self.therapeutic
        if category == "prophylactic":
            return self.prophylactic
        if category == "diagnostic":
            return self.diagnostic
        if category == "antineoplastic":
            return self.antineoplastic
        if category == "hormonal_antineoplastic":
            return self.hormonal_antineoplastic
        return None


@dataclass(frozen=True, slots=True)
class VaccineCodes:
    first: str
    additional: str


@dataclass(frozen=True, slots=True)
class AllergenCodes:
    one: str
    two_or_more: str


@dataclass(frozen=True, slots=True)
class PushCodes:
    initial: str
    sequential: str
    same_drug_repeat: str


@dataclass(frozen=True, slots=True)
class InfusionCodes:
    initial: str
    sequential: str
    additional_hour: str


@dataclass(frozen=True, slots=True)
class DrugLineExclusions:
    categories: tuple[str, ...]  # drug categories that never get a drug supply line


@dataclass(frozen=True, slots=True)
class UnitConversion:
    """A unit and the factor one unit of the key's unit is worth in it (JSON `[unit, n]`)."""

    unit: str
    factor: float


@dataclass(frozen=True, slots=True)
class DerivationModifiers:
    separate_em: str
    distinct_default: str
    repeat_same_provider: str
    repeat_other_provider: str
    repeat_lab: str
    waste: str
    no_waste: str


@dataclass(frozen=True, slots=True)
class Derivation:
    """rules/derivation.json: the coding table for administrations and drug lines
    (billing-rules.md §1, §2, §5, §6). Times in minutes."""

    push_max_minutes: float
    same_drug_push_window_minutes: float
    duplicate_window_minutes: float
    infusion_first_hour_minutes: float
    infusion_additional_hour_past_minutes: float
    sc_im_codes: ScImCodes
    vaccine: VaccineCodes
    allergen_immunotherapy: AllergenCodes
    intra_arterial: str
    push: PushCodes
    infusion: InfusionCodes
    multiple_injection_code: str
    no_drug_line_categories: DrugLineExclusions
    ndc_unit_from_dose: Mapping[str, UnitConversion]  # dose unit -> NDC quantity unit
    dose_unit_scale: Mapping[str, UnitConversion]  # dose unit -> base unit
    modifiers: DerivationModifiers
    em_99211: str


# ------------------------------------------------------------------ indexes

#: Code sets the engine relies on; code_sets.csv must define each (at least one row).
REQUIRED_CODE_SETS = (
    "em", "injection_day", "facility_restricted_admin", "admin", "initial_iv", "facility_only",
    "vaccine_admin", "distinct_modifiers", "x_modifiers", "supervision_exempt_credentials",
)
#: Virtual code set: the add-on codes of addon_codes.csv in force on the date.
ADDON_SET = "addon"

_MIN = date.min.toordinal()
_MAX = date.max.toordinal()


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


def _groups(table: _Dated) -> dict[Hashable, list[tuple[int, int, Any]]]:
    """Entries of a table keyed (group, member) regrouped by group, for a _Timeline."""
    groups: dict[Hashable, list[tuple[int, int, Any]]] = {}
    for key in table.keys():
        for e in table.entries(key):
            groups.setdefault(key[0], []).append((e.start, e.end, e.value))
    return groups


def _build_reasons(t: Table) -> _Dated:
    table = _Dated(t.source, "reason_code")
    for r in t.rows:
        info = ReasonInfo(r.reason_code, r.severity, r.work_queue, r.carc, r.rarc, r.risk_weight)
        table.add(r.reason_code, r.span(), info, r.line)
    table.freeze()
    missing = [c for c in REASON_CODES if not table.entries(c)]
    if missing:
        raise RuleDataError(t.source, 1, "reason_code",
                            f"no row for reason code(s) {', '.join(missing)} (contract.md §3)")
    return table


def _build_code_sets(t: Table) -> _Timeline:
    table = _Dated(t.source, "set_name/code")
    for r in t.rows:
        span = r.span()
        for code in r.codes:
            table.add((r.set_name, code), span, code, r.line)
    table.freeze()
    groups = _groups(table)
    missing = [n for n in REQUIRED_CODE_SETS if n not in groups]
    if missing:
        raise RuleDataError(t.source, 1, "set_name",
                            f"no row for code set(s) {', '.join(missing)}")
    return _Timeline(groups)


def _build_addons(t: Table) -> tuple[_Timeline, _Timeline]:
    table = _Dated(t.source, "addon_code/primary_code")
    for r in t.rows:
        table.add((r.addon_code, r.primary_code), r.span(), r.primary_code, r.line)
    table.freeze()
    addons: list[tuple[int, int, Any]] = []
    for key in table.keys():
        for e in table.entries(key):
            addons.append((e.start, e.end, key[0]))
    return _Timeline(_groups(table)), _Timeline({ADDON_SET: addons})


def _build_mue(t: Table) -> _Dated:
    table = _Dated(t.source, "HCPCS/CPT code")
    for r in t.rows:
        table.add(r.code, r.span(), Mue(r.value, r.mai), r.line)
    table.freeze(tolerate_equal=True)
    return table


def _build_facility_pos(t: Table) -> _Timeline:
    table = _Dated(t.source, "payer_class/pos")
    for r in t.rows:
        table.add((r.payer_class, r.pos), r.span(), r.pos, r.line)
    table.freeze()
    return _Timeline(_groups(table))


def _build_fees(t: Table) -> _Dated:
    table = _Dated(t.source, "payer_class/code")
    for r in t.rows:
        table.add((r.payer_class, r.code), r.span(), r.amount, r.line)
    table.freeze()
    return table


def _build_units(t: Table) -> _Dated:
    table = _Dated(t.source, "hcpcs")
    for r in t.rows:
        value = None
        if r.billing_unit is not None:
            value = BillingUnit(r.hcpcs, r.billing_unit_amount, r.billing_unit, r.description)
        table.add(r.hcpcs, r.span(), value, r.line)
    table.freeze()
    return table


def _build_crosswalk(t: Table) -> _Timeline:
    table = _Dated(t.source, "NDC/HCPCS")
    for r in t.rows:
        table.add((r.ndc11, r.hcpcs), r.span(), r.hcpcs, r.line)
    table.freeze(tolerate_equal=True)
    return _Timeline(_groups(table), as_tuple=True)


def _build_frequency(t: Table) -> _Timeline:
    table = _Dated(t.source, "payer_class/code/period_days")
    for r in t.rows:
        limit = FrequencyLimit(r.payer_class, r.code, r.max_services, r.period_days, r.severity)
        table.add((r.payer_class, r.code, r.period_days), r.span(), limit, r.line)
    table.freeze()
    return _Timeline(_groups(table), as_tuple=True,
                     sort_key=lambda f: (f.code, f.period_days, f.max_services))


def _build_profiles(t: Table) -> _Dated:
    table = _Dated(t.source, "payer_class")
    for r in t.rows:
        profile = PayerProfile(r.payer_class, r.distinct_modifier, r.bundle_99211,
                               r.jz_jw_required_from)
        table.add(r.payer_class, r.span(), profile, r.line)
    table.freeze()
    return table


def _build_asp(t: Table) -> _Dated:
    table = _Dated(t.source, "hcpcs")
    for r in t.rows:
        table.add(r.hcpcs, r.span(), r.payment_limit, r.line)
    table.freeze()
    return table


_DOSAGE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(MG|MCG|GM|G|ML|CC|UNITS?|IU)")
_DOSAGE_UNITS = {"MG": "mg", "MCG": "mcg", "GM": "g", "G": "g", "ML": "mL", "CC": "mL",
                 "UNIT": "units", "UNITS": "units", "IU": "units"}


def billing_unit_of_dosage(hcpcs: str, dosage: str) -> BillingUnit | None:
    """The ASP files' `HCPCS Code Dosage` ('250 MG', '1 ML', '1000 UNITS', '10 IU') as a
    billing unit; None for dosages that are not an amount of a dose unit ('PER SQ CM')."""
    m = _DOSAGE_RE.fullmatch(dosage.strip().upper())
    if m is None or float(m.group(1)) <= 0:
        return None
    return BillingUnit(hcpcs, float(m.group(1)), _DOSAGE_UNITS[m.group(2)], dosage)


def _build_asp_units(t: Table) -> _Dated:
    table = _Dated(t.source, "hcpcs")
    for r in t.rows:
        unit = billing_unit_of_dosage(r.hcpcs, r.dosage)
        if unit is not None:
            table.add(r.hcpcs, r.span(), unit, r.line)
    table.freeze()
    return table


def _build_pfs(t: Table) -> _Dated:
    table = _Dated(t.source, "code/modifier")
    for r in t.rows:
        table.add((r.code, r.modifier), r.span(),
                  PfsRvu(r.status, r.work_rvu, r.nonfacility_pe_rvu, r.facility_pe_rvu, r.mp_rvu,
                         r.nonfacility_total, r.facility_total, r.conversion_factor), r.line)
    table.freeze()
    return table


def _build_gpci(t: Table) -> _Dated:
    table = _Dated(t.source, "mac/locality")
    for r in t.rows:
        table.add((r.mac, r.locality), r.span(),
                  Gpci(r.mac, r.locality, r.pw_gpci, r.pe_gpci, r.mp_gpci), r.line)
    table.freeze()
    return table


def _build_opps(t: Table) -> _Dated:
    table = _Dated(t.source, "hcpcs")
    for r in t.rows:
        table.add(r.hcpcs, r.span(), OppsPayment(r.status_indicator, r.apc, r.payment_rate),
                  r.line)
    table.freeze()
    return table


def _build_ptp(t: Table) -> tuple[_Dated, _Timeline]:
    """The edits by (column 1, column 2), and by column 2 the (column 1, indicator) pairs
    in force, so a day's lines are checked with one look-up per code."""
    table = _Dated(t.source, "column1/column2")
    for r in t.rows:
        table.add((r.column1, r.column2), r.span(), r.modifier_indicator, r.line)
    table.freeze()
    by_column2: dict[Hashable, list[tuple[int, int, Any]]] = {}
    for key in table.keys():
        for e in table.entries(key):
            if e.value != 9:  # indicator 9: no edit
                by_column2.setdefault(key[1], []).append((e.start, e.end, (key[0], e.value)))
    return table, _Timeline(by_column2)


def _build_packages(t: Table) -> _Dated:
    table = _Dated(t.source, "NDC/HCPCS")
    for r in t.rows:
        table.add((r.ndc11, r.hcpcs), r.span(), r.billunits, r.line)
    table.freeze(tolerate_equal=True)
    return table


def _build_factors(t: Table) -> _Dated:
    table = _Dated(t.source, "payer_class")
    for r in t.rows:
        table.add(r.payer_class, r.span(), PriceFactor(r.professional_factor, r.drug_factor),
                  r.line)
    table.freeze()
    return table


#: PFS status codes paid under the fee schedule (A active, R restricted, T paid only when
#: no other service is paid that day). Other statuses (bundled, carrier-priced, not
#: covered, not valid for Medicare) are not priced from RVUs.
PFS_PRICED_STATUSES = frozenset({"A", "R", "T"})
_MEDICARE = "medicare"
_NO_FACTOR = PriceFactor(1.0, 1.0)


class RuleSet:
    """All rule tables and the coding table, validated across rows. Look-ups take the
    service date. Built by stream_app.rules.load_rules (or by a test from rows)."""

    def __init__(self, tables: Mapping[type[RuleRow], Table], derivation: Derivation,
                 files: Mapping[str, str] | None = None, pfs_locality: str | None = None):
        """`tables`: one Table per row type (the CMS tables and the price factors may be
        absent); `files`: file name -> where it was read (for the start-up log and
        messages); `pfs_locality`: 'MAC-LOCALITY' (e.g. '01112-05') whose GPCIs adjust the
        PFS allowance, None = national (GPCI 1)."""
        self.derivation = derivation
        self.files: dict[str, str] = dict(files or {})
        self._reasons = _build_reasons(tables[ReasonCodeRow])
        self._code_sets = _build_code_sets(tables[CodeSetRow])
        self._addon_primaries, self._addon_set = _build_addons(tables[AddonCodeRow])
        self._mue = _build_mue(tables[MueRow])
        self._facility_pos = _build_facility_pos(tables[FacilityPosRow])
        self._fees = _build_fees(tables[FeeRow])
        self._units = _build_units(tables[HcpcsUnitRow])
        self._crosswalk = _build_crosswalk(tables[NdcCrosswalkRow])
        self._frequency = _build_frequency(tables[FrequencyLimitRow])
        self._profiles = _build_profiles(tables[PayerProfileRow])
        empty = Table("", ())
        self._asp = _build_asp(tables.get(AspPaymentLimitRow, empty))
        self._asp_units = _build_asp_units(tables.get(AspPaymentLimitRow, empty))
        self._pfs = _build_pfs(tables.get(PfsRvuRow, empty))
        self._gpci = _build_gpci(tables.get(PfsGpciRow, empty))
        self._opps = _build_opps(tables.get(OppsAddendumBRow, empty))
        self._ptp, self._ptp_by_column2 = _build_ptp(tables.get(NcciPtpRow, empty))
        self._packages = _build_packages(tables[NdcCrosswalkRow])
        self._factors = _build_factors(tables.get(PayerPriceFactorRow, empty))
        #: True when NCCI PTP edits are loaded (the rule is skipped without them).
        self.has_ptp = bool(tables.get(NcciPtpRow, empty).rows)
        self.pfs_locality: tuple[str, str] | None = None
        if pfs_locality:
            mac, _, locality = pfs_locality.partition("-")
            if not any(True for _ in self._gpci.entries((mac, locality))):
                source = tables.get(PfsGpciRow, empty).source or "pfs_gpci.csv"
                raise RuleDataError(source, 0, "locality",
                                    f"PFS locality {pfs_locality!r} (MAC-LOCALITY) has no GPCI row")
            self.pfs_locality = (mac, locality)
        self._reason_cache: dict[tuple[str, int], ReasonInfo] = {}

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
        """The CMS payment-limit file's dosage in force for the code (asp_payment_limits.csv,
        when imported and an amount of a dose unit), else hcpcs_units.csv. None when the
        code is unknown or has no billing unit (e.g. J3490 unclassified)."""
        code = hcpcs.strip().upper()
        day = on.toordinal()
        unit = self._asp_units.get(code, day)
        return unit if unit is not None else self._units.get(code, day)

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

    # ---------------------------------------------------------------- CMS data and prices

    def package_billing_units(self, ndc11: str, hcpcs: str, on: date) -> float | None:
        """BILLUNITS of the crosswalk: billing units of `hcpcs` one package item of the NDC
        holds (J0696 / 00409-7332-01: 4 = one 1 g vial). None when not known."""
        return self._packages.get((ndc11.replace("-", ""), hcpcs.strip().upper()), on.toordinal())

    def payment_limit(self, hcpcs: str, on: date) -> float | None:
        """Medicare Part B payment limit (USD per billing unit, ASP + 6 %) in force."""
        return self._asp.get(hcpcs.strip().upper(), on.toordinal())

    def pfs_rvu(self, code: str, on: date, modifier: str = "") -> PfsRvu | None:
        return self._pfs.get((code.strip().upper(), modifier), on.toordinal())

    def gpci(self, mac: str, locality: str, on: date) -> Gpci | None:
        return self._gpci.get((mac, locality), on.toordinal())

    def opps_payment(self, hcpcs: str, on: date) -> OppsPayment | None:
        """OPPS Addendum B row (facility claims: not used by the professional-claim rules)."""
        return self._opps.get(hcpcs.strip().upper(), on.toordinal())

    def ptp_indicator(self, column1: str, column2: str, on: date) -> int | None:
        """NCCI PTP modifier indicator of the active column 1 / column 2 edit, else None."""
        return self._ptp.get((column1, column2), on.toordinal())

    def ptp_column1_edits(self, column2: str, on: date) -> Mapping[str, int]:
        """Column 1 code -> modifier indicator (0 or 1) of the edits in force whose column 2
        is `column2`; indicator 9 (no edit) is left out."""
        return dict(self._ptp_by_column2.get(column2, on.toordinal()))

    def price_factor(self, payer_class: str, on: date) -> PriceFactor | None:
        """Factor over Medicare for the payer class (Medicare itself: 1)."""
        if payer_class == _MEDICARE:
            return _NO_FACTOR
        return self._factors.get(payer_class, on.toordinal())

    def pfs_allowance(self, code: str, on: date, *, facility: bool) -> float | None:
        """Medicare PFS allowance in USD for the global service: total RVUs of the setting x
        the conversion factor, or with the configured locality the RVU components x its
        GPCIs x the conversion factor; rounded to cents. 0.0 when the file says NA (not
        payable to the professional in that setting); None when the PFS has no priced row."""
        rvu = self._pfs.get((code.strip().upper(), ""), on.toordinal())
        if rvu is None or rvu.status not in PFS_PRICED_STATUSES:
            return None
        total = rvu.facility_total if facility else rvu.nonfacility_total
        if total is None:
            return 0.0
        gpci = self._gpci.get(self.pfs_locality, on.toordinal()) if self.pfs_locality else None
        if gpci is not None:
            pe = rvu.facility_pe_rvu if facility else rvu.nonfacility_pe_rvu
            total = rvu.work_rvu * gpci.pw + (pe or 0.0) * gpci.pe + rvu.mp_rvu * gpci.mp
        return round(total * rvu.conversion_factor + 1e-9, 2)

    def unit_price(self, code: str, payer_class: str, place_of_service: str | None,
                   on: date) -> float | None:
        """Expected payment per unit of `code` for the payer class on the service date.

        1. a drug with an ASP payment limit in force: the limit x the payer's drug factor;
        2. a service with a priced PFS row: the Medicare allowance of the setting (facility
           when the place of service is in the payer class's facility set) x the payer's
           professional factor (0.0 when NA: not payable to the professional there);
        3. otherwise fee_schedule.csv. A payer class without a factor in force also falls
           back to fee_schedule.csv. None when nothing prices the code."""
        code = code.strip().upper()
        factor = self.price_factor(payer_class, on)
        if factor is not None:
            limit = self._asp.get(code, on.toordinal())
            if limit is not None:
                return limit * factor.drug_factor
            facility = place_of_service is not None and (
                place_of_service in self.facility_pos(payer_class, on))
            allowance = self.pfs_allowance(code, on, facility=facility)
            if allowance is not None:
                return allowance * factor.professional_factor
        return self._fees.get((payer_class, code), on.toordinal())
