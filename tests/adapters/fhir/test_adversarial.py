"""Malformed and adversarial FHIR: every input yields records or dead letters with a named
code, never an exception, never an empty result, never the adapter's own failure."""

from __future__ import annotations

import copy

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream_app.adapters import Adapted
from stream_app.adapters.fhir import adapt
from stream_app.adapters.fhir.mapping import KNOWN_TYPES
from stream_app.adapters.site import SiteConfig
from stream_app.vocabulary import ADAPTER_DEAD_LETTER_CODES, DEAD_LETTER_CODES

from .helpers import PACKAGED, office_visit

CODES = set(ADAPTER_DEAD_LETTER_CODES) | set(DEAD_LETTER_CODES)
HARD = ("event_type", "event_id", "record_id", "patient_id", "occurred_at")
SMALL_BUNDLES = PACKAGED.merged(SiteConfig.from_rows(adapter_settings=[
    {"source": "fhir", "setting": "fhir_max_entries", "value": "12"}]))
# Every setting on, so the property tests go through their branches too.
ALL_SETTINGS = PACKAGED.merged(SiteConfig.from_rows(adapter_settings=[
    {"source": "fhir", "setting": name, "value": value} for name, value in (
        ("source_id", "ehr-a"), ("patient_identifier_system", "urn:mrn"),
        ("modifier_extension_urls", "https://ehr.example.org/mod urn:mod"),
        ("em_separately_identifiable_source", "modifier_25"), ("fhir_max_entries", "50"))],
    facility_timezone=[{"source": "fhir", "facility_key": "*", "timezone": "America/Chicago"}],
    location_pos=[{"source": "fhir", "key_type": "fhir_encounter_class", "key": "AMB",
                   "place_of_service": "11"}]))


def check(result: Adapted) -> None:
    assert isinstance(result, Adapted)
    assert result.records or result.dead_letters, "an input unit must yield something"
    for dead in result.dead_letters:
        assert dead.error_code in CODES, dead
        assert not dead.error.startswith("adapter failed"), dead  # a bug in the adapter
        assert isinstance(dead.raw, bytes)
    for record in result.records:
        for name in HARD:
            assert isinstance(record.get(name), str) and record[name], (name, record)
        orjson.dumps(record)  # JSON-ready


json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**63 - 1),
                      st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20))
json_value = st.recursive(json_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)),
    max_leaves=20)

RESOURCE_KEYS = ["resourceType", "id", "meta", "status", "subject", "patient", "context",
                 "encounter", "effectiveDateTime", "effectivePeriod", "medicationReference",
                 "medicationCodeableConcept", "contained", "dosage", "performer", "request",
                 "reasonCode", "reasonReference", "code", "occurrenceDateTime", "extension",
                 "period", "location", "participant", "account", "whenHandedOver", "quantity",
                 "authorizingPrescription", "service", "type", "entry", "beneficiary",
                 "primarySource", "vaccineCode", "identifier", "_effectiveDateTime"]
TYPES = ["MedicationAdministration", "MedicationDispense", "ChargeItem", "Procedure",
         "Immunization", "Encounter", "Bundle", "Coverage", "Observation", "NotAType"]


@st.composite
def shaped_resource(draw) -> dict:
    doc = draw(st.dictionaries(st.sampled_from(RESOURCE_KEYS), json_value, max_size=10))
    doc["resourceType"] = draw(st.sampled_from(TYPES))
    return doc


@st.composite
def mutated_office_visit(draw) -> dict:
    """The worked example with random elements replaced by random JSON or deleted."""
    doc = office_visit()
    for _ in range(draw(st.integers(1, 4))):
        node: dict | list = doc
        target = None  # (container, key) of the element to change
        for _depth in range(draw(st.integers(1, 7))):
            if isinstance(node, dict) and node:
                key = draw(st.sampled_from(sorted(node)))
            elif isinstance(node, list) and node:
                key = draw(st.integers(0, len(node) - 1))
            else:
                break
            target = (node, key)
            child = node[key]
            if not isinstance(child, dict | list) or draw(st.booleans()):
                break
            node = child
        if target is None:
            continue
        container, key = target
        if isinstance(container, dict) and draw(st.booleans()):
            container.pop(key, None)
        else:
            container[key] = draw(json_value)
    return doc


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_arbitrary_bytes(raw: bytes) -> None:
    check(adapt(raw, PACKAGED))


@settings(max_examples=300, deadline=None)
@given(json_value)
def test_arbitrary_json(value: object) -> None:
    check(adapt(orjson.dumps(value), PACKAGED))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shaped_resource())
def test_wrong_types_in_resource_shapes(doc: dict) -> None:
    check(adapt(orjson.dumps(doc), PACKAGED))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_office_visit(), st.booleans())
def test_mutated_worked_example(doc: dict, all_settings: bool) -> None:
    check(adapt(orjson.dumps(doc), ALL_SETTINGS if all_settings else PACKAGED))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(shaped_resource(), json_value), max_size=15),
       st.sampled_from(["transaction", "batch", "collection", "history", "searchset", "document"]))
def test_bundles_of_random_entries(resources: list, btype: str) -> None:
    bundle = {"resourceType": "Bundle", "type": btype,
              "entry": [{"fullUrl": f"urn:uuid:{i}", "resource": r} for i, r in enumerate(resources)]}
    check(adapt(orjson.dumps(bundle), SMALL_BUNDLES))


def test_non_utf8_and_non_json() -> None:
    assert [d.error_code for d in adapt(b"\xff\xfe{}", PACKAGED).dead_letters] == ["INVALID_ENCODING"]
    assert [d.error_code for d in adapt(b"MSH|^~\\&|", PACKAGED).dead_letters] == ["INVALID_JSON"]
    assert [d.error_code for d in adapt(b"", PACKAGED).dead_letters] == ["INVALID_JSON"]
    assert [d.error_code for d in adapt(b"[1,2]", PACKAGED).dead_letters] == ["FHIR_INVALID"]


def test_unknown_resource_type_is_invalid_and_known_unmapped_is_unsupported() -> None:
    assert "Observation" in KNOWN_TYPES
    bad = adapt(b'{"resourceType": "Charge"}', PACKAGED).dead_letters
    assert [(d.error_code, d.field) for d in bad] == [("FHIR_INVALID", "resourceType")]
    obs = adapt(b'{"resourceType": "Observation", "id": "o1"}', PACKAGED).dead_letters
    assert [d.error_code for d in obs] == ["FHIR_UNSUPPORTED_RESOURCE"]


def test_deep_nesting_over_100_is_invalid() -> None:
    deep: object = "x"
    for _ in range(101):
        deep = {"a": deep}
    doc = {"resourceType": "MedicationAdministration", "id": "m", "extension": [deep]}
    dead = adapt(orjson.dumps(doc), PACKAGED).dead_letters
    assert [d.error_code for d in dead] == ["FHIR_INVALID"]
    assert "deeper than 100" in dead[0].error
    # beyond orjson's own recursion limit too
    very = b"[" * 5000 + b"]" * 5000
    assert [d.error_code for d in adapt(very, PACKAGED).dead_letters] == ["FHIR_INVALID"]


def test_bundle_over_max_entries_is_too_large() -> None:
    entry = {"resource": {"resourceType": "Patient", "id": "p"}}
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [entry] * 10_001}
    dead = adapt(orjson.dumps(bundle), PACKAGED).dead_letters
    assert [(d.error_code, d.field) for d in dead] == [("TOO_LARGE", "Bundle.entry")]
    small = {**bundle, "entry": [entry] * 13}
    assert [d.error_code for d in adapt(orjson.dumps(small), SMALL_BUNDLES).dead_letters] == ["TOO_LARGE"]


def test_circular_and_unresolved_references_terminate() -> None:
    doc = office_visit()
    enc = next(e["resource"] for e in doc["entry"] if e["resource"]["resourceType"] == "Encounter")
    enc["account"] = [{"reference": "Account/a1"}]
    doc["entry"] += [
        {"fullUrl": "urn:uuid:a1", "resource": {
            "resourceType": "Account", "id": "a1", "status": "active",
            "coverage": [{"coverage": {"reference": "Account/a1"}},       # points to itself
                         {"coverage": {"reference": "Coverage/missing"}}]}},
    ]
    mar = next(e["resource"] for e in doc["entry"]
               if e["resource"]["resourceType"] == "MedicationAdministration")
    mar["contained"][0]["id"] = "loop"
    mar["medicationReference"] = {"reference": "#loop"}
    mar["contained"][0]["ingredient"] = [{"itemReference": {"reference": "#loop"}}]
    mar["reasonReference"] = [{"reference": "Condition/nowhere"}]
    result = adapt(orjson.dumps(doc), PACKAGED)
    check(result)
    assert result.dead_letters == []
    records = {r["event_type"]: r for r in result.records}
    assert records["encounter.updated"]["payer_class"] == "commercial"  # the unit's Coverage
    assert "reference_unresolved:reasonReference" in \
        records["medication.administered"]["source"]["warnings"]


def test_subject_not_a_patient_is_unresolved() -> None:
    doc = office_visit()
    disp = copy.deepcopy(next(e["resource"] for e in doc["entry"]
                              if e["resource"]["resourceType"] == "MedicationDispense"))
    disp["subject"] = {"reference": "Group/g1"}
    dead = adapt(orjson.dumps(disp), PACKAGED).dead_letters
    assert [(d.error_code, d.field) for d in dead] == [
        ("FHIR_REFERENCE_UNRESOLVED", "MedicationDispense.subject")]


@settings(max_examples=500, deadline=None)
@given(json_value)
def test_canonical_json_is_rfc8785(value: object) -> None:
    """The fast canonical form of event ids equals the `jcs` reference implementation's."""
    import jcs

    from stream_app.adapters.fhir._model import canonical_json

    assert canonical_json(value) == jcs.canonicalize(value)
