"""The JSON Schemas of topics/schemas accept the contract's records and reject broken ones."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from tests.support.paths import EXAMPLES_DIR, REPO

SCHEMAS = REPO / "topics" / "schemas"
INPUT_TYPES = ("medication.administered", "em.service", "drug.dispensed")
HARD_REQUIRED = ["event_type", "event_id", "record_id", "patient_id", "occurred_at"]


def validator(name: str) -> Draft202012Validator:
    schema = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def example_records() -> list[dict]:
    path = EXAMPLES_DIR / "office-visit.ndjson"
    assert path.is_file(), f"{path} missing: shared/ must sit beside the clone"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def by_type(event_type: str) -> dict:
    return copy.deepcopy(next(r for r in example_records() if r["event_type"] == event_type))


def errors(name: str, record) -> list[str]:
    return [e.message for e in validator(name).iter_errors(record)]


@pytest.mark.parametrize("path", sorted(SCHEMAS.glob("*.schema.json")), ids=lambda p: p.name)
def test_every_schema_is_valid_draft_2020_12(path: Path):
    schema = json.loads(path.read_text())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)


def test_schema_files_exist_for_all_record_types():
    names = {p.name.removesuffix(".schema.json") for p in SCHEMAS.glob("*.schema.json")}
    assert names == {*INPUT_TYPES, "encounter.updated", "charge_line", "correction_alert",
                     "dead_letter"}


def test_encounter_schema_requires_the_hard_fields_and_the_encounter_id():
    # ehr-mapping.md §2: record_id and encounter_id required (and equal: the parser's check)
    schema = json.loads((SCHEMAS / "encounter.updated.schema.json").read_text())
    assert set(schema["required"]) == {"event_type", "event_id", "record_id", "encounter_id",
                                       "patient_id", "occurred_at"}
    ok = {"event_type": "encounter.updated", "event_id": "e1", "record_id": "E1",
          "encounter_id": "E1", "patient_id": "P1", "occurred_at": "2025-03-14T09:00:00-05:00",
          "place_of_service": "11", "payer_class": "commercial"}
    assert errors("encounter.updated", ok) == []
    assert errors("encounter.updated", {k: v for k, v in ok.items() if k != "encounter_id"})
    assert errors("encounter.updated", {**ok, "event_type": "em.service"})


def test_office_visit_example_is_accepted():
    records = example_records()
    assert {r["event_type"] for r in records} == set(INPUT_TYPES)
    for record in records:
        assert errors(record["event_type"], record) == [], record["event_type"]


@pytest.mark.parametrize("event_type", INPUT_TYPES)
def test_input_schemas_require_exactly_the_hard_fields(event_type):
    schema = json.loads((SCHEMAS / f"{event_type}.schema.json").read_text())
    assert sorted(schema["required"]) == sorted(HARD_REQUIRED)
    minimal = {
        "event_type": event_type,
        "event_id": "e1",
        "record_id": "r1",
        "patient_id": "P1",
        "occurred_at": "2025-03-14T09:20:00Z",
    }
    assert errors(event_type, minimal) == []
    # Unknown extra fields and null optional fields are allowed.
    assert errors(event_type, {**minimal, "x_vendor_field": {"a": 1}, "encounter_id": None}) == []


@pytest.mark.parametrize("event_type", INPUT_TYPES)
@pytest.mark.parametrize("field", HARD_REQUIRED)
def test_missing_hard_field_is_rejected(event_type, field):
    record = by_type(event_type)
    del record[field]
    assert any(field in m for m in errors(event_type, record))


@pytest.mark.parametrize(
    "event_type, mutate",
    [
        ("medication.administered", lambda r: r.update(occurred_at=1741962000)),
        ("medication.administered", lambda r: r.update(occurred_at="2025-03-14T09:20:00")),
        ("medication.administered", lambda r: r.update(occurred_at="14/03/2025 09:20")),
        ("medication.administered", lambda r: r.update(event_id=42)),
        ("medication.administered", lambda r: r.update(patient_id=None)),
        ("medication.administered", lambda r: r.update(record_id="")),
        ("medication.administered", lambda r: r.update(event_type="em.service")),
        ("medication.administered", lambda r: r.update(recorded_at="yesterday")),
        ("medication.administered", lambda r: r.update(ended_at="2025-03-14")),
        ("medication.administered", lambda r: r["drug"].update(dose=0)),
        ("medication.administered", lambda r: r["drug"].update(dose="500")),
        ("medication.administered", lambda r: r["drug"].update(wasted_amount=-1)),
        ("medication.administered", lambda r: r.update(place_of_service="1")),
        ("medication.administered", lambda r: r.update(diagnosis_codes="A54.9")),
        ("medication.administered", lambda r: r.update(drug="ceftriaxone")),
        ("medication.administered", lambda r: r.update(status="deleted")),
        ("em.service", lambda r: r.update(separately_identifiable="yes")),
        ("em.service", lambda r: r.update(modifiers="25")),
        ("em.service", lambda r: r.update(occurred_at=None)),
        ("drug.dispensed", lambda r: r.update(quantity=0)),
        ("drug.dispensed", lambda r: r.update(ndc=409733201)),
    ],
)
def test_broken_variants_are_rejected(event_type, mutate):
    record = by_type(event_type)
    mutate(record)
    assert errors(event_type, record), record


@pytest.mark.parametrize("event_type", INPUT_TYPES)
@pytest.mark.parametrize("not_an_object", [[], "text", 1, None])
def test_non_objects_are_rejected(event_type, not_an_object):
    assert errors(event_type, not_an_object)


CHARGE_LINE = {
    "line_id": "L1", "revision": 1, "state": "active", "final": False,
    "patient_id": "P1", "encounter_id": "E1", "service_date": "2025-03-14",
    "place_of_service": "11", "payer_class": "medicare",
    "code": "96372", "modifiers": ["59"], "units": 1,
    "ndc": None, "ndc_qualifier": None, "ndc_quantity": None, "ndc_unit": None,
    "diagnosis_codes": ["J18.9"], "rendering_npi": "1234567893",
    "source_event_ids": ["ev-a-1"],
    "expected_reimbursement": 14.5, "denial_risk": 0.0, "warnings": [],
}  # fmt: skip
ALERT = {
    "alert_id": "A1", "revision": 1, "state": "open", "final": False,
    "reason_code": "EM_MISSING_MODIFIER_25", "severity": "block", "work_queue": "coding",
    "message": "E/M 99213 on the same day as injection 96372 needs modifier 25",
    "suggested_fix": "Append modifier 25 to 99213",
    "predicted_denial": {"carc": "CO-97", "rarc": None},
    "patient_id": "P1", "encounter_id": "E1", "service_date": "2025-03-14",
    "code": "99213", "line_id": "L1", "revenue_at_risk": 14.5,
    "source_event_ids": ["ev-e-1"], "details": {},
}  # fmt: skip
DEAD_LETTER = {
    "error_code": "MISSING_FIELD", "error": "event_id is required", "field": "event_id",
    "raw": "{\"event_type\": \"em.service\"}", "topic": "ehr.em-services", "partition": 0,
    "offset": 17, "key": None,
}  # fmt: skip


def test_contract_output_examples_are_accepted():
    assert errors("charge_line", CHARGE_LINE) == []
    drug_line = {
        **CHARGE_LINE, "code": "J0696", "modifiers": ["JZ"], "units": 2,
        "ndc": "00409733201", "ndc_qualifier": "N4", "ndc_quantity": 1, "ndc_unit": "UN",
    }  # fmt: skip
    assert errors("charge_line", drug_line) == []
    assert errors("correction_alert", ALERT) == []
    assert errors("dead_letter", DEAD_LETTER) == []
    replay_dead = {k: DEAD_LETTER[k] for k in ("error_code", "error", "field", "raw")}
    assert errors("dead_letter", {**replay_dead, "source": "in.ndjson", "line": 3}) == []


@pytest.mark.parametrize(
    "name, record, change",
    [
        ("charge_line", CHARGE_LINE, {"state": "held"}),
        ("charge_line", CHARGE_LINE, {"revision": 0}),
        ("charge_line", CHARGE_LINE, {"ndc": "0409-7332-01"}),
        ("charge_line", CHARGE_LINE, {"service_date": "2025-03-14T00:00:00Z"}),
        ("charge_line", CHARGE_LINE, {"denial_risk": 1.5}),
        ("charge_line", CHARGE_LINE, {"line_id": None}),
        ("correction_alert", ALERT, {"severity": "error"}),
        ("correction_alert", ALERT, {"work_queue": "billing"}),
        ("correction_alert", ALERT, {"state": "closed"}),
        ("correction_alert", ALERT, {"final": "no"}),
        ("dead_letter", DEAD_LETTER, {"error_code": "BAD"}),
        ("dead_letter", DEAD_LETTER, {"offset": -1}),
    ],
)
def test_broken_outputs_are_rejected(name, record, change):
    assert errors(name, {**record, **change})


@pytest.mark.parametrize("name, record", [("charge_line", CHARGE_LINE), ("correction_alert", ALERT)])
def test_outputs_require_key_and_revision(name, record):
    key = "line_id" if name == "charge_line" else "alert_id"
    for field in (key, "revision", "state", "final"):
        broken = dict(record)
        del broken[field]
        assert errors(name, broken), field
