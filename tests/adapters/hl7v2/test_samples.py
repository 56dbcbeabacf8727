"""Every message of ../shared/hl7v2/samples/ (Microsoft FHIR-Converter samples, HL7 v2.8,
segments ended by \\n) mapped or refused as ehr-mapping.md §4/§5 says. The expected values
are read off the message text (quoted next to each assertion)."""

from __future__ import annotations

import pytest

from stream_app.adapters.hl7v2 import adapt
from stream_app.adapters.site import SiteConfig
from stream_app.vocabulary import (
    ADMINISTRATION,
    COMPLETED,
    DISPENSE,
    ENCOUNTER_UPDATED,
    HL7_NOT_BILLABLE,
    HL7_UNSUPPORTED_MESSAGE,
)
from tests.adapters.hl7v2.helpers import SAMPLES, one_dead_letter, one_record, row, sample, site


def test_every_sample_is_mapped_or_refused_with_a_named_code():
    names = sorted(p.stem for p in SAMPLES.glob("*.hl7"))
    assert len(names) == 8
    for name in names:
        out = adapt(sample(name), SiteConfig.packaged())
        assert len(out.records) + len(out.dead_letters) >= 1, name
        for dead in out.dead_letters:
            assert dead.error_code.startswith("HL7_"), (name, dead)
            assert "internal error" not in dead.error, (name, dead)
            assert dead.raw and dead.raw.startswith(b"MSH|"), name


def test_rds_o13_dispense_from_rxd():
    rec = one_record(sample("RDS-O13-01"))
    assert rec["event_type"] == DISPENSE
    # RXD|1|01151327^Doxycycline^NDC|20201212|10|385055001^Tablet^SCT|...
    assert rec["ndc"] == "01151327"
    assert rec["drug_name"] == "Doxycycline"
    assert rec["quantity"] == 10
    # RXD-5 is a SNOMED CT dosage form (tablet), not a unit the quantity map knows.
    assert "quantity_unit" not in rec
    assert "quantity_unit_unmapped:RXD[1]-5" in rec["source"]["warnings"]
    # RXD-3 is a date alone: 00:00 in the zone (no site row: the configured UTC).
    assert rec["occurred_at"] == "2020-12-12T00:00:00+00:00"
    assert "date_only:RXD[1]-3" in rec["source"]["warnings"]
    assert rec["facility_timezone"] == "UTC"
    # ORC|NW|1163422591^EPC|| : no filler number, so the placer keys the record.
    assert rec["record_id"] == "1163422591.1"
    assert rec["order_id"] == "1163422591"
    assert rec["status"] == COMPLETED
    # PID-3 PATID1234^5^M11^...^MR~123456789^^^USSSA^SS: the MR repetition.
    assert rec["patient_id"] == "PATID1234"
    # PV1-19 40007716^^^AccMng&1.2&HCD^AM
    assert rec["encounter_id"] == "40007716"
    # MSH-3 IMMAPP, MSH-4 GHHSFacility, MSH-10 MSG00001, first RXD; MSH-7 202108181126+0215.
    assert rec["event_id"] == "hl7:IMMAPP:GHHSFacility:MSG00001:0001"
    assert rec["recorded_at"] == "2021-08-18T11:26:00+02:15"
    assert "lot_number" not in rec     # RXD-18 is empty


def test_rds_o13_facility_zone_from_the_site_table():
    config = site(facility_timezone=[row(source="hl7v2", facility_key="GHHSFacility",
                                         timezone="America/New_York")],
                  code_map=[row(map="quantity_unit", system="", code="385055001",
                                value="UN", factor="")])
    rec = one_record(sample("RDS-O13-01"), config)
    assert rec["occurred_at"] == "2020-12-12T00:00:00-05:00"
    assert rec["facility_timezone"] == "America/New_York"
    assert rec["quantity_unit"] == "UN"


def test_dft_p03_radiology_professional_component_is_not_an_em_service():
    # FT1|1|...|CG|71045^Xray exam chest 1 view^C4|...|71045^...^C4|26|  (chest X-ray, modifier
    # 26) and FT1|2|...|CG|626.2|...|99011^first op visit: neither procedure is in the E/M
    # set, so no em.service; the DFT carries no E/M charge at all (§4.5).
    dead = one_dead_letter(sample("DFT-P03-01"))
    assert dead.error_code == HL7_NOT_BILLABLE
    assert dead.field == "FT1-25"
    assert dead.raw == sample("DFT-P03-01")       # the original bytes, as received


def test_dft_p03_with_an_em_procedure_maps_its_ft1():
    raw = sample("DFT-P03-01").replace(b"|71045^Xray exam chest 1 view^C4|26|",
                                       b"|99214^Office visit^C4|25~59|")
    rec = one_record(raw)
    assert rec["code"] == "99214"
    assert rec["modifiers"] == ["25", "59"]
    # FT1-4 20191122; PV1-19 40007716.
    assert rec["record_id"] == "40007716|99214|20191122"
    assert rec["occurred_at"] == "2019-11-22T00:00:00+00:00"
    # FT1-20 9941339108^Smith^Adam^^^^^^&2.16.840.1.113883.4.6&ISO^^^^NPI
    assert rec["rendering_npi"] == "9941339108"
    # FT1-19 and DG1-3 are SNOMED CT only: no ICD-10-CM code to carry.
    assert "diagnosis_codes" not in rec
    # No OBX SEPID in the FT1's group: the default setting `explicit` gives false.
    assert rec["separately_identifiable"] is False
    assert rec["event_id"].endswith(":0001")


def test_dft_p11_is_an_unsupported_message_type():
    dead = one_dead_letter(sample("DFT-P11-01"))
    assert dead.error_code == HL7_UNSUPPORTED_MESSAGE
    assert "DFT^P11" in dead.error
    assert dead.field == "MSH-9"


def test_rde_o11_is_an_unsupported_message_type():
    dead = one_dead_letter(sample("RDE-O11-01"))
    assert dead.error_code == HL7_UNSUPPORTED_MESSAGE
    assert "RDE^O11" in dead.error


@pytest.mark.parametrize("name, ended", [
    ("ADT-A03-01", "2015-02-09T11:34:19+01:10"),   # PV1-45 20150209113419+0110
    ("ADT-A08-01", "2015-02-09T11:34:19+01:10"),
    ("ADT-A04-01", None),                          # PV1-45 empty
])
def test_adt_visit_to_encounter_updated(name, ended):
    rec = one_record(sample(name))
    assert rec["event_type"] == ENCOUNTER_UPDATED
    assert rec["record_id"] == rec["encounter_id"] == "40007716"
    assert rec["status"] == COMPLETED
    assert rec["patient_id"] == "PATID1234"
    # PV1-44 20150208113419+0110: the offset as given.
    assert rec["occurred_at"] == "2015-02-08T11:34:19+01:10"
    assert rec.get("ended_at") == ended
    # EVN-2 20290801070624+0115 (the EVN's own time, not MSH-7).
    assert rec["recorded_at"] == "2029-08-01T07:06:24+01:15"
    # PV1-7 1122334^Alaz^...^PERSONNELt&1.23&HCD^B^...: no NPI.
    assert "rendering_npi" not in rec
    # No site rows: neither the location nor the plan tells POS or payer class.
    assert "place_of_service" not in rec and "payer_class" not in rec


def test_adt_site_rows_give_pos_payer_and_zone():
    # PV1-3 HUH AE OMU&9.8&ISO^OMU B^Bed 03^HOMERTON UNIVER^...: facility HOMERTON UNIVER,
    # point of care HUH AE OMU (sub-component 1). IN1-2 BAV, IN1-15 HMO.
    config = site(
        location_pos=[row(source="hl7v2", key_type="hl7_facility", key="HOMERTON UNIVER",
                          place_of_service="21")],
        payer_class_map=[row(source="hl7v2", key_type="hl7_plan_type", key="HMO",
                             payer_class="commercial")],
        facility_timezone=[row(source="*", facility_key="HOMERTON UNIVER",
                               timezone="Europe/London")])
    rec = one_record(sample("ADT-A04-01"), config)
    assert rec["place_of_service"] == "21"
    assert rec["payer_class"] == "commercial"
    assert rec["facility_timezone"] == "Europe/London"
    # A plan-id row is asked before the plan type.
    config = site(payer_class_map=[
        row(source="hl7v2", key_type="hl7_plan_type", key="HMO", payer_class="commercial"),
        row(source="hl7v2", key_type="hl7_plan_id", key="BAV", payer_class="medicare")])
    assert one_record(sample("ADT-A04-01"), config)["payer_class"] == "medicare"


def test_vxu_v04_immunization():
    rec = one_record(sample("VXU-V04-01"))    # the file starts with a UTF-8 byte-order mark
    assert rec["event_type"] == ADMINISTRATION
    # ORC|RE|4422^NIST-AA-IZ-2^...|13696^NIST-AA-IZ-2^... ; RXA|0|1|
    assert rec["record_id"] == "13696.0.1"
    assert rec["order_id"] == "4422"
    assert rec["status"] == COMPLETED           # RXA-20 CP, RXA-21 A
    # RXA-3 20210818, a date alone; RXA-4 empty.
    assert rec["occurred_at"] == "2021-08-18T00:00:00+00:00"
    assert "ended_at" not in rec
    drug = rec["drug"]
    # RXA-5 49281021588^TENIVAC^NDC, RXA-6 0.5, RXA-7 mL^mL^UCUM, RXA-15 315841.
    assert drug == {"name": "TENIVAC", "ndc": "49281021588", "dose": 0.5, "dose_unit": "mL",
                    "lot_number": "315841", "category": "vaccine"}
    # RXR|C28161^Intramuscular^NCIT|RD^Right Deltoid^HL70163
    assert rec["route"] == "IM"
    assert rec["site"] == "Right Deltoid"
    # RXA-10 7824^Jackson^Lily^Suzanne^^^^^NIST-PI-1^L^^^PRN: no suffix, no degree.
    assert rec["performer_id"] == "7824"
    assert "performer_credential" not in rec
    assert "diagnosis_codes" not in rec         # RXA-19 empty
    assert "supervising_npi" not in rec         # setting supervising_npi_from not set


def test_vxu_historical_record_is_not_billable():
    raw = sample("VXU-V04-01").replace(b"|00^New Record^NIP001|", b"|01^Historical^NIP001|")
    dead = one_dead_letter(raw)
    assert dead.error_code == HL7_NOT_BILLABLE
    assert dead.field == "RXA[1]-9"
