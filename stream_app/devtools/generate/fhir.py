"""The generated stream as FHIR R4 (`generate --format fhir`): each canonical record
becomes one transaction Bundle, as an EHR publishes a charted event with its context.

* `medication.administered` → MedicationAdministration (contained Medication with the NDC,
  HCPCS and name codings, lot and drug extensions; contained Practitioner for the
  performer's credential), the ChargeItem of its proposed administration code linked by
  `service`, and the visit: Encounter, Location (place-of-service type) and Coverage (SOPT
  type);
* `em.service` → ChargeItem with the E/M CPT code, modifier and separately-identifiable
  extensions, and the same visit entries;
* `drug.dispensed` → MedicationDispense (contained Medication, tz-code on
  `whenHandedOver`), its Encounter only referenced (a dispense takes no visit context but
  the zone, which it carries itself).

Adapting a Bundle (stream_app.adapters.fhir, ehr-mapping.md §3) gives back the record
(its own `event_id`, `source`; `recorded_at` from `meta.lastUpdated`, its `versionId` the
canonical event id so amendments stay versions of one resource), and an
`encounter.updated` from the visit entries; context fields the FHIR resource has no
element for (place of service, payer class) come back through that encounter
(ehr-mapping.md §2). The Encounter entry is the same in every Bundle of a visit (no
`versionId`: its identity is the hash of its content), so repeating it is a redelivery.

An administration or E/M record *without* `encounter_id` cannot carry its place of
service or payer class in FHIR (they are Encounter elements): `fhir_message` returns None
for it and the stream keeps it canonical (`encode_stream`).
"""

from __future__ import annotations

from typing import Any

import orjson

from stream_app.adapters.fhir.mapping import (
    DEFAULT_EXTENSION_BASE,
    SYS_CARE_TEAM_ROLE,
    SYS_CPT,
    SYS_HCPCS,
    SYS_NDC,
    SYS_NPI,
    SYS_PARTICIPATION_TYPE,
    SYS_POS,
    SYS_SOPT,
    SYS_UCUM,
    TZ_CODE_URL,
)
from stream_app.engine import normalize_route
from stream_app.vocabulary import (
    ADMINISTRATION,
    DISPENSE,
    EM_SERVICE,
    ENTERED_IN_ERROR,
    IM,
    INTRA_ARTERIAL,
    INTRA_ARTICULAR,
    INTRADERMAL,
    IV,
    IV_INFUSION,
    IV_PUSH,
    ORAL,
    OTHER_ROUTE,
    SC,
)

BASE_URL = "https://ehr.example.org/fhir"
SYS_ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
SYS_V3_ROUTE = "http://terminology.hl7.org/CodeSystem/v3-RouteOfAdministration"
SYS_SNOMED = "http://snomed.info/sct"
SYS_V3_ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"

# normalised route -> a coding the adapter maps back to it (ehr-mapping.md §3.8)
ROUTE_CODING = {
    IM: (SYS_V3_ROUTE, "IM"), SC: (SYS_V3_ROUTE, "SQ"), IV_PUSH: (SYS_V3_ROUTE, "IVPUSH"),
    IV_INFUSION: (SYS_V3_ROUTE, "IV"), IV: (SYS_SNOMED, "47625008"),
    INTRA_ARTERIAL: (SYS_V3_ROUTE, "IA"), INTRADERMAL: (SYS_V3_ROUTE, "IDINJ"),
    INTRA_ARTICULAR: (SYS_V3_ROUTE, "IARTINJ"), ORAL: (SYS_V3_ROUTE, "PO"),
    OTHER_ROUTE: (SYS_SNOMED, "6064005"),
}
# payer class -> SOPT code (ehr-mapping.md §3.7 table, first code of each row)
SOPT = {"medicare": "1", "medicaid": "2", "commercial": "5", "workers_comp": "95",
        "self_pay": "81"}
# canonical dose unit -> UCUM; dispensed quantity unit -> UCUM (§3.8)
DOSE_UCUM = {"mg": "mg", "mcg": "ug", "g": "g", "mL": "mL", "units": "[iU]"}
QUANTITY_UCUM = {"UN": "{each}", "ML": "mL", "GR": "g", "ME": "mg", "F2": "[iU]"}


def _tz(tz: str | None) -> dict | None:
    return {"extension": [{"url": TZ_CODE_URL, "valueCode": tz}]} if tz else None


def _ext(name: str, **value: Any) -> dict:
    return {"url": DEFAULT_EXTENSION_BASE + name, **value}


def _entry(resource: dict) -> dict:
    rtype, rid = resource["resourceType"], resource["id"]
    return {"fullUrl": f"{BASE_URL}/{rtype}/{rid}", "resource": resource,
            "request": {"method": "PUT", "url": f"{rtype}/{rid}"}}


def _meta(rec: dict) -> dict:
    meta = {"versionId": rec["event_id"]}
    if rec.get("recorded_at"):
        meta["lastUpdated"] = rec["recorded_at"]
    return meta


def _resource_id(text: str) -> str:
    """A FHIR id ([A-Za-z0-9-.]{1,64}) for a generated identifier."""
    return "".join(c if c.isalnum() or c in "-." else "-" for c in text)[:64]


def _npi_actor(npi: str) -> dict:
    return {"identifier": {"system": SYS_NPI, "value": npi}}


def _role(code: str) -> dict:
    return {"coding": [{"system": SYS_CARE_TEAM_ROLE, "code": code}]}


def _diagnoses(codes) -> list[dict]:
    return [{"coding": [{"system": SYS_ICD10CM, "code": c}]} for c in codes or ()]


def _period_start(rec: dict) -> str:
    return rec["occurred_at"]


class Visits:
    """What every Bundle of a visit repeats, identical each time: the first record of the
    encounter (in the stream's order) decides its start, place, payer and rendering NPI."""

    def __init__(self, records) -> None:
        self.first: dict[tuple[str, str], dict] = {}
        for rec in records:
            enc = rec.get("encounter_id")
            if enc and rec.get("event_type") in (ADMINISTRATION, EM_SERVICE):
                key = (rec["patient_id"], enc)
                got = self.first.get(key)
                if got is None or rec["occurred_at"] < got["occurred_at"]:
                    self.first[key] = rec

    def entries(self, rec: dict) -> list[dict]:
        key = (rec["patient_id"], rec["encounter_id"])
        first = self.first.get(key, rec)
        pid, enc = key
        pos = rec.get("place_of_service")
        payer = rec.get("payer_class")
        tz = rec.get("facility_timezone")
        out = []
        encounter: dict[str, Any] = {
            "resourceType": "Encounter", "id": _resource_id(enc), "status": "finished",
            "class": {"system": SYS_V3_ACT, "code": "AMB"},
            "subject": {"reference": f"Patient/{pid}"},
            "period": {"start": _period_start(first)},
        }
        if tz:
            encounter["period"]["_start"] = _tz(tz)
        if first.get("rendering_npi"):
            encounter["participant"] = [{
                "type": [{"coding": [{"system": SYS_PARTICIPATION_TYPE, "code": "ATND"}]}],
                "individual": _npi_actor(first["rendering_npi"])}]
        if pos:
            loc_id = f"pos-{pos}"
            out.append(_entry({"resourceType": "Location", "id": loc_id, "status": "active",
                               "type": [{"coding": [{"system": SYS_POS, "code": pos}]}]}))
            encounter["location"] = [{"location": {"reference": f"Location/{loc_id}"}}]
        if payer in SOPT:
            out.append(_entry({
                "resourceType": "Coverage", "id": _resource_id(f"cov-{enc}"), "status": "active",
                "type": {"coding": [{"system": SYS_SOPT, "code": SOPT[payer]}]},
                "beneficiary": {"reference": f"Patient/{pid}"},
                "payor": [{"display": "payer"}]}))
        out.append(_entry(encounter))
        return out


def _medication(drug_name: str | None, ndc: str | None, hcpcs: str | None, lot: str | None,
                extensions: list[dict]) -> dict:
    codings = []
    if ndc:
        codings.append({"system": SYS_NDC, "code": ndc})
    if hcpcs:
        codings.append({"system": SYS_HCPCS, "code": hcpcs})
    code: dict[str, Any] = {}
    if codings:
        code["coding"] = codings
    if drug_name:
        code["text"] = drug_name
    med: dict[str, Any] = {"resourceType": "Medication", "id": "med"}
    if extensions:
        med["extension"] = extensions
    if code:
        med["code"] = code
    if lot:
        med["batch"] = {"lotNumber": lot}
    return med


def _administration(rec: dict, visits: Visits) -> list[dict]:
    rid = _resource_id(rec["record_id"])
    drug = rec.get("drug") or {}
    withdrawn = rec.get("status") == ENTERED_IN_ERROR
    ext = []
    if drug.get("category"):
        ext.append(_ext("drug-category", valueCode=drug["category"]))
    if drug.get("container"):
        ext.append(_ext("drug-container", valueCode=drug["container"]))
    med = _medication(drug.get("name"), drug.get("ndc"), drug.get("hcpcs"),
                      drug.get("lot_number"), ext)
    contained = [med]
    admin: dict[str, Any] = {
        "resourceType": "MedicationAdministration", "id": rid, "meta": _meta(rec),
        "status": ENTERED_IN_ERROR if withdrawn else "completed",
        "medicationReference": {"reference": "#med"},
        "subject": {"reference": f"Patient/{rec['patient_id']}"},
    }
    if rec.get("encounter_id"):
        admin["context"] = {"reference": f"Encounter/{_resource_id(rec['encounter_id'])}"}
    tz = _tz(rec.get("facility_timezone"))
    if rec.get("ended_at"):
        period: dict[str, Any] = {"start": rec["occurred_at"], "end": rec["ended_at"]}
        if tz:
            period["_start"] = tz
        admin["effectivePeriod"] = period
    else:
        admin["effectiveDateTime"] = rec["occurred_at"]
        if tz:
            admin["_effectiveDateTime"] = tz
    performers = []
    if rec.get("performer_id"):
        actor: dict[str, Any] = {"identifier": {"value": rec["performer_id"]}}
        if rec.get("performer_credential"):
            contained.append({"resourceType": "Practitioner", "id": "performer",
                              "qualification": [{"code": {"text": rec["performer_credential"]}}]})
            actor["reference"] = "#performer"
        performers.append({"actor": actor})
    if rec.get("rendering_npi"):
        performers.append({"function": _role("primary"), "actor": _npi_actor(rec["rendering_npi"])})
    if rec.get("supervising_npi"):
        performers.append({"function": _role("supervisor"),
                           "actor": _npi_actor(rec["supervising_npi"])})
    if performers:
        admin["performer"] = performers
    if rec.get("order_id"):
        admin["request"] = {"identifier": {"value": rec["order_id"]}}
    if rec.get("diagnosis_codes"):
        admin["reasonCode"] = _diagnoses(rec["diagnosis_codes"])
    dosage: dict[str, Any] = {}
    if rec.get("site"):
        dosage["site"] = {"text": rec["site"]}
    if rec.get("route"):
        norm = normalize_route(rec["route"])
        coding = ROUTE_CODING.get(norm) if norm else None
        dosage["route"] = ({"coding": [{"system": coding[0], "code": coding[1]}]}
                           if coding else {"text": rec["route"]})
    if drug.get("dose") is not None and drug.get("dose_unit") in DOSE_UCUM:
        unit = DOSE_UCUM[drug["dose_unit"]]
        dosage["dose"] = {"value": drug["dose"], "unit": unit, "system": SYS_UCUM, "code": unit}
    if dosage:
        admin["dosage"] = dosage
    if drug.get("wasted_amount") is not None and drug.get("dose_unit") in DOSE_UCUM:
        unit = DOSE_UCUM[drug["dose_unit"]]
        admin["extension"] = [_ext("wasted-amount", valueQuantity={
            "value": drug["wasted_amount"], "unit": unit, "system": SYS_UCUM, "code": unit})]
    admin["contained"] = contained
    entries = []
    if rec.get("charge_code"):
        charge: dict[str, Any] = {
            "resourceType": "ChargeItem", "id": _resource_id(f"chg-{rec['record_id']}"),
            "meta": {"versionId": rec["event_id"], **({"lastUpdated": rec["recorded_at"]}
                                                     if rec.get("recorded_at") else {})},
            # billable even when the administration is withdrawn: the adapter reads the
            # code of a linked billable ChargeItem only, and the withdrawal is the record's
            "status": "billable",
            "code": {"coding": [{"system": SYS_CPT, "code": rec["charge_code"]}]},
            "subject": {"reference": f"Patient/{rec['patient_id']}"},
            "occurrenceDateTime": rec["occurred_at"],
            "service": [{"reference": f"MedicationAdministration/{rid}"}],
        }
        if rec.get("charge_modifiers"):
            charge["extension"] = [_ext("charge-modifier", valueCode=m)
                                   for m in rec["charge_modifiers"]]
        entries.append(_entry(charge))
    if rec.get("encounter_id"):
        entries.extend(visits.entries(rec))
    entries.append(_entry(admin))
    return entries


def _em_service(rec: dict, visits: Visits) -> list[dict]:
    withdrawn = rec.get("status") == ENTERED_IN_ERROR
    charge: dict[str, Any] = {
        "resourceType": "ChargeItem", "id": _resource_id(rec["record_id"]), "meta": _meta(rec),
        "status": "entered-in-error" if withdrawn else "billable",
        "code": {"coding": [{"system": SYS_CPT, "code": rec["code"]}]},
        "subject": {"reference": f"Patient/{rec['patient_id']}"},
        "context": {"reference": f"Encounter/{_resource_id(rec['encounter_id'])}"},
        "occurrenceDateTime": rec["occurred_at"],
    }
    tz = _tz(rec.get("facility_timezone"))
    if tz:
        charge["_occurrenceDateTime"] = tz
    ext = [_ext("charge-modifier", valueCode=m) for m in rec.get("modifiers") or ()]
    if "separately_identifiable" in rec:
        ext.append(_ext("em-separately-identifiable",
                        valueBoolean=bool(rec["separately_identifiable"])))
    if ext:
        charge["extension"] = ext
    if rec.get("rendering_npi"):
        charge["performer"] = [{"function": _role("primary"),
                                "actor": _npi_actor(rec["rendering_npi"])}]
    if rec.get("diagnosis_codes"):
        charge["reason"] = _diagnoses(rec["diagnosis_codes"])
    return [*visits.entries(rec), _entry(charge)]


def _dispense(rec: dict) -> list[dict]:
    med = _medication(rec.get("drug_name"), rec.get("ndc"), None, rec.get("lot_number"), [])
    disp: dict[str, Any] = {
        "resourceType": "MedicationDispense", "id": _resource_id(rec["record_id"]),
        "meta": _meta(rec),
        "status": ENTERED_IN_ERROR if rec.get("status") == ENTERED_IN_ERROR else "completed",
        "contained": [med],
        "medicationReference": {"reference": "#med"},
        "subject": {"reference": f"Patient/{rec['patient_id']}"},
        "whenHandedOver": rec["occurred_at"],
    }
    tz = _tz(rec.get("facility_timezone"))
    if tz:
        disp["_whenHandedOver"] = tz
    if rec.get("encounter_id"):
        disp["context"] = {"reference": f"Encounter/{_resource_id(rec['encounter_id'])}"}
    if rec.get("order_id"):
        disp["authorizingPrescription"] = [{"identifier": {"value": rec["order_id"]}}]
    if rec.get("quantity") is not None:
        q: dict[str, Any] = {"value": rec["quantity"]}
        unit = QUANTITY_UCUM.get(rec.get("quantity_unit") or "")
        if unit:
            q.update(unit=unit, system=SYS_UCUM, code=unit)
        disp["quantity"] = q
    return [_entry(disp)]


def fhir_bundle(rec: dict, visits: Visits) -> dict | None:
    """The transaction Bundle of one canonical record, or None when FHIR cannot carry it
    (module docstring)."""
    kind = rec.get("event_type")
    if kind == DISPENSE:
        entries = _dispense(rec)
    elif kind in (ADMINISTRATION, EM_SERVICE) and not rec.get("encounter_id"):
        return None
    elif kind == ADMINISTRATION:
        entries = _administration(rec, visits)
    elif kind == EM_SERVICE:
        entries = _em_service(rec, visits)
    else:
        return None
    return {"resourceType": "Bundle", "id": _resource_id(f"b-{rec['event_id']}"),
            "type": "transaction", "entry": entries}


def fhir_message(rec: dict, visits: Visits) -> bytes | None:
    bundle = fhir_bundle(rec, visits)
    return None if bundle is None else orjson.dumps(bundle)
