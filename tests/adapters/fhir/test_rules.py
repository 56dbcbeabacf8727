"""The mapping rules of ehr-mapping §3 one by one, on variations of the worked example
(expected values from the spec's tables)."""

from __future__ import annotations

import copy

import orjson
import pytest

from stream_app.adapters.fhir import adapt
from stream_app.adapters.site import SiteConfig

from .helpers import PACKAGED, by_type, entry, office_visit, one_record, run

EXT = "https://chargecap.example.org/fhir/StructureDefinition/"
SNOMED = "http://snomed.info/sct"
V3_ROUTE = "http://terminology.hl7.org/CodeSystem/v3-RouteOfAdministration"


def site_with(**kinds) -> SiteConfig:
    return PACKAGED.merged(SiteConfig.from_rows(**kinds))


def resource(rtype: str, rid: str) -> dict:
    return copy.deepcopy(entry(office_visit(), rtype, rid)["resource"])


def mar() -> dict:
    return resource("MedicationAdministration", "mar-1")


def disp() -> dict:
    return resource("MedicationDispense", "disp-1")


def note() -> dict:
    return resource("ChargeItem", "note-1")


def encounter_bundle(*extra: dict, encounter_changes: dict | None = None, keep_coverage=True,
                     keep_location=True) -> dict:
    doc = office_visit()
    keep = {"Encounter"} | ({"Coverage"} if keep_coverage else set()) | \
        ({"Location"} if keep_location else set())
    doc["entry"] = [e for e in doc["entry"] if e["resource"]["resourceType"] in keep]
    enc = entry(doc, "Encounter", "E100")["resource"]
    enc.update(encounter_changes or {})
    for i, res in enumerate(extra):
        doc["entry"].append({"fullUrl": f"urn:uuid:extra-{i}", "resource": res})
    return doc


def encounter_record(doc: dict, site: SiteConfig = PACKAGED) -> dict:
    result = run(doc, site)
    assert not result.dead_letters, result.dead_letters
    return by_type(result)["encounter.updated"]


# --------------------------------------------------------------------------- §3.1 Bundles

def test_unsupported_bundle_type() -> None:
    doc = office_visit()
    doc["type"] = "document"
    dead = run(doc).dead_letters
    assert [(d.error_code, d.field) for d in dead] == [("FHIR_UNSUPPORTED_BUNDLE_TYPE", "Bundle.type")]


def test_entries_map_independently_even_in_a_transaction() -> None:
    doc = office_visit()
    entry(doc, "MedicationDispense", "disp-1")["resource"]["status"] = "unknown"
    result = run(doc)
    assert {r["event_type"] for r in result.records} == {
        "encounter.updated", "em.service", "medication.administered"}
    assert [(d.error_code, d.field) for d in result.dead_letters] == [
        ("FHIR_STATUS_NOT_FINAL", "Bundle.entry[6].resource.status")]
    assert orjson.loads(result.dead_letters[0].raw)["resource"]["id"] == "disp-1"


def test_nested_bundle_is_not_unpacked() -> None:
    doc = office_visit()
    doc["entry"].append({"resource": {"resourceType": "Bundle", "type": "collection"}})
    dead = run(doc).dead_letters
    assert [(d.error_code, d.field) for d in dead] == [
        ("FHIR_UNSUPPORTED_RESOURCE", "Bundle.entry[7].resource.resourceType")]


def test_history_uses_response_last_modified_and_skips_notification_status() -> None:
    d = disp()
    del d["meta"]
    doc = {"resourceType": "Bundle", "type": "history", "entry": [
        {"fullUrl": "urn:uuid:status", "resource": {"resourceType": "Parameters"}},
        {"fullUrl": "https://ehr.example.org/fhir/MedicationDispense/disp-1", "resource": d,
         "response": {"status": "200", "lastModified": "2025-03-14T09:06:00-05:00"}},
    ]}
    record = one_record(doc)
    assert record["recorded_at"] == "2025-03-14T09:06:00-05:00"


def test_delete_entry_is_unmappable() -> None:
    doc = office_visit()
    doc["entry"].append({"request": {"method": "DELETE", "url": "MedicationAdministration/mar-1"}})
    dead = run(doc).dead_letters
    assert [(d.error_code, d.field) for d in dead] == [
        ("FHIR_DELETE_UNMAPPABLE", "Bundle.entry[7].resource")]


# --------------------------------------------------------------------------- §3.1 references

def test_urn_uuid_and_absolute_full_url_references_resolve() -> None:
    doc = office_visit()
    loc = entry(doc, "Location", "LOC-FM")
    loc["fullUrl"] = "urn:uuid:7f1c"
    enc = entry(doc, "Encounter", "E100")["resource"]
    enc["location"][0]["location"] = {"reference": "urn:uuid:7f1c"}
    assert by_type(run(doc))["encounter.updated"]["place_of_service"] == "11"
    enc["location"][0]["location"] = {"reference": "https://ehr.example.org/fhir/Location/LOC-FM"}
    loc["fullUrl"] = "https://ehr.example.org/fhir/Location/LOC-FM"
    assert by_type(run(doc))["encounter.updated"]["place_of_service"] == "11"


def test_relative_reference_with_history_matches_full_url_suffix() -> None:
    doc = office_visit()
    enc = entry(doc, "Encounter", "E100")["resource"]
    enc["location"][0]["location"] = {"reference": "Location/LOC-FM/_history/1"}
    assert by_type(run(doc))["encounter.updated"]["place_of_service"] == "11"


def test_bundle_medication_reference_adds_its_version_to_event_id() -> None:
    doc = office_visit()
    m = entry(doc, "MedicationAdministration", "mar-1")["resource"]
    med = m["contained"].pop(0)
    med = {**med, "id": "med-9", "meta": {"versionId": "4"}}
    m["medicationReference"] = {"reference": "Medication/med-9"}
    doc["entry"].append({"fullUrl": "https://ehr.example.org/fhir/Medication/med-9", "resource": med})
    record = by_type(run(doc))["medication.administered"]
    assert record["drug"]["hcpcs"] == "J0696"
    assert record["drug"]["lot_number"] == "LT4471"
    assert record["event_id"] == ("MedicationAdministration/mar-1/_history/1"
                                  "+ChargeItem/chg-mar-1/_history/1+Medication/med-9/_history/4")


def test_unresolved_medication_keeps_display_with_warning() -> None:
    m = mar()
    m["medicationReference"] = {"reference": "Medication/elsewhere", "display": "ceftriaxone 500 mg"}
    record = one_record(m)
    assert record["drug"]["name"] == "ceftriaxone 500 mg"
    assert "reference_unresolved:medicationReference" in record["source"]["warnings"]
    del m["medicationReference"]["display"]
    assert one_record(m)["drug"]["name"] == "Medication/elsewhere"


# --------------------------------------------------------------------------- §3.2 identity

def test_event_id_without_version_is_a_content_hash_stable_across_meta_and_text() -> None:
    m = mar()
    del m["meta"]
    first = one_record(m)["event_id"]
    assert first.startswith("MedicationAdministration/mar-1/_sha256/")
    assert len(first.rsplit("/", 1)[1]) == 16
    m2 = copy.deepcopy(m)
    m2["meta"] = {"lastUpdated": "2025-03-14T10:00:00-05:00"}
    m2["text"] = {"status": "generated", "div": "<div>x</div>"}
    # key order does not matter either (RFC 8785)
    reordered = dict(reversed(list(m2.items())))
    assert one_record(reordered)["event_id"] == first
    m2["dosage"]["dose"]["value"] = 250
    assert one_record(m2)["event_id"] != first


def test_source_id_prefixes_ids() -> None:
    site = site_with(adapter_settings=[{"source": "fhir", "setting": "source_id", "value": "ehr-a"}])
    record = one_record(mar(), site)
    assert record["event_id"].startswith("ehr-a:MedicationAdministration/mar-1/_history/1")
    assert record["record_id"] == "ehr-a:mar-1"
    assert record["patient_id"] == "ehr-a:P100"
    assert record["encounter_id"] == "ehr-a:E100"


def test_record_id_from_identifier_else_invalid() -> None:
    d = disp()
    del d["id"]
    d["identifier"] = [{"system": "urn:ehr:disp", "value": "D-77"}]
    assert one_record(d)["record_id"] == "urn:ehr:disp|D-77"
    del d["identifier"]
    dead = run(d).dead_letters
    assert [(x.error_code, x.field) for x in dead] == [("FHIR_INVALID", "MedicationDispense.id")]


def test_procedure_record_id_is_prefixed() -> None:
    proc = {"resourceType": "Procedure", "id": "pr-1", "status": "completed",
            "code": {"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "99214"}]},
            "subject": {"reference": "Patient/P100"}, "encounter": {"reference": "Encounter/E100"},
            "performedPeriod": {"start": "2025-03-14T09:00:00-05:00"},
            "performer": [{"actor": {"identifier": {"system": "http://hl7.org/fhir/sid/us-npi",
                                                    "value": "1234567893"}}}],
            "reasonCode": [{"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "J06.9"}]}]}
    record = one_record(proc)
    assert (record["event_type"], record["record_id"], record["code"]) == \
        ("em.service", "Procedure/pr-1", "99214")
    assert record["rendering_npi"] == "1234567893"
    assert record["diagnosis_codes"] == ["J06.9"]
    assert record["encounter_id"] == "E100"


def test_patient_identifier_system_setting() -> None:
    site = site_with(adapter_settings=[
        {"source": "fhir", "setting": "patient_identifier_system", "value": "urn:mrn"}])
    d = disp()
    d["subject"] = {"reference": "urn:uuid:pat"}
    doc = {"resourceType": "Bundle", "type": "collection", "entry": [
        {"fullUrl": "urn:uuid:pat", "resource": {"resourceType": "Patient",
                                                  "identifier": [{"system": "urn:mrn", "value": "MRN-5"}]}},
        {"fullUrl": "urn:uuid:d", "resource": d}]}
    assert one_record(doc, site)["patient_id"] == "MRN-5"
    # without that identifier the patient cannot be named as the HL7 feed names it
    doc["entry"][0]["resource"]["identifier"][0]["system"] = "urn:other"
    dead = run(doc, site).dead_letters
    assert [(x.error_code, x.field) for x in dead] == [
        ("FHIR_REFERENCE_UNRESOLVED", "Bundle.entry[1].resource.subject")]


def test_episode_of_care_context_gives_no_encounter() -> None:
    m = mar()
    m["context"] = {"reference": "EpisodeOfCare/ep-1"}
    record = one_record(m)
    assert "encounter_id" not in record
    assert record["source"]["warnings"] == []


def test_date_only_time_in_site_default_zone() -> None:
    d = disp()
    d["whenHandedOver"] = "2025-03-14"
    del d["_whenHandedOver"]
    site = site_with(facility_timezone=[{"source": "fhir", "facility_key": "*",
                                         "timezone": "America/Chicago"}])
    record = one_record(d, site)
    assert record["occurred_at"] == "2025-03-14T00:00:00-05:00"
    assert "date_only:whenHandedOver" in record["source"]["warnings"]
    # US daylight time began on 2025-03-09: New York is at -04:00 that day
    assert one_record(d, PACKAGED, default_tz="America/New_York")["occurred_at"] == \
        "2025-03-14T00:00:00-04:00"


@pytest.mark.parametrize("value", ["2025-03-14T09:05:00", "2025-13-01T00:00:00Z", "2025-03",
                                   "yesterday", 20250314])
def test_unparsable_or_partial_time_is_invalid(value: object) -> None:
    d = disp()
    d["whenHandedOver"] = value
    dead = run(d).dead_letters
    assert [(x.error_code, x.field) for x in dead] == [
        ("FHIR_INVALID", "MedicationDispense.whenHandedOver")]


def test_unknown_tz_code_is_dropped_with_warning() -> None:
    d = disp()
    d["_whenHandedOver"]["extension"][0]["valueCode"] = "Mars/Olympus"
    record = one_record(d)
    assert "facility_timezone" not in record
    assert "tz_code_unknown" in record["source"]["warnings"]


# --------------------------------------------------------------------------- §3.3 status

@pytest.mark.parametrize(("fhir", "status", "pending"), [
    ("completed", "completed", False), ("stopped", "completed", False),
    ("entered-in-error", "entered-in-error", False), ("not-done", "entered-in-error", False),
    ("in-progress", "completed", True), ("on-hold", "completed", True), ("unknown", None, None),
])
def test_administration_status(fhir: str, status: str | None, pending: bool | None) -> None:
    m = mar()
    m["status"] = fhir
    result = run(m)
    if status is None:
        assert [d.error_code for d in result.dead_letters] == ["FHIR_STATUS_NOT_FINAL"]
        return
    record = result.records[0]
    assert record["status"] == status
    assert record.get("in_progress", False) is pending


@pytest.mark.parametrize(("fhir", "status"), [
    ("completed", "completed"), ("in-progress", "completed"), ("preparation", "completed"),
    ("on-hold", "completed"), ("entered-in-error", "entered-in-error"),
    ("cancelled", "entered-in-error"), ("declined", "entered-in-error"),
    ("stopped", "entered-in-error"), ("unknown", None),
])
def test_dispense_status(fhir: str, status: str | None) -> None:
    d = disp()
    d["status"] = fhir
    result = run(d)
    if status is None:
        assert [x.error_code for x in result.dead_letters] == ["FHIR_STATUS_NOT_FINAL"]
    else:
        assert result.records[0]["status"] == status


@pytest.mark.parametrize(("fhir", "status"), [
    ("billable", "completed"), ("billed", "completed"), ("entered-in-error", "entered-in-error"),
    ("not-billable", "entered-in-error"), ("aborted", "entered-in-error"), ("planned", None),
    ("unknown", None),
])
def test_charge_item_status(fhir: str, status: str | None) -> None:
    n = note()
    n["status"] = fhir
    result = run(n)
    if status is None:
        assert [x.error_code for x in result.dead_letters] == ["FHIR_STATUS_NOT_FINAL"]
    else:
        assert result.records[0]["status"] == status


@pytest.mark.parametrize(("fhir", "status"), [("finished", "completed"), ("planned", "completed"),
                                              ("cancelled", "completed"),
                                              ("entered-in-error", "entered-in-error")])
def test_encounter_status(fhir: str, status: str) -> None:
    doc = encounter_bundle(encounter_changes={"status": fhir})
    assert encounter_record(doc)["status"] == status


# --------------------------------------------------------------------------- §3.4 administration

@pytest.mark.parametrize(("coding", "text", "route"), [
    ({"system": V3_ROUTE, "code": "IVPUSH"}, None, "IV_PUSH"),
    ({"system": V3_ROUTE, "code": "SQ"}, None, "SC"),
    ({"system": SNOMED, "code": "34206005"}, None, "SC"),
    (None, "subcutaneous", "SC"),
    (None, "IV push", "IV_PUSH"),
])
def test_route(coding: dict | None, text: str | None, route: str) -> None:
    m = mar()
    m["dosage"]["route"] = {"coding": [coding]} if coding else {"text": text}
    assert one_record(m)["route"] == route


def test_unmapped_route_is_absent_never_other() -> None:
    m = mar()
    m["dosage"]["route"] = {"coding": [{"system": V3_ROUTE, "code": "NEB"}], "text": "intramuscular"}
    record = one_record(m)
    assert "route" not in record
    assert f"route_unmapped:{V3_ROUTE}|NEB" in record["source"]["warnings"]


def test_first_mapped_route_coding_wins() -> None:
    m = mar()
    m["dosage"]["route"] = {"coding": [{"system": "urn:local", "code": "X"},
                                       {"system": SNOMED, "code": "78421000"}]}
    assert one_record(m)["route"] == "IM"


def test_site_display_then_code() -> None:
    m = mar()
    m["dosage"]["site"] = {"coding": [{"system": SNOMED, "code": "368208006", "display": "Left upper arm"}]}
    assert one_record(m)["site"] == "Left upper arm"
    v2_0163 = "http://terminology.hl7.org/CodeSystem/v2-0163"
    m["dosage"]["site"] = {"coding": [{"system": v2_0163, "code": "LD"}]}
    assert one_record(m)["site"] == "LD"


def test_dose_unit_factor_and_unmapped() -> None:
    m = mar()
    m["dosage"]["dose"] = {"value": 250000, "system": "http://unitsofmeasure.org", "code": "ng"}
    drug = one_record(m)["drug"]
    assert (drug["dose"], drug["dose_unit"]) == (250, "mcg")
    m["dosage"]["dose"] = {"value": 25, "system": "http://unitsofmeasure.org", "code": "mg/kg"}
    record = one_record(m)
    assert "dose" not in record["drug"] and "dose_unit" not in record["drug"]
    assert "dose_unit_unmapped:mg/kg" in record["source"]["warnings"]


def test_waste_is_converted_into_the_dose_unit_else_absent_with_warning() -> None:
    m = mar()
    m["extension"][1]["valueQuantity"] = {"value": 0.5, "system": "http://unitsofmeasure.org", "code": "g"}
    assert one_record(m)["drug"]["wasted_amount"] == 500  # the dose is in mg
    m["extension"][1]["valueQuantity"] = {"value": 2, "system": "http://unitsofmeasure.org", "code": "mL"}
    record = one_record(m)
    assert "wasted_amount" not in record["drug"]
    assert "wasted_amount_unconverted" in record["source"]["warnings"]


def test_category_from_cvx_then_drug_attributes() -> None:
    m = mar()
    del m["extension"]
    m["contained"][0]["extension"] = []
    m["contained"][0]["code"]["coding"].append({"system": "http://hl7.org/fhir/sid/cvx", "code": "140"})
    assert one_record(m)["drug"]["category"] == "vaccine"
    m["contained"][0]["code"]["coding"].pop()
    site = site_with(drug_attributes=[{"key_type": "hcpcs", "key": "J0696", "category": "prophylactic",
                                       "container": "multi_dose"}])
    drug = one_record(m, site)["drug"]
    assert (drug["category"], drug["container"]) == ("prophylactic", "multi_dose")


def test_lot_number_extension_when_no_batch() -> None:
    m = mar()
    del m["contained"][0]["batch"]
    m["extension"].append({"url": EXT + "lot-number", "valueString": "LX-1"})
    assert one_record(m)["drug"]["lot_number"] == "LX-1"


def test_credential_master_of_arts_is_dropped_and_others_uppercased() -> None:
    m = mar()
    coding = m["contained"][1]["qualification"][0]["code"]["coding"][0]
    coding["code"] = "MA"
    record = one_record(m)
    assert "performer_credential" not in record
    assert "credential_dropped" in record["source"]["warnings"]
    coding["code"] = "cnp"
    coding["system"] = "http://terminology.hl7.org/CodeSystem/v2-0360/2.7"
    assert one_record(m)["performer_credential"] == "CNP"  # map keys are the table's codes
    coding["code"] = "CNP"
    assert one_record(m)["performer_credential"] == "NP"


def test_rendering_npi_from_primary_performer_and_npi_via_practitioner_role() -> None:
    doc = office_visit()
    m = entry(doc, "MedicationAdministration", "mar-1")["resource"]
    m["performer"].append({
        "function": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/claimcareteamrole",
                                 "code": "primary"}]},
        "actor": {"reference": "PractitionerRole/role-1"}})
    doc["entry"] += [
        {"fullUrl": "https://ehr.example.org/fhir/PractitionerRole/role-1",
         "resource": {"resourceType": "PractitionerRole", "id": "role-1", "meta": {"versionId": "3"},
                      "practitioner": {"reference": "Practitioner/dr-2"}}},
        {"fullUrl": "https://ehr.example.org/fhir/Practitioner/dr-2",
         "resource": {"resourceType": "Practitioner", "id": "dr-2", "meta": {"versionId": "1"},
                      "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi", "value": "1245319599"}]}},
    ]
    record = by_type(run(doc))["medication.administered"]
    assert record["rendering_npi"] == "1245319599"
    assert "+Practitioner/dr-2/_history/1" in record["event_id"]
    assert "+PractitionerRole/role-1/_history/3" in record["event_id"]


def test_order_id_from_identifier_and_diagnoses_from_condition() -> None:
    doc = office_visit()
    m = entry(doc, "MedicationAdministration", "mar-1")["resource"]
    m["request"] = {"identifier": {"system": "urn:orders", "value": "ORD-9"}}
    m["reasonReference"] = [{"reference": "Condition/c1"}]
    m["reasonCode"].append({"coding": [{"system": "http://snomed.info/sct", "code": "1234"}]})
    doc["entry"].append({"fullUrl": "https://ehr.example.org/fhir/Condition/c1", "resource": {
        "resourceType": "Condition", "id": "c1", "meta": {"versionId": "2"},
        "subject": {"reference": "Patient/P100"},
        "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "J02.9"},
                            {"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "A54.9"}]}}})
    record = by_type(run(doc))["medication.administered"]
    assert record["order_id"] == "ORD-9"
    assert record["diagnosis_codes"] == ["A54.9", "J02.9"]
    assert "+Condition/c1/_history/2" in record["event_id"]


def test_linked_hcpcs_charge_fills_absent_hcpcs_and_newest_admin_charge_wins() -> None:
    doc = office_visit()
    m = entry(doc, "MedicationAdministration", "mar-1")["resource"]
    m["contained"][0]["code"]["coding"] = [{"system": "http://hl7.org/fhir/sid/ndc", "code": "0409-7332-01"}]
    base = entry(doc, "ChargeItem", "chg-mar-1")["resource"]
    newer = copy.deepcopy(base)
    newer.update(id="chg-mar-2", meta={"versionId": "1", "lastUpdated": "2025-03-14T09:40:00-05:00"},
                 code={"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "96374"}]},
                 extension=[{"url": EXT + "charge-modifier", "valueCode": "59"}])
    drug_charge = copy.deepcopy(base)
    drug_charge.update(id="chg-drug", code={"coding": [
        {"system": "http://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets", "code": "J0696"}]})
    doc["entry"] += [{"fullUrl": "urn:uuid:c2", "resource": newer},
                     {"fullUrl": "urn:uuid:c3", "resource": drug_charge}]
    result = run(doc)
    assert result.dead_letters == []  # linked charges enrich, they yield nothing themselves
    record = by_type(result)["medication.administered"]
    assert (record["charge_code"], record["charge_modifiers"]) == ("96374", ["59"])
    assert record["drug"]["hcpcs"] == "J0696"


def test_immunization_maps_as_vaccine_and_historical_is_not_billable() -> None:
    imm = {"resourceType": "Immunization", "id": "imm-1", "status": "completed",
           "vaccineCode": {"coding": [{"system": "http://hl7.org/fhir/sid/cvx", "code": "140",
                                       "display": "Influenza, seasonal, injectable"}]},
           "patient": {"reference": "Patient/P100"}, "encounter": {"reference": "Encounter/E100"},
           "occurrenceDateTime": "2025-03-14T09:25:00-05:00", "primarySource": True,
           "lotNumber": "FLU-1", "route": {"coding": [{"system": V3_ROUTE, "code": "IM"}]},
           "doseQuantity": {"value": 0.5, "system": "http://unitsofmeasure.org", "code": "mL"},
           "performer": [{"function": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0443",
                                                   "code": "AP"}]},
                          "actor": {"reference": "Practitioner/nurse-7"}}]}
    record = one_record(imm)
    assert record["event_type"] == "medication.administered"
    assert record["drug"] == {"name": "Influenza, seasonal, injectable", "dose": 0.5, "dose_unit": "mL",
                              "category": "vaccine", "lot_number": "FLU-1"}
    assert (record["route"], record["performer_id"], record["encounter_id"]) == ("IM", "nurse-7", "E100")
    imm["primarySource"] = False
    dead = run(imm).dead_letters
    assert [(d.error_code, d.field) for d in dead] == [("FHIR_NOT_BILLABLE", "Immunization.primarySource")]


# --------------------------------------------------------------------------- §3.6 E/M

def test_em_modifiers_from_extension_and_setting_urls() -> None:
    n = note()
    n["extension"].append({"url": "https://ehr.example.org/mod", "valueString": "gt"})
    assert one_record(n)["modifiers"] == ["25"]
    site = site_with(adapter_settings=[{"source": "fhir", "setting": "modifier_extension_urls",
                                        "value": "https://ehr.example.org/mod"}])
    assert one_record(n, site)["modifiers"] == ["25", "GT"]


def test_separately_identifiable_setting() -> None:
    n = note()
    n["extension"] = [e for e in n["extension"] if "separately" not in e["url"]]
    assert "separately_identifiable" not in one_record(n)  # explicit (default): false
    site = site_with(adapter_settings=[{"source": "fhir", "setting": "em_separately_identifiable_source",
                                        "value": "modifier_25"}])
    assert one_record(n, site)["separately_identifiable"] is True


def test_em_rendering_npi_only_performer_with_npi() -> None:
    n = note()
    n["performer"][0]["function"] = {"coding": [{"system": "urn:x", "code": "y"}]}
    assert one_record(n)["rendering_npi"] == "1234567893"


def test_em_occurrence_timing_and_missing_occurrence() -> None:
    n = note()
    del n["occurrenceDateTime"]
    n["occurrenceTiming"] = {"event": ["2025-03-14T09:01:00-05:00"]}
    assert one_record(n)["occurred_at"] == "2025-03-14T09:01:00-05:00"
    del n["occurrenceTiming"]
    assert [(d.error_code, d.field) for d in run(n).dead_letters] == [
        ("FHIR_INVALID", "ChargeItem.occurrence[x]")]


def test_admin_charge_item_alone_is_unsupported() -> None:
    charge = resource("ChargeItem", "chg-mar-1")
    assert [(d.error_code, d.field) for d in run(charge).dead_letters] == [
        ("FHIR_UNSUPPORTED_RESOURCE", "ChargeItem.code")]


# --------------------------------------------------------------------------- §3.7 encounter

def test_pos_from_site_by_location_id_then_class() -> None:
    doc = encounter_bundle(keep_location=False)
    assert "place_of_service" not in encounter_record(doc)
    site = site_with(location_pos=[
        {"source": "fhir", "key_type": "fhir_encounter_class", "key": "AMB", "place_of_service": "22"},
        {"source": "*", "key_type": "fhir_location_id", "key": "LOC-FM", "place_of_service": "19"}])
    assert encounter_record(doc, site)["place_of_service"] == "19"  # id before class, whatever the source
    site = site_with(location_pos=[
        {"source": "fhir", "key_type": "fhir_encounter_class", "key": "AMB", "place_of_service": "22"}])
    assert encounter_record(doc, site)["place_of_service"] == "22"


def test_zone_from_site_by_location_then_service_provider() -> None:
    doc = encounter_bundle()
    del entry(doc, "Encounter", "E100")["resource"]["period"]["_start"]
    assert "facility_timezone" not in encounter_record(doc)
    entry(doc, "Encounter", "E100")["resource"]["serviceProvider"] = {"reference": "Organization/org-1"}
    site = site_with(facility_timezone=[
        {"source": "fhir", "facility_key": "org-1", "timezone": "America/Denver"},
        {"source": "fhir", "facility_key": "*", "timezone": "America/New_York"}])
    assert encounter_record(doc, site)["facility_timezone"] == "America/Denver"
    site = site_with(facility_timezone=[
        {"source": "fhir", "facility_key": "LOC-FM", "timezone": "America/Chicago",
         "effective_from": "2025-01-01"},
        {"source": "fhir", "facility_key": "org-1", "timezone": "America/Denver"}])
    assert encounter_record(doc, site)["facility_timezone"] == "America/Chicago"


def _coverage(cid: str, **changes) -> dict:
    cov = resource("Coverage", "cov-P100-1")
    cov["id"] = cid
    cov.update(changes)
    return cov


@pytest.mark.parametrize(("coding", "payer_class"), [
    ({"system": "https://nahdo.org/sopt", "code": "121"}, "medicare"),
    ({"system": "https://nahdo.org/sopt", "code": "23"}, "medicaid"),
    ({"system": "https://nahdo.org/sopt", "code": "951"}, "workers_comp"),
    ({"system": "https://nahdo.org/sopt", "code": "81"}, "self_pay"),
    ({"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "WCBPOL"}, "workers_comp"),
    ({"system": "http://terminology.hl7.org/CodeSystem/coverage-selfpay", "code": "pay"}, "self_pay"),
    ({"system": "https://nahdo.org/sopt", "code": "311"}, None),   # TRICARE: site rows decide
])
def test_payer_class_from_coverage_type(coding: dict, payer_class: str | None) -> None:
    doc = encounter_bundle()
    entry(doc, "Coverage", "cov-P100-1")["resource"]["type"] = {"coding": [coding]}
    del entry(doc, "Coverage", "cov-P100-1")["resource"]["class"]
    assert encounter_record(doc).get("payer_class") == payer_class


def test_payer_class_from_plan_site_row() -> None:
    doc = encounter_bundle()
    entry(doc, "Coverage", "cov-P100-1")["resource"]["type"] = {"text": "PPO"}
    assert "payer_class" not in encounter_record(doc)
    site = site_with(payer_class_map=[{"source": "fhir", "key_type": "fhir_plan", "key": "ACMEPPO",
                                       "payer_class": "commercial"}])
    assert encounter_record(doc, site)["payer_class"] == "commercial"


def test_primary_coverage_selection() -> None:
    sopt = {"coding": [{"system": "https://nahdo.org/sopt", "code": "1"}]}

    def with_medicare(**changes) -> dict:
        medicare = _coverage("cov-mc", type=sopt, **changes)
        if "order" not in changes:
            del medicare["order"]
        doc = encounter_bundle(medicare)
        entry(doc, "Coverage", "cov-P100-1")["resource"]["order"] = 2  # commercial second
        return doc

    # order 1 wins over order 2 regardless of entry order
    assert encounter_record(with_medicare(order=1))["payer_class"] == "medicare"
    assert encounter_record(with_medicare(order=3))["payer_class"] == "commercial"
    # an absent order sorts last
    assert encounter_record(with_medicare())["payer_class"] == "commercial"
    # an inactive, another patient's or an expired coverage is not primary
    for bad in ({"status": "cancelled"}, {"beneficiary": {"reference": "Patient/P200"}},
                {"period": {"start": "2024-01-01", "end": "2025-03-13"}},
                {"period": {"start": "2025-03-15"}}):
        assert encounter_record(with_medicare(order=1, **bad))["payer_class"] == "commercial", bad
    # a coverage whose period ends on the service date still covers it
    doc = with_medicare(order=1, period={"start": "2024-01-01", "end": "2025-03-14"})
    assert encounter_record(doc)["payer_class"] == "medicare"


def test_account_priority_beats_coverage_order() -> None:
    account = {"resourceType": "Account", "id": "acc-1", "status": "active",
               "coverage": [{"coverage": {"reference": "Coverage/cov-mc"}, "priority": 1},
                            {"coverage": {"reference": "Coverage/cov-P100-1"}, "priority": 2}]}
    sopt = {"coding": [{"system": "https://nahdo.org/sopt", "code": "1"}]}
    doc = encounter_bundle(_coverage("cov-mc", order=5, type=sopt), account,
                           encounter_changes={"account": [{"reference": "Account/acc-1"}]})
    assert encounter_record(doc)["payer_class"] == "medicare"


def test_encounter_without_start_is_invalid_and_npi_falls_back_to_pprf() -> None:
    doc = encounter_bundle()
    enc = entry(doc, "Encounter", "E100")["resource"]
    enc["participant"][0]["type"][0]["coding"][0]["code"] = "PPRF"
    assert encounter_record(doc)["rendering_npi"] == "1234567893"
    del enc["period"]["start"]
    dead = run(doc).dead_letters
    assert [(d.error_code, d.field) for d in dead] == [
        ("FHIR_INVALID", "Bundle.entry[2].resource.period.start")]


@pytest.mark.parametrize("rtype", ["Coverage", "Location", "Patient", "Practitioner"])
def test_context_resource_alone_is_unsupported(rtype: str) -> None:
    dead = run({"resourceType": rtype, "id": "x"}).dead_letters
    assert [(d.error_code, d.field) for d in dead] == [("FHIR_UNSUPPORTED_RESOURCE", "resourceType")]


def test_wrong_type_in_a_contained_or_referenced_resource_names_its_full_path() -> None:
    doc = office_visit()
    m = entry(doc, "MedicationAdministration", "mar-1")["resource"]
    m["contained"][1]["qualification"][0]["code"]["coding"] = "RN"
    entry(doc, "Location", "LOC-FM")["resource"]["type"] = {"coding": []}
    dead = adapt(orjson.dumps(doc), PACKAGED).dead_letters  # not FHIR: run() would refuse it
    assert [(d.error_code, d.field) for d in dead] == [
        ("FHIR_INVALID", "Bundle.entry[0].resource.type"),
        ("FHIR_INVALID", "Bundle.entry[5].resource.contained[1].qualification[0].code.coding")]
