"""What the rule families share: the line and alert being derived, the per-administration
facts, line and alert keys, and the memoised look-ups the rules call."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from functools import lru_cache
from hashlib import blake2b
from operator import attrgetter

from stream_app.engine import normalise as nz
from stream_app.engine.records import Administration, Dispense, EMService
from stream_app.engine.ruledata import Derivation, RuleSet

ROLE_ADMIN = "admin"
ROLE_INFUSION_HOURS = "infusion_hours"
ROLE_DRUG = "drug"
ROLE_DRUG_WASTE = "drug_waste"
ROLE_EM = "em"


def _key(*parts: str) -> str:
    return blake2b("|".join(parts).encode(), digest_size=12).hexdigest()


# Keys are memoised (bounded, about 2 MB): every evaluation of a patient derives the same
# keys again, and the hash costs more than the look-up.
@lru_cache(maxsize=8192)
def line_key(patient_id: str, day: date, event_type: str, record_id: str, role: str) -> str:
    return _key("line", patient_id, day.isoformat(), event_type, record_id, role)


@lru_cache(maxsize=2048)
def alert_key(patient_id: str, day: date, reason_code: str, subject: str) -> str:
    return _key("alert", patient_id, day.isoformat(), reason_code, subject)


# Sort key (occurred_at, record_id); attrgetter builds the same tuple without a Python call.
by_time = attrgetter("occurred_at", "record_id")


@dataclass(slots=True)
class Line:
    key: str
    role: str
    record: Administration | EMService
    code: str
    modifiers: list[str]
    units: int
    ndc: str | None = None
    ndc_quantity: float | None = None
    ndc_unit: str | None = None
    source_event_ids: tuple[str, ...] = ()
    expected: float = 0.0
    held: bool = False
    warnings: set[str] = field(default_factory=set)


@dataclass(slots=True)
class Alert:
    reason_code: str
    subject: str  # what the alert is about: a record, a line or a code
    record: Administration | EMService
    code: str | None
    line_keys: list[str]  # the lines it holds (block) or warns (warn)
    message: str
    suggested_fix: str
    details: dict = field(default_factory=dict)
    severity: str | None = None  # None = the reason's default from rule data
    source_event_ids: tuple[str, ...] = ()
    rarc: str | None = None  # None = the reason's RARC from rule data


@dataclass(slots=True)
class DayView:
    day: date
    lines: dict[str, Line] = field(default_factory=dict)
    alerts: dict[str, Alert] = field(default_factory=dict)
    # A record awaits its encounter until the day settles: evaluate again then.
    awaits_settle: bool = False


@dataclass(slots=True)
class AdminFacts:
    rec: Administration
    route: str | None  # canonical route after IV duration rule (None: unknown/uncodable)
    ndc11: str | None  # from the administration
    ndc_invalid: bool
    drug_id: str  # NDC 11, else lower-cased drug name
    duplicate: bool = False
    dispenses: list[Dispense] = field(default_factory=list)
    code: str | None = None  # the derived administration code
    no_code_reason: str | None = None
    lines: list[Line] = field(default_factory=list)
    grouped_events: tuple[str, ...] = ()  # other records its line reports (95117, repeat pushes)
    drug_billable: bool = False  # _drug_billable(), asked by both drug lines and checks


# ---------------------------------------------------------------------------- helpers


def minutes_between(a, b) -> float:
    return (b - a).total_seconds() / 60.0


def add_alert(day_alerts: list[Alert], reason: str, rec, subject: str, code, lines, message,
           fix, details=None, severity=None) -> None:
    day_alerts.append(Alert(reason, subject, rec, code, [ln.key for ln in lines], message, fix,
                            details or {}, severity))


class CachedRules:
    """The RuleSet look-ups the rules call, memoised per arguments: the same codes and
    service dates recur on every evaluation, and rule data never changes while the engine
    runs. Listed one by one so a misspelt look-up fails when the engine is built."""

    __slots__ = ("addon_primaries", "billing_unit", "code_set", "facility_pos",
                 "frequency_limits", "has_ptp", "hcpcs_for_ndc", "mue",
                 "package_billing_units", "payer_profile", "ptp_column1_edits", "reason",
                 "unit_price")

    def __init__(self, rules: RuleSet):
        cache = lru_cache(maxsize=8192)
        self.addon_primaries = cache(rules.addon_primaries)
        self.billing_unit = cache(rules.billing_unit)
        self.code_set = cache(rules.code_set)
        self.facility_pos = cache(rules.facility_pos)
        self.unit_price = cache(rules.unit_price)
        self.package_billing_units = cache(rules.package_billing_units)
        self.ptp_column1_edits = cache(rules.ptp_column1_edits)
        self.has_ptp = rules.has_ptp
        self.frequency_limits = cache(rules.frequency_limits)
        self.hcpcs_for_ndc = cache(rules.hcpcs_for_ndc)
        self.mue = cache(rules.mue)
        self.payer_profile = cache(rules.payer_profile)
        self.reason = cache(rules.reason)


# Small caches: providers, drugs and diagnosis codes repeat; per-record values (ids,
# timestamps) are not cached, so memory does not grow with the records seen.
npi_valid = lru_cache(maxsize=4096)(nz.npi_valid)
route_of = lru_cache(maxsize=1024)(nz.normalize_route)
ndc11_of = lru_cache(maxsize=4096)(nz.ndc_to_11)
icd10cm_shaped = lru_cache(maxsize=8192)(nz.icd10cm_shaped)




class RuleFamily:
    """Base of the rule-family mixins that make up `Evaluator`: what every family reads."""

    rules: CachedRules
    d: Derivation
    _price: Callable
