"""Drug supply lines (billing-rules.md §6): HCPCS units from the dose, NDC quantity,
JW/JZ (WASTE_MODIFIER_MISSING) and DRUG_UNITS_UNKNOWN.
"""

from __future__ import annotations

import math
from datetime import date

from stream_app import vocabulary as V
from stream_app.engine.derive.model import (
    ROLE_DRUG,
    ROLE_DRUG_WASTE,
    AdminFacts,
    RuleFamily,
    add_alert,
    ndc11_of,
)
from stream_app.engine.records import Administration


class DrugLineRules(RuleFamily):
    def _drug_billable(self, f: AdminFacts) -> bool:
        if f.rec.drug.category in self.d.no_drug_line_categories.categories:
            return False
        return f.route not in (V.ORAL, V.OTHER_ROUTE) or bool(f.rec.drug.hcpcs)

    def _drug_lines(self, patient_id: str, day: date, f: AdminFacts) -> None:
        """Drug supply line (billing-rules §6): HCPCS, units, NDC 11 with N4, quantity and
        unit; JZ, or a separate JW line for the wasted amount."""
        rec, drug = f.rec, f.rec.drug
        if not f.drug_billable:
            return
        ndc = f.ndc11 or next((n for n in (ndc11_of(x.ndc) for x in f.dispenses if x.ndc) if n), None)
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

    def _drug_units_known(self, f: AdminFacts, day, alerts, subject) -> None:
        """DRUG_UNITS_UNKNOWN (warn): no HCPCS code, or no billing unit to compute units."""
        rec = f.rec
        drug_lines = [ln for ln in f.lines if ln.role == ROLE_DRUG]
        if not drug_lines:
            add_alert(alerts, V.DRUG_UNITS_UNKNOWN, rec, subject, self._line_code(f), [],
                   f"No HCPCS drug code for the drug on record {rec.record_id}",
                   "Add the HCPCS drug code (J-code) or an NDC found in the NDC-HCPCS crosswalk")
            return
        hcpcs = drug_lines[0].code
        unit = self.rules.billing_unit(hcpcs, day)
        if self._drug_units(rec.drug.dose, rec.drug.dose_unit, unit) is None and rec.drug.dose is not None:
            add_alert(alerts, V.DRUG_UNITS_UNKNOWN, rec, subject, hcpcs, [],
                   f"No billing unit to compute units of {hcpcs} from the documented dose",
                   f"Verify the units of {hcpcs} by hand (billing unit unknown or dose unit incompatible)",
                   {"hcpcs": hcpcs})

    def _waste_modifier(self, f: AdminFacts, day, alerts, subject) -> None:
        """WASTE_MODIFIER_MISSING: Medicare single-dose container from 2023-07-01 without a
        documented wasted amount (JW/JZ policy)."""
        rec = f.rec
        if (self._waste_policy_applies(rec, day) and rec.drug.wasted_amount is None
                and any(ln.role == ROLE_DRUG for ln in f.lines)):
            add_alert(alerts, V.WASTE_MODIFIER_MISSING, rec, subject, rec.drug.hcpcs, [],
                   "Single-dose container without a documented wasted amount: JW or JZ required",
                   "Document the discarded amount (0 for none) so JZ or a JW line can be billed")
