"""`replay` reads FHIR R4 and HL7 v2 files beside canonical NDJSON, detected by content
(ehr-mapping.md §1), and the rule loader lets the site configuration files be.

The worked example (ehr-mapping.md §7): the office visit as FHIR and as HL7 v2 settles to
the charge lines of office-visit.ndjson — same codes, modifiers, units, NDC fields and
amounts — and no open alert. Only ids, recorded_at and source may differ.
"""

from __future__ import annotations

import collections
import shutil
from pathlib import Path

import orjson
import pytest

from stream_app import vocabulary as V
from stream_app.adapters.site import SITE_FILES, load_site_config
from stream_app.replay import HL7V2, JSON_DOCUMENT, NDJSON, detect_format, replay
from stream_app.rules import load_rules
from stream_app.rules.loader import OTHER_LOADERS_FILES
from tests.engine.builders import engine

EXAMPLES = Path(__file__).resolve().parents[2] / ".." / "shared" / "spec" / "examples"
OFFICE_NDJSON = EXAMPLES / "office-visit.ndjson"
OFFICE_FHIR = EXAMPLES / "office-visit.fhir.json"
OFFICE_HL7 = EXAMPLES / "office-visit.hl7"
SITE_DIR = EXAMPLES / "site"

# The line fields the three forms must agree on (§7: only ids, recorded_at, source and the
# HL7 proposed charge_code differ; line ids hash the record ids, so they differ too).
AGREE = ("patient_id", "encounter_id", "service_date", "place_of_service", "payer_class",
         "code", "modifiers", "units", "ndc", "ndc_qualifier", "ndc_quantity", "ndc_unit",
         "diagnosis_codes", "rendering_npi", "expected_reimbursement", "denial_risk",
         "warnings", "state", "final")


def _lines(paths, site=None):
    res = replay([str(p) for p in paths], engine(), "UTC", site)
    active, open_alerts = res.settled_view()
    return sorted(tuple(ln[k] if not isinstance(ln[k], list) else tuple(ln[k]) for k in AGREE)
                  for ln in active), open_alerts, res


def test_formats_are_detected_by_content(tmp_path):
    assert detect_format(str(OFFICE_NDJSON)) == NDJSON
    assert detect_format(str(OFFICE_FHIR)) == JSON_DOCUMENT
    assert detect_format(str(OFFICE_HL7)) == HL7V2
    framed = tmp_path / "framed.txt"
    framed.write_bytes(b"\x0b" + OFFICE_HL7.read_bytes() + b"\x1c\r")
    assert detect_format(str(framed)) == HL7V2
    junk = tmp_path / "junk.ndjson"
    junk.write_bytes(b"not json\n{\"event_type\": 1}\n")
    assert detect_format(str(junk)) == NDJSON


def test_office_visit_fhir_bundle_gives_the_canonical_example_s_lines():
    expected, expected_alerts, _ = _lines([OFFICE_NDJSON])
    assert expected_alerts == []
    # the spec's three lines: 99213-25; 96372; J0696 x 2 with NDC 00409733201, N4, 1 UN
    assert sorted((ln[5], ln[6], ln[7], ln[8], ln[9], ln[10], ln[11]) for ln in expected) == [
        ("96372", (), 1, None, None, None, None),
        ("99213", ("25",), 1, None, None, None, None),
        ("J0696", (), 2, "00409733201", "N4", 1, "UN")]
    got, open_alerts, res = _lines([OFFICE_FHIR])
    assert open_alerts == [] and res.dead_letters == []
    assert got == expected


def test_fhir_bulk_data_files_resolve_context_across_files(tmp_path):
    """The Bundle's resources as a Bulk Data export, one type per file: the Location and
    Coverage files are the context the Encounter line needs (ehr-mapping.md §3.1)."""
    bundle = orjson.loads(OFFICE_FHIR.read_bytes())
    by_type = collections.defaultdict(list)
    for entry in bundle["entry"]:
        by_type[entry["resource"]["resourceType"]].append(entry["resource"])
    paths = []
    for rtype, resources in sorted(by_type.items()):
        path = tmp_path / f"{rtype}.ndjson"
        path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in resources))
        paths.append(path)
    expected, _, _ = _lines([OFFICE_NDJSON])
    got, open_alerts, res = _lines(paths)
    assert res.dead_letters == [] and open_alerts == []
    assert got == expected


def test_adapter_refusal_is_a_dead_letter_with_path_source_and_line(tmp_path):
    observation = {"resourceType": "Observation", "id": "obs-1", "status": "final"}
    mixed = tmp_path / "mixed.ndjson"
    mixed.write_bytes(OFFICE_NDJSON.read_bytes() + orjson.dumps(observation) + b"\n")
    res = replay([str(mixed)], engine())
    assert res.records == 3
    [dl] = res.dead_letters
    assert dl["error_code"] == V.FHIR_UNSUPPORTED_RESOURCE
    assert (dl["source"], dl["line"]) == (str(mixed), 4)
    assert orjson.loads(dl["raw"]) == observation
    assert set(dl) == {"error_code", "error", "field", "raw", "source", "line"}


def test_canonical_encounter_updated_in_ndjson_is_read(tmp_path):
    records = [orjson.loads(x) for x in OFFICE_NDJSON.read_bytes().splitlines() if x.strip()]
    for rec in records:
        if rec["event_type"] != "drug.dispensed":
            for name in ("place_of_service", "payer_class"):
                rec.pop(name)
    encounter = {"event_type": "encounter.updated", "event_id": "ev-enc-1", "record_id": "E100",
                 "encounter_id": "E100", "patient_id": "P100",
                 "occurred_at": "2025-03-14T09:00:00-05:00", "place_of_service": "11",
                 "payer_class": "commercial"}
    path = tmp_path / "visit.ndjson"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in [*records, encounter]))
    expected, _, _ = _lines([OFFICE_NDJSON])
    got, open_alerts, res = _lines([path])
    assert open_alerts == [] and got == expected
    assert res.by_event_type[V.ENCOUNTER_UPDATED] == 1


def test_office_visit_hl7_gives_the_canonical_example_s_lines():
    pytest.importorskip("stream_app.adapters.hl7v2",
                        reason="the HL7 v2 adapter arrives with branch hl7 (main)")
    expected, _, _ = _lines([OFFICE_NDJSON])
    got, open_alerts, res = _lines([OFFICE_HL7], load_site_config(SITE_DIR))
    assert res.dead_letters == [] and open_alerts == []
    assert got == expected


def test_rule_loader_accepts_the_site_files_in_a_rules_dir(tmp_path):
    assert OTHER_LOADERS_FILES == set(SITE_FILES)
    rules_dir = tmp_path / "rules"
    shutil.copytree(SITE_DIR, rules_dir)
    assert load_rules(rules_dir).reason(V.ENCOUNTER_CONTEXT_MISSING).work_queue == (
        "facility_billing")
    (rules_dir / "surprise.csv").write_text("a,b\n")
    with pytest.raises(Exception, match="unknown rule file name"):
        load_rules(rules_dir)
