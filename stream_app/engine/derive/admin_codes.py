"""Administration codes and their lines (billing-rules.md §1, §2, §4): which
code each administration gets, the lines it derives, and the checks of the code the EHR
proposed (WRONG_ADMIN_CODE, NON_INJECTION_ROUTE, NOT_SEPARATELY_BILLABLE,
FACILITY_ONLY_CODE, ADDON_WITHOUT_PRIMARY on a proposed code, FACILITY_SETTING).
"""

from __future__ import annotations

import math
from datetime import date

from stream_app import vocabulary as V
from stream_app.engine.derive.model import (
    ROLE_ADMIN,
    ROLE_INFUSION_HOURS,
    AdminFacts,
    Alert,
    Line,
    RuleFamily,
    add_alert,
    line_key,
    minutes_between,
)
from stream_app.engine.records import Administration


class AdminCodeRules(RuleFamily):
    def _code_administrations(self, patient_id: str, day: date, day_facts: list[AdminFacts],
                              alerts: list[Alert]) -> None:
        """Administration code per record (billing-rules §1; contract 'Lines the validator
        derives'), sequencing pushes, infusions, vaccines and allergen injections."""
        d = self.d
        has_infusion = any(f.route == V.IV_INFUSION and not f.duplicate for f in day_facts)
        initial_taken = False
        last_push_at: dict[str, object] = {}
        push_line_of: dict[str, AdminFacts] = {}  # drug -> the push whose line covers its repeats
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
                if (prev is not None
                        and minutes_between(prev, rec.occurred_at) < d.same_drug_push_window_minutes):
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

    def _check_charge_code(self, f: AdminFacts, day_facts, alerts: list[Alert]) -> None:
        """NON_INJECTION_ROUTE, NOT_SEPARATELY_BILLABLE, FACILITY_ONLY_CODE,
        ADDON_WITHOUT_PRIMARY (proposed add-on) and WRONG_ADMIN_CODE."""
        rec, proposed = f.rec, f.rec.charge_code
        if not proposed:
            return
        subject = "rec:" + rec.record_id
        day = rec.service_date
        if f.no_code_reason == "not_injection":
            add_alert(alerts, V.NON_INJECTION_ROUTE, rec, subject, proposed, [],
                   f"{proposed} proposed for a {f.route} administration, which is not an injection",
                   f"Remove {proposed}; a non-injection route has no administration code")
        elif f.no_code_reason == "procedural":
            add_alert(alerts, V.NOT_SEPARATELY_BILLABLE, rec, subject, proposed, [],
                   f"{proposed} proposed for an injection integral to a procedure",
                   f"Remove {proposed}; the injection is included in the procedure")
        elif proposed in self.rules.code_set("facility_only", day):
            add_alert(alerts, V.FACILITY_ONLY_CODE, rec, subject, proposed, [],
                   f"{proposed} is reported on facility claims only",
                   f"Remove {proposed} from the professional claim")
        elif (self.rules.addon_primaries(proposed, day)
              and not self._day_has_code(day_facts, self.rules.addon_primaries(proposed, day))):
            add_alert(alerts, V.ADDON_WITHOUT_PRIMARY, rec, subject, proposed, [],
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
            add_alert(alerts, V.WRONG_ADMIN_CODE, rec, subject, proposed, [], msg, fix,
                   {"suggested_code": f.code, "proposed_code": proposed})

    @staticmethod
    def _day_has_code(day_facts, codes) -> bool:
        return any(ln.code in codes for g in day_facts if not g.duplicate for ln in g.lines) or any(
            g.code in codes for g in day_facts if not g.duplicate)

    def _line_code(self, f: AdminFacts) -> str | None:
        if f.code:
            return f.code
        # Route missing or IV without end time: keep the EHR's code so the line exists
        # (held by MISSING_DOCUMENTATION) and is released once the record is completed.
        if f.no_code_reason == "uncodable" and f.rec.charge_code:
            return f.rec.charge_code
        return None

    def _administration_lines(self, patient_id: str, day: date, f: AdminFacts) -> None:
        rec = f.rec
        events = (rec.event_id,)
        code = self._line_code(f)
        if code:
            f.lines.append(self._line(patient_id, day, rec, ROLE_ADMIN, code, [], 1,
                                      events + f.grouped_events))
            if f.route == V.IV_INFUSION and rec.ended_at is not None and code == f.code:
                hours = self._additional_infusion_hours(minutes_between(rec.occurred_at, rec.ended_at))
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
        price = (self._price(code, rec.payer_class, rec.place_of_service, day)
                 if rec.payer_class else None)
        ln.expected = round((price or 0.0) * units, 2)
        return ln

    def _facility_setting(self, rec: Administration, day, f: AdminFacts, alerts, subject) -> None:
        """FACILITY_SETTING: 96360-96379 / 96401-96549 at a facility POS (billing-rules §4)."""
        code = self._line_code(f)
        if not code or not rec.payer_class or rec.place_of_service is None:
            return
        if (code in self.rules.code_set("facility_restricted_admin", day)
                and rec.place_of_service in self.rules.facility_pos(rec.payer_class, day)):
            add_alert(alerts, V.FACILITY_SETTING, rec, subject, code, [],
                   f"{code} at facility POS {rec.place_of_service} belongs on the facility's claim",
                   f"Remove {code} from the professional claim; the facility bills the administration",
                   {"place_of_service": rec.place_of_service})
