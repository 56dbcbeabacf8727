"""Shared paths and small builders for the FHIR adapter tests (no test data copied: the
official examples and the spec example are read from ../shared)."""

from __future__ import annotations

import copy
from pathlib import Path

import orjson

from stream_app.adapters import Adapted
from stream_app.adapters.fhir import adapt
from stream_app.adapters.site import SiteConfig

SHARED = Path(__file__).resolve().parents[3].parent / "shared"
R4_EXAMPLES = SHARED / "fhir" / "r4-examples"
SPEC_EXAMPLES = SHARED / "spec" / "examples"
OFFICE_VISIT_FHIR = SPEC_EXAMPLES / "office-visit.fhir.json"
OFFICE_VISIT_NDJSON = SPEC_EXAMPLES / "office-visit.ndjson"

PACKAGED = SiteConfig.packaged()


def load(path: Path) -> dict:
    return orjson.loads(path.read_bytes())


def office_visit() -> dict:
    return copy.deepcopy(load(OFFICE_VISIT_FHIR))


def entry(bundle: dict, rtype: str, rid: str) -> dict:
    for e in bundle["entry"]:
        if e["resource"]["resourceType"] == rtype and e["resource"].get("id") == rid:
            return e
    raise KeyError((rtype, rid))


def assert_valid_fhir(doc: dict) -> None:
    """The FHIR R4B models (which accept R4 content) validate the whole document: proves a
    test input the adapter accepted is real FHIR, not a shape only this adapter reads."""
    from fhir.resources.R4B import get_fhir_model_class

    get_fhir_model_class(doc["resourceType"]).model_validate(doc)


def run(doc: dict | bytes, site: SiteConfig = PACKAGED, **kw) -> Adapted:
    """Adapt a test input; an input that yields records must be valid FHIR."""
    raw = doc if isinstance(doc, bytes) else orjson.dumps(doc)
    result = adapt(raw, site, **kw)
    if result.records:
        assert_valid_fhir(orjson.loads(raw))
    return result


def one_record(doc: dict | bytes, site: SiteConfig = PACKAGED, **kw) -> dict:
    result = run(doc, site, **kw)
    assert not result.dead_letters, result.dead_letters
    assert len(result.records) == 1, result.records
    return result.records[0]


def by_type(result: Adapted) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for record in result.records:
        assert record["event_type"] not in out, "one record per event type expected"
        out[record["event_type"]] = record
    return out
