"""Edits across lines (billing-rules.md §5): DUPLICATE_SERVICE, ADDON_WITHOUT_PRIMARY
on a derived add-on, MUE_EXCEEDED, FREQUENCY_LIMIT.
"""

from __future__ import annotations

from datetime import date, timedelta

from stream_app import vocabulary as V
from stream_app.engine.derive.model import (
    ROLE_ADMIN,
    ROLE_DRUG,
    AdminFacts,
    Alert,
    Line,
    RuleFamily,
    add_alert,
    minutes_between,
)


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
