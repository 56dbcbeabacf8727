"""`generate --format fhir|hl7v2` round trip: the generator's stream written as FHIR R4
Bundles or HL7 v2 messages, adapted back by the real adapters (stream_app.adapters),
gives the canonical records the canonical stream has, up to what ehr-mapping.md says
differs: event ids, `source`, HL7 record ids (§4.2-4.5 shapes), the HL7 administration's
proposed charge code (RAS carries none: derived), and the context fields a record takes
from its encounter (§2 merge, own value wins)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import orjson
import pytest

from stream_app.adapters import fhir as fhir_adapter
from stream_app.adapters import hl7v2 as hl7_adapter
from stream_app.adapters.site import load_site_config
from stream_app.devtools.generate import generate_stream
from stream_app.devtools.generate.formats import FHIR, HL7V2, encode_messages
from stream_app.devtools.generate.hl7v2 import write_site
from stream_app.engine import DeadLetter, ndc_to_11, normalize_route, parse_record
from stream_app.vocabulary import (
    ADMINISTRATION,
    DISPENSE,
    EM_SERVICE,
    ENCOUNTER_UPDATED,
    TOPIC_FHIR,
    TOPIC_HL7V2,
)
from tests.support.paths import REPO

CONTEXT = ("place_of_service", "payer_class", "facility_timezone", "rendering_npi")


def _stream(seed: int):
    # errors, amendments, withdrawals and redeliveries included; no malformed messages
    return generate_stream(seed, 80, 2, "2025-03-10", 0.3, None, 0.08, 0.04, 0.05, 20, 0.0)


def _adapter(fmt, tmp_path):
    if fmt == FHIR:
        site = load_site_config(None)
        return lambda raw: fhir_adapter.adapt(raw, site, default_tz="UTC")
    site = load_site_config(write_site(tmp_path / "site"))
    return lambda raw: hl7_adapter.adapt(raw, site, default_tz="UTC")


def _parsed(record: dict) -> dict:
    rec = parse_record(orjson.dumps(record), default_tz="UTC")
    assert not isinstance(rec, DeadLetter), rec
    out = dataclasses.asdict(rec)
    out.pop("event_id")
    # the engine normalises route spellings and NDC forms itself (contract §2)
    if out.get("route") is not None:
        out["route"] = normalize_route(out["route"])
    if "drug" in out:
        out["drug"]["ndc"] = ndc_to_11(out["drug"]["ndc"])
    if "ndc" in out:
        out["ndc"] = ndc_to_11(out["ndc"])
    return out


def _round_trip(fmt, seed, tmp_path):
    """(canonical record, adapted record with its encounter's context merged) per record
    the format carries, and the canonical records it kept as they are."""
    stream = _stream(seed)
    topic = TOPIC_HL7V2 if fmt == HL7V2 else TOPIC_FHIR
    adapt = _adapter(fmt, tmp_path)
    planned = [p for _, _, p in stream.iter_plan()]
    messages = encode_messages(stream, fmt)
    contexts: dict[tuple[str, str], dict] = {}
    adapted: list[dict] = []
    kept: list[dict] = []
    for t, _key, value in messages:
        if t != topic:
            kept.append(orjson.loads(value))
            continue
        out = adapt(value)
        assert out.dead_letters == [], [(d.error_code, d.error, d.field) for d in out.dead_letters]
        for r in out.records:
            if r["event_type"] == ENCOUNTER_UPDATED:
                contexts[(r["patient_id"], r["encounter_id"])] = r
            else:
                adapted.append(r)
    carried = [p for p in planned if p not in kept]
    assert len(carried) == len(adapted)
    pairs = []
    for canonical, got in zip(carried, adapted, strict=True):
        got = {k: v for k, v in got.items() if k != "source"}
        ctx = contexts.get((got["patient_id"], got.get("encounter_id")))
        if ctx is not None:
            fields = CONTEXT if got["event_type"] != DISPENSE else ("facility_timezone",)
            for f in fields:  # ehr-mapping.md §2 merge: the record's own value wins
                if got.get(f) in (None, "") and ctx.get(f) is not None:
                    got[f] = ctx[f]
        pairs.append((canonical, got))
    return stream, pairs, kept


@pytest.mark.parametrize("seed", [3, 11])
def test_fhir_bundles_adapt_back_to_the_canonical_records(seed, tmp_path):
    stream, pairs, kept = _round_trip(FHIR, seed, tmp_path)
    # FHIR carries every record but an administration or E/M without an encounter
    assert all(k["event_type"] != DISPENSE and not k.get("encounter_id") for k in kept)
    assert len(pairs) >= 0.9 * len(stream.events)
    for canonical, got in pairs:
        expected = _parsed(canonical)
        actual = _parsed(got)
        assert actual == expected, canonical["event_type"]


@pytest.mark.parametrize("seed", [3, 11])
def test_hl7_messages_adapt_back_to_the_canonical_records(seed, tmp_path):
    stream, pairs, kept = _round_trip(HL7V2, seed, tmp_path)
    assert len(pairs) >= 0.8 * len(stream.events)
    kinds = {c["event_type"] for c, _ in pairs}
    assert kinds == {ADMINISTRATION, DISPENSE, EM_SERVICE}
    for canonical, got in pairs:
        expected = _parsed(canonical)
        actual = _parsed(got)
        kind = canonical["event_type"]
        rid = canonical["record_id"]
        # ehr-mapping.md §4.3-4.5 record ids: {ORC-3}.{RXA-1}.{RXA-2}, {ORC-3}.{RXD-1},
        # {visit}|{code}|{FT1-4 date}
        if kind == ADMINISTRATION:
            assert actual.pop("record_id") == f"{rid}.0.1"
            # RAS carries no CPT: the administration code is derived (§4.3)
            assert actual.pop("charge_code") is None
            expected.pop("charge_code")
            # without a placer number the order id is the filler number (§4.3 ORC-2, else ORC-3)
            if canonical.get("order_id") is None:
                assert actual.pop("order_id") == rid
                expected.pop("order_id")
        elif kind == DISPENSE:
            assert actual.pop("record_id") == f"{rid}.1"
        else:
            day = canonical["occurred_at"][:10].replace("-", "")
            assert actual.pop("record_id") == f"{canonical['encounter_id']}|{canonical['code']}|{day}"
        expected.pop("record_id")
        assert actual == expected, kind


def test_each_visit_sends_its_adt_once_before_its_first_record():
    stream = _stream(5)
    messages = [m for m in encode_messages(stream, HL7V2) if m[0] == TOPIC_HL7V2]
    seen_adt: set[bytes] = set()
    for _t, _k, value in messages:
        msh, pid, *rest = value.split(b"\r")
        if b"|ADT^A04" in msh:
            visit = next(s for s in rest if s.startswith(b"PV1")).split(b"|")[19]
            assert visit not in seen_adt
            seen_adt.add(visit)
        elif b"|RAS^O17" in msh or b"|DFT^P03" in msh:
            visit = next(s for s in rest if s.startswith(b"PV1")).split(b"|")[19]
            assert visit in seen_adt  # its context was sent before it
    assert seen_adt


def test_redeliveries_are_the_same_bytes_again():
    stream = _stream(7)
    for fmt in (FHIR, HL7V2):
        messages = encode_messages(stream, fmt)
        by_record: dict[str, set[bytes]] = {}
        for canonical, (_t, _k, value) in zip(
                [p for _, _, p in stream.iter_plan()],
                [m for m in messages if b"ADT^A04" not in m[2]], strict=True):
            by_record.setdefault(canonical["event_id"], set()).add(value)
        assert all(len(v) == 1 for v in by_record.values())
        assert stream.stats["redelivery"] > 0


def test_generate_command_writes_hl7_files_and_their_site_rows(tmp_path):
    out = tmp_path / "stream.hl7"
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "stream_app", "generate", "--patients", "20",
                    "--days", "1", "--format", "hl7v2", "--out", str(out),
                    "--site-dir", str(site)], check=True, cwd=REPO, capture_output=True)
    assert out.read_bytes().startswith(b"MSH|^~\\&|")
    assert (tmp_path / "stream.hl7.canonical.ndjson").is_file()
    assert {p.name for p in site.iterdir()} >= {"facility_timezone.csv", "location_pos.csv",
                                                "payer_class_map.csv"}
    load_site_config(site)  # valid site configuration
