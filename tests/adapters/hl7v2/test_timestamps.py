"""HL7 timestamps of every precision, with and without offsets (ehr-mapping.md §4.1)."""

from __future__ import annotations

from datetime import date

import pytest

from stream_app.adapters.hl7v2.timestamps import (
    DATE_ONLY,
    DST_AMBIGUOUS,
    DST_GAP,
    InvalidTimestamp,
    parse_timestamp,
    written_date,
)

CHICAGO = "America/Chicago"


@pytest.mark.parametrize("text, expected, warnings", [
    ("2025", "2025-01-01T00:00:00-06:00", (DATE_ONLY,)),
    ("202503", "2025-03-01T00:00:00-06:00", (DATE_ONLY,)),
    ("20250314", "2025-03-14T00:00:00-05:00", (DATE_ONLY,)),
    ("2025031409", "2025-03-14T09:00:00-05:00", ()),
    ("202503140920", "2025-03-14T09:20:00-05:00", ()),
    ("20250314092015", "2025-03-14T09:20:15-05:00", ()),
    ("20250314092015.5", "2025-03-14T09:20:15.500000-05:00", ()),
    ("20250314092015.1234", "2025-03-14T09:20:15.123400-05:00", ()),
    # An offset is used as given, whatever the facility zone.
    ("20250314092015+0215", "2025-03-14T09:20:15+02:15", ()),
    ("202503140920-0800", "2025-03-14T09:20:00-08:00", ()),
    ("20250314+0000", "2025-03-14T00:00:00+00:00", (DATE_ONLY,)),
    ("20250314092015.25-0500", "2025-03-14T09:20:15.250000-05:00", ()),
])
def test_precisions_and_offsets(text, expected, warnings):
    stamp = parse_timestamp(text, CHICAGO)
    assert stamp.text == expected
    assert stamp.warnings == warnings


def test_spring_forward_gap_takes_the_offset_before_the_change():
    # 2025-03-09 02:30 does not exist in Chicago: 02:30 CST = 03:30 CDT.
    stamp = parse_timestamp("202503090230", CHICAGO)
    assert stamp.text == "2025-03-09T03:30:00-05:00"
    assert stamp.warnings == (DST_GAP,)


def test_fall_back_ambiguity_takes_the_first_occurrence():
    stamp = parse_timestamp("202511020130", CHICAGO)
    assert stamp.text == "2025-11-02T01:30:00-05:00"      # CDT, the first 01:30
    assert stamp.warnings == (DST_AMBIGUOUS,)


@pytest.mark.parametrize("text", [
    "", "2025-03-14", "20251314", "20250230", "2025031425", "202503140960", "20250314092061",
    "2025031409.5", "20250314092015+2400", "20250314092015+0075", "0000", "abc", "20250314T0920",
    "2025031409201", "20250314092015.12345",
])
def test_invalid(text):
    with pytest.raises(InvalidTimestamp):
        parse_timestamp(text, CHICAGO)


def test_written_date():
    assert written_date("20250314235959-0800") == date(2025, 3, 14)
    assert written_date("2025") == date(2025, 1, 1)
    assert written_date("2025-03-14") is None and written_date(None) is None
