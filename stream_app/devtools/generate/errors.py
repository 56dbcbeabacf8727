"""Injected problems: the error kinds, the reason code a correct validator raises for each,
and how one encounter is changed to carry one."""

from __future__ import annotations

from stream_app import vocabulary
from stream_app.devtools.generate.catalogue import INVALID_DIAGNOSES, SD, Clinic, ndc_label_to_11

ERROR_KINDS: tuple[str, ...] = (
    "em_missing_modifier_25",  # E/M on an injection day, separately identifiable, no 25
    "em_99211_with_injection",  # 99211 the same day as a 96372
    "em_not_separately_identifiable",  # E/M with 25 but separately_identifiable false
    "iv_push_coded_96372",  # IV push with charge_code 96372
    "missing_ndc",  # no NDC on the administration and no dispense
    "malformed_ndc",  # unhyphenated 10-digit NDC
    "facility_pos_96372",  # 96372 proposed at a facility POS
    "duplicate_administration",  # same drug documented by a second provider within 5 min
    "missing_lot_number",
    "missing_site",
    "repeat_same_drug",  # same drug injected again later the same day (validator adds 76/77)
    "invalid_npi",  # rendering or supervising NPI with a wrong check digit
    "missing_diagnosis",
    "invalid_diagnosis",  # diagnosis code not ICD-10-CM shaped
    "missing_supervision",  # MA at POS 11 without supervising_npi
    "medicare_waste_missing",  # Medicare single-dose container without wasted_amount
    "modifier_25_on_96372",  # charge_modifiers ["25"] proposed on a 96372
)

# The reason code a correct validator raises for each kind (None: no alert, the
# validator derives the right modifier itself).
EXPECTED_REASON: dict[str, str | None] = {
    "em_missing_modifier_25": vocabulary.EM_MISSING_MODIFIER_25,
    "em_99211_with_injection": vocabulary.EM_99211_SAME_DAY,
    "em_not_separately_identifiable": vocabulary.EM_NOT_SEPARATELY_IDENTIFIABLE,
    "iv_push_coded_96372": vocabulary.WRONG_ADMIN_CODE,
    "missing_ndc": vocabulary.MISSING_NDC,
    "malformed_ndc": vocabulary.INVALID_NDC,
    "facility_pos_96372": vocabulary.FACILITY_SETTING,
    "duplicate_administration": vocabulary.DUPLICATE_SERVICE,
    "missing_lot_number": vocabulary.MISSING_DOCUMENTATION,
    "missing_site": vocabulary.MISSING_DOCUMENTATION,
    "repeat_same_drug": None,
    "invalid_npi": vocabulary.INVALID_NPI,
    "missing_diagnosis": vocabulary.MISSING_DIAGNOSIS,
    "invalid_diagnosis": vocabulary.INVALID_DIAGNOSIS_CODE,
    "missing_supervision": vocabulary.MISSING_SUPERVISION,
    "medicare_waste_missing": vocabulary.WASTE_MODIFIER_MISSING,
    "modifier_25_on_96372": vocabulary.MODIFIER_NOT_ALLOWED,
}


# Errors that need a particular encounter shape: (scenario, needs E/M, forced POS or None).
ERROR_SHAPE: dict[str, tuple[str, bool, str | None]] = {
    "em_missing_modifier_25": ("imsc", True, None),
    "em_99211_with_injection": ("imsc", True, None),
    "em_not_separately_identifiable": ("imsc", True, None),
    "iv_push_coded_96372": ("push", False, None),
    "facility_pos_96372": ("imsc", True, "facility"),
    "missing_supervision": ("imsc", False, "11"),
    "invalid_npi": ("any", False, None),
}
MEDICARE_ONLY_ERRORS = ("medicare_waste_missing",)


class ErrorInjection:
    """Mixin of the generator: picks an error kind and injects it into an encounter."""

    def _pick_error(self, payer: str) -> str | None:
        if self.error_rate <= 0 or self.rng.random() >= self.error_rate:
            return None
        w = self._w_err_medicare if payer == "medicare" else self._w_err_other
        if w is None:
            return None
        kind = w.pick(self.rng)
        return kind


    # error injection -------------------------------------------------------------------
    def _inject(self, kind: str, c: dict, admins: list[dict], em: tuple[dict, int] | None):
        """Mutate one record; returns (host, valid copy or None, withdraw_fix, extra)."""
        rng = self.rng
        imsc = [a for a in admins if a["imsc"]]
        first = imsc[0] if imsc else None

        def snapshot(rec: dict) -> dict:
            s = dict(rec)
            if "drug" in s:
                s["drug"] = dict(s["drug"])
            return s

        if kind in ("em_missing_modifier_25", "em_99211_with_injection",
                    "em_not_separately_identifiable"):
            if em is None or first is None:
                return None, None, False, []
            rec = em[0]
            valid = snapshot(rec)
            if kind == "em_missing_modifier_25":
                rec["modifiers"] = []
                rec["separately_identifiable"] = True
            elif kind == "em_99211_with_injection":
                rec["code"] = "99211"
                rec["modifiers"] = ["25"] if rng.random() < 0.5 else []
            else:
                rec["modifiers"] = ["25"]
                rec["separately_identifiable"] = False
            return rec, valid, False, []
        if kind == "iv_push_coded_96372":
            pushes = [a for a in admins if a["spec"].routes[0][0] == "IV_PUSH"]
            if not pushes:
                return None, None, False, []
            rec = pushes[0]["rec"]
            valid = snapshot(rec)
            valid.pop("charge_code", None)
            rec["charge_code"] = "96372"
            return rec, valid, False, []
        if kind == "invalid_npi":
            # only records that derive a line (not oral meds) can carry a billable NPI
            candidates = [a["rec"] for a in admins if a["spec"].routes[0][0] != "ORAL"]
            candidates += [em[0]] if em else []
            if not candidates:
                return None, None, False, []
            rec = candidates[rng.randrange(len(candidates))]
            valid = snapshot(rec)
            field_name = "supervising_npi" if "supervising_npi" in rec and rng.random() < 0.3 \
                else "rendering_npi"
            npi = rec[field_name]
            wrong = str((int(npi[9]) + rng.randint(1, 9)) % 10)
            rec[field_name] = npi[:9] + wrong
            return rec, valid, False, []
        if first is None:
            return None, None, False, []
        rec = first["rec"]
        valid = snapshot(rec)
        if kind == "missing_ndc":
            if "ndc" not in rec["drug"]:
                valid["drug"]["ndc"] = self._ndc_form(first["product"].ndc)
            rec["drug"].pop("ndc", None)
            rec.pop("order_id", None)
            first["no_dispense"] = True
        elif kind == "malformed_ndc":
            label = first["product"].ndc
            valid["drug"]["ndc"] = label
            n11 = ndc_label_to_11(label)
            # the 10 digits of the label without hyphens (ambiguous, hence invalid)
            rec["drug"]["ndc"] = label.replace("-", "") if len(label) == 12 else n11[1:]
            first["no_dispense"] = True
        elif kind == "facility_pos_96372":
            rec["charge_code"] = "96372"
            return rec, None, False, []
        elif kind == "missing_lot_number":
            rec["drug"].pop("lot_number", None)
        elif kind == "missing_site":
            rec.pop("site", None)
        elif kind == "missing_diagnosis":
            if rng.random() < 0.5:
                rec.pop("diagnosis_codes", None)
            else:
                rec["diagnosis_codes"] = []
        elif kind == "invalid_diagnosis":
            rec["diagnosis_codes"] = [rng.choice(INVALID_DIAGNOSES)] + rec["diagnosis_codes"][1:]
        elif kind == "missing_supervision":
            clinic: Clinic = c["clinic"]
            ma = rng.choice(clinic.assistants)
            for r in (rec, valid):
                r["performer_id"] = ma.staff_id
                r["performer_credential"] = "MA"
            valid["supervising_npi"] = c["provider"].npi if c["provider"].credential in (
                "MD", "DO") else clinic.physicians[0].npi
            rec.pop("supervising_npi", None)
            # keep field order stable: supervising_npi after rendering_npi
            valid = _reorder_like(valid, rec, "supervising_npi", "rendering_npi")
        elif kind == "medicare_waste_missing":
            if rec["drug"].get("container") != SD:
                return None, None, False, []
            rec["drug"].pop("wasted_amount", None)
        elif kind == "modifier_25_on_96372":
            rec["charge_code"] = "96372"
            valid["charge_code"] = "96372"
            rec["charge_modifiers"] = ["25"]
        elif kind == "duplicate_administration":
            clinic = c["clinic"]
            if "ndc" not in rec["drug"]:  # keep dispense matching unambiguous
                rec["drug"]["ndc"] = self._ndc_form(first["product"].ndc)
            dup = snapshot(rec)
            dup["event_id"] = self._event_id()
            dup["record_id"] = self._record_id("mar")
            dup.pop("order_id", None)
            t = first["t"] + rng.randint(60, 280)
            dup["occurred_at"] = self._ts(c["tz"], t)
            recorded = t + rng.randint(60, 1800)
            dup["recorded_at"] = self._ts(c["tz"], recorded)
            others = [s for s in clinic.nurses if s is not first["performer"]] or clinic.nurses
            nurse = others[rng.randrange(len(others))]
            dup["performer_id"] = nurse.staff_id
            dup["performer_credential"] = nurse.credential
            other_providers = [p for p in clinic.providers if p is not c["provider"]]
            second = other_providers[0] if other_providers else c["provider"]
            dup["rendering_npi"] = second.npi
            dup["supervising_npi"] = second.npi if second.credential in ("MD", "DO") \
                else clinic.physicians[0].npi
            dup["drug"]["lot_number"] = rec["drug"].get("lot_number", self._lot())
            # the duplicate hosts the error: it has the later occurred_at
            admins.append({"rec": dup, "spec": first["spec"], "product": first["product"],
                           "recorded": recorded, "t": t, "lot": first["lot"],
                           "has_ndc": "ndc" in dup["drug"], "dose": first["dose"],
                           "injection": True, "imsc": True, "dispense": None,
                           "no_dispense": "ndc" in dup["drug"], "performer": nurse})
            return dup, None, True, []
        elif kind == "repeat_same_drug":
            clinic = c["clinic"]
            if "ndc" not in rec["drug"]:  # else its dispense could match the repeat by NDC
                rec["drug"]["ndc"] = self._ndc_form(first["product"].ndc)
            rep = snapshot(rec)
            rep["event_id"] = self._event_id()
            rep["record_id"] = self._record_id("mar")
            rep.pop("order_id", None)
            t = first["t"] + rng.randint(2 * 3600, 6 * 3600)
            rep["occurred_at"] = self._ts(c["tz"], t)
            recorded = t + rng.randint(60, 1800)
            rep["recorded_at"] = self._ts(c["tz"], recorded)
            rep["drug"]["lot_number"] = self._lot()
            if rng.random() < 0.5:  # different rendering provider: 77, else 76
                other_providers = [p for p in clinic.providers if p is not c["provider"]]
                if other_providers:
                    second = other_providers[rng.randrange(len(other_providers))]
                    rep["rendering_npi"] = second.npi
                    if "supervising_npi" in rep:
                        rep["supervising_npi"] = second.npi if second.credential in (
                            "MD", "DO") else clinic.physicians[0].npi
            if "ndc" not in rep["drug"]:
                rep["drug"]["ndc"] = self._ndc_form(first["product"].ndc)
            admins.append({"rec": rep, "spec": first["spec"], "product": first["product"],
                           "recorded": recorded, "t": t, "lot": rep["drug"]["lot_number"],
                           "has_ndc": True, "dose": first["dose"], "injection": True,
                           "imsc": True, "dispense": None, "no_dispense": False,
                           "performer": first["performer"]})
            return rep, None, False, []
        else:  # pragma: no cover
            raise AssertionError(kind)
        return rec, valid, False, []



def _reorder_like(valid: dict, _rec: dict, key: str, after: str) -> dict:
    """Move `key` right after `after` (deterministic field order in amendments)."""
    value = valid.pop(key)
    out: dict = {}
    for k, v in valid.items():
        out[k] = v
        if k == after:
            out[key] = value
    if key not in out:
        out[key] = value
    return out
