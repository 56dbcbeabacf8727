"""parse_record: contract.md §2 input records and §3 dead letters."""

from __future__ import annotations

import copy
import json
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream_app.engine import _parse
from stream_app.engine.records import (
    COMPLETED,
    ENTERED_IN_ERROR,
    INVALID_ENCODING,
    INVALID_JSON,
    INVALID_TIMESTAMP,
    MAX_RECORD_BYTES,
    MISSING_FIELD,
    NOT_AN_OBJECT,
    TOO_LARGE,
    UNKNOWN_EVENT_TYPE,
    WRONG_TYPE,
    Administration,
    DeadLetter,
    Dispense,
    Drug,
    EMService,
    parse_record,
)

EXAMPLES = Path(__file__).resolve().parents[2].parent / "shared/spec/examples"
CHICAGO = timezone(timedelta(hours=-5))
SECRET = "PHI-Jane-Doe-1957"  # a value that must never appear in an error message

ADMIN = {
    "event_type": "medication.administered",
    "event_id": "ev-a-1",
    "record_id": "mar-1",
    "patient_id": "P100",
    "encounter_id": "E100",
    "order_id": "ORD-1",
    "occurred_at": "2025-03-14T09:20:00-05:00",
    "facility_timezone": "America/Chicago",
    "place_of_service": "11",
    "payer_class": "commercial",
    "route": "IM",
    "site": "right ventrogluteal",
    "drug": {"name": "ceftriaxone", "hcpcs": "J0696", "dose": 500, "dose_unit": "mg",
             "category": "therapeutic", "container": "single_dose", "wasted_amount": 0,
             "lot_number": "LT4471", "ndc": "0409-7332-01"},
    "performer_id": "nurse-7",
    "performer_credential": "RN",
    "rendering_npi": "1234567893",
    "supervising_npi": "1234567893",
    "diagnosis_codes": ["A54.9"],
    "charge_code": "96372",
    "charge_modifiers": ["59"],
}
EM = {
    "event_type": "em.service", "event_id": "ev-e-1", "record_id": "note-1",
    "patient_id": "P100", "encounter_id": "E100", "occurred_at": "2025-03-14T09:00:00-05:00",
    "facility_timezone": "America/Chicago", "code": "99213", "modifiers": ["25"],
    "separately_identifiable": True, "place_of_service": "11", "payer_class": "commercial",
    "rendering_npi": "1234567893", "diagnosis_codes": ["A54.9"],
}
DISP = {
    "event_type": "drug.dispensed", "event_id": "ev-d-1", "record_id": "disp-1",
    "patient_id": "P100", "order_id": "ORD-1", "occurred_at": "2025-03-14T09:05:00-05:00",
    "facility_timezone": "America/Chicago", "ndc": "0409-7332-01", "drug_name": "ceftriaxone",
    "quantity": 1, "quantity_unit": "UN", "lot_number": "LT4471",
}
VALID = (ADMIN, EM, DISP)


def parse(obj, **kw):
    # stdlib json: unlike orjson.dumps it can write integers beyond 64 bits
    return parse_record(json.dumps(obj, ensure_ascii=False).encode("utf-8", "surrogatepass"),
                        **kw)


def with_(base: dict, path: str, value) -> dict:
    """Copy of base with the dotted path set to value (or removed, for _DELETE)."""
    out = copy.deepcopy(base)
    *parents, last = path.split(".")
    target = out
    for p in parents:
        target = target.setdefault(p, {})
    if value is _DELETE:
        target.pop(last, None)
    else:
        target[last] = value
    return out


_DELETE = object()


def dead(result, code, field):
    assert isinstance(result, DeadLetter), result
    assert (result.error_code, result.field) == (code, field), result
    assert result.error and result.error != _parse._INTERNAL_ERROR  # noqa: SLF001
    return result


# --- the spec's example file -------------------------------------------------------------

def test_office_visit_example_parses():
    lines = (EXAMPLES / "office-visit.ndjson").read_bytes().splitlines()
    disp, adm, em = (parse_record(line) for line in lines)

    assert disp == Dispense(
        event_id="ev-d-1", record_id="disp-1", patient_id="P100",
        occurred_at=datetime(2025, 3, 14, 9, 5, tzinfo=CHICAGO),
        recorded_at=datetime(2025, 3, 14, 9, 5, tzinfo=CHICAGO),
        service_date=date(2025, 3, 14), timezone="America/Chicago", status=COMPLETED,
        encounter_id=None, ndc="0409-7332-01", drug_name="ceftriaxone", order_id="ORD-1",
        quantity=1.0, quantity_unit="UN", lot_number="LT4471",
    )
    assert adm == Administration(
        event_id="ev-a-1", record_id="mar-1", patient_id="P100",
        occurred_at=datetime(2025, 3, 14, 9, 20, tzinfo=CHICAGO),
        recorded_at=datetime(2025, 3, 14, 9, 20, tzinfo=CHICAGO),
        service_date=date(2025, 3, 14), timezone="America/Chicago", status=COMPLETED,
        encounter_id="E100", ended_at=None, place_of_service="11", payer_class="commercial",
        route="IM", site="right ventrogluteal",
        drug=Drug(name="ceftriaxone", ndc=None, hcpcs="J0696", dose=500.0, dose_unit="mg",
                  category="therapeutic", container="single_dose", wasted_amount=0.0,
                  lot_number="LT4471"),
        performer_id="nurse-7", performer_credential="RN", rendering_npi="1234567893",
        supervising_npi="1234567893", order_id="ORD-1", diagnosis_codes=("A54.9",),
        charge_code="96372", charge_modifiers=(),
    )
    assert em == EMService(
        event_id="ev-e-1", record_id="note-1", patient_id="P100",
        occurred_at=datetime(2025, 3, 14, 9, 0, tzinfo=CHICAGO),
        recorded_at=datetime(2025, 3, 14, 9, 0, tzinfo=CHICAGO),
        service_date=date(2025, 3, 14), timezone="America/Chicago", status=COMPLETED,
        encounter_id="E100", code="99213", modifiers=("25",), separately_identifiable=True,
        place_of_service="11", payer_class="commercial", rendering_npi="1234567893",
        diagnosis_codes=("A54.9",),
    )
    assert not adm.withdrawn
    assert adm.event_type == "medication.administered"


def test_str_and_bytes_inputs_agree():
    raw = orjson.dumps(ADMIN)
    assert parse_record(raw) == parse_record(raw.decode()) == parse_record(bytearray(raw))
    assert parse_record(memoryview(raw)) == parse_record(raw)


# --- normal forms ------------------------------------------------------------------------

def test_minimal_records_parse_with_defaults():
    for base in VALID:
        minimal = {k: base[k] for k in ("event_type", "event_id", "record_id", "patient_id",
                                        "occurred_at")}
        r = parse(minimal)
        assert not isinstance(r, DeadLetter), r
        assert r.timezone == "UTC"
        assert r.status == COMPLETED
        assert r.recorded_at == r.occurred_at
        assert r.encounter_id is None
        assert r.service_date == date(2025, 3, 14)
    r = parse({k: ADMIN[k] for k in ("event_type", "event_id", "record_id", "patient_id",
                                     "occurred_at")})
    assert r.drug == Drug() and r.diagnosis_codes is None and r.charge_modifiers == ()
    assert r.route is None and r.place_of_service is None


def test_strings_trimmed_and_empty_optional_strings_are_missing():
    obj = dict(ADMIN, event_id="  ev-a-1 ", site="  ", performer_id="", order_id=" O ",
               supervising_npi=None, encounter_id="\t")
    r = parse(obj)
    assert r.event_id == "ev-a-1"
    assert r.site is None and r.performer_id is None and r.supervising_npi is None
    assert r.encounter_id is None
    assert r.order_id == "O"


def test_codes_upper_cased():
    obj = with_(ADMIN, "drug.hcpcs", " j0696 ")
    obj.update(charge_code="96372", charge_modifiers=[" xu ", "jz"],
               diagnosis_codes=[" j18.9 ", "m54.50", "", "  ", "Z23"], performer_credential="rn")
    r = parse(obj)
    assert r.drug.hcpcs == "J0696"
    assert r.charge_modifiers == ("XU", "JZ")
    assert r.diagnosis_codes == ("J18.9", "M54.50", "Z23")  # order kept, blanks dropped
    assert r.performer_credential == "RN"
    em = parse(dict(EM, modifiers=["25", " gt "], code="99213"))
    assert em.modifiers == ("25", "GT")


@pytest.mark.parametrize("codes", [[], [""], ["  "], None])
def test_empty_diagnosis_list_is_missing(codes):
    assert parse(dict(ADMIN, diagnosis_codes=codes)).diagnosis_codes is None


def test_invalid_code_values_are_kept_for_the_rules():
    # Shape problems are alerts, not dead letters.
    r = parse(dict(with_(ADMIN, "drug.ndc", "0409733201"), diagnosis_codes=["18.9"],
                   rendering_npi="1234567890"))
    assert r.drug.ndc == "0409733201"
    assert r.diagnosis_codes == ("18.9",)
    assert r.rendering_npi == "1234567890"


@pytest.mark.parametrize(
    ("unit", "canonical"),
    [("mg", "mg"), ("MG", "mg"), ("mcg", "mcg"), ("g", "g"), ("mL", "mL"), ("ml", "mL"),
     ("ML", "mL"), ("units", "units"), ("unit", "units"), ("u", "units"), ("U", "units"),
     ("Units", "units")],
)
def test_dose_unit_canonical(unit, canonical):
    assert parse(with_(ADMIN, "drug.dose_unit", unit)).drug.dose_unit == canonical


def test_enums_case_insensitive():
    obj = with_(ADMIN, "drug.category", "Allergen_Immunotherapy")
    obj = with_(obj, "drug.container", "MULTI_DOSE")
    obj.update(payer_class="Self-Pay", status="Entered-In-Error")
    r = parse(obj)
    assert r.drug.category == "allergen_immunotherapy"
    assert r.drug.container == "multi_dose"
    assert r.payer_class == "self_pay"
    assert r.status == ENTERED_IN_ERROR and r.withdrawn
    assert parse(dict(DISP, quantity_unit="ml")).quantity_unit == "ML"


def test_routes_kept_raw_but_must_be_recognised():
    assert parse(dict(ADMIN, route=" intramuscular ")).route == "intramuscular"
    assert parse(dict(ADMIN, route="Sub-Q")).route == "Sub-Q"
    assert parse(dict(ADMIN, route="")).route is None


def test_timezone_and_service_date():
    late = dict(ADMIN, occurred_at="2025-03-14T04:30:00Z")
    assert parse(late).service_date == date(2025, 3, 13)
    no_tz = {k: v for k, v in late.items() if k != "facility_timezone"}
    r = parse(no_tz)
    assert (r.timezone, r.service_date) == ("UTC", date(2025, 3, 14))
    r = parse(no_tz, default_tz="America/New_York")
    assert (r.timezone, r.service_date) == ("America/New_York", date(2025, 3, 14))
    r = parse(dict(no_tz, facility_timezone=""), default_tz="America/Los_Angeles")
    assert (r.timezone, r.service_date) == ("America/Los_Angeles", date(2025, 3, 13))


def test_dst_gap_service_date():
    # 2025-03-09 02:30 does not exist in New York; 07:30Z is 03:30 EDT.
    r = parse(dict(ADMIN, occurred_at="2025-03-09T07:30:00Z",
                   facility_timezone="America/New_York"))
    assert r.service_date == date(2025, 3, 9)
    r = parse(dict(ADMIN, occurred_at="2025-03-09T23:30:00-04:00",
                   facility_timezone="America/New_York"))
    assert r.service_date == date(2025, 3, 9)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-03-14T09:20:00Z", datetime(2025, 3, 14, 9, 20, tzinfo=UTC)),
        ("2025-03-14t09:20:00z", datetime(2025, 3, 14, 9, 20, tzinfo=UTC)),
        ("2025-03-14 09:20:00+00:00", datetime(2025, 3, 14, 9, 20, tzinfo=UTC)),
        ("2025-03-14T09:20:00-00:00", datetime(2025, 3, 14, 9, 20, tzinfo=UTC)),
        ("2025-03-14T09:20:00.5+05:30",
         datetime(2025, 3, 14, 9, 20, 0, 500000, tzinfo=timezone(timedelta(hours=5.5)))),
        ("2025-03-14T09:20:00.123456789Z",
         datetime(2025, 3, 14, 9, 20, 0, 123456, tzinfo=UTC)),
        ("1900-01-01T00:00:00Z", datetime(1900, 1, 1, tzinfo=UTC)),
        ("2100-12-31T23:59:59Z", datetime(2100, 12, 31, 23, 59, 59, tzinfo=UTC)),
    ],
)
def test_timestamps_accepted(text, expected):
    r = parse(dict(EM, occurred_at=text, recorded_at=text))
    assert r.occurred_at == expected and r.recorded_at == expected
    assert r.occurred_at.utcoffset() == expected.utcoffset()


def test_recorded_at_and_ended_at():
    r = parse(dict(ADMIN, recorded_at="2025-03-15T10:00:00Z",
                   ended_at="2025-03-14T10:20:00-05:00", route="IV"))
    assert r.recorded_at == datetime(2025, 3, 15, 10, tzinfo=UTC)
    assert r.ended_at - r.occurred_at == timedelta(hours=1)
    same = parse(dict(ADMIN, ended_at=ADMIN["occurred_at"]))
    assert same.ended_at == same.occurred_at
    assert parse(dict(ADMIN, ended_at="")).ended_at is None


def test_numbers():
    r = parse(with_(with_(ADMIN, "drug.dose", 0.25), "drug.wasted_amount", 1))
    assert (r.drug.dose, r.drug.wasted_amount) == (0.25, 1.0)
    assert type(r.drug.dose) is float and type(r.drug.wasted_amount) is float
    assert parse(dict(DISP, quantity=2.5)).quantity == 2.5
    assert parse(with_(ADMIN, "drug.dose", 1e9)).drug.dose == 1e9


def test_separately_identifiable_default_false():
    assert parse(dict(EM, separately_identifiable=None)).separately_identifiable is False
    assert parse({k: v for k, v in EM.items()
                  if k != "separately_identifiable"}).separately_identifiable is False


def test_unknown_fields_ignored():
    r = parse(dict(ADMIN, extra={"deep": [1, 2, {"x": None}]}, another=True))
    assert r == parse(ADMIN)
    assert parse(with_(ADMIN, "drug.unexpected", [1])) == parse(ADMIN)


def test_leading_utf8_bom_tolerated():
    assert parse_record(b"\xef\xbb\xbf" + orjson.dumps(EM)) == parse(EM)


# --- dead letters ------------------------------------------------------------------------

@pytest.mark.parametrize(
    "raw",
    [b"", b"   ", b"{", b'{"a":1,}', b"{'a': 1}", b'{"a":NaN}', b'{"a":1e400}',
     b"[" * 2000 + b"]" * 2000, b'{"a":1} x', "", "{", b'"\\ud800"'],
)
def test_invalid_json(raw):
    dead(parse_record(raw), INVALID_JSON, None)


def test_non_text_input():
    dead(parse_record(12345), INVALID_JSON, None)
    dead(parse_record(None), NOT_AN_OBJECT, None)


@pytest.mark.parametrize("raw", [b'{"a":"\xff"}', b"\xff\xfe{}", b"\xc3\x28", b"\xed\xa0\x80",
                                 '{"a":"\ud800"}', "\udc00"])
def test_invalid_encoding(raw):
    dead(parse_record(raw), INVALID_ENCODING, None)


def test_too_large_checked_before_parsing():
    big = b"{" + b" " * MAX_RECORD_BYTES + b"}"
    dead(parse_record(big), TOO_LARGE, None)
    dead(parse_record(big.decode()), TOO_LARGE, None)
    dead(parse_record(b"\xff" * (MAX_RECORD_BYTES + 1)), TOO_LARGE, None)
    # multi-byte characters: the str is short enough, its UTF-8 form is not
    dead(parse_record('{"x":"' + "é" * (MAX_RECORD_BYTES // 2) + '"}'), TOO_LARGE, None)
    ok = orjson.dumps(dict(EM, pad=" " * (MAX_RECORD_BYTES - len(orjson.dumps(EM)) - 10)))
    assert len(ok) <= MAX_RECORD_BYTES
    assert isinstance(parse_record(ok), EMService)


@pytest.mark.parametrize("raw", [b"[]", b"[1]", b"1", b'"x"', b"null", b"true", b"1.5"])
def test_not_an_object(raw):
    dead(parse_record(raw), NOT_AN_OBJECT, None)


@pytest.mark.parametrize("field", ["event_type", "event_id", "record_id", "patient_id",
                                   "occurred_at"])
@pytest.mark.parametrize("value", [_DELETE, None, "", "   "])
def test_missing_required_field(field, value):
    for base in VALID:
        dead(parse(with_(base, field, value)), MISSING_FIELD, field)


def test_missing_event_type_reported_before_other_problems():
    obj = {k: v for k, v in ADMIN.items() if k not in ("event_type", "patient_id")}
    dead(parse(obj), MISSING_FIELD, "event_type")


@pytest.mark.parametrize("event_type", ["medication.given", "MEDICATION.ADMINISTERED",
                                        "em", "x" * 1000 + "y"])
def test_unknown_event_type(event_type):
    r = parse(dict(ADMIN, event_type=event_type))
    if len(event_type) > 256:
        dead(r, WRONG_TYPE, "event_type")
    else:
        dead(r, UNKNOWN_EVENT_TYPE, "event_type")


WRONG_TYPES = [
    # common
    (VALID, "event_type", 7),
    (VALID, "event_id", 123),
    (VALID, "record_id", ["r"]),
    (VALID, "patient_id", True),
    (VALID, "patient_id", "P" * 257),
    (VALID, "encounter_id", {"id": "E"}),
    (VALID, "encounter_id", "E" * 257),
    (VALID, "occurred_at", 1741958400),
    (VALID, "recorded_at", 1741958400),
    (VALID, "status", "cancelled"),
    (VALID, "status", True),
    (VALID, "facility_timezone", "America/Springfield"),
    (VALID, "facility_timezone", "america/chicago"),
    (VALID, "facility_timezone", 5),
    # administration
    ((ADMIN,), "ended_at", 60),
    ((ADMIN,), "place_of_service", 11),
    ((ADMIN,), "place_of_service", "1"),
    ((ADMIN,), "place_of_service", "111"),
    ((ADMIN,), "place_of_service", "1a"),
    ((ADMIN,), "place_of_service", "١١"),
    ((ADMIN,), "payer_class", "medicare advantage"),
    ((ADMIN,), "payer_class", 1),
    ((ADMIN,), "route", "telepathic"),
    ((ADMIN,), "route", ["IM"]),
    ((ADMIN,), "site", "x" * 4097),
    ((ADMIN,), "drug", "ceftriaxone"),
    ((ADMIN,), "drug", ["ceftriaxone"]),
    ((ADMIN,), "drug.name", 5),
    ((ADMIN,), "drug.name", "x" * 4097),
    ((ADMIN,), "drug.ndc", 409733201),
    ((ADMIN,), "drug.hcpcs", ["J0696"]),
    ((ADMIN,), "drug.dose", "500"),
    ((ADMIN,), "drug.dose", True),
    ((ADMIN,), "drug.dose", 0),
    ((ADMIN,), "drug.dose", -1),
    ((ADMIN,), "drug.dose", 1e9 + 1),
    ((ADMIN,), "drug.dose", 1e300),
    ((ADMIN,), "drug.dose", 10**30),
    ((ADMIN,), "drug.dose_unit", "mL/hr"),
    ((ADMIN,), "drug.dose_unit", "milligrams"),
    ((ADMIN,), "drug.category", "biologic"),
    ((ADMIN,), "drug.container", "vial"),
    ((ADMIN,), "drug.wasted_amount", -0.5),
    ((ADMIN,), "drug.wasted_amount", "0"),
    ((ADMIN,), "drug.wasted_amount", False),
    ((ADMIN,), "drug.lot_number", 4471),
    ((ADMIN,), "performer_id", 7),
    ((ADMIN,), "performer_credential", ["RN"]),
    ((ADMIN,), "rendering_npi", 1234567893),
    ((ADMIN,), "supervising_npi", 1234567893),
    ((ADMIN,), "order_id", 1),
    ((ADMIN,), "diagnosis_codes", "A54.9"),
    ((ADMIN,), "diagnosis_codes", ["A54.9", None]),
    ((ADMIN,), "diagnosis_codes", ["A54.9", 5]),
    ((ADMIN,), "diagnosis_codes", [["A54.9"]]),
    ((ADMIN,), "diagnosis_codes", {"0": "A54.9"}),
    ((ADMIN,), "diagnosis_codes", ["A" * 257]),
    ((ADMIN,), "charge_code", 96372),
    ((ADMIN,), "charge_modifiers", "59"),
    ((ADMIN,), "charge_modifiers", [59]),
    # E/M
    ((EM,), "code", 99213),
    ((EM,), "modifiers", "25"),
    ((EM,), "modifiers", [25]),
    ((EM,), "separately_identifiable", "true"),
    ((EM,), "separately_identifiable", 1),
    ((EM,), "place_of_service", "office"),
    ((EM,), "payer_class", "blue cross"),
    ((EM,), "rendering_npi", []),
    ((EM,), "diagnosis_codes", [True]),
    # dispense
    ((DISP,), "ndc", 409733201),
    ((DISP,), "drug_name", False),
    ((DISP,), "quantity", "1"),
    ((DISP,), "quantity", 0),
    ((DISP,), "quantity", -2),
    ((DISP,), "quantity", 2e9),
    ((DISP,), "quantity_unit", "EA"),
    ((DISP,), "quantity_unit", 1),
    ((DISP,), "lot_number", ["LT"]),
    ((DISP,), "order_id", 1.5),
]


@pytest.mark.parametrize(("bases", "field", "value"), WRONG_TYPES,
                         ids=[f"{f}={str(v)[:20]}" for _, f, v in WRONG_TYPES])
def test_wrong_type(bases, field, value):
    for base in bases:
        dead(parse(with_(base, field, value)), WRONG_TYPE, field)


def test_unknown_default_zone_is_a_dead_letter_not_an_exception():
    obj = {k: v for k, v in EM.items() if k != "facility_timezone"}
    dead(parse(obj, default_tz="Nowhere/Land"), WRONG_TYPE, "facility_timezone")
    assert isinstance(parse(EM, default_tz="Nowhere/Land"), EMService)


@pytest.mark.parametrize(
    "text",
    [
        "2025-03-14T09:20:00",  # no offset
        "2025-03-14 09:20:00",
        "2025-03-14",
        "2025-03-14T09:20Z",  # no seconds
        "2025-03-14T09:20:00+0500",  # offset without colon
        "2025-03-14T09:20:00+05",
        "2025-03-14T09:20:00 Z",
        "20250314T092000Z",
        "2025-W11-5T09:20:00Z",
        "2025-13-14T09:20:00Z",
        "2025-02-30T09:20:00Z",
        "2025-03-14T24:00:00Z",
        "2025-03-14T09:60:00Z",
        "2025-03-14T09:20:60Z",  # leap seconds are not accepted
        "2025-03-14T09:20:00+24:00",
        "2025-03-14T09:20:00.Z",
        "1899-12-31T23:59:59Z",
        "2101-01-01T00:00:00Z",
        "0000-01-01T00:00:00Z",
        "9999-12-31T23:59:59Z",
        "14/03/2025 09:20",
        "yesterday",
        "２０２５-03-14T09:20:00Z",
    ],
)
def test_invalid_timestamp(text):
    for base in VALID:
        dead(parse(dict(base, occurred_at=text)), INVALID_TIMESTAMP, "occurred_at")
        dead(parse(dict(base, recorded_at=text)), INVALID_TIMESTAMP, "recorded_at")
    dead(parse(dict(ADMIN, ended_at=text)), INVALID_TIMESTAMP, "ended_at")


def test_ended_before_occurred_is_invalid():
    dead(parse(dict(ADMIN, ended_at="2025-03-14T09:19:59-05:00")), INVALID_TIMESTAMP,
         "ended_at")
    # Same wall clock, other offset: 09:30Z is before 09:20-05:00 (14:20Z).
    dead(parse(dict(ADMIN, ended_at="2025-03-14T09:30:00Z")), INVALID_TIMESTAMP, "ended_at")


def test_recorded_before_occurred_is_allowed():
    r = parse(dict(ADMIN, recorded_at="2025-03-14T09:00:00-05:00"))
    assert r.recorded_at < r.occurred_at


def test_errors_never_contain_values():
    cases = [
        with_(ADMIN, "patient_id", SECRET * 20),
        with_(ADMIN, "payer_class", SECRET),
        with_(ADMIN, "route", SECRET),
        with_(ADMIN, "drug.dose_unit", SECRET),
        with_(ADMIN, "drug.category", SECRET),
        with_(ADMIN, "facility_timezone", SECRET),
        with_(ADMIN, "occurred_at", SECRET),
        with_(ADMIN, "recorded_at", SECRET),
        with_(ADMIN, "status", SECRET),
        with_(ADMIN, "event_type", SECRET),
        with_(ADMIN, "place_of_service", SECRET),
        with_(ADMIN, "diagnosis_codes", [SECRET * 20]),
        with_(DISP, "quantity_unit", SECRET),
    ]
    for obj in cases:
        r = parse(obj)
        assert isinstance(r, DeadLetter)
        assert SECRET not in r.error
        assert "PHI" not in r.error


# --- never raises ------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
FIELDS = sorted({(i, k) for i, base in enumerate(VALID) for k in base}
                | {(0, "drug." + k) for k in ADMIN["drug"]}
                | {(0, "ended_at"), (0, "status"), (1, "recorded_at"), (2, "status")})


def _check(result):
    assert isinstance(result, Administration | EMService | Dispense | DeadLetter)
    if isinstance(result, DeadLetter):
        assert result.error != _parse._INTERNAL_ERROR, result  # noqa: SLF001
        assert result.error_code in (INVALID_JSON, NOT_AN_OBJECT, MISSING_FIELD, WRONG_TYPE,
                                     INVALID_TIMESTAMP, UNKNOWN_EVENT_TYPE, TOO_LARGE,
                                     INVALID_ENCODING)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_never_raises_on_arbitrary_bytes(raw):
    _check(parse_record(raw))


@settings(max_examples=300)
@given(st.text(max_size=200))
def test_never_raises_on_arbitrary_text(raw):
    _check(parse_record(raw))


@settings(max_examples=300)
@given(st.dictionaries(st.sampled_from(sorted({k for b in VALID for k in b}) + ["x"])
                       | st.text(max_size=10), json_values, max_size=12))
def test_never_raises_on_arbitrary_objects(obj):
    _check(parse(obj))


@settings(max_examples=1000)
@given(st.sampled_from(FIELDS), json_values | st.sampled_from(
    ["", " ", "2025-03-14T09:20:00Z", "2025-03-14T09:20:00", "IM", "mg", "11", "UTC",
     "medicare", "completed", "entered-in-error", "1e9", "\u0000", "\ud800"]))
def test_never_raises_with_one_field_replaced(field, value):
    base_index, path = field
    result = parse(with_(VALID[base_index], path, value))
    _check(result)


@settings(max_examples=300)
@given(st.sampled_from(FIELDS), st.sampled_from([_DELETE, None]))
def test_removing_an_optional_field_never_raises(field, value):
    base_index, path = field
    _check(parse(with_(VALID[base_index], path, value)))


@settings(max_examples=200)
@given(st.sampled_from(range(3)), st.data())
def test_truncated_or_mutated_bytes_never_raise(index, data):
    raw = bytearray(orjson.dumps(VALID[index]))
    pos = data.draw(st.integers(0, len(raw) - 1))
    raw[pos] = data.draw(st.integers(0, 255))
    _check(parse_record(bytes(raw)))
    _check(parse_record(bytes(raw[:pos])))
