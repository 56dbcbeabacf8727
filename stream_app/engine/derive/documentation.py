"""Documentation and identifiers of a billable administration (billing-rules.md §3,
§7, §8): MISSING_DOCUMENTATION, MISSING_DIAGNOSIS, INVALID_DIAGNOSIS_CODE, INVALID_NPI,
MISSING_SUPERVISION; `_record_checks` runs every per-record check, the encounter
context's too (derive/encounter.py).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date

from stream_app import vocabulary as V
from stream_app.engine.derive.encounter import STILL_IN_PROGRESS
from stream_app.engine.derive.model import (
    AdminFacts,
    Alert,
    RuleFamily,
    add_alert,
    icd10cm_shaped,
    npi_valid,
    route_of,
)
from stream_app.engine.records import Administration


class DocumentationRules(RuleFamily):
    def _record_checks(self, patient_id: str, day: date, f: AdminFacts, alerts: list[Alert],
                       settled: bool, open_missing_ndc: Callable[[date, str], bool],
                       day_closed: bool = False, contexts: dict | None = None) -> None:
        rec = f.rec
        # Billable: it derives a line (an oral drug with an HCPCS code does), or it is an
        # injection route, or the EHR proposed a code for it.
        billable = (bool(f.lines) or bool(rec.charge_code)
                    or f.no_code_reason not in ("not_injection", "procedural"))
        if not billable:
            return
        subject = "rec:" + rec.record_id
        code = self._line_code(f) or rec.charge_code
        self._missing_documentation(f, alerts, subject, code, day_closed)
        if rec.place_of_service is None or rec.payer_class is None:
            self._context_missing(rec, alerts, subject, code, contexts or {})
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

    def _missing_documentation(self, f: AdminFacts, alerts, subject, code,
                               day_closed: bool = False) -> None:
        """MISSING_DOCUMENTATION: billing-rules §7 plus ended_at for IV/IV_INFUSION, and
        for a record still in progress at close (ehr-mapping.md §2 (b)). Place of service
        and payer class are ENCOUNTER_CONTEXT_MISSING's (derive/encounter.py)."""
        rec, drug = f.rec, f.rec.drug
        missing = [name for name, value in (
            ("drug.name", drug.name), ("drug.dose", drug.dose), ("drug.dose_unit", drug.dose_unit),
            ("route", rec.route), ("site", rec.site), ("drug.lot_number", drug.lot_number),
            ("performer_id", rec.performer_id), ("rendering_npi", rec.rendering_npi),
        ) if value is None]
        if rec.ended_at is None and route_of(rec.route) in (V.IV, V.IV_INFUSION):
            missing.append("ended_at")
        in_progress = rec.in_progress and day_closed
        if in_progress and "ended_at" not in missing:
            missing.append("ended_at")
        if missing:
            add_alert(alerts, V.MISSING_DOCUMENTATION, rec, subject, code, [],
                   f"Administration {rec.record_id} lacks required documentation: "
                   + ", ".join(missing),
                   "Complete the administration record: " + ", ".join(missing),
                   {"missing_fields": missing, "cause": STILL_IN_PROGRESS} if in_progress
                   else {"missing_fields": missing})

    def _diagnosis(self, rec, alerts, subject, code, required: bool) -> None:
        """MISSING_DIAGNOSIS (administrations) and INVALID_DIAGNOSIS_CODE (all lines)."""
        if not rec.diagnosis_codes:
            if required:
                add_alert(alerts, V.MISSING_DIAGNOSIS, rec, subject, code, [],
                       f"No ICD-10-CM diagnosis on record {rec.record_id}",
                       "Add the diagnosis that supports medical necessity")
            return
        bad = [i for i, c in enumerate(rec.diagnosis_codes) if not icd10cm_shaped(c)]
        if bad:
            add_alert(alerts, V.INVALID_DIAGNOSIS_CODE, rec, subject, code, [],
                   f"Diagnosis code position(s) {', '.join(str(i + 1) for i in bad)} on record "
                   f"{rec.record_id} are not ICD-10-CM shaped",
                   "Correct the diagnosis code(s) to valid ICD-10-CM",
                   {"invalid_positions": [i + 1 for i in bad],
                    "invalid_codes": [rec.diagnosis_codes[i] for i in bad]})

    def _npi(self, rec, alerts, subject, code, npis) -> None:
        """INVALID_NPI: the Luhn check digit over 80840 + 9 digits (billing-rules §8)."""
        bad = [name for name, value in npis if value is not None and not npi_valid(value)]
        if bad:
            add_alert(alerts, V.INVALID_NPI, rec, subject, code, [],
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
        add_alert(alerts, V.MISSING_SUPERVISION, rec, subject, code, [],
               f"Injection by a {rec.performer_credential or 'performer without credential'} "
               f"at POS {rec.place_of_service} without a supervising NPI",
               "Document the supervising physician/QHP (supervising_npi)",
               {"performer_credential": rec.performer_credential})
