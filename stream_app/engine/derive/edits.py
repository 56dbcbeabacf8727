"""Edits across lines (billing-rules.md §5): DUPLICATE_SERVICE, ADDON_WITHOUT_PRIMARY
on a derived add-on, MUE_EXCEEDED, FREQUENCY_LIMIT, and the NCCI procedure-to-procedure
edits (PTP_BUNDLED, PTP_MODIFIER_REQUIRED) when ncci_ptp.csv is loaded.
"""

from __future__ import annotations

from datetime import date, timedelta

from stream_app import vocabulary as V
from stream_app.engine.derive.model import (
    ROLE_ADMIN,
    ROLE_DRUG,
    ROLE_EM,
    AdminFacts,
    Alert,
    DayView,
    Line,
    RuleFamily,
    add_alert,
    minutes_between,
)

# The same-day E/M rules of billing-rules.md §3 (CPT's own bundling of an E/M with an
# injection): where one of them already holds an E/M line, an NCCI edit on that line says
# nothing more, so no PTP alert is raised on it.
_HAND_CODED_EM_BUNDLING = frozenset({V.EM_99211_SAME_DAY, V.EM_MISSING_MODIFIER_25,
                                     V.EM_NOT_SEPARATELY_IDENTIFIABLE})


class EditRules(RuleFamily):
    def _mark_duplicates(self, day_facts: list[AdminFacts], alerts: list[Alert]) -> None:
        """Two administrations of the same drug within the window: the later one (by
        occurred_at, then record_id) is a blocked duplicate (billing-rules §5)."""
        window = self.d.duplicate_window_minutes
        for i, f in enumerate(day_facts):
            if not f.drug_id:
                continue
            for g in day_facts[:i]:
                if g.drug_id == f.drug_id and minutes_between(g.rec.occurred_at, f.rec.occurred_at) <= window:
                    f.duplicate = True
                    add_alert(alerts, V.DUPLICATE_SERVICE, f.rec, "rec:" + f.rec.record_id,
                           f.rec.charge_code, [],
                           f"Administration {f.rec.record_id} repeats administration "
                           f"{g.rec.record_id} of the same drug within {window} minutes",
                           "Withdraw the duplicate documentation, or document a distinct service",
                           {"duplicate_of_record_id": g.rec.record_id})
                    break

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
                    add_alert(alerts, V.ADDON_WITHOUT_PRIMARY, f.rec, "line:" + ln.key, ln.code, [ln],
                           f"Add-on {ln.code} has no primary code the same day",
                           f"Report a primary code ({', '.join(sorted(prim))}) or remove {ln.code}")

    def _mue(self, day: date, day_facts: list[AdminFacts], alerts: list[Alert]) -> None:
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
            add_alert(alerts, V.MUE_EXCEEDED, excess[0].record, "code:" + code, code, excess,
                   f"{total} units of {code} on one day exceed the MUE of {mue.value}",
                   f"Verify the units of {code}; units beyond {mue.value} need documentation "
                   "or appeal" if mue.mai != 2 else f"Reduce {code} to {mue.value} units",
                   {"mue": mue.value, "mai": mue.mai, "units": total,
                    "excess_line_ids": [ln.key for ln in excess]}, severity=sev)

    def _frequency_limits(self, by_day: dict[date, list[AdminFacts]],
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
                    add_alert(day_alerts[day], V.FREQUENCY_LIMIT, ln.record, "line:" + ln.key,
                           ln.code, [ln],
                           f"{ln.code} exceeds {lim.max_services} per {lim.period_days} days "
                           f"for {payer}",
                           f"Check the payer's frequency policy for {ln.code} before billing",
                           {"max_services": lim.max_services, "period_days": lim.period_days,
                            "prior_services": prior}, severity=lim.severity)

    def _ptp_edits(self, day: date, day_facts: list[AdminFacts], view: DayView,
                   alerts: list[Alert]) -> None:
        """NCCI PTP edits: two lines of the patient-day with the same rendering NPI whose
        codes form an active column 1 / column 2 pair (held lines count; withdrawn records
        and blocked duplicates do not). Modifier indicator 0: the column 2 line is never
        payable with column 1 (PTP_BUNDLED holds it); 1: payable only with an
        NCCI-associated modifier on the column 2 line (59, XE, XS, XP, XU; 25 when the
        column 2 code is an E/M), else PTP_MODIFIER_REQUIRED holds it; 9: no edit."""
        if not self.rules.has_ptp:
            return
        lines = [ln for f in day_facts if not f.duplicate for ln in f.lines]
        lines += [ln for ln in view.lines.values() if ln.role == ROLE_EM]
        if len(lines) < 2:
            return
        codes = {ln.code for ln in lines}
        edits = {c: e for c in codes if (e := self.rules.ptp_column1_edits(c, day))
                 and not codes.isdisjoint(e)}
        if not edits:
            return  # the common day: no two of its codes form an edit
        lines.sort(key=lambda ln: (ln.record.occurred_at, ln.record.record_id, ln.role))
        handled = {k for a in alerts if a.reason_code in _HAND_CODED_EM_BUNDLING
                   for k in a.line_keys}
        for col2 in lines:
            column1s = edits.get(col2.code)
            if column1s is None or col2.key in handled:
                continue
            for col1 in lines:
                indicator = column1s.get(col1.code)
                if (indicator is None or col1 is col2
                        or col1.record.rendering_npi != col2.record.rendering_npi):
                    continue
                if indicator == 1 and self._ptp_modifier_present(col2, day):
                    continue
                self._ptp_alert(col1, col2, indicator, day, alerts)
                break

    def _ptp_modifier_present(self, col2: Line, day: date) -> bool:
        """An NCCI-associated modifier on the column 2 line, or proposed by the EHR for
        its administration (then carried onto the line, which otherwise derives its own)."""
        accepted = self.rules.code_set("distinct_modifiers", day)
        if col2.role == ROLE_EM and col2.code in self.rules.code_set("em", day):
            accepted = accepted | {self.d.modifiers.separate_em}
        if any(m in accepted for m in col2.modifiers):
            return True
        if col2.role == ROLE_ADMIN:
            proposed = [m for m in col2.record.charge_modifiers if m in accepted]
            if proposed:
                col2.modifiers.append(proposed[0])
                return True
        return False

    def _ptp_alert(self, col1: Line, col2: Line, indicator: int, day: date,
                   alerts: list[Alert]) -> None:
        details = {"column1_code": col1.code, "column1_line_id": col1.key,
                   "column2_code": col2.code, "modifier_indicator": indicator}
        if indicator == 0:
            add_alert(alerts, V.PTP_BUNDLED, col2.record, "line:" + col2.key, col2.code, [col2],
                   f"{col2.code} is not payable with {col1.code} on the same day by the same "
                   "provider (NCCI PTP edit, modifier indicator 0)",
                   f"Remove {col2.code}: no modifier bypasses this edit (correct the code if a "
                   "different service was performed)", details)
            return
        em = col2.role == ROLE_EM and col2.code in self.rules.code_set("em", day)
        needed = "25" if em else "59 or XE/XS/XP/XU"
        add_alert(alerts, V.PTP_MODIFIER_REQUIRED, col2.record, "line:" + col2.key, col2.code,
               [col2],
               f"{col2.code} with {col1.code} on the same day by the same provider needs an "
               "NCCI-associated modifier (NCCI PTP edit, modifier indicator 1)",
               f"If the documentation supports a separate service, append {needed} to "
               f"{col2.code}; otherwise remove {col2.code}", details)
