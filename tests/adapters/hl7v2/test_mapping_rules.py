"""The rules of ehr-mapping.md §4.2-§4.6 one by one, on variants of the office-visit
messages (examples/office-visit.hl7) with one field changed at a time."""

from __future__ import annotations

import pytest

from stream_app.adapters.hl7v2 import adapt
from stream_app.vocabulary import (
    COMPLETED,
    ENTERED_IN_ERROR,
    HL7_INVALID,
    HL7_INVALID_TIMESTAMP,
    HL7_MISSING_FIELD,
    HL7_NOT_BILLABLE,
    HL7_UNSUPPORTED_MESSAGE,
)
from tests.adapters.hl7v2.helpers import EXAMPLES, example_site, row, site

ADT, DFT, RDS, RAS = (line.rstrip(b"\r\n") for line in
                      (EXAMPLES / "office-visit.hl7").read_bytes().split(b"\n") if line.strip())


def seg(message: bytes, name: bytes) -> bytes:
    return next(s for s in message.split(b"\r") if s.startswith(name + b"|"))


def with_segment(message: bytes, name: bytes, new: bytes) -> bytes:
    return message.replace(seg(message, name), new)


def fields(segment: bytes) -> list[bytes]:
    return segment.split(b"|")


def set_field(message: bytes, name: bytes, number: int, value: bytes) -> bytes:
    parts = fields(seg(message, name))
    while len(parts) <= number:
        parts.append(b"")
    parts[number] = value
    return with_segment(message, name, b"|".join(parts))


def build(name: bytes, values: dict[int, bytes]) -> bytes:
    """A segment with the given fields set (field number → value), the others empty."""
    parts = [name] + [b""] * max(values)
    for number, value in values.items():
        parts[number] = value
    return b"|".join(parts)


def adapt_one(message: bytes, config=None):
    out = adapt(message, config or example_site())
    return out.records, out.dead_letters


def record(message: bytes, config=None) -> dict:
    records, dead = adapt_one(message, config)
    assert dead == [] and len(records) == 1, ([(d.error_code, d.field) for d in dead], records)
    return records[0]


def refusal(message: bytes, config=None) -> tuple[str, str | None]:
    records, dead = adapt_one(message, config)
    assert records == [] and len(dead) == 1, (records, dead)
    assert dead[0].raw == message
    return dead[0].error_code, dead[0].field


# ----------------------------------------------------------------------------- §4.2 identity

def test_patient_id_takes_the_configured_identifier_type():
    msg = set_field(RAS, b"PID", 3, b"X1^^^F^PI~P100^^^MAINCLINIC^MR")
    assert record(msg)["patient_id"] == "P100"
    config = site(adapter_settings=[row(source="hl7v2", setting="patient_id_type", value="PI")])
    assert record(msg, config)["patient_id"] == "X1"
    assert record(set_field(RAS, b"PID", 3, b"X1^^^F^PI"))["patient_id"] == "X1"


@pytest.mark.parametrize("message, name, number, where", [
    (RAS, b"PID", 3, "PID-3"), (RAS, b"MSH", 9, "MSH-10"),
])
def test_hard_identity_fields(message, name, number, where):
    if name == b"MSH":
        msg = message.replace(b"|MSG-RAS-1|", b"||")
    else:
        msg = set_field(message, name, number, b"")
    assert refusal(msg) == (HL7_MISSING_FIELD, where)


# ----------------------------------------------------------------------------- §4.3 RXA

@pytest.mark.parametrize("rxa20, rxa21, status", [
    (b"CP", b"A", COMPLETED), (b"PA", b"A", COMPLETED), (b"", b"", COMPLETED),
    (b"RE", b"A", ENTERED_IN_ERROR), (b"NA", b"", ENTERED_IN_ERROR), (b"CP", b"D", ENTERED_IN_ERROR),
])
def test_administration_status(rxa20, rxa21, status):
    msg = set_field(set_field(RAS, b"RXA", 20, rxa20), b"RXA", 21, rxa21)
    assert record(msg)["status"] == status


def test_ended_at_only_after_the_start():
    assert "ended_at" not in record(RAS)          # RXA-4 copies RXA-3
    rec = record(set_field(RAS, b"RXA", 4, b"20250314092500"))
    assert rec["ended_at"] == "2025-03-14T09:25:00-05:00"


@pytest.mark.parametrize("value, code", [(b"", HL7_MISSING_FIELD), (b"2025031x", HL7_INVALID_TIMESTAMP),
                                         (b"20250230", HL7_INVALID_TIMESTAMP)])
def test_administration_time_is_hard(value, code):
    assert refusal(set_field(RAS, b"RXA", 3, value)) == (code, "RXA[1]-3")


def test_no_order_number_is_refused():
    msg = set_field(set_field(RAS, b"ORC", 2, b""), b"ORC", 3, b"")
    assert refusal(msg) == (HL7_MISSING_FIELD, "ORC[1]-3")
    placer_only = set_field(RAS, b"ORC", 3, b"")
    rec = record(placer_only)
    assert (rec["record_id"], rec["order_id"]) == ("ORD-1.0.1", "ORD-1")


def test_ras_without_rxa_is_invalid():
    msg = b"\r".join(s for s in RAS.split(b"\r") if not s.startswith(b"RXA|"))
    assert refusal(msg) == (HL7_INVALID, "RXA")


@pytest.mark.parametrize("rxr1, route", [
    (b"IM^Intramuscular^HL70162", "IM"), (b"SC", "SC"), (b"SQ", "SC"), (b"IV", "IV"),
    (b"IA", "INTRA_ARTERIAL"), (b"ID", "INTRADERMAL"), (b"IS", "INTRA_ARTICULAR"),
    (b"IB", "INTRA_ARTICULAR"), (b"PO", "ORAL"), (b"TD", "OTHER"), (b"NS", "OTHER"),
    (b"C28161^Intramuscular^NCIT", "IM"), (b"XYZ^Mystery^HL70162", None),
    (b"78421000^Intramuscular^SCT", None),
])
def test_route_table_0162(rxr1, route):
    rec = record(with_segment(RAS, b"RXR", b"RXR|" + rxr1 + b"|RVG^^HL70163"))
    assert rec.get("route") == route
    # RXR-2 with only the code: the table 0163 display.
    assert rec["site"] == "right ventragluteal"
    if route is None:
        assert any(w.startswith("route_unmapped:") for w in rec["source"]["warnings"])


def test_site_code_map_rows_win_over_the_route_table():
    config = site(code_map=[row(map="route", system="HL70162", code="XYZ", value="SC", factor="")])
    rec = record(with_segment(RAS, b"RXR", b"RXR|XYZ^Local SC^HL70162"), config)
    assert rec["route"] == "SC"


def test_dose_rules():
    rec = record(set_field(set_field(RAS, b"RXA", 6, b"2"), b"RXA", 7, b"MG"))
    assert (rec["drug"]["dose"], rec["drug"]["dose_unit"]) == (2, "mg")
    rec = record(set_field(set_field(RAS, b"RXA", 6, b"250"), b"RXA", 7, b"ng^nanogram^UCUM"))
    assert (rec["drug"]["dose"], rec["drug"]["dose_unit"]) == (0.25, "mcg")
    for dose in (b"999", b"0", b"-1", b"abc"):
        drug = record(set_field(RAS, b"RXA", 6, dose))["drug"]
        assert "dose" not in drug and "dose_unit" not in drug
    drug = record(set_field(RAS, b"RXA", 7, b"mg/kg^^UCUM"))["drug"]
    assert "dose" not in drug and "dose_unit" not in drug


def test_drug_codes_from_rxa5_triplets():
    rec = record(set_field(RAS, b"RXA", 5,
                           b"J0696^ceftriaxone^HCPCS^0409-7332-01^ceftriaxone 500 mg vial^NDC"))
    assert (rec["drug"]["hcpcs"], rec["drug"]["ndc"]) == ("J0696", "0409-7332-01")
    # A CVX triplet makes it a vaccine, before any OBX CATEGORY.
    rec = record(set_field(RAS, b"RXA", 5, b"141^Influenza^CVX"))
    assert rec["drug"]["category"] == "vaccine"
    assert record(RAS)["drug"]["category"] == "therapeutic"   # OBX CATEGORY


def test_drug_attributes_fill_what_the_obx_do_not_say():
    msg = b"\r".join(s for s in RAS.split(b"\r") if not s.startswith(b"OBX|"))
    config = site(drug_attributes=[row(key_type="hcpcs", key="J0696", category="therapeutic",
                                       container="multi_dose")])
    drug = record(msg, config)["drug"]
    assert (drug["category"], drug["container"]) == ("therapeutic", "multi_dose")
    assert "wasted_amount" not in drug
    assert "category" not in record(msg)["drug"]


def test_credentials():
    # RXA-10 XCN-21 (professional suffix) CMA → MA.
    assert record(RAS.replace(b"^^^^RN|", b"^^^^CMA|"))["performer_credential"] == "MA"
    # XCN-7 (degree, table 0360) MA = Master of Arts: dropped with a warning.
    msg = RAS.replace(b"nurse-7^Nurse^Nina^^^^^^MAINCLINIC^^^^EI^^^^^^^^RN",
                      b"nurse-7^Nurse^Nina^^^^MA^^MAINCLINIC^^^^EI")
    rec = record(msg)
    assert "performer_credential" not in rec
    assert "credential_dropped:RXA[1]-10.7" in rec["source"]["warnings"]


def test_performer_from_a_prt_segment():
    msg = set_field(RAS, b"RXA", 10, b"").replace(
        b"|A\rRXR|", b"|A\r" + build(b"PRT", {1: b"1", 2: b"AD", 4: b"AP^Administering Provider^HL70912",
                                 5: b"nurse-9^Nurse^Nora" + b"^" * 18 + b"LPN"}) + b"\rRXR|")
    rec = record(msg)
    assert (rec["performer_id"], rec["performer_credential"]) == ("nurse-9", "LPN")


def test_two_administrations_in_one_message():
    second = (b"ORC|RE|ORD-2|RX-2||CM\rRXA|0|1|20250314093000|20250314093000|J1885^ketorolac^HCPCS|"
              b"30|mg^^UCUM\rRXR|IM")
    rec1, rec2 = adapt(RAS + b"\r" + second, example_site()).records
    assert rec1["event_id"].endswith(":0001") and rec2["event_id"].endswith(":0002")
    assert (rec2["record_id"], rec2["order_id"], rec2["drug"]["hcpcs"]) == ("RX-2.0.1", "ORD-2", "J1885")
    assert "category" not in rec2["drug"]           # the first group's OBX stay with it


def test_place_of_service_from_pv1_3():
    msg = set_field(RAS, b"PV1", 3, b"FM^^^MAINCLINIC")
    assert record(msg)["place_of_service"] == "11"


# ----------------------------------------------------------------------------- §4.4 RXD

@pytest.mark.parametrize("orc1, status", [(b"RE", COMPLETED), (b"CA", ENTERED_IN_ERROR),
                                          (b"OC", ENTERED_IN_ERROR), (b"CR", ENTERED_IN_ERROR)])
def test_dispense_status(orc1, status):
    assert record(set_field(RDS, b"ORC", 1, orc1))["status"] == status


@pytest.mark.parametrize("qty", [b"0", b"-1"])
def test_returned_dispense_is_not_billable(qty):
    assert refusal(set_field(RDS, b"RXD", 4, qty)) == (HL7_NOT_BILLABLE, "RXD[1]-4")


def test_dispense_time_is_hard():
    assert refusal(set_field(RDS, b"RXD", 3, b"")) == (HL7_MISSING_FIELD, "RXD[1]-3")


# ----------------------------------------------------------------------------- §4.5 FT1

def test_credit_withdraws_the_same_record():
    charge = record(DFT)
    credit = record(set_field(set_field(DFT, b"FT1", 6, b"CD"), b"FT1", 2, b"FT-1002"))
    assert credit["status"] == ENTERED_IN_ERROR
    assert credit["record_id"] == charge["record_id"] == "E100|99213|20250314"


@pytest.mark.parametrize("kind", [b"PY", b"AJ", b"CO"])
def test_payments_and_adjustments_yield_no_record(kind):
    assert refusal(set_field(DFT, b"FT1", 6, kind)) == (HL7_NOT_BILLABLE, "FT1-25")


def test_em_code_from_ft1_7_when_coded_cpt():
    rec = record(set_field(DFT, b"FT1", 25, b""))
    assert rec["code"] == "99213"
    msg = set_field(set_field(DFT, b"FT1", 25, b""), b"FT1", 7, b"99213^Office visit^L")
    assert refusal(msg)[0] == HL7_NOT_BILLABLE


def test_em_time_is_hard():
    assert refusal(set_field(DFT, b"FT1", 4, b"")) == (HL7_MISSING_FIELD, "FT1[1]-4.1")


def test_separately_identifiable():
    no_obx = b"\r".join(s for s in DFT.split(b"\r") if not s.startswith(b"OBX|"))
    assert record(no_obx)["separately_identifiable"] is False
    config = site(adapter_settings=[row(source="hl7v2", setting="em_separately_identifiable_source",
                                        value="modifier_25")])
    assert record(no_obx, config)["separately_identifiable"] is True
    assert record(DFT.replace(b"|Y^Yes^HL70136|", b"|N^No^HL70136|"), config)[
        "separately_identifiable"] is False


def test_diagnoses_from_dg1_by_priority_when_ft1_19_is_empty():
    msg = set_field(DFT, b"FT1", 19, b"") + (
        b"\rDG1|1||Z23^Encounter for immunization^I10C||||||||||||2"
        b"\rDG1|2||A54.9^Gonococcal infection^I10C||||||||||||1")
    assert record(msg)["diagnosis_codes"] == ["A54.9", "Z23"]


def test_non_em_ft1_yields_nothing_and_keeps_ordinals():
    inj = b"FT1|1|FT-1000||20250314092000||CG|96372^Injection^C4|||1||||||||||||||96372^Injection^C4"
    msg = DFT.replace(b"\rFT1|1|", b"\r" + inj + b"\rFT1|2|")
    rec = record(msg)
    assert rec["code"] == "99213" and rec["event_id"].endswith(":0002")


def test_payer_class_from_the_primary_in1():
    config = site(payer_class_map=[row(source="hl7v2", key_type="hl7_plan_id", key="ACMEPPO",
                                       payer_class="commercial"),
                                   row(source="hl7v2", key_type="hl7_plan_id", key="MCR",
                                       payer_class="medicare")])
    two = (DFT + b"\r" + build(b"IN1", {1: b"1", 2: b"ACMEPPO", 3: b"ACME01", 22: b"2"})
           + b"\r" + build(b"IN1", {1: b"2", 2: b"MCR", 3: b"CMS", 22: b"1"}))
    assert record(two, config)["payer_class"] == "medicare"


# ----------------------------------------------------------------------------- §4.6 ADT

@pytest.mark.parametrize("event, status", [(b"A01", COMPLETED), (b"A08", COMPLETED),
                                           (b"A11", ENTERED_IN_ERROR), (b"A38", ENTERED_IN_ERROR)])
def test_adt_events(event, status):
    assert record(ADT.replace(b"ADT^A04^ADT_A01", b"ADT^" + event))["status"] == status


@pytest.mark.parametrize("event", [b"A28", b"A31", b"A40"])
def test_other_adt_events_are_unsupported(event):
    code, where = refusal(ADT.replace(b"ADT^A04^ADT_A01", b"ADT^" + event))
    assert (code, where) == (HL7_UNSUPPORTED_MESSAGE, "MSH-9")


def test_a13_leaves_ended_at_out():
    msg = set_field(ADT, b"PV1", 45, b"20250314100000")
    assert record(msg)["ended_at"] == "2025-03-14T10:00:00-05:00"
    assert "ended_at" not in record(msg.replace(b"ADT^A04^ADT_A01", b"ADT^A13"))


def test_visit_number_is_hard():
    assert refusal(set_field(ADT, b"PV1", 19, b"")) == (HL7_MISSING_FIELD, "PV1[1]-19")
    no_pv1 = b"\r".join(s for s in ADT.split(b"\r") if not s.startswith(b"PV1|"))
    assert refusal(no_pv1) == (HL7_INVALID, "PV1")


def test_start_falls_back_to_evn():
    rec = record(set_field(ADT, b"PV1", 44, b""))
    assert rec["occurred_at"] == "2025-03-14T08:55:00-05:00"        # EVN-2
    assert refusal(set_field(ADT, b"PV1", 44, b"2025-03-14")) == (HL7_INVALID_TIMESTAMP, "PV1[1]-44")


def test_financial_class_when_no_in1_says():
    config = site(payer_class_map=[row(source="hl7v2", key_type="hl7_financial_class", key="MC",
                                       payer_class="medicaid")])
    no_in1 = b"\r".join(s for s in ADT.split(b"\r") if not s.startswith(b"IN1|"))
    msg = set_field(no_in1, b"PV1", 20, b"MC")
    assert record(msg, config)["payer_class"] == "medicaid"
    assert "payer_class" not in record(no_in1, config)


def test_attending_from_a_prt_segment():
    msg = set_field(ADT, b"PV1", 7, b"").replace(
        b"\rIN1|", b"\r" + build(b"PRT", {1: b"1", 2: b"AD", 4: b"AT^Attending^HL70912",
                                          5: b"1497758544^Roe^Rita" + b"^" * 10 + b"NPI"})
        + b"\rIN1|")
    assert record(msg)["rendering_npi"] == "1497758544"


def test_a_non_em_charge_with_an_unusable_date_yields_nothing():
    inj = b"FT1|1|FT-1000||2025031x||CG|96372^Injection^C4|||1||||||||||||||96372^Injection^C4"
    msg = DFT.replace(b"\rFT1|1|", b"\r" + inj + b"\rFT1|2|")
    assert record(msg)["code"] == "99213"
    assert refusal(set_field(DFT, b"FT1", 4, b"2025031x")) == (HL7_INVALID_TIMESTAMP, "FT1[1]-4.1")


def test_an_unknown_configured_zone_falls_back_to_utc():
    from stream_app.adapters.site import SiteConfig
    rec = adapt(RAS, SiteConfig.packaged(), default_tz="Mars/Olympus").records[0]
    assert rec["facility_timezone"] == "UTC"
    assert rec["occurred_at"] == "2025-03-14T09:20:00+00:00"


def test_missing_soft_fields_are_left_out_not_refused():
    msg = set_field(set_field(set_field(RAS, b"RXA", 15, b""), b"RXA", 10, b""), b"RXA", 19, b"")
    msg = b"\r".join(s for s in msg.split(b"\r") if not s.startswith(b"RXR|"))
    rec = record(msg)
    for name in ("route", "site", "performer_id", "performer_credential", "diagnosis_codes"):
        assert name not in rec
    assert "lot_number" not in rec["drug"]
    assert rec["drug"]["hcpcs"] == "J0696"
