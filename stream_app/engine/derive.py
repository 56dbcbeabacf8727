"""Derivation: from the current records of one patient to each patient-day's charge lines
and correction alerts (contract.md §3, billing-rules.md).

`evaluate_patient()` is a pure function of the *set* of current record versions (arrival
order never matters: every choice sorts by `occurred_at`, then `record_id`). It returns a
`DayView` per service date with every derivable line, the alerts raised, and which lines
those alerts hold. Emission bookkeeping (revisions, void/resolved) is in engine.py.

Each rule is a small function named after what it checks; the reason codes are raised as
`V.<CODE>` (stream_app/vocabulary.py): search for one and you land on the rule that
raises it, its row in rules/reason_codes.csv and its tests.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, timedelta
from functools import lru_cache
from hashlib import blake2b
from operator import attrgetter

from stream_app import vocabulary as V
from stream_app.engine import normalise as nz
from stream_app.engine.records import Administration, Dispense, EMService
from stream_app.engine.ruledata import Derivation, RuleSet
from stream_app.vocabulary import ADMINISTRATION, DISPENSE, EM_SERVICE

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
_order = attrgetter("occurred_at", "record_id")


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


@dataclass(slots=True)
class DayView:
    day: date
    lines: dict[str, Line] = field(default_factory=dict)
    alerts: dict[str, Alert] = field(default_factory=dict)


@dataclass(slots=True)
class _AdminFacts:
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


def _minutes(a, b) -> float:
    return (b - a).total_seconds() / 60.0


def _alert(day_alerts: list[Alert], reason: str, rec, subject: str, code, lines, message,
           fix, details=None, severity=None) -> None:
    day_alerts.append(Alert(reason, subject, rec, code, [ln.key for ln in lines], message, fix,
                            details or {}, severity))


class _CachedRules:
    """The RuleSet look-ups the rules call, memoised per arguments: the same codes and
    service dates recur on every evaluation, and rule data never changes while the engine
    runs. Listed one by one so a misspelt look-up fails when the engine is built."""

    __slots__ = ("addon_primaries", "billing_unit", "code_set", "facility_pos", "fee",
                 "frequency_limits", "hcpcs_for_ndc", "mue", "payer_profile", "reason")

    def __init__(self, rules: RuleSet):
        cache = lru_cache(maxsize=8192)
        self.addon_primaries = cache(rules.addon_primaries)
        self.billing_unit = cache(rules.billing_unit)
        self.code_set = cache(rules.code_set)
        self.facility_pos = cache(rules.facility_pos)
        self.fee = cache(rules.fee)
        self.frequency_limits = cache(rules.frequency_limits)
        self.hcpcs_for_ndc = cache(rules.hcpcs_for_ndc)
        self.mue = cache(rules.mue)
        self.payer_profile = cache(rules.payer_profile)
        self.reason = cache(rules.reason)


# Small caches: providers, drugs and diagnosis codes repeat; per-record values (ids,
# timestamps) are not cached, so memory does not grow with the records seen.
_npi_valid = lru_cache(maxsize=4096)(nz.npi_valid)
_route = lru_cache(maxsize=1024)(nz.normalize_route)
_ndc11 = lru_cache(maxsize=4096)(nz.ndc_to_11)
_icd10cm_shaped = lru_cache(maxsize=8192)(nz.icd10cm_shaped)


class Evaluator:
    """Holds the rule data; `evaluate_patient` is the pure derivation."""

    def __init__(self, rules: RuleSet):
        self.rules = _CachedRules(rules)
        self.d: Derivation = rules.derivation
        self._fee = self.rules.fee

    # ------------------------------------------------------------------ entry point

    def evaluate_patient(self, patient_id: str, records: Iterable, settled: Callable[[date], bool],
                         open_missing_ndc: Callable[[date, str], bool]) -> dict[date, DayView]:
        admins: list[Administration] = []
        ems: list[EMService] = []
        dispenses: list[Dispense] = []
        for rec in records:
            if rec.withdrawn:
                continue
            et = rec.event_type
            if et == ADMINISTRATION:
                admins.append(rec)
            elif et == EM_SERVICE:
                ems.append(rec)
            elif et == DISPENSE:
                dispenses.append(rec)
        admins.sort(key=_order)
        ems.sort(key=_order)
        dispenses.sort(key=_order)

        facts = [self._facts(a) for a in admins]
        self._match_dispenses(facts, dispenses)

        by_day: dict[date, list[_AdminFacts]] = {}
        for f in facts:
            by_day.setdefault(f.rec.service_date, []).append(f)
        em_by_day: dict[date, list[EMService]] = {}
        for e in ems:
            em_by_day.setdefault(e.service_date, []).append(e)

        views: dict[date, DayView] = {}
        day_alerts: dict[date, list[Alert]] = {}
        for day in sorted(set(by_day) | set(em_by_day)):
            view = views[day] = DayView(day)
            alerts = day_alerts[day] = []
            day_facts = by_day.get(day, [])
            self._mark_duplicates(day_facts, alerts)
            self._code_administrations(patient_id, day, day_facts, alerts)
            if day_facts:
                day_settled = settled(day)
                for f in day_facts:
                    self._record_checks(patient_id, day, f, alerts, day_settled, open_missing_ndc)
            self._distinct_and_repeat_modifiers(day, day_facts)
            self._addon_without_primary(day, day_facts, alerts)
            self._em_lines(patient_id, day, day_facts, em_by_day.get(day, []), view, alerts)
            for f in day_facts:
                for ln in f.lines:
                    view.lines[ln.key] = ln
            self._mue(day, day_facts, alerts)
        self._frequency_limits(by_day, day_alerts)

        for day, view in views.items():
            for a in day_alerts[day]:
                a.source_event_ids = (a.record.event_id,)
                view.alerts[alert_key(patient_id, day, a.reason_code, a.subject)] = a
            self._apply_holds(view)
        return views

    # ------------------------------------------------------------------ facts

    def _facts(self, a: Administration) -> _AdminFacts:
        route = _route(a.route)
        if route is not None:
            route = nz.resolve_iv(route, a.occurred_at, a.ended_at)
        ndc11 = _ndc11(a.drug.ndc) if a.drug.ndc else None
        name = (a.drug.name or "").strip().lower()
        f = _AdminFacts(a, route, ndc11, bool(a.drug.ndc) and ndc11 is None, ndc11 or name)
        f.drug_billable = self._drug_billable(f)
        return f

    def _match_dispenses(self, facts: list[_AdminFacts], dispenses: list[Dispense]) -> None:
        """Dispense matching (contract.md §3): same order_id whatever the day; without one,
        same service date and NDC 11 (else drug name), earliest unmatched administration."""
        if not dispenses:
            return  # the common case: nothing to match
        by_order: dict[str, list[_AdminFacts]] = {}
        for f in facts:
            if f.rec.order_id:
                by_order.setdefault(f.rec.order_id, []).append(f)
        for d in dispenses:
            if d.order_id:
                cands = by_order.get(d.order_id)
                if cands:
                    first = next((f for f in cands if not f.dispenses), cands[0])
                    first.dispenses.append(d)
                continue
            same_day = [f for f in facts if f.rec.service_date == d.service_date and not f.dispenses]
            d_ndc = _ndc11(d.ndc) if d.ndc else None
            target: _AdminFacts | None = None
            if d_ndc:
                target = next((f for f in same_day if f.ndc11 == d_ndc), None)
            if target is None and d.drug_name:
                dn = d.drug_name.strip().lower()
                target = next((f for f in same_day
                               if (f.rec.drug.name or "").strip().lower() == dn), None)
            if target is not None:
                target.dispenses.append(d)

    # ------------------------------------------------------------------ DUPLICATE_SERVICE

    def _mark_duplicates(self, day_facts: list[_AdminFacts], alerts: list[Alert]) -> None:
        """Two administrations of the same drug within the window: the later one (by
        occurred_at, then record_id) is a blocked duplicate (billing-rules §5)."""
        window = self.d.duplicate_window_minutes
        for i, f in enumerate(day_facts):
            if not f.drug_id:
                continue
            for g in day_facts[:i]:
                if g.drug_id == f.drug_id and _minutes(g.rec.occurred_at, f.rec.occurred_at) <= window:
                    f.duplicate = True
                    _alert(alerts, V.DUPLICATE_SERVICE, f.rec, "rec:" + f.rec.record_id,
                           f.rec.charge_code, [],
                           f"Administration {f.rec.record_id} repeats administration "
                           f"{g.rec.record_id} of the same drug within {window} minutes",
                           "Withdraw the duplicate documentation, or document a distinct service",
                           {"duplicate_of_record_id": g.rec.record_id})
                    break

    # ------------------------------------------------------------------ coding

    def _code_administrations(self, patient_id: str, day: date, day_facts: list[_AdminFacts],
                              alerts: list[Alert]) -> None:
        """Administration code per record (billing-rules §1; contract 'Lines the validator
        derives'), sequencing pushes, infusions, vaccines and allergen injections."""
        d = self.d
        has_infusion = any(f.route == V.IV_INFUSION and not f.duplicate for f in day_facts)
        initial_taken = False
        last_push_at: dict[str, object] = {}
        push_line_of: dict[str, _AdminFacts] = {}  # drug -> the push whose line covers its repeats
        vaccine_seen = False
        allergen = [f for f in day_facts if f.rec.drug.category == "allergen_immunotherapy"
                    and f.route in (V.IM, V.SC) and not f.duplicate]
        for f in day_facts:
            rec, route, cat = f.rec, f.route, f.rec.drug.category
            code: str | None = None
            why: str | None = None
            commit = not f.duplicate
            if cat == "procedural":
                why = "procedural"
            elif route is None:
                why = "uncodable"
            elif route in (V.ORAL, V.OTHER_ROUTE):
                why = "not_injection"
            elif route in (V.INTRADERMAL, V.INTRA_ARTICULAR):
                why = "procedure_route"
            elif route == V.INTRA_ARTERIAL:
                code = d.intra_arterial
            elif route in (V.IM, V.SC):
                if cat == "vaccine":
                    code = d.vaccine.additional if vaccine_seen else d.vaccine.first
                    vaccine_seen = vaccine_seen or commit
                elif cat == "allergen_immunotherapy":
                    if allergen and allergen[0] is f:
                        code = (d.allergen_immunotherapy.one if len(allergen) == 1
                                else d.allergen_immunotherapy.two_or_more)
                        # 95117 reports every allergen injection of the day: its line names
                        # each of their events, not only the first's.
                        f.grouped_events = tuple(g.rec.event_id for g in allergen[1:])
                    else:
                        why = "allergen_grouped"
                else:
                    code = d.sc_im_codes.for_category(cat)
                    if code is None:
                        code = d.multiple_injection_code
            elif route == V.IV_INFUSION:
                code = d.infusion.sequential if initial_taken else d.infusion.initial
                initial_taken = initial_taken or commit
            elif route == V.IV_PUSH:
                prev = last_push_at.get(f.drug_id)
                if prev is not None and _minutes(prev, rec.occurred_at) < d.same_drug_push_window_minutes:
                    why = "same_push"
                    owner = push_line_of.get(f.drug_id)
                    if commit and owner is not None and owner.code:
                        # part of that push: its line names this record's event too
                        owner.grouped_events += (rec.event_id,)
                elif prev is not None:
                    why = "facility_only"  # 96376: facility claims only, no professional line
                elif has_infusion or initial_taken:
                    code = d.push.sequential
                else:
                    code = d.push.initial
                    initial_taken = initial_taken or commit
                if commit:
                    last_push_at[f.drug_id] = rec.occurred_at
                    if why != "same_push":
                        push_line_of[f.drug_id] = f
            f.code, f.no_code_reason = code, why
        for f in day_facts:
            self._administration_lines(patient_id, day, f)
        for f in day_facts:
            self._check_charge_code(f, day_facts, alerts)

    def _check_charge_code(self, f: _AdminFacts, day_facts, alerts: list[Alert]) -> None:
        """NON_INJECTION_ROUTE, NOT_SEPARATELY_BILLABLE, FACILITY_ONLY_CODE,
        ADDON_WITHOUT_PRIMARY (proposed add-on) and WRONG_ADMIN_CODE."""
        rec, proposed = f.rec, f.rec.charge_code
        if not proposed:
            return
        subject = "rec:" + rec.record_id
        day = rec.service_date
        if f.no_code_reason == "not_injection":
            _alert(alerts, V.NON_INJECTION_ROUTE, rec, subject, proposed, [],
                   f"{proposed} proposed for a {f.route} administration, which is not an injection",
                   f"Remove {proposed}; a non-injection route has no administration code")
        elif f.no_code_reason == "procedural":
            _alert(alerts, V.NOT_SEPARATELY_BILLABLE, rec, subject, proposed, [],
                   f"{proposed} proposed for an injection integral to a procedure",
                   f"Remove {proposed}; the injection is included in the procedure")
        elif proposed in self.rules.code_set("facility_only", day):
            _alert(alerts, V.FACILITY_ONLY_CODE, rec, subject, proposed, [],
                   f"{proposed} is reported on facility claims only",
                   f"Remove {proposed} from the professional claim")
        elif (self.rules.addon_primaries(proposed, day)
              and not self._day_has_code(day_facts, self.rules.addon_primaries(proposed, day))):
            _alert(alerts, V.ADDON_WITHOUT_PRIMARY, rec, subject, proposed, [],
                   f"Add-on {proposed} has no primary code the same day",
                   f"Report the primary code{' ' + f.code if f.code else ''} instead of {proposed}",
                   {"suggested_code": f.code})
        elif f.no_code_reason == "uncodable":
            return  # MISSING_DOCUMENTATION says what is needed; nothing to compare with
        elif proposed != f.code:
            why = {"procedure_route": "this route is coded as a procedure (20600-20611), "
                                      "not an injection code",
                   "same_push": "a push of the same drug within 30 minutes is part of the first",
                   "facility_only": "a repeat push of the same drug is reported on facility claims only",
                   "allergen_grouped": "the day's allergen injections are one line"}
            if f.code:
                msg = f"{proposed} does not match the route, category and duration; expected {f.code}"
                fix = f"Change {proposed} to {f.code}"
            else:
                msg = f"{proposed} does not apply: {why.get(f.no_code_reason or '', 'no code')}"
                fix = f"Remove {proposed}"
            _alert(alerts, V.WRONG_ADMIN_CODE, rec, subject, proposed, [], msg, fix,
                   {"suggested_code": f.code, "proposed_code": proposed})

    @staticmethod
    def _day_has_code(day_facts, codes) -> bool:
        return any(ln.code in codes for g in day_facts if not g.duplicate for ln in g.lines) or any(
            g.code in codes for g in day_facts if not g.duplicate)

    def _line_code(self, f: _AdminFacts) -> str | None:
        if f.code:
            return f.code
        # Route missing or IV without end time: keep the EHR's code so the line exists
        # (held by MISSING_DOCUMENTATION) and is released once the record is completed.
        if f.no_code_reason == "uncodable" and f.rec.charge_code:
            return f.rec.charge_code
        return None

    def _administration_lines(self, patient_id: str, day: date, f: _AdminFacts) -> None:
        rec = f.rec
        events = (rec.event_id,)
        code = self._line_code(f)
        if code:
            f.lines.append(self._line(patient_id, day, rec, ROLE_ADMIN, code, [], 1,
                                      events + f.grouped_events))
            if f.route == V.IV_INFUSION and rec.ended_at is not None and code == f.code:
                hours = self._additional_infusion_hours(_minutes(rec.occurred_at, rec.ended_at))
                if hours:
                    f.lines.append(self._line(patient_id, day, rec, ROLE_INFUSION_HOURS,
                                              self.d.infusion.additional_hour, [], hours, events))
        self._drug_lines(patient_id, day, f)

    def _additional_infusion_hours(self, minutes: float) -> int:
        """Each hour past the first counts when the infusion runs more than 30 minutes into
        it: 95 min -> 1, 150 -> 1, 151 -> 2 (contract.md §3)."""
        first, past = self.d.infusion_first_hour_minutes, self.d.infusion_additional_hour_past_minutes
        if minutes <= first + past:
            return 0
        return int(math.ceil((minutes - first - past) / 60.0))

    def _line(self, patient_id, day, rec, role, code, modifiers, units, events) -> Line:
        ln = Line(line_key(patient_id, day, rec.event_type, rec.record_id, role), role, rec, code,
                  list(modifiers), units, source_event_ids=events)
        fee = self._fee(code, rec.payer_class, day) if rec.payer_class else None
        ln.expected = round((fee or 0.0) * units, 2)
        return ln

    # ------------------------------------------------------------------ drug lines

    def _drug_billable(self, f: _AdminFacts) -> bool:
        if f.rec.drug.category in self.d.no_drug_line_categories.categories:
            return False
        return f.route not in (V.ORAL, V.OTHER_ROUTE) or bool(f.rec.drug.hcpcs)

    def _drug_lines(self, patient_id: str, day: date, f: _AdminFacts) -> None:
        """Drug supply line (billing-rules §6): HCPCS, units, NDC 11 with N4, quantity and
        unit; JZ, or a separate JW line for the wasted amount."""
        rec, drug = f.rec, f.rec.drug
        if not f.drug_billable:
            return
        ndc = f.ndc11 or next((n for n in (_ndc11(x.ndc) for x in f.dispenses if x.ndc) if n), None)
        hcpcs = drug.hcpcs or (self.rules.hcpcs_for_ndc(ndc, day) if ndc else None)
        if not hcpcs:
            return
        unit = self.rules.billing_unit(hcpcs, day)
        units = self._drug_units(drug.dose, drug.dose_unit, unit) or 1
        # Most administrations have no matched dispense: skip the generators for those.
        dispenses = f.dispenses
        events = (rec.event_id,) + tuple(x.event_id for x in dispenses) if dispenses else (rec.event_id,)
        qty, qty_unit = None, None
        disp = next((x for x in dispenses if x.quantity and x.quantity_unit), None) if dispenses else None
        if disp is not None:
            qty, qty_unit = disp.quantity, disp.quantity_unit
        elif drug.dose is not None and drug.dose_unit in self.d.ndc_unit_from_dose:
            conversion = self.d.ndc_unit_from_dose[drug.dose_unit]
            qty_unit, factor = conversion.unit, conversion.factor
            qty = round(drug.dose * factor, 3)
        modifiers: list[str] = []
        waste_line = None
        if self._waste_policy_applies(rec, day):
            if drug.wasted_amount == 0:
                modifiers = [self.d.modifiers.no_waste]
            elif drug.wasted_amount is not None:
                waste_units = self._drug_units(drug.wasted_amount, drug.dose_unit, unit) or 1
                waste_line = self._line(patient_id, day, rec, ROLE_DRUG_WASTE, hcpcs,
                                        [self.d.modifiers.waste], waste_units, events)
        main = self._line(patient_id, day, rec, ROLE_DRUG, hcpcs, modifiers, units, events)
        for ln in (main, waste_line):
            if ln is None:
                continue
            ln.ndc, ln.ndc_quantity, ln.ndc_unit = ndc, qty, qty_unit
            f.lines.append(ln)

    def _waste_policy_applies(self, rec: Administration, day: date) -> bool:
        if rec.drug.container != "single_dose" or not rec.payer_class:
            return False
        start = self.rules.payer_profile(rec.payer_class, day).jz_jw_required_from
        return start is not None and day >= start

    def _drug_units(self, amount, dose_unit, unit) -> int | None:
        """HCPCS units = amount / billing unit, rounded up (billing-rules §6)."""
        if amount is None or dose_unit is None or unit is None:
            return None
        scale = self.d.dose_unit_scale
        have, want = scale.get(dose_unit), scale.get(unit.unit)
        if have is None or want is None or have.unit != want.unit:
            return None
        q = amount * have.factor / (unit.amount * want.factor)
        return max(1, int(math.ceil(q - 1e-9)))

    # ------------------------------------------------------------------ record checks

    def _record_checks(self, patient_id: str, day: date, f: _AdminFacts, alerts: list[Alert],
                       settled: bool, open_missing_ndc: Callable[[date, str], bool]) -> None:
        rec = f.rec
        # Billable: it derives a line (an oral drug with an HCPCS code does), or it is an
        # injection route, or the EHR proposed a code for it.
        billable = (bool(f.lines) or bool(rec.charge_code)
                    or f.no_code_reason not in ("not_injection", "procedural"))
        if not billable:
            return
        subject = "rec:" + rec.record_id
        code = self._line_code(f) or rec.charge_code
        self._missing_documentation(f, alerts, subject, code)
        self._diagnosis(rec, alerts, subject, code, required=True)
        self._npi(rec, alerts, subject, code, (("rendering_npi", rec.rendering_npi),
                                               ("supervising_npi", rec.supervising_npi)))
        self._supervision(rec, day, alerts, subject, code)
        self._facility_setting(rec, day, f, alerts, subject)
        self._proposed_modifiers(rec, alerts, subject, code)
        if f.drug_billable:
            self._ndc_checks(patient_id, day, f, alerts, subject, settled, open_missing_ndc)
            self._drug_units_known(f, day, alerts, subject)
            self._waste_modifier(f, day, alerts, subject)

    def _missing_documentation(self, f: _AdminFacts, alerts, subject, code) -> None:
        """MISSING_DOCUMENTATION: billing-rules §7 plus ended_at for IV/IV_INFUSION."""
        rec, drug = f.rec, f.rec.drug
        missing = [name for name, value in (
            ("drug.name", drug.name), ("drug.dose", drug.dose), ("drug.dose_unit", drug.dose_unit),
            ("route", rec.route), ("site", rec.site), ("drug.lot_number", drug.lot_number),
            ("performer_id", rec.performer_id), ("rendering_npi", rec.rendering_npi),
            ("place_of_service", rec.place_of_service), ("payer_class", rec.payer_class),
        ) if value is None]
        if rec.ended_at is None and _route(rec.route) in (V.IV, V.IV_INFUSION):
            missing.append("ended_at")
        if missing:
            _alert(alerts, V.MISSING_DOCUMENTATION, rec, subject, code, [],
                   f"Administration {rec.record_id} lacks required documentation: "
                   + ", ".join(missing),
                   "Complete the administration record: " + ", ".join(missing),
                   {"missing_fields": missing})

    def _diagnosis(self, rec, alerts, subject, code, required: bool) -> None:
        """MISSING_DIAGNOSIS (administrations) and INVALID_DIAGNOSIS_CODE (all lines)."""
        if not rec.diagnosis_codes:
            if required:
                _alert(alerts, V.MISSING_DIAGNOSIS, rec, subject, code, [],
                       f"No ICD-10-CM diagnosis on record {rec.record_id}",
                       "Add the diagnosis that supports medical necessity")
            return
        bad = [i for i, c in enumerate(rec.diagnosis_codes) if not _icd10cm_shaped(c)]
        if bad:
            _alert(alerts, V.INVALID_DIAGNOSIS_CODE, rec, subject, code, [],
                   f"Diagnosis code position(s) {', '.join(str(i + 1) for i in bad)} on record "
                   f"{rec.record_id} are not ICD-10-CM shaped",
                   "Correct the diagnosis code(s) to valid ICD-10-CM",
                   {"invalid_positions": [i + 1 for i in bad],
                    "invalid_codes": [rec.diagnosis_codes[i] for i in bad]})

    def _npi(self, rec, alerts, subject, code, npis) -> None:
        """INVALID_NPI: the Luhn check digit over 80840 + 9 digits (billing-rules §8)."""
        bad = [name for name, value in npis if value is not None and not _npi_valid(value)]
        if bad:
            _alert(alerts, V.INVALID_NPI, rec, subject, code, [],
                   f"{' and '.join(bad)} on record {rec.record_id} fails the NPI check digit",
                   "Correct the NPI from the provider enrollment record", {"fields": bad})

    def _supervision(self, rec: Administration, day, alerts, subject, code) -> None:
        """MISSING_SUPERVISION: non-facility POS, performer not a physician/QHP, no
        supervising NPI (billing-rules §3, incident-to direct supervision)."""
        if rec.place_of_service is None or rec.supervising_npi:
            return
        if rec.payer_class and rec.place_of_service in self.rules.facility_pos(rec.payer_class, day):
            return
        exempt = self.rules.code_set("supervision_exempt_credentials", day)
        if (rec.performer_credential or "").upper() in exempt:
            return
        _alert(alerts, V.MISSING_SUPERVISION, rec, subject, code, [],
               f"Injection by a {rec.performer_credential or 'performer without credential'} "
               f"at POS {rec.place_of_service} without a supervising NPI",
               "Document the supervising physician/QHP (supervising_npi)",
               {"performer_credential": rec.performer_credential})

    def _facility_setting(self, rec: Administration, day, f: _AdminFacts, alerts, subject) -> None:
        """FACILITY_SETTING: 96360-96379 / 96401-96549 at a facility POS (billing-rules §4)."""
        code = self._line_code(f)
        if not code or not rec.payer_class or rec.place_of_service is None:
            return
        if (code in self.rules.code_set("facility_restricted_admin", day)
                and rec.place_of_service in self.rules.facility_pos(rec.payer_class, day)):
            _alert(alerts, V.FACILITY_SETTING, rec, subject, code, [],
                   f"{code} at facility POS {rec.place_of_service} belongs on the facility's claim",
                   f"Remove {code} from the professional claim; the facility bills the administration",
                   {"place_of_service": rec.place_of_service})

    def _proposed_modifiers(self, rec: Administration, alerts, subject, code) -> None:
        """MODIFIER_NOT_ALLOWED on an administration: 25, 91, JW with JZ, 59 with X."""
        mods = set(rec.charge_modifiers)
        if not mods:
            return
        m = self.d.modifiers
        xmods = self.rules.code_set("x_modifiers", rec.service_date)
        bad = []
        if m.separate_em in mods:
            bad.append((m.separate_em, "modifier 25 belongs on the E/M line, never on an injection"))
        if m.repeat_lab in mods:
            bad.append((m.repeat_lab, "modifier 91 is for repeat lab tests"))
        if m.waste in mods and m.no_waste in mods:
            bad.append(("JW+JZ", "JW and JZ never go together"))
        if m.distinct_default in mods and mods & xmods:
            bad.append(("59+X", "59 and an X modifier never go together on one line"))
        if bad:
            _alert(alerts, V.MODIFIER_NOT_ALLOWED, rec, subject, code, [],
                   f"Modifier(s) not allowed on {code}: " + "; ".join(b for _, b in bad),
                   "Remove modifier(s) " + ", ".join(a for a, _ in bad) + f" from {code}",
                   {"modifiers": [a for a, _ in bad]})

    def _ndc_checks(self, patient_id, day, f: _AdminFacts, alerts, subject, settled,
                    open_missing_ndc) -> None:
        """INVALID_NDC, NDC_MISMATCH, MISSING_NDC (only once settled; an open one stays open
        while the NDC is still missing, so it does not flap when unrelated records arrive)."""
        rec = f.rec
        code = rec.drug.hcpcs or self._line_code(f)
        disp_raw = [x.ndc for x in f.dispenses if x.ndc]
        disp_ndc = [_ndc11(x) for x in disp_raw]
        if f.ndc_invalid or (not f.ndc11 and disp_raw and not any(disp_ndc)):
            _alert(alerts, V.INVALID_NDC, rec, subject, code, [],
                   f"NDC on record {rec.record_id} cannot be converted to 11 digits (5-4-2)",
                   "Enter the NDC from the package in 4-4-2, 5-3-2, 5-4-1 (hyphenated) or 11 digits",
                   {"source": "administration" if f.ndc_invalid else "dispense"})
            return
        valid_disp = next((n for n in disp_ndc if n), None)
        if f.ndc11 and valid_disp and valid_disp != f.ndc11:
            _alert(alerts, V.NDC_MISMATCH, rec, subject, code, [],
                   f"Administration NDC {f.ndc11} differs from the dispensed NDC {valid_disp}",
                   "Confirm which product was given and correct the NDC",
                   {"administration_ndc": f.ndc11, "dispense_ndc": valid_disp})
        if not f.ndc11 and not valid_disp:
            akey = alert_key(patient_id, day, V.MISSING_NDC, subject)
            if settled or open_missing_ndc(day, akey):
                _alert(alerts, V.MISSING_NDC, rec, subject, code, [],
                       f"No NDC for the drug on record {rec.record_id} (administration or dispense)",
                       "Record the NDC from the package, or link the pharmacy dispense (order_id)")

    def _drug_units_known(self, f: _AdminFacts, day, alerts, subject) -> None:
        """DRUG_UNITS_UNKNOWN (warn): no HCPCS code, or no billing unit to compute units."""
        rec = f.rec
        drug_lines = [ln for ln in f.lines if ln.role == ROLE_DRUG]
        if not drug_lines:
            _alert(alerts, V.DRUG_UNITS_UNKNOWN, rec, subject, self._line_code(f), [],
                   f"No HCPCS drug code for the drug on record {rec.record_id}",
                   "Add the HCPCS drug code (J-code) or an NDC found in the NDC-HCPCS crosswalk")
            return
        hcpcs = drug_lines[0].code
        unit = self.rules.billing_unit(hcpcs, day)
        if self._drug_units(rec.drug.dose, rec.drug.dose_unit, unit) is None and rec.drug.dose is not None:
            _alert(alerts, V.DRUG_UNITS_UNKNOWN, rec, subject, hcpcs, [],
                   f"No billing unit to compute units of {hcpcs} from the documented dose",
                   f"Verify the units of {hcpcs} by hand (billing unit unknown or dose unit incompatible)",
                   {"hcpcs": hcpcs})

    def _waste_modifier(self, f: _AdminFacts, day, alerts, subject) -> None:
        """WASTE_MODIFIER_MISSING: Medicare single-dose container from 2023-07-01 without a
        documented wasted amount (JW/JZ policy)."""
        rec = f.rec
        if (self._waste_policy_applies(rec, day) and rec.drug.wasted_amount is None
                and any(ln.role == ROLE_DRUG for ln in f.lines)):
            _alert(alerts, V.WASTE_MODIFIER_MISSING, rec, subject, rec.drug.hcpcs, [],
                   "Single-dose container without a documented wasted amount: JW or JZ required",
                   "Document the discarded amount (0 for none) so JZ or a JW line can be billed")

    # ------------------------------------------------------------------ modifiers

    def _distinct_and_repeat_modifiers(self, day: date, day_facts: list[_AdminFacts]) -> None:
        """96372 lines in order: the first has none; a later line for a different drug gets
        the payer's distinct-service modifier (59 or X{EPSU}); the same drug again gets 76
        (same rendering NPI as its first line) or 77 (different)."""
        m = self.d.modifiers
        first_by_drug: dict[str, Administration] = {}
        count = 0
        for f in day_facts:
            if f.duplicate:
                continue
            for ln in f.lines:
                if ln.role != ROLE_ADMIN or ln.code != self.d.multiple_injection_code:
                    continue
                first = first_by_drug.get(f.drug_id)
                if count and first is not None:
                    same = (first.rendering_npi or "") == (f.rec.rendering_npi or "")
                    ln.modifiers.append(m.repeat_same_provider if same else m.repeat_other_provider)
                elif count:
                    prof = self.rules.payer_profile(f.rec.payer_class or "", day)
                    ln.modifiers.append(prof.distinct_modifier or m.distinct_default)
                first_by_drug.setdefault(f.drug_id, f.rec)
                count += 1

    def _addon_without_primary(self, day, day_facts, alerts) -> None:
        """ADDON_WITHOUT_PRIMARY for derived add-on lines (the proposed-code case is in
        _check_charge_code)."""
        codes = {ln.code for f in day_facts if not f.duplicate for ln in f.lines}
        for f in day_facts:
            if f.duplicate:
                continue
            for ln in f.lines:
                prim = self.rules.addon_primaries(ln.code, day)
                if prim and not (codes & prim) and not f.rec.charge_code:
                    _alert(alerts, V.ADDON_WITHOUT_PRIMARY, f.rec, "line:" + ln.key, ln.code, [ln],
                           f"Add-on {ln.code} has no primary code the same day",
                           f"Report a primary code ({', '.join(sorted(prim))}) or remove {ln.code}")

    # ------------------------------------------------------------------ E/M

    def _em_lines(self, patient_id, day, day_facts, ems: list[EMService], view: DayView,
                  alerts: list[Alert]) -> None:
        """E/M lines and the same-day E/M rules (billing-rules §3)."""
        inj_codes = self.rules.code_set("injection_day", day)
        injection_day = any(ln.code in inj_codes for f in day_facts if not f.duplicate
                            for ln in f.lines if ln.role == ROLE_ADMIN)
        m = self.d.modifiers
        for e in ems:
            if not e.code:
                continue
            ln = self._line(patient_id, day, e, ROLE_EM, e.code, list(dict.fromkeys(e.modifiers)), 1,
                            (e.event_id,))
            view.lines[ln.key] = ln
            subject = "rec:" + e.record_id
            mods = set(e.modifiers)
            bundle_99211 = e.payer_class is None or self.rules.payer_profile(e.payer_class, day).bundle_99211
            if injection_day and e.code == self.d.em_99211 and bundle_99211:
                _alert(alerts, V.EM_99211_SAME_DAY, e, subject, e.code, [ln],
                       "99211 is not paid with a drug administration code the same day",
                       "Remove 99211; bill the injection alone")
            elif injection_day and not e.separately_identifiable:
                _alert(alerts, V.EM_NOT_SEPARATELY_IDENTIFIABLE, e, subject, e.code, [ln],
                       f"E/M {e.code} on an injection day without a separately identifiable service",
                       f"Document a significant, separately identifiable E/M, or remove {e.code}")
            elif injection_day and m.separate_em not in mods:
                _alert(alerts, V.EM_MISSING_MODIFIER_25, e, subject, e.code, [ln],
                       f"E/M {e.code} on the same day as an injection needs modifier 25",
                       f"Append modifier 25 to {e.code}")
            bad = sorted(mods & self.rules.code_set("distinct_modifiers", day))
            if bad:
                _alert(alerts, V.MODIFIER_NOT_ALLOWED, e, subject, e.code, [ln],
                       f"Modifier(s) {', '.join(bad)} not allowed on E/M {e.code}",
                       f"Remove {', '.join(bad)} from {e.code}", {"modifiers": bad})
            if e.rendering_npi is not None and not _npi_valid(e.rendering_npi):
                _alert(alerts, V.INVALID_NPI, e, subject, e.code, [ln],
                       f"rendering_npi on record {e.record_id} fails the NPI check digit",
                       "Correct the NPI from the provider enrollment record",
                       {"fields": ["rendering_npi"]})
            self._diagnosis(e, alerts, subject, e.code, required=False)

    # ------------------------------------------------------------------ MUE / frequency

    def _mue(self, day: date, day_facts: list[_AdminFacts], alerts: list[Alert]) -> None:
        """MUE_EXCEEDED: units of a code over the day's lines (held or not; not withdrawn,
        not blocked duplicates) above the MUE. MAI 1 -> warn, 2/3 -> block the excess lines."""
        by_code: dict[str, list[Line]] = {}
        for f in day_facts:
            if f.duplicate:
                continue
            for ln in f.lines:
                by_code.setdefault(ln.code, []).append(ln)
        for code, lines in sorted(by_code.items()):
            mue = self.rules.mue(code, day)
            if mue is None:
                continue
            total = sum(ln.units for ln in lines)
            if total <= mue.value:
                continue
            running, excess = 0, []
            for ln in lines:
                running += ln.units
                if running > mue.value:
                    excess.append(ln)
            sev = V.WARN if mue.mai == 1 else V.BLOCK
            _alert(alerts, V.MUE_EXCEEDED, excess[0].record, "code:" + code, code, excess,
                   f"{total} units of {code} on one day exceed the MUE of {mue.value}",
                   f"Verify the units of {code}; units beyond {mue.value} need documentation "
                   "or appeal" if mue.mai != 2 else f"Reduce {code} to {mue.value} units",
                   {"mue": mue.value, "mai": mue.mai, "units": total,
                    "excess_line_ids": [ln.key for ln in excess]}, severity=sev)

    def _frequency_limits(self, by_day: dict[date, list[_AdminFacts]],
                          day_alerts: dict[date, list[Alert]]) -> None:
        """FREQUENCY_LIMIT: more than max_services lines of a code for one payer class within
        period_days (across the patient's days); the later lines are the excess."""
        lines = [(day, ln) for day, facts in by_day.items() for f in facts if not f.duplicate
                 for ln in f.lines if ln.role in (ROLE_ADMIN, ROLE_DRUG)]
        if not lines:
            return
        lines.sort(key=lambda t: (t[0], t[1].record.occurred_at, t[1].record.record_id, t[1].role))
        for day, ln in lines:
            payer = ln.record.payer_class
            if not payer:
                continue
            for lim in self.rules.frequency_limits(payer, day):
                if lim.code != ln.code:
                    continue
                start = day - timedelta(days=lim.period_days - 1)
                prior = 0
                for d2, other in lines:
                    if other is ln:
                        break
                    if other.code == ln.code and other.record.payer_class == payer and start <= d2:
                        prior += 1
                if prior >= lim.max_services:
                    _alert(day_alerts[day], V.FREQUENCY_LIMIT, ln.record, "line:" + ln.key,
                           ln.code, [ln],
                           f"{ln.code} exceeds {lim.max_services} per {lim.period_days} days "
                           f"for {payer}",
                           f"Check the payer's frequency policy for {ln.code} before billing",
                           {"max_services": lim.max_services, "period_days": lim.period_days,
                            "prior_services": prior}, severity=lim.severity)

    # ------------------------------------------------------------------ holds

    def _apply_holds(self, view: DayView) -> None:
        """Block alerts hold lines; warn alerts list themselves in the lines' warnings.
        An alert about a record concerns every line derived from that record; MUE and
        FREQUENCY_LIMIT concern only the lines they name (contract.md §3)."""
        by_record: dict[tuple[str, str], list[Line]] = {}
        for ln in view.lines.values():
            by_record.setdefault((ln.record.event_type, ln.record.record_id), []).append(ln)
        for a in view.alerts.values():
            if not a.line_keys and a.subject.startswith("rec:"):
                a.line_keys = [ln.key for ln in by_record.get((a.record.event_type, a.record.record_id), [])]
            sev = a.severity or self.rules.reason(a.reason_code).severity
            a.severity = sev
            for k in a.line_keys:
                concerned = view.lines.get(k)
                if concerned is None:
                    continue
                if sev == V.BLOCK:
                    concerned.held = True
                else:
                    concerned.warnings.add(a.reason_code)
