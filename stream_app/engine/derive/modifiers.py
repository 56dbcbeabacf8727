"""Modifiers (billing-rules.md §2, §3): MODIFIER_NOT_ALLOWED on a proposed code, and
the distinct-service / repeat modifiers (59, X{EPSU}, 76, 77) on repeated 96372 lines.
"""

from __future__ import annotations

from datetime import date

from stream_app import vocabulary as V
from stream_app.engine.derive.model import (
    ROLE_ADMIN,
    AdminFacts,
    RuleFamily,
    add_alert,
)
from stream_app.engine.records import Administration


class ModifierRules(RuleFamily):
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
            add_alert(alerts, V.MODIFIER_NOT_ALLOWED, rec, subject, code, [],
                   f"Modifier(s) not allowed on {code}: " + "; ".join(b for _, b in bad),
                   "Remove modifier(s) " + ", ".join(a for a, _ in bad) + f" from {code}",
                   {"modifiers": [a for a, _ in bad]})

    def _distinct_and_repeat_modifiers(self, day: date, day_facts: list[AdminFacts]) -> None:
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
