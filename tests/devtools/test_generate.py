"""Tests of the synthetic stream generator (`python -m stream_app generate`)."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from datetime import datetime

import orjson
import pytest

from stream_app.devtools import generate as g
from stream_app.devtools.generate import catalogue
from tests.support.paths import REPO

EVENT_TYPES = {"medication.administered", "em.service", "drug.dispensed"}
TOPICS = {
    "medication.administered": "ehr.medication-administrations",
    "em.service": "ehr.em-services",
    "drug.dispensed": "pharmacy.dispenses",
}
PAYERS = {"medicare", "medicaid", "commercial", "workers_comp", "self_pay"}
ROUTE_SPELLINGS = {"IM", "SC", "IV_PUSH", "IV_INFUSION", "IV", "ORAL", "INTRA_ARTICULAR",
                   "INTRAMUSCULAR", "SQ", "SUBCUTANEOUS", "SUBQ", "IVP", "IV PUSH", "PO"}
DOSE_UNITS = {"mg", "mcg", "g", "mL", "units"}
CATEGORIES = {"therapeutic", "prophylactic", "diagnostic", "vaccine", "allergen_immunotherapy",
              "antineoplastic", "hormonal_antineoplastic", "procedural"}
CONTAINERS = {"single_dose", "multi_dose", "unknown"}
QTY_UNITS = {"UN", "ML", "GR", "ME", "F2"}
ICD = re.compile(r"[A-Z][0-9][A-Z0-9](\.[A-Z0-9]{1,4})?")
NDC_OK = re.compile(r"\d{4}-\d{4}-\d{2}|\d{5}-\d{3}-\d{2}|\d{5}-\d{4}-\d{1,2}|\d{11}")
OFFSET = re.compile(r"(Z|[+-]\d{2}:\d{2})$")


def luhn_npi(npi: str) -> bool:
    """Independent NPI check (CMS): Luhn over 80840 + all 10 digits must be 0 mod 10."""
    if not (isinstance(npi, str) and len(npi) == 10 and npi.isdigit()):
        return False
    digits = [int(c) for c in "80840" + npi]
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def rfc3339(value) -> datetime:
    assert isinstance(value, str) and OFFSET.search(value), value
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    assert parsed.tzinfo is not None
    return parsed


@pytest.fixture(scope="module")
def rich():
    """Enough encounters, with every rate turned up, that each kind shows up."""
    return g.generate_stream(
        11, patients=1500, error_rate=0.4, amend_rate=0.1, withdraw_rate=0.05,
        redeliver_rate=0.05, malformed_rate=0.02)


# -- determinism ------------------------------------------------------------------------------


def test_same_seed_same_bytes_different_seed_different():
    a = g.generate_messages(5, patients=120, malformed_rate=0.05)
    b = g.generate_messages(5, patients=120, malformed_rate=0.05)
    c = g.generate_messages(6, patients=120, malformed_rate=0.05)
    assert a == b
    assert a != c
    # ids of different seeds never collide (they can be replayed together)
    ids_a = {e["event_id"] for e in g.generate_events(5, patients=120)}
    ids_c = {e["event_id"] for e in g.generate_events(6, patients=120)}
    assert ids_a and not ids_a & ids_c


def test_malformed_rate_leaves_valid_records_unchanged():
    plain = g.generate_events(9, patients=100)
    with_bad = g.generate_stream(9, patients=100, malformed_rate=0.1)
    assert with_bad.malformed  # some were added
    assert with_bad.events == plain
    assert g.generate_events(9, patients=100, malformed_rate=0.3) == plain


def test_cli_ndjson_is_deterministic_and_matches_api(tmp_path):
    from stream_app.cli import main

    out1, out2 = tmp_path / "a.ndjson", tmp_path / "b.ndjson"
    argv = ["generate", "--seed", "3", "--patients", "60", "--days", "2"]
    assert main([*argv, "--out", str(out1)]) == 0
    assert main([*argv, "--out", str(out2)]) == 0
    data = out1.read_bytes()
    assert data == out2.read_bytes()
    events = g.generate_events(3, patients=60, days=2)
    assert data == b"".join(orjson.dumps(e) + b"\n" for e in events)


def test_cli_stdout_and_include_malformed():
    cmd = [sys.executable, "-m", "stream_app", "generate", "--seed", "4", "--patients", "40",
           "--malformed-rate", "0.1"]
    plain = subprocess.run(cmd, capture_output=True, check=True, cwd=REPO, timeout=120)
    assert plain.stdout.count(b"\n") == len(g.generate_events(4, patients=40))
    for line in plain.stdout.splitlines():
        orjson.loads(line)  # only valid records without the flag
    bad = subprocess.run([*cmd, "--include-malformed"], capture_output=True, check=True,
                         cwd=REPO, timeout=120)
    stream = g.generate_stream(4, patients=40, malformed_rate=0.1)
    assert bad.stdout == b"".join(v + b"\n" for _, _, v in stream.messages)
    assert bad.stdout.count(b"\n") == len(stream.messages)  # no value contains a newline


# -- record shape ------------------------------------------------------------------------------


def check_record(rec: dict, label: str | None) -> None:
    """Contract §2: hard requirements and field types."""
    assert rec["event_type"] in EVENT_TYPES
    for name in ("event_id", "record_id", "patient_id"):
        assert isinstance(rec[name], str) and rec[name]
    occurred = rfc3339(rec["occurred_at"])
    if "recorded_at" in rec:
        assert rfc3339(rec["recorded_at"]) >= occurred or rec["event_type"] == "drug.dispensed"
    assert rec.get("status", "completed") in ("completed", "entered-in-error")
    if "encounter_id" in rec:
        assert isinstance(rec["encounter_id"], str)
    assert isinstance(rec["facility_timezone"], str) and "/" in rec["facility_timezone"]
    npis = []
    if rec["event_type"] in ("medication.administered", "em.service"):
        assert isinstance(rec["place_of_service"], str) and re.fullmatch(r"\d\d",
                                                                        rec["place_of_service"])
        assert rec["payer_class"] in PAYERS
        npis.append(rec["rendering_npi"])
        dx = rec.get("diagnosis_codes")
        if label == "missing_diagnosis":
            assert not dx
        else:
            assert isinstance(dx, list) and dx and all(isinstance(d, str) for d in dx)
            shaped = [bool(ICD.fullmatch(d)) for d in dx]
            assert all(shaped) if label != "invalid_diagnosis" else not all(shaped)
    if rec["event_type"] == "medication.administered":
        assert rec["route"].upper() in ROUTE_SPELLINGS
        if label == "missing_site":
            assert "site" not in rec
        else:
            assert isinstance(rec["site"], str) and rec["site"]
        drug = rec["drug"]
        assert isinstance(drug["name"], str) and drug["name"]
        assert isinstance(drug["dose"], int | float) and drug["dose"] > 0
        assert drug["dose_unit"] in DOSE_UNITS
        assert drug.get("category", "therapeutic") in CATEGORIES
        assert drug["container"] in CONTAINERS
        if "wasted_amount" in drug:
            assert isinstance(drug["wasted_amount"], int | float) and drug["wasted_amount"] >= 0
        if "hcpcs" in drug:
            assert re.fullmatch(r"J\d{4}", drug["hcpcs"])
        else:
            assert drug.get("category") in ("vaccine", "allergen_immunotherapy") or \
                rec["route"].upper() in ("ORAL", "PO")
        if "ndc" in drug:
            ok = bool(NDC_OK.fullmatch(drug["ndc"]))
            assert ok if label != "malformed_ndc" else (not ok and len(drug["ndc"]) == 10)
        if label == "missing_lot_number":
            assert "lot_number" not in drug
        else:
            assert isinstance(drug["lot_number"], str) and drug["lot_number"]
        assert isinstance(rec["performer_id"], str)
        assert isinstance(rec["performer_credential"], str)
        if "supervising_npi" in rec:
            npis.append(rec["supervising_npi"])
        if "ended_at" in rec:
            assert rfc3339(rec["ended_at"]) > occurred
        for name in ("charge_code", "order_id"):
            if name in rec:
                assert isinstance(rec[name], str)
        if "charge_modifiers" in rec:
            assert all(isinstance(m, str) for m in rec["charge_modifiers"])
    elif rec["event_type"] == "em.service":
        assert re.fullmatch(r"992\d\d", rec["code"])
        assert all(isinstance(m, str) for m in rec.get("modifiers", []))
        assert isinstance(rec.get("separately_identifiable", False), bool)
    else:
        assert NDC_OK.fullmatch(rec["ndc"])
        assert isinstance(rec["drug_name"], str)
        assert isinstance(rec["quantity"], int | float) and rec["quantity"] > 0
        assert rec["quantity_unit"] in QTY_UNITS
        assert isinstance(rec["lot_number"], str)
    valid_npis = [luhn_npi(n) for n in npis]
    if label == "invalid_npi":
        assert not all(valid_npis)
    else:
        assert all(valid_npis), "NPIs are Luhn-valid unless an invalid NPI was injected"


def test_every_record_meets_the_contract(rich):
    kinds = Counter()
    for rec in rich.events:
        key = (rec["event_type"], rec["record_id"])
        label = rich.labels.get(key)
        if key in rich.fixed:  # one version carries the problem, the fix does not
            try:
                check_record(rec, label)
            except AssertionError:
                check_record(rec, None)
                kinds["fixed"] += 1
        else:
            check_record(rec, label)
        kinds[rec["event_type"]] += 1
    assert set(kinds) >= EVENT_TYPES | {"fixed"}


def test_records_parse_with_the_engine_parser(rich):
    from stream_app.engine import DeadLetter, parse_record

    for _topic, _key, value, kind in rich.iter_labeled_messages():
        parsed = parse_record(value)
        if kind is None:
            assert not isinstance(parsed, DeadLetter), parsed
        else:
            assert isinstance(parsed, DeadLetter)
            assert parsed.error_code == g.MALFORMED_KINDS[kind], (kind, parsed)


def test_npi_check_digit_matches_cms_example():
    assert catalogue.npi_check_digit("123456789") == "3"  # CMS example NPI 1234567893
    assert luhn_npi("1234567893") and catalogue.npi_is_valid("1234567893")
    assert not catalogue.npi_is_valid("1234567890")


def test_ndc_label_to_11():
    assert catalogue.ndc_label_to_11("0002-7597-01") == "00002759701"
    assert catalogue.ndc_label_to_11("50242-040-62") == "50242004062"
    assert catalogue.ndc_label_to_11("60575-4112-1") == "60575411201"


def test_drug_catalogue_is_consistent():
    for spec in (*catalogue.IMSC_DRUGS, *catalogue.PUSH_DRUGS, *catalogue.INFUSION_DRUGS,
                 *catalogue.VACCINES, *catalogue.ALLERGENS, *catalogue.ORAL_DRUGS):
        for product in spec.products:
            assert NDC_OK.fullmatch(product.ndc) and "-" in product.ndc
            assert len(catalogue.ndc_label_to_11(product.ndc)) == 11
        if spec.category == "vaccine":
            assert spec.hcpcs is None


# -- the mix ---------------------------------------------------------------------------------


def test_mix_contains_every_kind(rich):
    assert set(rich.labels.values()) == set(g.ERROR_KINDS)
    assert set(g.EXPECTED_REASON) == set(g.ERROR_KINDS)
    for name in ("amendment", "withdrawal", "redelivery", "fix"):
        assert rich.stats[name] > 0, name
    assert set(rich.malformed) == set(g.MALFORMED_KINDS)

    by_record: dict[tuple[str, str], list[dict]] = {}
    seen_event: dict[str, dict] = {}
    redelivered = 0
    for rec in rich.events:
        if rec["event_id"] in seen_event:
            assert seen_event[rec["event_id"]] == rec  # a redelivery is an exact duplicate
            redelivered += 1
            continue
        seen_event[rec["event_id"]] = rec
        by_record.setdefault((rec["event_type"], rec["record_id"]), []).append(rec)
    assert redelivered == rich.stats["redelivery"]
    versions = [v for v in by_record.values() if len(v) > 1]
    assert versions
    amended = withdrawn = 0
    for vs in versions:
        def recorded(r: dict) -> datetime:  # contract default: occurred_at
            return rfc3339(r.get("recorded_at", r["occurred_at"]))

        vs = sorted(vs, key=recorded)
        assert len({recorded(r) for r in vs}) == len(vs)  # strictly later
        for older, newer in zip(vs, vs[1:], strict=False):
            if newer.get("status") == "entered-in-error":
                withdrawn += 1
            else:
                assert newer != {**older, "event_id": newer["event_id"],
                                 "recorded_at": newer["recorded_at"]}, "amendment changes"
                amended += 1
    assert amended and withdrawn

    # settings: office and facility places of service, payer mix
    pos = Counter(r["place_of_service"] for r in rich.events if "place_of_service" in r)
    assert {"11", "12", "20", "19", "21", "22"} <= set(pos)
    payers = Counter(r["payer_class"] for r in rich.events if r["event_type"] == "em.service")
    total = sum(payers.values())
    assert 0.30 < payers["medicare"] / total < 0.50
    assert set(payers) == PAYERS
    routes = Counter(r["route"].upper() for r in rich.events
                     if r["event_type"] == "medication.administered")
    assert routes["IM"] + routes["SC"] > sum(routes.values()) / 2
    em_codes = Counter(r["code"] for r in rich.events if r["event_type"] == "em.service")
    assert {"99211", "99212", "99213", "99214", "99215"} <= set(em_codes)
    infusions = [r for r in rich.events if r["event_type"] == "medication.administered"
                 and r["route"] in ("IV_INFUSION", "IV")]
    assert infusions
    for r in infusions:
        minutes = (rfc3339(r["ended_at"]) - rfc3339(r["occurred_at"])).total_seconds() / 60
        assert 40 <= minutes <= 200


def test_dispenses_before_and_after_with_and_without_order(rich):
    admins = {}
    for r in rich.events:
        if r["event_type"] == "medication.administered" and "order_id" in r:
            admins[r["order_id"]] = r
    before = after = unordered = 0
    for r in rich.events:
        if r["event_type"] != "drug.dispensed":
            continue
        if "order_id" not in r:
            unordered += 1
            continue
        admin = admins[r["order_id"]]
        assert admin["patient_id"] == r["patient_id"]
        if rfc3339(r["occurred_at"]) < rfc3339(admin["occurred_at"]):
            before += 1
        else:
            after += 1
    assert before and after and unordered


def test_error_mix_selects_kinds():
    s = g.generate_stream(2, patients=400, error_rate=0.5,
                          error_mix={"missing_ndc": 1, "medicare_waste_missing": 1})
    assert set(s.labels.values()) == {"missing_ndc", "medicare_waste_missing"}
    assert not g.generate_stream(2, patients=100, error_rate=0.0).labels
    with pytest.raises(ValueError):
        g.generate_stream(2, patients=10, error_mix={"no_such_kind": 1})


def test_keys_vary_and_topics_follow_event_type(rich):
    kinds = Counter()
    valid = [m[:3] for m in rich.iter_labeled_messages() if m[3] is None]
    for (topic, key, value), rec in zip(valid, rich.events, strict=True):
        assert topic == TOPICS[rec["event_type"]]
        assert value == orjson.dumps(rec)
        if key is None:
            kinds["none"] += 1
        elif key == rec["patient_id"].encode():
            kinds["patient"] += 1
        elif key == rec.get("encounter_id", "").encode():
            kinds["encounter"] += 1
        elif key == rec["record_id"].encode():
            kinds["record"] += 1
        else:
            kinds["other"] += 1
    assert set(kinds) == {"none", "patient", "encounter", "record"}


def test_topic_prefix():
    msgs = g.generate_messages(1, patients=20, topic_prefix="t1.")
    assert {t for t, _, _ in msgs} == {"t1." + t for t in TOPICS.values()}


def test_arrival_is_out_of_order(rich):
    times = [rfc3339(r.get("recorded_at", r["occurred_at"])) for r in rich.events]
    inversions = sum(1 for a, b in zip(times, times[1:], strict=False) if b < a)
    assert inversions > len(times) / 20


def test_records_target():
    s = g.generate_stream(8, records=6000)
    assert 5700 <= len(s.events) <= 6300


def test_large_stream_reaches_its_target():
    # How fast this runs is a benchmark's question (make bench), not a test's.
    s = g.generate_stream(12, records=100_000)
    lines = sum(1 for _ in s.iter_ndjson())
    assert 95_000 <= lines <= 105_000
