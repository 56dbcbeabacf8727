"""Every official FHIR R4 example in ../shared/fhir/r4-examples/ is mapped (with the fields
below, read from the FHIR files themselves) or refused with a named code (ehr-mapping §3, §5)."""

from __future__ import annotations

import orjson
import pytest

from stream_app.adapters.fhir import adapt

from .helpers import PACKAGED, R4_EXAMPLES, assert_valid_fhir

ABSENT = object()

# file -> the fields the record must have (ABSENT: the field must not be there).
MAPPED: dict[str, dict] = {
    # in-progress: billable once final -> completed + in_progress (pending); NDC as written
    # (4-4-2; the engine makes 00069258710); SNOMED 47625008 -> IV; effectivePeriod has
    # only a start.
    "MedicationAdministration-medadmin0301.json": {
        "event_type": "medication.administered", "record_id": "medadmin0301",
        "status": "completed", "in_progress": True, "patient_id": "pat1", "encounter_id": "f001",
        "occurred_at": "2015-01-15T14:30:00+01:00", "ended_at": ABSENT, "route": "IV",
        "drug.ndc": "0069-2587-10", "drug.name": "Vancomycin Hydrochloride (VANCOMYCIN HYDROCHLORIDE)",
        "drug.dose": 500, "drug.dose_unit": "mg", "order_id": "medrx0318",
        "performer_id": "f007", "diagnosis_codes": ABSENT,  # reason-medication-given is not ICD-10-CM
    },
    # dose in meq: no dose unit of the contract -> dose and unit absent; the contained
    # Medication has no code -> no drug name (documentation alert in the engine)
    "MedicationAdministration-medadmin0302.json": {
        "status": "completed", "occurred_at": "2015-01-15T04:30:00+01:00",
        "ended_at": "2015-01-15T14:30:00+01:00", "route": "IV",
        "site": "Structure of ligament of left superior vena cava", "drug": ABSENT,
        "order_id": "medrx0322", "warnings": ["dose_unit_unmapped:meq"],
    },
    "MedicationAdministration-medadmin0303.json": {
        "status": "entered-in-error", "drug.ndc": "0206-8862-02", "drug.dose": 4.5,
        "drug.dose_unit": "g", "route": "IV", "order_id": "medrx0319",
    },
    # RxNorm only: a name source, no NDC; Condition/f202 is not in the unit
    "MedicationAdministration-medadmin0304.json": {
        "status": "completed", "drug.name": "Alemtuzumab 10mg/ml (Lemtrada)", "drug.ndc": ABSENT,
        "drug.dose": 3, "drug.dose_unit": "mg", "route": "IV",
        "warnings": ["reference_unresolved:reasonReference"],
    },
    # SNOMED 255560000 is not in the R4 route-codes map -> absent (never OTHER); mg/kg unmapped;
    # lot from the contained Medication's batch
    "MedicationAdministration-medadmin0305.json": {
        "route": ABSENT, "drug.dose": ABSENT, "drug.lot_number": "12345", "drug.name": "Adcetris",
        "drug.ndc": "51144-050-01",
        "warnings": ["route_unmapped:http://snomed.info/sct|255560000", "dose_unit_unmapped:mg/kg"],
    },
    # oral (26643006); a TAB dose is not a contract dose unit; performer function `performer`
    "MedicationAdministration-medadmin0306.json": {
        "route": "ORAL", "drug.dose": ABSENT, "performer_id": "f007",
        "drug.name": "Azithromycin 250mg capsule (product)",
    },
    "MedicationAdministration-medadmin0307.json": {
        "route": ABSENT, "drug.dose": 7, "drug.dose_unit": "mg",
    },
    # UCUM U (insulin units) -> units; no context -> no encounter
    "MedicationAdministration-medadmin0308.json": {
        "encounter_id": ABSENT, "drug.dose": 20, "drug.dose_unit": "units",
        "drug.name": "Lantus 100 unit/ml injectable solution", "order_id": "medrx0320",
    },
    # on-hold: pending; no dosage, no performer
    "MedicationAdministration-medadminexample03.json": {
        "status": "completed", "in_progress": True, "occurred_at": "2015-01-15T14:30:00+01:00",
        "ended_at": ABSENT, "route": ABSENT, "performer_id": ABSENT,
    },
    # in-progress dispense is billable (the product is known); whenPrepared when not handed
    # over; Vial (v3 orderableDrugForm) is not a quantity unit of the map
    "MedicationDispense-meddisp0301.json": {
        "event_type": "drug.dispensed", "status": "completed", "ndc": "0069-2587-10",
        "occurred_at": "2015-01-15T10:20:00Z", "quantity": 12, "quantity_unit": ABSENT,
        "order_id": "medrx0318", "warnings": ["quantity_unit_unmapped:Vial"],
    },
    # UCUM ml (l and L are both the litre) -> ML
    "MedicationDispense-meddisp0302.json": {
        "ndc": "0169-7501-11", "quantity": 10, "quantity_unit": "ML", "lot_number": "12345",
        "drug_name": "Novolog 100u/ml",
    },
    "MedicationDispense-meddisp0303.json": {
        "status": "completed", "encounter_id": "f001", "occurred_at": "2016-04-15T07:14:00+05:00",
    },
    # handed over wins over prepared
    "MedicationDispense-meddisp0304.json": {
        "occurred_at": "2015-06-26T07:13:00+05:00", "quantity": 250, "quantity_unit": "ML",
        "ndc": "0206-8862-02",
    },
    "MedicationDispense-meddisp0305.json": {"status": "entered-in-error", "quantity": 49},
    "MedicationDispense-meddisp0306.json": {"status": "completed", "ndc": ABSENT},
    # medicationCodeableConcept, 5-3-2 NDC as written
    "MedicationDispense-meddisp0307.json": {"ndc": "76388-713-25", "quantity": 90},
    # NDC as written even in a shape the engine will refuse (INVALID_NDC alert there)
    "MedicationDispense-meddisp0308.json": {"ndc": "2501-813-16", "quantity_unit": "ML"},
    # date-only whenHandedOver: 00:00 in the configured zone, with a warning
    "MedicationDispense-meddisp0309.json": {
        "status": "entered-in-error", "occurred_at": "2016-01-15T00:00:00+00:00",
        "warnings": ["date_only:whenHandedOver"],
    },
    "MedicationDispense-meddisp0310.json": {"ndc": "16590-619-30", "quantity": 30},
    # period with offset; contained Location #home has no POS coding and the class HH has no
    # site row -> no place of service (ENCOUNTER_CONTEXT_MISSING in the engine)
    "Encounter-home.json": {
        "event_type": "encounter.updated", "record_id": "home", "encounter_id": "home",
        "patient_id": "example", "occurred_at": "2015-01-17T16:00:00+10:00",
        "ended_at": "2015-01-17T16:30:00+10:00", "place_of_service": ABSENT,
        "payer_class": ABSENT,
    },
}

# file -> the dead letters' (code, field), in order.
REFUSED: dict[str, list[tuple[str, str]]] = {
    # searchset of a MedicationRequest and its Medication: context only
    "Bundle-bundle-example.json": [("FHIR_UNSUPPORTED_RESOURCE", "Bundle.entry")],
    # Patients (context), DELETEs and GETs (no resource), a Parameters ($lookup)
    "Bundle-bundle-transaction.json": [
        ("FHIR_DELETE_UNMAPPABLE", "Bundle.entry[5].resource"),
        ("FHIR_DELETE_UNMAPPABLE", "Bundle.entry[6].resource"),
        ("FHIR_DELETE_UNMAPPABLE", "Bundle.entry[8].resource"),
        ("FHIR_DELETE_UNMAPPABLE", "Bundle.entry[9].resource"),
        ("FHIR_UNSUPPORTED_RESOURCE", "Bundle.entry[7].resource.resourceType"),
    ],
    # a German EBM code (no system), linked to a Procedure: not an E/M, not an administration
    "ChargeItem-example.json": [("FHIR_UNSUPPORTED_RESOURCE", "ChargeItem.code")],
    "Coverage-9876B1.json": [("FHIR_UNSUPPORTED_RESOURCE", "resourceType")],
    "Coverage-SP1234.json": [("FHIR_UNSUPPORTED_RESOURCE", "resourceType")],
    # no period: no occurred_at
    "Encounter-example.json": [("FHIR_INVALID", "Encounter.period")],
    "Encounter-f001.json": [("FHIR_INVALID", "Encounter.period")],
    "Encounter-f201.json": [("FHIR_INVALID", "Encounter.period")],
    "Location-1.json": [("FHIR_UNSUPPORTED_RESOURCE", "resourceType")],
    "Location-amb.json": [("FHIR_UNSUPPORTED_RESOURCE", "resourceType")],
    # neither whenHandedOver nor whenPrepared
    "MedicationDispense-meddisp008.json": [("FHIR_INVALID", "MedicationDispense.whenHandedOver")],
    "Practitioner-example.json": [("FHIR_UNSUPPORTED_RESOURCE", "resourceType")],
    "Practitioner-f001.json": [("FHIR_UNSUPPORTED_RESOURCE", "resourceType")],
}


def _get(record: dict, dotted: str) -> object:
    if dotted == "warnings":
        return record["source"]["warnings"]
    value: object = record
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return ABSENT
        value = value[part]
    return value


def test_every_example_is_listed() -> None:
    files = {p.name for p in R4_EXAMPLES.glob("*.json")}
    assert files, "../shared/fhir/r4-examples is missing"
    assert files == set(MAPPED) | set(REFUSED)


@pytest.mark.parametrize("name", sorted(MAPPED))
def test_mapped_example(name: str) -> None:
    raw = (R4_EXAMPLES / name).read_bytes()
    result = adapt(raw, PACKAGED)
    assert not result.dead_letters, result.dead_letters
    assert len(result.records) == 1
    assert_valid_fhir(orjson.loads(raw))  # what the adapter accepts is valid FHIR
    record = result.records[0]
    for dotted, expected in MAPPED[name].items():
        if dotted == "warnings":
            for warning in expected:
                assert warning in record["source"]["warnings"], (dotted, record["source"])
            continue
        assert _get(record, dotted) == expected, (dotted, record)
    # no versionId in the examples: the content hash identifies the version
    assert record["event_id"].startswith(f"{record['source']['ref'].split('/')[0]}/")
    assert "/_sha256/" in record["event_id"]


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_example(name: str) -> None:
    raw = (R4_EXAMPLES / name).read_bytes()
    result = adapt(raw, PACKAGED)
    assert result.records == []
    assert [(d.error_code, d.field) for d in result.dead_letters] == REFUSED[name]
    for dead in result.dead_letters:
        assert dead.raw, "the refused unit or entry is kept"


def test_refused_single_resource_keeps_the_original_bytes() -> None:
    raw = (R4_EXAMPLES / "Encounter-f001.json").read_bytes()
    assert adapt(raw, PACKAGED).dead_letters[0].raw == raw
