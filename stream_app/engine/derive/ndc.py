"""NDC: matching pharmacy dispenses to administrations (contract.md §3) and
INVALID_NDC, NDC_MISMATCH, MISSING_NDC.
"""

from __future__ import annotations

from stream_app import vocabulary as V
from stream_app.engine.derive.model import (
    AdminFacts,
    RuleFamily,
    add_alert,
    alert_key,
    ndc11_of,
)
from stream_app.engine.records import Dispense


class NdcRules(RuleFamily):
    def _match_dispenses(self, facts: list[AdminFacts], dispenses: list[Dispense]) -> None:
        """Dispense matching (contract.md §3): same order_id whatever the day; without one,
        same service date and NDC 11 (else drug name), earliest unmatched administration."""
        if not dispenses:
            return  # the common case: nothing to match
        by_order: dict[str, list[AdminFacts]] = {}
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
            d_ndc = ndc11_of(d.ndc) if d.ndc else None
            target: AdminFacts | None = None
            if d_ndc:
                target = next((f for f in same_day if f.ndc11 == d_ndc), None)
            if target is None and d.drug_name:
                dn = d.drug_name.strip().lower()
                target = next((f for f in same_day
                               if (f.rec.drug.name or "").strip().lower() == dn), None)
            if target is not None:
                target.dispenses.append(d)

    def _ndc_checks(self, patient_id, day, f: AdminFacts, alerts, subject, settled,
                    open_missing_ndc) -> None:
        """INVALID_NDC, NDC_MISMATCH, MISSING_NDC (only once settled; an open one stays open
        while the NDC is still missing, so it does not flap when unrelated records arrive)."""
        rec = f.rec
        code = rec.drug.hcpcs or self._line_code(f)
        disp_raw = [x.ndc for x in f.dispenses if x.ndc]
        disp_ndc = [ndc11_of(x) for x in disp_raw]
        if f.ndc_invalid or (not f.ndc11 and disp_raw and not any(disp_ndc)):
            add_alert(alerts, V.INVALID_NDC, rec, subject, code, [],
                   f"NDC on record {rec.record_id} cannot be converted to 11 digits (5-4-2)",
                   "Enter the NDC from the package in 4-4-2, 5-3-2, 5-4-1 (hyphenated) or 11 digits",
                   {"source": "administration" if f.ndc_invalid else "dispense"})
            return
        valid_disp = next((n for n in disp_ndc if n), None)
        if f.ndc11 and valid_disp and valid_disp != f.ndc11:
            add_alert(alerts, V.NDC_MISMATCH, rec, subject, code, [],
                   f"Administration NDC {f.ndc11} differs from the dispensed NDC {valid_disp}",
                   "Confirm which product was given and correct the NDC",
                   {"administration_ndc": f.ndc11, "dispense_ndc": valid_disp})
        if not f.ndc11 and not valid_disp:
            akey = alert_key(patient_id, day, V.MISSING_NDC, subject)
            if settled or open_missing_ndc(day, akey):
                add_alert(alerts, V.MISSING_NDC, rec, subject, code, [],
                       f"No NDC for the drug on record {rec.record_id} (administration or dispense)",
                       "Record the NDC from the package, or link the pharmacy dispense (order_id)")
