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


class RuleSet:
    """All rule tables and the coding table, validated across rows. Look-ups take the
    service date. Built by stream_app.rules.load_rules (or by a test from rows)."""

    def __init__(self, tables: Mapping[type[RuleRow], Table], derivation: Derivation,
                 files: Mapping[str, str] | None = None):
        """`tables`: one Table per row type; `files`: file name -> where it was read
        (for the start-up log and messages)."""
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
