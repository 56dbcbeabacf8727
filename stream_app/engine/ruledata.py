"""Effective-dated rule data (contract.md §4): API the rules are written against.

The data lives in CSV files in `stream_app/rules/` (or an operator's directory). Every
row has `effective_from` / `effective_to` (ISO dates, inclusive; empty = open); the row in
force on the service date applies. `RuleSet.load()` validates every file at start-up and
raises `RuleDataError` naming file, line and column.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path


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


class RuleSet:
    """All rule tables, loaded and validated. Look-ups take the service date."""

    @classmethod
    def load(cls, directory: str | Path | None = None) -> RuleSet:
        raise NotImplementedError

    # code sets: names such as "em", "injection_day", "facility_restricted_admin",
    # "addon", "initial_iv", "vaccine_admin" ... (see rules/code_sets.csv)
    def code_set(self, name: str, on: date) -> frozenset[str]:
        raise NotImplementedError

    def addon_primaries(self, addon_code: str, on: date) -> frozenset[str]:
        """Primary codes that satisfy an add-on code; empty set when not an add-on."""
        raise NotImplementedError

    def reason(self, reason_code: str) -> ReasonInfo:
        raise NotImplementedError

    def mue(self, code: str, on: date) -> Mue | None:
        raise NotImplementedError

    def facility_pos(self, payer_class: str, on: date) -> frozenset[str]:
        raise NotImplementedError

    def fee(self, code: str, payer_class: str, on: date) -> float | None:
        """Expected payment per unit of code for the payer class, None when unknown."""
        raise NotImplementedError

    def billing_unit(self, hcpcs: str, on: date) -> BillingUnit | None:
        raise NotImplementedError

    def hcpcs_for_ndc(self, ndc11: str, on: date) -> str | None:
        """NDC -> HCPCS crosswalk (CMS ASP NDC-HCPCS crosswalk layout)."""
        raise NotImplementedError

    def frequency_limits(self, payer_class: str, on: date) -> tuple[FrequencyLimit, ...]:
        raise NotImplementedError

    def payer_profile(self, payer_class: str, on: date) -> PayerProfile:
        raise NotImplementedError
