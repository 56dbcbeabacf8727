"""E/M lines and the same-day E/M rules (billing-rules.md §3): EM_99211_SAME_DAY,
EM_NOT_SEPARATELY_IDENTIFIABLE, EM_MISSING_MODIFIER_25, and the E/M line's own checks.
"""

from __future__ import annotations

from stream_app import vocabulary as V
from stream_app.engine.derive.model import (
    ROLE_ADMIN,
    ROLE_EM,
    Alert,
    DayView,
    RuleFamily,
    add_alert,
    npi_valid,
)
from stream_app.engine.records import EMService


class EMRules(RuleFamily):
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
                add_alert(alerts, V.EM_99211_SAME_DAY, e, subject, e.code, [ln],
                       "99211 is not paid with a drug administration code the same day",
                       "Remove 99211; bill the injection alone")
            elif injection_day and not e.separately_identifiable:
                add_alert(alerts, V.EM_NOT_SEPARATELY_IDENTIFIABLE, e, subject, e.code, [ln],
                       f"E/M {e.code} on an injection day without a separately identifiable service",
                       f"Document a significant, separately identifiable E/M, or remove {e.code}")
            elif injection_day and m.separate_em not in mods:
                add_alert(alerts, V.EM_MISSING_MODIFIER_25, e, subject, e.code, [ln],
                       f"E/M {e.code} on the same day as an injection needs modifier 25",
                       f"Append modifier 25 to {e.code}")
            bad = sorted(mods & self.rules.code_set("distinct_modifiers", day))
            if bad:
                add_alert(alerts, V.MODIFIER_NOT_ALLOWED, e, subject, e.code, [ln],
                       f"Modifier(s) {', '.join(bad)} not allowed on E/M {e.code}",
                       f"Remove {', '.join(bad)} from {e.code}", {"modifiers": bad})
            if e.rendering_npi is not None and not npi_valid(e.rendering_npi):
                add_alert(alerts, V.INVALID_NPI, e, subject, e.code, [ln],
                       f"rendering_npi on record {e.record_id} fails the NPI check digit",
                       "Correct the NPI from the provider enrollment record",
                       {"fields": ["rendering_npi"]})
            self._diagnosis(e, alerts, subject, e.code, required=False)
