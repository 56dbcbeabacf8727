"""Drug supply lines (billing-rules.md §6): HCPCS units from the dose, NDC quantity,
JW/JZ (WASTE_MODIFIER_MISSING), the documented waste against the package the crosswalk
describes (WASTE_UNITS_MISMATCH) and DRUG_UNITS_UNKNOWN.
"""

from __future__ import annotations

import math
from datetime import date

from stream_app import vocabulary as V
from stream_app.engine.derive.model import (
    ROLE_DRUG,
    ROLE_DRUG_WASTE,
    AdminFacts,
    Line,
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
        q = self._billing_units_exact(amount, dose_unit, unit)
        if q is None:
            return None
        return max(1, int(math.ceil(q - 1e-9)))

    def _billing_units_exact(self, amount, dose_unit, unit) -> float | None:
        """amount (in dose_unit) expressed in billing units, not rounded; None when the
        billing unit is unknown or the units are incompatible."""
        if amount is None or dose_unit is None or unit is None:
            return None
        scale = self.d.dose_unit_scale
        have, want = scale.get(dose_unit), scale.get(unit.unit)
        if have is None or want is None or have.unit != want.unit:
            return None
        return amount * have.factor / (unit.amount * want.factor)

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
        if not self._waste_policy_applies(rec, day):
            return
        drug_lines = [ln for ln in f.lines if ln.role in (ROLE_DRUG, ROLE_DRUG_WASTE)]
        if not drug_lines:
            return
        if rec.drug.wasted_amount is None:
            add_alert(alerts, V.WASTE_MODIFIER_MISSING, rec, subject, rec.drug.hcpcs, [],
                   "Single-dose container without a documented wasted amount: JW or JZ required",
                   "Document the discarded amount (0 for none) so JZ or a JW line can be billed")
            return
        self._waste_against_package(f, day, alerts, subject, drug_lines)

    def _waste_against_package(self, f: AdminFacts, day, alerts, subject,
                               drug_lines: list[Line]) -> None:
        """WASTE_UNITS_MISMATCH: the crosswalk's BILLUNITS says how many billing units one
        package item of the NDC holds. Opening ceil(dose / package) items leaves
        items x package - dose as waste; a documented wasted amount one billing unit or
        more away from that disagrees with the package. The billable JW units are what the
        opened items hold beyond the billed administered units (CMS JW/JZ FAQ)."""
        rec, drug = f.rec, f.rec.drug
        main = drug_lines[0]
        if main.role != ROLE_DRUG or not main.ndc:
            return
        package = self.rules.package_billing_units(main.ndc, main.code, day)
        unit = self.rules.billing_unit(main.code, day) if package else None
        dose = self._billing_units_exact(drug.dose, drug.dose_unit, unit)
        wasted = self._billing_units_exact(drug.wasted_amount, drug.dose_unit, unit)
        if dose is None or wasted is None or dose <= 0:
            return
        items = max(1, math.ceil(dose / package - 1e-9))
        expected_waste = items * package - dose
        if abs(wasted - expected_waste) < 1 - 1e-9:
            return
        billable_jw = max(0, math.floor(items * package - main.units + 1e-9))
        documented_jw = sum(ln.units for ln in drug_lines if ln.role == ROLE_DRUG_WASTE)
        price = self._price(main.code, rec.payer_class, rec.place_of_service, day) or 0.0
        recoverable = round(max(0, billable_jw - documented_jw) * price, 2)
        # the expected waste in the documented dose unit, for the coder
        per_unit = drug.wasted_amount / wasted if wasted else drug.dose / dose
        expected_amount = round(expected_waste * per_unit, 3)
        unit_name = drug.dose_unit
        add_alert(alerts, V.WASTE_UNITS_MISMATCH, rec, subject, main.code, drug_lines,
               f"Documented waste of {main.code} ({drug.wasted_amount:g} {unit_name}) disagrees "
               f"with the package: NDC {main.ndc} holds {package:g} billing units per item, "
               f"{drug.dose:g} {unit_name} administered leaves {expected_amount:g} {unit_name} "
               f"({billable_jw} JW units)",
               f"Correct the documented wasted amount to {expected_amount:g} {unit_name} and bill "
               f"{main.code}-JW x {billable_jw}, or correct the NDC if another package was used",
               {"ndc": main.ndc, "package_billing_units": package, "items_opened": items,
                "administered_units": main.units, "expected_jw_units": billable_jw,
                "documented_jw_units": documented_jw, "recoverable_revenue": recoverable})
