"""normalise.py: expected values from contract.md §2 and billing-rules.md §6, §8."""

from datetime import date, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream_app import vocabulary as V
from stream_app.engine import normalise as n


def ts(s: str) -> datetime:
    return datetime.fromisoformat(s)


# --- routes ------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("IM", V.IM), ("im", V.IM), (" Im ", V.IM), ("intramuscular", V.IM),
        ("SC", V.SC), ("subcutaneous", V.SC), ("SQ", V.SC), ("subq", V.SC),
        ("SUBCUT", V.SC), ("sub-q", V.SC), ("Sub Q", V.SC),
        ("IV_PUSH", V.IV_PUSH), ("iv push", V.IV_PUSH), ("IV-PUSH", V.IV_PUSH),
        ("IVP", V.IV_PUSH), ("ivp", V.IV_PUSH),
        ("IV_INFUSION", V.IV_INFUSION), ("IV infusion", V.IV_INFUSION),
        ("IV", V.IV), ("intravenous", V.IV),
        ("INTRA_ARTERIAL", V.INTRA_ARTERIAL), ("intra-arterial", V.INTRA_ARTERIAL),
        ("INTRADERMAL", V.INTRADERMAL), ("ID", V.INTRADERMAL),
        ("INTRA_ARTICULAR", V.INTRA_ARTICULAR), ("intra-articular", V.INTRA_ARTICULAR),
        ("ORAL", V.ORAL), ("PO", V.ORAL), ("oral", V.ORAL),
        ("OTHER", V.OTHER_ROUTE), ("other", V.OTHER_ROUTE),
    ],
)
def test_normalize_route(raw, expected):
    assert n.normalize_route(raw) == expected


@pytest.mark.parametrize("raw", [None, "", "   ", "topical-ish", "I M X", "IVPP", 12, b"IM",
                                 "IM" * 100])
def test_normalize_route_unknown(raw):
    assert n.normalize_route(raw) is None


def test_every_canonical_route_is_its_own_normal_form():
    for route in V.ROUTES:
        assert n.normalize_route(route) == route
        assert n.normalize_route(route.lower()) == route


# --- IV by duration ----------------------------------------------------------------------

START = ts("2025-03-14T09:00:00-05:00")


@pytest.mark.parametrize("route", [V.IV, V.IV_INFUSION])
def test_iv_exactly_15_minutes_is_push(route):
    assert n.resolve_iv(route, START, START + timedelta(minutes=15)) == V.IV_PUSH


@pytest.mark.parametrize("route", [V.IV, V.IV_INFUSION])
def test_iv_16_minutes_is_infusion(route):
    assert n.resolve_iv(route, START, START + timedelta(minutes=16)) == V.IV_INFUSION


def test_iv_just_over_15_minutes_is_infusion():
    assert n.resolve_iv(V.IV, START, START + timedelta(minutes=15, seconds=1)) == V.IV_INFUSION


def test_iv_zero_duration_is_push():
    assert n.resolve_iv(V.IV, START, START) == V.IV_PUSH


@pytest.mark.parametrize("route", [V.IV, V.IV_INFUSION])
def test_iv_without_end_cannot_be_resolved(route):
    assert n.resolve_iv(route, START, None) is None


def test_iv_ending_before_start_cannot_be_resolved():
    assert n.resolve_iv(V.IV, START, START - timedelta(minutes=1)) is None


def test_iv_duration_across_offsets():
    # 09:00-05:00 is 14:00Z; 14:10Z is 10 minutes later.
    assert n.resolve_iv(V.IV, START, ts("2025-03-14T14:10:00Z")) == V.IV_PUSH


@pytest.mark.parametrize("route", [V.IM, V.SC, V.IV_PUSH, V.ORAL, V.INTRA_ARTERIAL])
def test_other_routes_unchanged(route):
    assert n.resolve_iv(route, START, None) == route
    assert n.resolve_iv(route, START, START + timedelta(hours=2)) == route


def test_resolve_iv_accepts_raw_synonyms():
    assert n.resolve_iv("intravenous", START, START + timedelta(minutes=45)) == V.IV_INFUSION


# --- NDC ---------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("0002-7597-01", "00002759701"),  # 4-4-2, billing-rules §6
        ("50242-040-62", "50242004062"),  # 5-3-2
        ("60575-4112-1", "60575411201"),  # 5-4-1
        ("0409-7332-01", "00409733201"),  # examples/README.md
        ("00409-7332-01", "00409733201"),  # 5-4-2 hyphenated
        ("00409733201", "00409733201"),  # 11 digits
        (" 0002-7597-01 ", "00002759701"),
    ],
)
def test_ndc_to_11(raw, expected):
    assert n.ndc_to_11(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "0409733201",  # unhyphenated 10 digits: ambiguous, rejected
        "", None, "0002-7597", "0002-7597-01-1", "002-7597-01", "00002-07597-01",
        "0002-759A-01", "0002--7597-01", "004097332011", "0040973320", "abcdefghijk",
        "٠٠٠٠٢-٧٥٩٧-٠١",  # non-ASCII digits
        123456789012,
    ],
)
def test_ndc_to_11_invalid(raw):
    assert n.ndc_to_11(raw) is None


# --- NPI ---------------------------------------------------------------------------------

def test_npi_valid_example():
    assert n.npi_valid("1234567893")


@pytest.mark.parametrize("npi", ["1234567890", "1234567891", "1234567894", "123456789",
                                 "12345678930", "123456789X", "", None, 1234567893,
                                 "１２３４５６７８９３"])
def test_npi_invalid(npi):
    assert not n.npi_valid(npi)


def test_npi_exactly_one_check_digit_is_valid():
    valid = [d for d in "0123456789" if n.npi_valid("123456789" + d)]
    assert valid == ["3"]


# --- ICD-10-CM shape ---------------------------------------------------------------------

@pytest.mark.parametrize("code", ["J18.9", "M54.50", "Z23", "A54.9", "j18.9", "S72.001A",
                                  "C7A.01"])
def test_icd10cm_shaped(code):
    assert n.icd10cm_shaped(code)


@pytest.mark.parametrize("code", ["J18.", "J1", "18.9", "JJ8.9", "J18.12345", "J18.9\n",
                                  "J18 9", "", None, "Z23.", "J18..9"])
def test_icd10cm_not_shaped(code):
    assert not n.icd10cm_shaped(code)


# --- service date ------------------------------------------------------------------------

def test_service_date_spec_example():
    assert n.service_date(ts("2025-03-14T04:30:00Z"), "America/Chicago") == date(2025, 3, 13)
    assert n.service_date(ts("2025-03-14T05:00:00Z"), "America/Chicago") == date(2025, 3, 14)


def test_service_date_utc():
    assert n.service_date(ts("2025-03-14T23:59:59Z"), "UTC") == date(2025, 3, 14)


def test_service_date_dst_spring_forward_new_york():
    # 2025-03-09: clocks jump 02:00 EST -> 03:00 EDT (07:00Z).
    tz = "America/New_York"
    assert n.service_date(ts("2025-03-09T06:59:59Z"), tz) == date(2025, 3, 9)  # 01:59:59 EST
    assert n.service_date(ts("2025-03-09T07:00:00Z"), tz) == date(2025, 3, 9)  # 03:00 EDT
    # the last instant of the day is now 23:59:59 EDT = 03:59:59Z next day
    assert n.service_date(ts("2025-03-10T03:59:59Z"), tz) == date(2025, 3, 9)
    assert n.service_date(ts("2025-03-10T04:00:00Z"), tz) == date(2025, 3, 10)
    # the day before (still EST) ended at 05:00Z
    assert n.service_date(ts("2025-03-09T04:59:59Z"), tz) == date(2025, 3, 8)
    assert n.service_date(ts("2025-03-09T05:00:00Z"), tz) == date(2025, 3, 9)


def test_service_date_dst_fall_back_new_york():
    # 2025-11-02: 02:00 EDT -> 01:00 EST; the day is 25 hours long (04:00Z .. 05:00Z next).
    tz = "America/New_York"
    assert n.service_date(ts("2025-11-02T03:59:59Z"), tz) == date(2025, 11, 1)
    assert n.service_date(ts("2025-11-02T04:00:00Z"), tz) == date(2025, 11, 2)
    assert n.service_date(ts("2025-11-03T04:59:59Z"), tz) == date(2025, 11, 2)
    assert n.service_date(ts("2025-11-03T05:00:00Z"), tz) == date(2025, 11, 3)


def test_service_date_uses_instant_not_written_offset():
    # Written with a Pacific offset, the instant is 2025-03-14 00:30 in New York.
    assert n.service_date(ts("2025-03-13T21:30:00-07:00"), "America/New_York") == date(
        2025, 3, 14)


def test_service_date_half_hour_zone():
    assert n.service_date(ts("2025-03-13T18:30:00Z"), "Asia/Kolkata") == date(2025, 3, 14)
    assert n.service_date(ts("2025-03-13T18:29:59Z"), "Asia/Kolkata") == date(2025, 3, 13)


def test_service_date_naive_is_utc():
    assert n.service_date(datetime(2025, 3, 14, 4, 30), "America/Chicago") == date(2025, 3, 13)


def test_service_date_unknown_zone_raises_value_error():
    with pytest.raises(ValueError):
        n.service_date(ts("2025-03-14T04:30:00Z"), "Mars/Olympus_Mons")


@pytest.mark.parametrize("tz", ["America/Chicago", "UTC", "Europe/Berlin"])
def test_zone_is_cached(tz):
    assert n.zone(tz) is n.zone(tz)


@pytest.mark.parametrize("tz", ["", "Nowhere/Land", "../etc/passwd", "/etc/localtime",
                                "America/", "a\x00b", "x" * 300, None, 5])
def test_zone_unknown(tz):
    assert n.zone(tz) is None


# --- never raise -------------------------------------------------------------------------

_anything = st.one_of(st.none(), st.text(), st.integers(), st.binary(), st.floats())


@given(_anything)
def test_string_functions_never_raise(value):
    assert n.normalize_route(value) in (None, *V.ROUTES)
    n.ndc_to_11(value)
    assert n.npi_valid(value) in (True, False)
    assert n.icd10cm_shaped(value) in (True, False)


@given(st.text(max_size=20))
def test_ndc_result_is_11_digits_or_none(value):
    out = n.ndc_to_11(value)
    assert out is None or (len(out) == 11 and out.isdigit() and out.isascii())
