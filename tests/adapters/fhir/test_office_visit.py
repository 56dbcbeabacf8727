"""ehr-mapping §7: office-visit.fhir.json maps to the records of office-visit.ndjson, field
by field, except event ids, `recorded_at`, `source` and the context the §7 table says the
records inherit from encounter E100."""

from __future__ import annotations

import orjson
import pytest

from stream_app.adapters.fhir import adapt

from .helpers import OFFICE_VISIT_FHIR, OFFICE_VISIT_NDJSON, PACKAGED, assert_valid_fhir, by_type

# ehr-mapping §7: which fields each record takes from the encounter (absent in its own FHIR).
INHERITED = {
    "em.service": ("place_of_service", "payer_class", "facility_timezone"),
    "medication.administered": ("place_of_service", "payer_class", "facility_timezone",
                                "rendering_npi"),
    "drug.dispensed": (),
}
NOT_COMPARED = ("event_id", "recorded_at", "source")


def _expected() -> dict[str, dict]:
    lines = OFFICE_VISIT_NDJSON.read_bytes().splitlines()
    return {r["event_type"]: r for r in (orjson.loads(line) for line in lines if line.strip())}


@pytest.fixture(scope="module")
def mapped() -> dict[str, dict]:
    raw = OFFICE_VISIT_FHIR.read_bytes()
    assert_valid_fhir(orjson.loads(raw))
    result = adapt(raw, PACKAGED)
    assert result.dead_letters == []
    return by_type(result)


def test_four_records(mapped: dict[str, dict]) -> None:
    assert set(mapped) == {"encounter.updated", "em.service", "medication.administered",
                           "drug.dispensed"}


def test_encounter_context(mapped: dict[str, dict]) -> None:
    enc = mapped["encounter.updated"]
    assert enc["record_id"] == enc["encounter_id"] == "E100"
    assert enc["patient_id"] == "P100"
    assert enc["status"] == "completed"
    assert enc["place_of_service"] == "11"             # Location.type CMS POS
    assert enc["payer_class"] == "commercial"          # Coverage.type SOPT 5
    assert enc["facility_timezone"] == "America/Chicago"  # tz-code on period.start
    assert enc["rendering_npi"] == "1234567893"        # participant ATND
    assert enc["occurred_at"] == "2025-03-14T09:00:00-05:00"
    assert enc["ended_at"] == "2025-03-14T09:30:00-05:00"
    # the Coverage and the Location were copied in: their versions are part of the identity
    assert enc["event_id"] == ("Encounter/E100/_history/2+Coverage/cov-P100-1/_history/1"
                               "+Location/LOC-FM/_history/1")


@pytest.mark.parametrize("event_type", sorted(INHERITED))
def test_record_matches_canonical_example(mapped: dict[str, dict], event_type: str) -> None:
    expected = dict(_expected()[event_type])
    actual = dict(mapped[event_type])
    context = mapped["encounter.updated"]
    for name in INHERITED[event_type]:
        assert name not in actual, f"{name} must come from the encounter, not be guessed"
        actual[name] = context[name]
    expected.setdefault("status", "completed")  # contract default
    for name in NOT_COMPARED:
        expected.pop(name, None)
        actual.pop(name, None)
    assert actual == expected


def test_charge_code_comes_from_the_linked_charge_item(mapped: dict[str, dict]) -> None:
    mar = mapped["medication.administered"]
    assert mar["charge_code"] == "96372"
    assert mar["event_id"] == ("MedicationAdministration/mar-1/_history/1"
                               "+ChargeItem/chg-mar-1/_history/1")


def test_recorded_at_is_meta_last_updated(mapped: dict[str, dict]) -> None:
    assert mapped["em.service"]["recorded_at"] == "2025-03-14T09:15:00-05:00"
    assert mapped["drug.dispensed"]["recorded_at"] == "2025-03-14T09:05:00-05:00"


def test_no_warnings(mapped: dict[str, dict]) -> None:
    for record in mapped.values():
        assert record["source"]["format"] == "fhir"
        assert record["source"]["warnings"] == []
