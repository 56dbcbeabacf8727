"""The adapter's canonical records are what the engine's parser accepts (contract §2):
every record mapped from the worked example and the official examples parses without a
dead letter (encounter.updated is the engine's to add, ehr-mapping §2)."""

from __future__ import annotations

import orjson
import pytest

from stream_app.adapters.fhir import adapt
from stream_app.engine import DeadLetter, parse_record
from stream_app.vocabulary import ENCOUNTER_UPDATED, EVENT_TYPES

from .helpers import OFFICE_VISIT_FHIR, PACKAGED, R4_EXAMPLES

INPUTS = [OFFICE_VISIT_FHIR, *sorted(R4_EXAMPLES.glob("*.json"))]


@pytest.mark.parametrize("path", INPUTS, ids=lambda p: p.name)
def test_records_parse_in_the_engine(path) -> None:
    records = adapt(path.read_bytes(), PACKAGED).records
    for record in records:
        assert record["event_type"] in (*EVENT_TYPES, ENCOUNTER_UPDATED)
        if record["event_type"] == ENCOUNTER_UPDATED:
            continue
        parsed = parse_record(orjson.dumps(record), default_tz="UTC")
        assert not isinstance(parsed, DeadLetter), (record["event_type"], parsed)
        assert parsed.event_id == record["event_id"]
        assert parsed.record_id == record["record_id"]
