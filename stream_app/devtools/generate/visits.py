"""The patient/visit model: clinics and staff, patients visiting on some days, encounters
with E/M visits, administrations and pharmacy dispenses, timestamps in the clinic's zone."""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

from stream_app.devtools.generate.catalogue import (
    ALLERGENS,
    CHRONIC_DX,
    DELTOID,
    FACILITY_POS,
    IM_SITES,
    IMSC_BY_NAME,
    IV_SITES,
    KNEE,
    REPEATABLE,
    SC_SITES,
    SD,
    TRIAMCINOLONE_JOINT,
    W_ALLERGEN,
    W_DOSES,
    W_IMSC,
    W_IMSC_96372,
    W_IMSC_NO_MEDROXY,
    W_IMSC_SINGLE,
    W_INFUSION,
    W_ORAL,
    W_PAYER,
    W_PUSH,
    W_ROUTE_SPELLING,
    W_ROUTES,
    W_SCENARIO,
    W_SETTING,
    W_TZ,
    W_VACCINE,
    Clinic,
    DrugSpec,
    Product,
    Staff,
    Weighted,
    ndc_label_to_11,
    npi_check_digit,
)
from stream_app.devtools.generate.errors import ERROR_SHAPE
from stream_app.devtools.generate.versions import Version
from stream_app.vocabulary import ADMINISTRATION, DISPENSE, EM_SERVICE


class VisitModel:
    """Mixin of the generator: builds clinics and walks patients through their encounters."""

    # ids -------------------------------------------------------------------------------
    def _event_id(self) -> str:
        self.n_event += 1
        return f"ev-{self.tag}-{self.n_event:09d}"

    def _record_id(self, prefix: str) -> str:
        self.n_record += 1
        return f"{prefix}-{self.tag}-{self.n_record:09d}"

    def _staff(self, credential: str, with_npi: bool) -> Staff:
        self.n_staff += 1
        npi = None
        if with_npi:
            first9 = str(self.rng.choice("12")) + "".join(
                str(self.rng.randrange(10)) for _ in range(8))
            npi = first9 + npi_check_digit(first9)
        return Staff(f"stf-{self.tag}-{self.n_staff:05d}", credential, npi)

    def _build_clinics(self) -> None:
        rng = self.rng
        if self.patients is not None:
            est = self.patients
        else:
            est = int((self.records or 0) / (1.6 * self.days)) + 1
        n = max(3, min(80, est // 300 + 3))
        self.clinics: list[Clinic] = []
        for _ in range(n):
            tz_name = W_TZ.pick(rng)
            physicians = [self._staff(rng.choice(("MD", "MD", "MD", "DO")), True)
                          for _ in range(rng.randint(2, 5))]
            apps = [self._staff(rng.choice(("NP", "NP", "PA")), True)
                    for _ in range(rng.randint(0, 2))]
            nurses = [self._staff(rng.choice(("RN", "RN", "RN", "LPN")), False)
                      for _ in range(rng.randint(2, 5))]
            assistants = [self._staff("MA", False) for _ in range(rng.randint(1, 4))]
            self.clinics.append(Clinic(self._tz_names.index(tz_name), tz_name,
                                        physicians + apps, physicians, nurses, assistants))

    # time ------------------------------------------------------------------------------
    # Times are local seconds since start-date midnight in the clinic's zone.
    def _offset(self, tz: int, day: int) -> tuple[int, str]:
        key = (tz, day)
        got = self._offsets.get(key)
        if got is None:
            noon = datetime.combine(self.start + timedelta(days=day), datetime.min.time())
            noon = noon.replace(hour=12, tzinfo=self._zones[tz])
            secs = int(noon.utcoffset().total_seconds())
            sign = "-" if secs < 0 else "+"
            h, m = divmod(abs(secs) // 60, 60)
            got = (secs, f"{sign}{h:02d}:{m:02d}")
            self._offsets[key] = got
        return got

    def _date(self, day: int) -> str:
        got = self._dates.get(day)
        if got is None:
            got = self._dates[day] = (self.start + timedelta(days=day)).isoformat()
        return got

    def _ts(self, tz: int, s: int, millis: int | None = None) -> str:
        day, sod = divmod(s, 86400)
        h, r = divmod(sod, 3600)
        m, sec = divmod(r, 60)
        frac = f".{millis:03d}" if millis is not None else ""
        return f"{self._date(day)}T{h:02d}:{m:02d}:{sec:02d}{frac}{self._offset(tz, day)[1]}"

    def _utc(self, tz: int, s: int) -> int:
        return s - self._offset(tz, s // 86400)[0]

    def _ts_utc(self, utc_s: int) -> str:
        day, sod = divmod(utc_s, 86400)
        h, r = divmod(sod, 3600)
        m, sec = divmod(r, 60)
        return f"{self._date(day)}T{h:02d}:{m:02d}:{sec:02d}Z"


    def _lot(self) -> str:
        rng = self.rng
        letters = "ABCDEFGHJKLMNPRSTUVWXYZ"
        style = rng.randrange(3)
        if style == 0:
            return f"{rng.choice(letters)}{rng.choice(letters)}{rng.randrange(1000, 99999)}"
        if style == 1:
            return f"{rng.randrange(10)}{rng.choice(letters)}{rng.randrange(100, 999)}" \
                   f"{rng.choice(letters)}"
        return f"LT{rng.randrange(1000, 9999)}"

    # NDC ---------------------------------------------------------------------------------
    def _ndc_form(self, label: str, for_dispense: bool = False) -> str:
        r = self.rng.random()
        n11 = ndc_label_to_11(label)
        if for_dispense:
            return n11 if r < 0.7 else label
        if r < 0.6:
            return label
        if r < 0.75:
            return f"{n11[:5]}-{n11[5:9]}-{n11[9:]}"
        return n11


    # patients and encounters ---------------------------------------------------------
    def run(self) -> list[Version]:
        rng = self.rng
        target = None
        if self.records is not None:
            target = max(1, int(self.records / (1.0 + self.redeliver_rate)))
        p = 0
        while True:
            if self.patients is not None and p >= self.patients:
                break
            if target is not None and len(self.versions) >= target:
                break
            p += 1
            patient_id = f"pt-{self.tag}-{p:07d}"
            payer = W_PAYER.pick(rng)
            clinic = self.clinics[rng.randrange(len(self.clinics))]
            self.stats["patients"] += 1
            self._given: set[str] = set()
            for day in range(self.days):
                if rng.random() < self.visit_rate:
                    self._encounter(patient_id, payer, clinic, day)
        return self.versions


    def _encounter(self, patient_id: str, payer: str, clinic: Clinic, day: int) -> None:
        rng = self.rng
        error = self._pick_error(payer)
        if error is None:
            needs_em = False
            pos = W_SETTING.pick(rng)
            scenario = "any"
        else:
            scenario, needs_em, forced_pos = ERROR_SHAPE.get(error, ("imsc", False, None))
            if forced_pos == "facility":
                pos = rng.choice(FACILITY_POS)
            elif forced_pos is not None:
                pos = forced_pos
            elif scenario == "any":
                pos = W_SETTING.pick(rng)
            else:
                pos = "11" if rng.random() < 0.85 else "20"
        if scenario == "any":
            if pos in FACILITY_POS:
                scenario = "facility"
            elif pos == "12":
                scenario = "home"
            else:
                scenario = W_SCENARIO.pick(rng)

        self.n_encounter += 1
        self.stats["encounters"] += 1
        encounter_id = f"enc-{self.tag}-{self.n_encounter:08d}"
        tz = clinic.tz
        latest_start = 13 * 3600 if error == "repeat_same_drug" else 16 * 3600 + 1800
        start = day * 86400 + rng.randint(7 * 3600 + 1800, latest_start)
        provider = rng.choice(clinic.providers)
        common = {"patient_id": patient_id, "encounter_id": encounter_id,
                  "tz": tz, "pos": pos, "payer": payer, "provider": provider,
                  "clinic": clinic}

        # --- administrations --------------------------------------------------------
        admins: list[dict] = []  # each: {"rec", "spec", "product", "recorded"}
        t = start + rng.randint(10, 35) * 60
        n_imsc = 0
        if scenario in ("imsc", "imsc_vaccine"):
            w = W_IMSC_NO_MEDROXY if payer == "medicare" else W_IMSC
            if error is not None:
                w = W_IMSC_96372
            if error == "medicare_waste_missing":
                w = W_IMSC_SINGLE
            r = rng.random()
            n_imsc = 1 if r < 0.72 else (2 if r < 0.94 else 3)
            if error == "repeat_same_drug":
                n_imsc = 1
            chosen: list[DrugSpec] = []
            for _ in range(n_imsc * 4):
                spec = IMSC_BY_NAME[rng.choice(REPEATABLE)] if (
                    error == "repeat_same_drug") else w.pick(rng)
                if spec.hcpcs in self._given and error != "repeat_same_drug":
                    continue  # a drug given to this patient on an earlier day: rarely again
                if all(spec.hcpcs != c.hcpcs for c in chosen):
                    chosen.append(spec)
                if len(chosen) == n_imsc:
                    break
            for spec in chosen:
                admins.append(self._admin(common, spec, t, force_single=(
                    error == "medicare_waste_missing" and not admins)))
                t += rng.randint(1, 8) * 60 + rng.randrange(60)
        if scenario in ("vaccine", "imsc_vaccine"):
            n_vax = 1 if rng.random() < 0.7 else 2
            chosen = []
            for _ in range(8):
                spec = W_VACCINE.pick(rng)
                if spec not in chosen:
                    chosen.append(spec)
                if len(chosen) == n_vax:
                    break
            for i, spec in enumerate(chosen):
                a = self._admin(common, spec, t)
                if rng.random() < 0.3:
                    a["rec"]["charge_code"] = "90471" if i == 0 else "90472"
                admins.append(a)
                t += rng.randint(1, 5) * 60 + rng.randrange(60)
        if scenario == "allergen":
            chosen = [W_ALLERGEN.pick(rng)]
            if rng.random() < 0.4:
                other = [s for s in ALLERGENS if s is not chosen[0]]
                chosen.append(other[0])
            for spec in chosen:
                admins.append(self._admin(common, spec, t))
                t += rng.randint(1, 3) * 60
        if scenario == "push":
            n_push = 1 if rng.random() < 0.65 else 2
            chosen = []
            for _ in range(8):
                spec = W_PUSH.pick(rng)
                if all(spec.hcpcs != c.hcpcs for c in chosen):
                    chosen.append(spec)
                if len(chosen) == n_push:
                    break
            for i, spec in enumerate(chosen):
                a = self._admin(common, spec, t, iv_staff=True)
                rec = a["rec"]
                if rng.random() < 0.6:
                    rec["ended_at"] = self._ts(tz, t + rng.randint(30, 300))
                if rng.random() < 0.5:
                    rec["charge_code"] = "96374" if i == 0 else "96375"
                admins.append(a)
                t += rng.randint(4, 14) * 60 + rng.randrange(60)
        if scenario == "infusion":
            spec = W_INFUSION.pick(rng)
            a = self._admin(common, spec, t, iv_staff=True)
            a["rec"]["ended_at"] = self._ts(tz, t + rng.randint(40, 200) * 60)
            if rng.random() < 0.5:
                a["rec"]["charge_code"] = "96365"
            admins.append(a)
        if scenario == "joint":
            admins.append(self._admin(common, TRIAMCINOLONE_JOINT, t, physician=True))
        if scenario in ("oral", "facility") and (scenario == "oral" or rng.random() < 0.5):
            admins.append(self._admin(common, W_ORAL.pick(rng), t))
        if scenario == "home":
            spec = IMSC_BY_NAME[rng.choice(("cyanocobalamin", "enoxaparin sodium",
                                            "ceftriaxone", "heparin sodium"))]
            if spec.hcpcs not in self._given:
                admins.append(self._admin(common, spec, t))

        injection_day = any(a["injection"] for a in admins)
        for a in admins:
            if a["spec"].hcpcs:
                self._given.add(a["spec"].hcpcs)

        # --- E/M ----------------------------------------------------------------------
        em = None
        if scenario == "facility" or scenario == "em_only":
            want_em = True
        elif scenario == "home" or scenario == "allergen":
            want_em = needs_em or rng.random() < 0.1
        else:
            want_em = needs_em or rng.random() < (0.85 if pos == "20" else 0.6)
        if want_em:
            em = self._em(common, start, admins, injection_day, scenario)

        # --- error injection -----------------------------------------------------------
        host_valid: dict | None = None
        host: dict | None = None
        withdraw_fix = False
        extra: list[tuple[dict, int]] = []
        if error is not None:
            host, host_valid, withdraw_fix, extra = self._inject(error, common, admins, em)
            if host is None:  # could not inject (should not happen): count as valid
                error = None
            else:
                self.labels[(host["event_type"], host["record_id"])] = error
                self.stats["error:" + error] += 1

        # --- dispenses ----------------------------------------------------------------
        for a in admins:
            self._dispense(common, a)

        # --- emit ---------------------------------------------------------------------
        if em is not None:
            rec, rs = em
            self._finish(rec, host_valid if rec is host else None, tz, rs,
                         error if rec is host else None)
        for a in admins:
            rec = a["rec"]
            is_host = rec is host
            self._finish(rec, host_valid if is_host else None, tz, a["recorded"],
                         error if is_host else None, withdraw_fix and is_host)
            if a.get("dispense") is not None:
                d, ds = a["dispense"]
                self._finish(d, None, tz, ds, None)
        for rec, rs in extra:
            self._finish(rec, None, tz, rs, None)

    def _admin(self, c: dict, spec: DrugSpec, t: int, *, iv_staff: bool = False,
               physician: bool = False, force_single: bool = False) -> dict:
        rng = self.rng
        clinic: Clinic = c["clinic"]
        tz = c["tz"]
        if len(spec.routes) == 1:
            route = spec.routes[0][0]
        else:
            wr = W_ROUTES.get(id(spec))
            if wr is None:
                wr = W_ROUTES[id(spec)] = Weighted(spec.routes)
            route = wr.pick(rng)
        wd = W_DOSES.get(id(spec))
        if wd is None:
            wd = W_DOSES[id(spec)] = Weighted(spec.doses)
        dose = wd.pick(rng)
        products = spec.products
        if force_single:
            products = tuple(p for p in products if p.container == SD) or products
        fitting = [p for p in products if p.amount >= dose] or list(products)
        if len(fitting) > 1 and rng.random() < 0.75:
            exact = [p for p in fitting if p.amount == dose]
            product = exact[0] if exact else min(fitting, key=lambda p: p.amount)
        else:
            product = fitting[rng.randrange(len(fitting))]
        if force_single and product.container != SD:
            product = next(p for p in products if p.container == SD)

        # performer
        provider: Staff = c["provider"]
        pos = c["pos"]
        if physician or (route != "ORAL" and rng.random() < 0.07):
            performer = provider
        elif iv_staff or pos in FACILITY_POS or pos == "12":
            performer = rng.choice(clinic.nurses)
        else:
            pool = clinic.nurses + clinic.assistants
            performer = pool[rng.randrange(len(pool))]
        supervising = None
        if performer.npi is None:
            supervising = provider.npi if provider.credential in ("MD", "DO") \
                or rng.random() < 0.5 else rng.choice(clinic.physicians).npi

        occurred = self._ts(tz, t)
        rec: dict[str, Any] = {
            "event_type": ADMINISTRATION,
            "event_id": self._event_id(),
            "record_id": self._record_id("mar"),
            "patient_id": c["patient_id"],
        }
        if rng.random() < 0.97:
            rec["encounter_id"] = c["encounter_id"]
        if rng.random() < 0.25:
            rec["status"] = "completed"
        rec["occurred_at"] = occurred
        recorded = t + rng.randint(60, 1800)
        rec["recorded_at"] = self._ts(tz, recorded, rng.randrange(1000)
                                      if rng.random() < 0.3 else None)
        rec["facility_timezone"] = clinic.tz_name
        rec["place_of_service"] = pos
        rec["payer_class"] = c["payer"]
        rec["route"] = W_ROUTE_SPELLING[route].pick(rng)
        if route == "IM":
            site = rng.choice(DELTOID if spec.category == "vaccine" else IM_SITES)
        elif route == "SC":
            site = rng.choice(SC_SITES)
        elif route in ("IV_PUSH", "IV_INFUSION"):
            site = rng.choice(IV_SITES)
        elif route == "INTRA_ARTICULAR":
            site = rng.choice(KNEE)
        else:
            site = "mouth"
        rec["site"] = site

        unit = spec.unit
        shown_dose: float = dose
        shown_unit = unit
        if unit == "mg" and dose >= 1000 and dose % 1000 == 0 and rng.random() < 0.5:
            shown_dose, shown_unit = dose / 1000, "g"
        if shown_dose == int(shown_dose):
            shown_dose = int(shown_dose)
        drug: dict[str, Any] = {"name": spec.name}
        has_ndc = rng.random() < 0.9
        if has_ndc:
            drug["ndc"] = self._ndc_form(product.ndc)
        hcpcs = spec.code_for(dose)
        if hcpcs is not None:
            drug["hcpcs"] = hcpcs
        drug["dose"] = shown_dose
        drug["dose_unit"] = shown_unit
        if spec.category != "therapeutic" or rng.random() < 0.8:
            drug["category"] = spec.category
        drug["container"] = product.container
        if product.container == SD:
            n = math.ceil(dose / product.amount - 1e-9)
            waste = n * product.amount - dose
            if c["payer"] == "medicare" or spec.category == "vaccine" or rng.random() < 0.7:
                w = waste / 1000 if shown_unit == "g" else waste
                drug["wasted_amount"] = int(w) if w == int(w) else round(w, 3)
        lot = self._lot()
        drug["lot_number"] = lot
        rec["drug"] = drug
        rec["performer_id"] = performer.staff_id
        rec["performer_credential"] = performer.credential
        rec["rendering_npi"] = provider.npi
        if supervising is not None:
            rec["supervising_npi"] = supervising
        dx = [rng.choice(spec.dx)]
        if rng.random() < 0.25:
            extra = rng.choice(CHRONIC_DX)
            if extra not in dx:
                dx.append(extra)
        rec["diagnosis_codes"] = dx
        injection = route in ("IM", "SC") and spec.category in ("therapeutic", "prophylactic",
                                                                "diagnostic")
        if injection and rng.random() < 0.8:
            rec["charge_code"] = "96372"
        if spec.category == "hormonal_antineoplastic" and rng.random() < 0.5:
            rec["charge_code"] = "96402"
        return {"rec": rec, "spec": spec, "product": product, "recorded": recorded,
                "t": t, "lot": lot, "has_ndc": has_ndc, "dose": dose,
                "injection": injection or route in ("IV_PUSH", "IV_INFUSION"),
                "imsc": injection, "dispense": None, "no_dispense": False,
                "performer": performer}

    def _em(self, c: dict, start: int, admins: list[dict], injection_day: bool,
            scenario: str) -> tuple[dict, int]:
        rng = self.rng
        tz = c["tz"]
        pos = c["pos"]
        t = start + rng.randint(0, 8) * 60
        if pos == "21":
            code = rng.choice(("99231", "99232", "99232", "99233"))
        elif scenario in ("em_only", "oral") and rng.random() < 0.35:
            code = "99211"
        else:
            code = rng.choice(("99212", "99213", "99213", "99213", "99214", "99214", "99215"))
        procedure_day = any(a["spec"].routes[0][0] != "ORAL" for a in admins)
        if injection_day:
            modifiers = ["25"]
            separately = True
        else:
            modifiers = ["25"] if procedure_day and code != "99211" else []
            separately = rng.random() < 0.7 if not procedure_day else True
        dx: list[str] = []
        for a in admins:
            for d in a["rec"]["diagnosis_codes"]:
                if d not in dx:
                    dx.append(d)
        if not dx:
            dx.append(rng.choice(("I10", "E11.9", "J06.9", "M54.50", "R05.9", "Z00.00")))
        if rng.random() < 0.4:
            extra = rng.choice(CHRONIC_DX)
            if extra not in dx:
                dx.append(extra)
        rec: dict[str, Any] = {
            "event_type": EM_SERVICE,
            "event_id": self._event_id(),
            "record_id": self._record_id("emn"),
            "patient_id": c["patient_id"],
            "encounter_id": c["encounter_id"],
            "occurred_at": self._ts(tz, t),
        }
        recorded = t + rng.randint(15 * 60, 6 * 3600)
        rec["recorded_at"] = self._ts(tz, recorded)
        rec["facility_timezone"] = c["clinic"].tz_name
        rec["code"] = code
        if modifiers or rng.random() < 0.5:
            rec["modifiers"] = modifiers
        if separately or rng.random() < 0.5:
            rec["separately_identifiable"] = separately
        rec["place_of_service"] = pos
        rec["payer_class"] = c["payer"]
        rec["rendering_npi"] = c["provider"].npi
        rec["diagnosis_codes"] = dx
        return rec, recorded

    def _dispense(self, c: dict, a: dict) -> None:
        rng = self.rng
        rec = a["rec"]
        spec: DrugSpec = a["spec"]
        if a["no_dispense"]:
            return
        need = "ndc" not in rec["drug"]
        if not need and rng.random() >= 0.72:
            return
        tz = c["tz"]
        t = a["t"]
        if rng.random() < 0.7:
            dt = t - rng.randint(5 * 60, 30 * 60)
        else:
            dt = t + rng.randint(2 * 60, 90 * 60)
        with_order = rng.random() < 0.85
        d: dict[str, Any] = {
            "event_type": DISPENSE,
            "event_id": self._event_id(),
            "record_id": self._record_id("rx"),
            "patient_id": c["patient_id"],
        }
        if rng.random() < 0.5:
            d["encounter_id"] = c["encounter_id"]
        if with_order:
            self.n_order += 1
            order_id = f"ord-{self.tag}-{self.n_order:08d}"
            d["order_id"] = order_id
            rec["order_id"] = order_id
        if rng.random() < 0.4:
            d["occurred_at"] = self._ts_utc(self._utc(tz, dt))
        else:
            d["occurred_at"] = self._ts(tz, dt)
        recorded = dt + rng.randint(0, 120)
        if rng.random() < 0.5:  # else it defaults to occurred_at
            d["recorded_at"] = self._ts(tz, recorded)
        else:
            recorded = dt
        d["facility_timezone"] = c["clinic"].tz_name
        d["ndc"] = self._ndc_form(a["product"].ndc, for_dispense=True)
        name = spec.name
        d["drug_name"] = name if rng.random() < 0.8 else name.title()
        product: Product = a["product"]
        if product.container == SD:
            d["quantity"] = max(1, math.ceil(a["dose"] / product.amount - 1e-9))
            d["quantity_unit"] = "UN"
        elif product.ml > 0:
            ml = round(a["dose"] / product.amount * product.ml, 2)
            d["quantity"] = int(ml) if ml == int(ml) else ml
            d["quantity_unit"] = "ML"
        else:
            d["quantity"] = 1
            d["quantity_unit"] = "UN"
        d["lot_number"] = a["lot"]
        a["dispense"] = (d, recorded)

