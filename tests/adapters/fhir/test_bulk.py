"""Bulk Data NDJSON (ehr-mapping §3.1): the export is the resolution scope, so the worked
example split into one file per type maps to the same records as its Bundle."""

from __future__ import annotations

from pathlib import Path

import orjson

from stream_app.adapters.fhir import adapt, adapt_bulk, index_bulk

from .helpers import OFFICE_VISIT_FHIR, PACKAGED, office_visit


def _export(tmp_path: Path, extra_lines: dict[str, list[bytes]] | None = None) -> list[Path]:
    by_type: dict[str, list[bytes]] = {}
    for e in office_visit()["entry"]:
        by_type.setdefault(e["resource"]["resourceType"], []).append(orjson.dumps(e["resource"]))
    for rtype, lines in (extra_lines or {}).items():
        by_type.setdefault(rtype, []).extend(lines)
    paths = []
    for rtype, lines in sorted(by_type.items()):
        path = tmp_path / f"{rtype}.ndjson"
        path.write_bytes(b"\n".join(lines) + b"\n\n")
        paths.append(path)
    return paths


def test_export_maps_like_the_bundle(tmp_path: Path) -> None:
    bundle = adapt(OFFICE_VISIT_FHIR.read_bytes(), PACKAGED)
    results = list(adapt_bulk(_export(tmp_path), PACKAGED))
    records = [r for _, _, res in results for r in res.records]
    dead = [d for _, _, res in results for d in res.dead_letters]
    assert dead == []
    strip = [{k: v for k, v in r.items() if k != "source"} for r in records]
    expected = [{k: v for k, v in r.items() if k != "source"} for r in bundle.records]
    key = lambda r: r["event_id"]  # noqa: E731
    assert sorted(strip, key=key) == sorted(expected, key=key)
    # Location and Coverage lines are context: indexed, not mapped on their own
    files = {path.name for path, _, _ in results}
    assert "Location.ndjson" not in files and "Coverage.ndjson" not in files
    # the ChargeItem linked to the administration yields nothing itself
    linked = [res for path, line, res in results if path.name == "ChargeItem.ndjson" and line == 2]
    assert linked and not linked[0].records and not linked[0].dead_letters


def test_index_counts_context_lines_and_bad_lines_are_refused(tmp_path: Path) -> None:
    paths = _export(tmp_path, {"MedicationDispense": [b"{not json", b'{"resourceType": "Patient"}']})
    index = index_bulk(paths)
    assert index.context_lines == 2  # the Location and the Coverage
    results = {(p.name, line): res for p, line, res in adapt_bulk(paths, PACKAGED)}
    assert [d.error_code for d in results[("MedicationDispense.ndjson", 2)].dead_letters] == ["INVALID_JSON"]
    # a Patient without an id cannot be indexed: refused, not silently skipped
    assert [d.error_code for d in results[("MedicationDispense.ndjson", 3)].dead_letters] == [
        "FHIR_UNSUPPORTED_RESOURCE"]
